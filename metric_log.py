"""metrics.jsonl: the run's scalar metrics, one JSON object per line.

TensorBoard event files cannot be edited, so a resumed run would show the
steps between its last checkpoint and the crash twice. This log is cut back to
the restored step on resume, so a run that was killed and resumed leaves the
same log as one that was not. Only process 0 writes it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from clu.metric_writers import interface

FILENAME = 'metrics.jsonl'


class JsonlWriter(interface.MetricWriter):
  """Appends scalars as {"step": N, name: value, ...} lines, flushed at once.

  Only scalars are logged; images, texts and the rest go to TensorBoard alone.
  """

  def __init__(self, workdir: str, *, resume_step: int):
    self.path = os.path.join(workdir, FILENAME)
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


def read(workdir: str) -> list[dict[str, float]]:
  """The log's records, in order."""
  with open(os.path.join(workdir, FILENAME)) as f:
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
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)
