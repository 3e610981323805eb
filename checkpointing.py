"""Orbax checkpoints of a run: save, resume, fall back, reshard, preemption.

A checkpoint is <workdir>/checkpoints/<step>/ with three orbax items:
  state   the TrainState (parameters, momentum, plateau schedule, step, dropout
          key), saved sharded: each process writes its own shards;
  config  the config it was trained with (JSON);
  meta    the latest validation results, a digest of every array of the
          state (JSON): a checkpoint whose arrays no longer match them is
          reported as corrupt and treated as unreadable; and what the run
          trained on (input_pipeline.Dataset.identity): resuming on other
          data is refused unless checkpoint.allow_other_data says so.
Orbax writes each checkpoint under a temporary name and renames it when
complete, so a crash mid-save never leaves a checkpoint that looks finished.
Restoring goes through the target shardings of the current mesh, so a state
saved on one mesh or device count resumes on another.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any, NoReturn, TypeVar

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from runtime import errors
from trainer import NonFiniteError, Trainer, TrainState


T = TypeVar('T')

CHECKPOINT_DIR = 'checkpoints'
# Unreadable checkpoints are moved here, out of orbax's sight, not deleted.
UNREADABLE_DIR = 'checkpoints_unreadable'
BEST_METRIC = 'val_top1_error'
_WAIT_REPORTED_AFTER = 10.0  # seconds without a batch before saying so

# Config keys that define the model, the data stream or the optimisation
# trajectory: resuming under a different value would silently train
# something else. Any other key (logging, evaluation and checkpoint
# intervals, the number of steps, the mesh) may change between runs.
_MUST_MATCH_SECTIONS = ('model', 'data', 'optimizer', 'schedule')
_MUST_MATCH_KEYS = ('seed', 'batch_size')
# Data keys that say where files are or how fast they are read, not what
# they hold: what they hold is the data's identity, checked on its own.
_MAY_CHANGE_DATA_KEYS = ('data.data_dir', 'data.manual_dir', 'data.prepared_dir',
                         'data.image_folder', 'data.imagenet_folder',
                         'data.prefetch')


def _best_metric(metrics: dict[str, float]) -> float:
  return metrics.get(BEST_METRIC, math.inf)


def state_bytes(state: Any) -> int:
  """The bytes a checkpoint of `state` holds (over all processes)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _existing(path: str) -> str:
  """`path`, or its nearest ancestor that exists."""
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def _disk_space(directory: str, needed: int) -> str:
  """How much a checkpoint needs and how much the disk under `directory` has."""
  path = _existing(directory)
  free = shutil.disk_usage(path).free
  full = 'the disk is full: ' if free < needed else ''
  return (f'{full}a checkpoint needs about {needed / 2**20:,.1f} MiB and '
          f'{free / 2**20:,.1f} MiB are free on the file system of {path}.')


def check_disk_space(directory: str, state: Any, copies: int) -> None:
  """Fails at start if not even one checkpoint fits; warns if `copies` do not."""
  needed = state_bytes(state)
  free = shutil.disk_usage(_existing(directory)).free
  if free < needed:
    raise CheckpointWriteError(
        f'No room for a checkpoint in {directory}: '
        f'{_disk_space(directory, needed)} Free disk space or pass another '
        '--workdir.')
  if free < copies * needed:
    logging.warning('%s kept checkpoints may not fit in %s: %s', copies,
                    directory, _disk_space(directory, needed))


def _as_uint32(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
  word = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, word).astype(jnp.uint32)


@jax.jit
def _leaf_digests(leaves: list[jax.Array]) -> list[jax.Array]:
  """A 32-bit digest of each array: a sum of its words, each mixed and
  weighted by an odd number, so any one changed word changes the sum."""
  digests = []
  for x in leaves:
    words = _as_uint32(x).ravel()
    mixed = words ^ (words >> 15)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * 2 + 1
    digests.append(jnp.sum(mixed * weights, dtype=jnp.uint32))
  return digests


def digests(tree: Any) -> dict[str, int]:
  """The digest of every array of `tree`, by its path."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  values = jax.device_get(_leaf_digests([leaf for _, leaf in leaves]))
  return {jax.tree_util.keystr(path): int(v)
          for (path, _), v in zip(leaves, values)}


@jax.jit
def _finite(leaves: list[jax.Array]) -> list[jax.Array]:
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def nonfinite_arrays(state: TrainState) -> list[str]:
  """The paths of the parameters, BatchNorm statistics and optimizer state
  that hold a NaN or an infinity (the plateau logic starts at infinity)."""
  tree = {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state}
  leaves = [(path, x) for path, x in jax.tree_util.tree_leaves_with_path(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  finite = jax.device_get(_finite([x for _, x in leaves]))
  return [jax.tree_util.keystr(path) for (path, _), ok in zip(leaves, finite, strict=True)
          if not ok]


class CorruptCheckpointError(errors.InvalidInput):
  """A checkpoint's arrays differ from what was saved."""


