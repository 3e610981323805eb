"""The files a run keeps in its workdir, and writes readers never see half-done.

  metrics.jsonl  every logged scalar, one JSON object per line. TensorBoard
                 event files cannot be edited, so a resumed run would show
                 the steps between its last checkpoint and the crash twice;
                 this log is cut back to the restored step on resume, so a
                 run killed and resumed leaves the same log as one that was
                 not.
  results.json   the latest validation results.
  checkpoints/   orbax's (checkpointing.py).

Only process 0 writes the first two.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any, Mapping

from clu.metric_writers import interface

METRICS = 'metrics.jsonl'
RESULTS = 'results.json'


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w') -> Iterator[IO]:
  """Opens a temporary file that replaces `path` once the block succeeds,
  so that readers see the old file or the new one, never a partial one."""
  tmp = f'{path}.tmp'
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_results(workdir: str, results: Mapping[str, Any]) -> None:
  with atomic_write(os.path.join(workdir, RESULTS)) as f:
    json.dump(results, f, indent=2, allow_nan=False)  # NaN is not JSON


class JsonlWriter(interface.MetricWriter):
  """Appends scalars as {"step": N, name: value, ...} lines, flushed at once.

  Only scalars are logged; images, texts and the rest go to TensorBoard alone.
  """

  def __init__(self, workdir: str, *, resume_step: int):
    self.path = os.path.join(workdir, METRICS)
    _truncate_after(self.path, resume_step)
    self._file = open(self.path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + '\n')
    # A killed run must not lose lines that precede its last checkpoint.
    self._file.flush()

  def write_summaries(self, step, values, metadata=None): pass
  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_hparams(self, hparams): pass

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The metric log's records, in order."""
  with open(os.path.join(workdir, METRICS)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
  """Drops records after `step`, and a last line a crash left half-written."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        break  # only the last line can be cut short
      if record['step'] > step:
        break
      kept.append(line if line.endswith('\n') else line + '\n')
  with atomic_write(path) as f:
    f.writelines(kept)
