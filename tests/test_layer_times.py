"""tools/layer_times.py: every layer timed in both frameworks on the input
it gets in the network (a tiny net; no timing assertions)."""

from __future__ import annotations

from tools import layer_times


def test_every_layer_runs_in_both_frameworks_on_its_networks_input():
  rows = layer_times.measure('paper', batch_size=2, repeats=1, variants='size=tiny')
  assert [r.layer for r in rows] == list(layer_times.LAYERS)
  # (towers, batch, height, width, channels a tower) after pool1 of a 227-pixel image.
  assert {r.layer: r.shape for r in rows}['conv2'] == (2, 2, 27, 27, 8)
  assert all(min(r.jax_forward, r.jax_backward, r.torch_forward, r.torch_backward) > 0
             for r in rows)
  text = layer_times.format_rows(rows)
  assert text.splitlines()[-1].startswith('total ')
  assert len(text.splitlines()) == len(rows) + 2