def _check_digests(tree: Any, saved: dict[str, int] | None, what: str) -> None:
  """Raises CorruptCheckpointError if `tree`'s arrays differ from `saved`
  (paths `tree` lacks are not checked; checkpoints without digests pass)."""
  if saved is None:
    logging.info('%s has no digests to check (saved by an older version).', what)
    return
  actual = digests(tree)
  bad = sorted(k for k in actual if k in saved and actual[k] != saved[k])
  if bad:
    raise CorruptCheckpointError(
        f'{what} is corrupt: {len(bad)} of its arrays differ from what was '
        f'saved ({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""}).')


class ConfigMismatchError(errors.InvalidInput):
  """The config differs from the checkpoint's in keys that must match."""


class DataMismatchError(ConfigMismatchError):
  """The data differ from those the checkpoint trained on."""


def compare_data(saved: dict[str, Any] | None, current: dict[str, Any],
                 allowed: bool, what: str) -> None:
  """Raises DataMismatchError naming what differs between the identity of
  the data `what` trained on and that of today's, unless `allowed`."""
  if saved is None:
    return  # saved by an older version
  differences = [f'{k}: {saved.get(k, "<absent>")!r} -> {current[k]!r}'
                 for k in current if saved.get(k) != current[k]]
  if not differences:
    return
  message = (f'The data differ from those {what} trained on:\n  ' +
             '\n  '.join(differences))
  if allowed:
    logging.warning('%s\nResuming all the same, as '
                    'checkpoint.allow_other_data says.', message)
    return
  raise DataMismatchError(
      message + '\nResume with the data it trained on, start a new --workdir '
      '(with --config.init_from=<this workdir> to keep the parameters), or pass '
      '--config.checkpoint.allow_other_data=True to go on with these data '
      'knowingly (the epochs, their order and the normalisation change).')


class CheckpointWriteError(errors.UserError, OSError):
  """The first checkpoint could not be written."""


@dataclasses.dataclass(frozen=True)
class Restored:
  state: TrainState
  step: int                   # also the training batches consumed
  results: dict[str, Any]     # the latest validation results, or {}
  progress: dict[str, Any] = dataclasses.field(default_factory=dict)  # save's


