"""The files a run keeps in its workdir, and writes readers never see half-done.

  metrics.jsonl  every logged scalar, one JSON object per line. TensorBoard
                 event files cannot be edited, so a resumed run would show
                 the steps between its last checkpoint and the crash twice;
                 this log is cut back to the restored step on resume, so a
                 run killed and resumed leaves the same log as one that was
                 not.
  results.json   the latest validation results.
  config.json    the config the run trains with.
  lock           who trains here now: one run at a time (WorkdirLock).
  checkpoints/   orbax's (checkpointing.py).

Only process 0 writes these files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from typing import IO, Any, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from clu.metric_writers import interface
from jax.experimental import multihost_utils

from runtime import errors

METRICS = 'metrics.jsonl'
RESULTS = 'results.json'
# In results.json at a run's final step only (train.py): a finished run.
FINAL_KEY = 'val_top1_error_10crop'
CONFIG = 'config.json'
LOCK = 'lock'


# The errors of a write that found no room: a full disk, a quota, a file size limit.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
  """A run's file could not be written for want of room."""


@contextlib.contextmanager
def _naming_a_full_disk(path: str) -> Iterator[None]:
  """Turns a write's want of room into a DiskFullError that says what was
  being written, how much room is left and what to do."""
  try:
    yield
  except OSError as e:
    if e.errno not in _NO_ROOM:
      raise
    directory = os.path.dirname(os.path.abspath(path))
    free = shutil.disk_usage(directory).free
    raise DiskFullError(
        e.errno, f'Could not write {path}: {os.strerror(e.errno)}; '
        f'{free / 2**20:,.1f} MiB are free on the file system of {directory}. '
        'Free disk space, then run the same command to resume from the last '
        'checkpoint.') from e


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w') -> Iterator[IO]:
  """Opens a temporary file that replaces `path` once the block succeeds,
  so that readers see the old file or the new one, never a partial one."""
  tmp = f'{path}.tmp'
  try:
    with _naming_a_full_disk(path), open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.remove(tmp)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  with atomic_write(os.path.join(workdir, CONFIG)) as f:
    f.write(config.to_json_best_effort(indent=2) + '\n')


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
    with _naming_a_full_disk(self.path):
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


class WorkdirLockedError(errors.UserError, RuntimeError):
  """Another run trains in the workdir."""
  traceback_in_workdir = False  # that run's workdir: nothing written there


def _owner_text() -> str:
  return json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                     'since': time.strftime('%Y-%m-%d %H:%M:%S')})


def _describe(owner: str) -> str:
  try:
    o = json.loads(owner)
    return f"process {o['pid']} on {o['host']} (since {o['since']})"
  except (ValueError, KeyError, TypeError):
    return 'an unknown process'


def _alive_here(owner: str) -> bool | None:
  """Whether the owner, if it ran on this host, still runs; None elsewhere."""
  try:
    o = json.loads(owner)
    if o['host'] != socket.gethostname():
      return None
    os.kill(o['pid'], 0)
  except (ValueError, KeyError, TypeError):
    return None
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists, under another user
  return True


class WorkdirLock:
  """One run at a time in a workdir: process 0 holds WORKDIR/lock, an flock
  that the kernel releases when the process ends, however it ends.

  The file names the holder (host, pid, start). A run that finds it held
  refuses to start; one that finds it written but not held (its owner
  crashed) says so and takes it over. Where the file system has no locks,
  a holder on this host is checked by its pid, and one on another host is
  trusted to be alive until its file is deleted. The processes of one run
  share process 0's lock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    error = ''
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirLockedError as e:
        error = str(e)
    if jax.process_count() > 1:
      refused = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
      if refused and not error:
        error = f'Process 0 could not lock {self.path}; see its log.'
    if error:
      raise WorkdirLockedError(error)
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # released cleanly: no owner to report
      os.close(self._fd)  # also releases the flock
      self._fd = None

  def _acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    owner = os.read(fd, 4096).decode(errors='replace').strip()
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirLockedError(self._refusal(owner)) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
        raise
      if owner and _alive_here(owner) is not False:  # no locks: trust the file
        os.close(fd)
        raise WorkdirLockedError(self._refusal(owner)) from None
    if owner:
      logging.warning('The previous run in %s, %s, ended without releasing '
                      'its lock (it was killed or crashed); this run takes over.',
                      os.path.dirname(self.path), _describe(owner))
    os.ftruncate(fd, 0)
    os.pwrite(fd, _owner_text().encode(), 0)
    self._fd = fd

  def _refusal(self, owner: str) -> str:
    return (f'{os.path.dirname(self.path)} is in use by the run of '
            f'{_describe(owner)}: two runs in one workdir would overwrite '
            'each other\'s checkpoints and logs. Wait for it to end or stop '
            'it, or pass another --workdir. (If that process is gone and '
            f'this file system has no locks, delete {self.path}.)')
