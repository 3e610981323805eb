"""What a checkpoint of the configured network costs: save, restore, and the
digests that detect corrupt checkpoints (checkpointing.digests).

  python -m tools.benchmark_checkpoint --config=configs/alexnet.py

Saves the freshly initialised train state into a temporary folder a few
times, synchronously, and restores it, timing each; the digests are the part
of both that computes a digest of every array. Prints the best of the rounds.
"""

from __future__ import annotations

import tempfile
import time

import ml_collections
from absl import app, flags
from ml_collections import config_flags

import checkpointing
import input_pipeline
import parallel
from trainer import Trainer

_ROUNDS = 3


def report(config: ml_collections.ConfigDict) -> str:
  """The best of _ROUNDS timings of save, restore and the digests."""
  config = input_pipeline.with_dataset_classes(config)
  config.checkpoint.asynchronous = False
  trainer = Trainer(config, parallel.make_mesh(config.mesh))
  state = trainer.init(config.seed)
  checkpointing.digests(state)  # compile
  times = {'save': [], 'restore': [], 'digests': []}
  with tempfile.TemporaryDirectory() as workdir:
    checkpoints = checkpointing.Checkpoints(workdir, config)
    for i in range(_ROUNDS):
      start = time.perf_counter()
      checkpoints.save(state.replace(step=state.step + i), results={},
                       evaluated=False)
      times['save'].append(time.perf_counter() - start)
      start = time.perf_counter()
      checkpoints.restore(trainer, i)
      times['restore'].append(time.perf_counter() - start)
      start = time.perf_counter()
      checkpointing.digests(state)
      times['digests'].append(time.perf_counter() - start)
    checkpoints.close()
  best = {k: min(v) for k, v in times.items()}
  size = checkpointing.state_bytes(state) / 2**20
  return (f'Checkpoint of {size:,.0f} MiB, best of {_ROUNDS}: save '
          f'{best["save"]:.2f} s, restore {best["restore"]:.2f} s, digests '
          f'{best["digests"]:.2f} s (each save and restore computes them once: '
          f'{100 * best["digests"] / best["save"]:.0f}% of a save, '
          f'{100 * best["digests"] / best["restore"]:.0f}% of a restore)')


def main(argv: list[str]) -> None:
  del argv
  print(report(flags.FLAGS.config))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'The network to measure.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