def _flat(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  # The JSON round trip makes tuples lists, as they come back from disk.
  tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return flax.traverse_util.flatten_dict(json.loads(json.dumps(tree)), sep='.')


def compare_configs(saved: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Raises ConfigMismatchError naming keys that change what is trained.

  Other differences are logged.
  """
  old, new = _flat(saved), _flat(config)
  missing = object()
  changed = sorted(k for k in old.keys() | new.keys()
                   if old.get(k, missing) != new.get(k, missing))
  describe = lambda k: f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
  fatal = [k for k in changed if k not in _MAY_CHANGE_DATA_KEYS and (
      k in _MUST_MATCH_KEYS or k.split('.')[0] in _MUST_MATCH_SECTIONS)]
  if fatal:
    raise ConfigMismatchError(
        'The config differs from the checkpoint\'s in keys that change the '
        'model, the data or the optimisation:\n  ' +
        '\n  '.join(map(describe, fatal)) +
        '\nResume with the checkpoint\'s values, or start a new --workdir '
        '(with --config.init_from=<this workdir> to keep the parameters).')
  if changed:
    logging.info('Config changes from the checkpoint\'s (allowed): %s',
                 '; '.join(map(describe, changed)))


# The open Checkpoints of this process, for finish_saves.
_OPEN: weakref.WeakSet[Checkpoints] = weakref.WeakSet()


def finish_saves() -> None:
  """Waits for every checkpoint still being written in the background, so
  that a run stopping on an error keeps the checkpoints it has begun."""
  for checkpoints in list(_OPEN):
    try:
      checkpoints.wait_until_finished()
    except Exception:  # noqa: BLE001  (the error that stops the run is reported)
      pass


def exit_with_error(message: str) -> NoReturn:
  """Ends the process with `message` as stderr's last lines, at column 0,
  and status 1, once the saves begun are finished.

  orbax's and tensorstore's threads may still print then (after a failed
  save, tracebacks of callbacks into closed event loops, a piece at a
  time), into the middle of those lines or after them: stderr is handed to
  /dev/null first, and the message written to a copy of it, after a
  newline that ends any line left unfinished.
  """
  finish_saves()
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  stderr = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  with os.fdopen(stderr, 'w') as f:
    f.write(f'\n{message}\n')
  os._exit(1)


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *,
               read_only: bool = False, dataset: dict[str, Any] | None = None):
    """`dataset`: the identity of the data being trained on, saved with each
    checkpoint and compared with the saved one's on restoring."""
    _OPEN.add(self)
    self.config = config
    self._dataset = dataset
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self._unreadable = os.path.abspath(os.path.join(workdir, UNREADABLE_DIR))
    c = config.checkpoint
    self._saved_once = False
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            read_only=read_only,
            create=not read_only,
            # Orbax's leftovers of saves a crash interrupted.
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=c.asynchronous,
            best_fn=_best_metric,
            best_mode='min',
            preservation_policy=checkpoint_managers.AnyPreservationPolicy([
                checkpoint_managers.LatestN(n=c.keep),
                checkpoint_managers.BestN(get_metric_fn=_best_metric,
                                          reverse=True, n=c.keep_best),
            ])))

  # --- saving -----------------------------------------------------------

  def save(self, state: TrainState, *, results: dict[str, Any],
           evaluated: bool, progress: dict[str, Any] | None = None) -> None:
    """Saves `state` at its step; in the background if configured so.

    `evaluated`: `results` are from an evaluation at this step, so this
    checkpoint competes for best. `progress`: the training loop's own
    bookkeeping to resume with (JSON), Restored.progress. A state with a NaN or an infinity is not
    saved (NonFiniteError).
    """
    step = int(state.step)
    if bad := nonfinite_arrays(state):
      raise NonFiniteError(
          f'The state at step {step} holds NaN or infinite values ('
          f'{", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""}): training '
          'diverged, and a diverged state is not saved as a checkpoint; those '
          f'before it in {self.directory} are kept. Train in a new --workdir '
          'with a lower --config.optimizer.learning_rate (--config.init_from='
          '<this workdir> starts from the last checkpoint\'s parameters).')
    meta = dict(results=results, digests=digests(state), dataset=self._dataset,
                progress=progress or {})
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              config=ocp.args.JsonSave(self.config.to_dict()),
              meta=ocp.args.JsonSave(meta)),
          # Saves between evaluations get no metric (they rank last for best,
          # so only `keep` retains them); None would make orbax warn each time.
          metrics={BEST_METRIC: results[BEST_METRIC]} if evaluated else {},
          force=True)
      if not self._saved_once:
        # Surface a full disk or an unwritable workdir now, not hours later.
        self._manager.wait_until_finished()
        self._manager.check_for_errors()
    except Exception as e:  # orbax and tensorstore raise many kinds
      self._shut_down()
      what = (f'the first checkpoint (step {step})' if not self._saved_once else
              f'checkpoint {step} (or the one before, written in the background)')
      raise CheckpointWriteError(
          f'Could not write {what} to {self.directory}: '
          f'{_disk_space(self.directory, state_bytes(state))}\n{e}\n'
          'Free disk space or pass a writable --workdir, then run the same '
          'command to resume from the last checkpoint.') from e
    self._saved_once = True

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def _shut_down(self) -> None:
    """Stops orbax's background work after a failed save, so that its
    threads do not print over the error at exit."""
    try:
      self._manager.close()
    except Exception:  # noqa: BLE001  (the save's own error is reported)
      pass

  def close(self) -> None:
    self._manager.close()

  # --- restoring --------------------------------------------------------

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The step with the lowest validation error, None if none was evaluated."""
    step = self._manager.best_step()
    if step is None or _best_metric(self._manager.metrics(step) or {}) == math.inf:
      return None
    return step

  def restore_latest(self, trainer: Trainer) -> Restored | None:
    """The newest readable checkpoint, or None if there is none.

    A checkpoint that cannot be read is reported and the one before it is
    tried; once one is read, the unreadable newer ones are moved to
    checkpoints_unreadable/ (so the run can save those steps again). If none
    can be read, nothing is moved and the run stops: the cause is then more
    likely the environment than the files.
    """
    steps, unreadable = self.steps(), []
    for step in reversed(steps):
      try:
        restored = self.restore(trainer, step)
      except ConfigMismatchError:
        raise
      except Exception as e:  # orbax and tensorstore raise many kinds
        logging.warning(
            'Checkpoint %d in %s cannot be read (%s: %s); falling back to the '
            'previous checkpoint.', step, self.directory, type(e).__name__, e)
        unreadable.append(step)
        continue
      for bad in unreadable:
        self._set_aside(bad)
      return restored
    if steps:
      raise RuntimeError(
          f'None of the checkpoints {steps} in {self.directory} can be read '
          '(the warnings above say why). Fix the cause and rerun, or start a '
          'new --workdir.')
    return None

  def restore(self, trainer: Trainer, step: int) -> Restored:
    """Checkpoint `step`, resharded onto `trainer`'s mesh."""
    saved = self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    compare_configs(saved['config'], self.config)
    if self._dataset is not None:
      compare_data(saved['meta'].get('dataset'), self._dataset,
                   self.config.checkpoint.allow_other_data,
                   f'checkpoint {step} in {self.directory}')
    state = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(trainer.abstract_state())))['state']
    _check_digests(state, saved['meta'].get('digests'),
                   f'Checkpoint {step} in {self.directory}')
    logging.info('Restored checkpoint %d from %s.', step, self.directory)
    return Restored(state=state, step=step, results=saved['meta']['results'],
                    progress=saved['meta'].get('progress') or {})

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      os.makedirs(self._unreadable, exist_ok=True)
      target = base = os.path.join(self._unreadable, str(step))
      copies = 0
      while os.path.exists(target):  # the same step failed before
        copies += 1
        target = f'{base}.{copies}'
      shutil.move(os.path.join(self.directory, str(step)), target)
      logging.warning('Moved unreadable checkpoint %d to %s.', step, target)
    multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
    self._manager.reload()

  # --- preemption -------------------------------------------------------

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption service (multi-process runs) asks to stop."""
    return self._manager.reached_preemption(step)


def load_params(path: str, trainer: Trainer,
                state: TrainState) -> TrainState:
  """`state` with the parameters (and BatchNorm statistics) of checkpoint `path`.

  `path` is a workdir (its latest checkpoint), its checkpoints/ directory, or
  one step's directory. The optimizer state, schedule and step stay `state`'s.
  """
  path, step = os.path.abspath(path), None
  if os.path.basename(path).isdigit():
    path, step = os.path.dirname(path), int(os.path.basename(path))
  elif os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    path = os.path.join(path, CHECKPOINT_DIR)
  abstract = trainer.abstract_state()
  target = {'params': abstract.params, 'batch_stats': abstract.batch_stats}
  with ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise errors.NotFound(
          f'--config.init_from={path} holds no checkpoint; pass a workdir of a '
          'run that saved one, or its checkpoints/<step> directory.')
    try:
      loaded = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True)))['state']
    except ValueError as e:
      raise errors.InvalidInput(
          f'The parameters of checkpoint {step} in {path} do not fit this '
          f'config\'s model: {e}\n--config.init_from needs the same model '
          'config (layers, widths, classes, towers).') from e
    saved = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'].get('digests')
  state = state.replace(params=loaded['params'], batch_stats=loaded['batch_stats'])
  if saved is not None:  # only the parameters were taken
    saved = {k: v for k, v in saved.items()
             if k.startswith(('.params', '.batch_stats'))}
  _check_digests(state, saved, f'Checkpoint {step} in {path}')
  logging.info('Initialised parameters from checkpoint %d in %s.', step, path)
  return state


class Preemption:
  """Within `with`, asks the loop to stop after SIGTERM (TPU/SLURM preemption).

  A single process turns SIGTERM into a flag checked at each step boundary.
  With several processes JAX's preemption service catches SIGTERM and makes
  all processes agree on the step to stop at, which a local flag could not.
  """

  def __init__(self, checkpoints: Checkpoints):
    self._checkpoints = checkpoints
    self._sigterm = False
    self._previous = None

  def __enter__(self) -> Preemption:
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      # Stopping for a SIGTERM, the run has saved: a repeated one (srun and the
      # scheduler both pass it on) must not kill it on its way out.
      signal.signal(signal.SIGTERM, signal.SIG_IGN if self._sigterm else self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after this step.')
    self._sigterm = True

  def requested(self, step: int) -> bool:
    """Call at every step on every process (the multi-process check syncs)."""
    return self._checkpoints.reached_preemption(step) or self._sigterm

  def next_or_none(self, items: Iterator[T]) -> T | None:
    """`next(items)`, or None if SIGTERM arrives while it waits (one process).

    The wait happens on a daemon thread, so that the signal handler runs
    and the run can stop even while the input pipeline is stuck. Several
    processes stop only at a step they agree on: they wait as usual.
    """
    if jax.process_count() > 1:
      return next(items)
    outcome = concurrent.futures.Future()

    def fetch():
      try:
        outcome.set_result(next(items))
      except BaseException as e:  # noqa: BLE001  (re-raised below)
        outcome.set_exception(e)

    threading.Thread(target=fetch, daemon=True).start()
    waited, report_at = 0.0, _WAIT_REPORTED_AFTER
    while not self._sigterm:
      try:
        return outcome.result(timeout=0.1)
      except concurrent.futures.TimeoutError:
        waited += 0.1
      if waited >= report_at:  # after 10 s, 30 s, 70 s...
        logging.warning('Waited %.0f s for the input pipeline; SIGTERM stops '
                        'the run with a checkpoint.', waited)
        report_at = 2 * report_at + _WAIT_REPORTED_AFTER
    return None
