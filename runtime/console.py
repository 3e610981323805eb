"""What training prints: a progress line per report (at most one every
few seconds), an ETA over the run so far, the evaluations' errors, and a
line for each start-up phase that is slow.

The full scalars go to TensorBoard and metrics.jsonl (train.py's writers);
the console gets what a person reads at a glance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping

from absl import logging

# The 10-crop test does ten times a centre-crop evaluation's work.
TEN_CROP_COST = 10


def duration(seconds: float) -> str:
  """h:mm:ss, rounded to the second."""
  s = max(0, round(seconds))
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def evaluations_after(step: int, num_steps: int, eval_every: int) -> int:
  """Centre-crop evaluations still to come after `step`: every `eval_every`
  steps, and at the last step."""
  count = num_steps // eval_every - step // eval_every
  return count + (num_steps % eval_every != 0 and step < num_steps)


@dataclasses.dataclass
class Eta:
  """Time left: the training steps at this session's mean step time since
  `start` (the end of step `first_step`, after compilation), and the
  evaluations to come (the final 10-crop test as TEN_CROP_COST of them) at
  the mean time of those after the first, which compiles: counting that one
  21 times over doubled the demo's early ETA."""
  num_steps: int
  eval_every: int
  first_step: int
  start: float
  eval_seconds: float = 0.0
  evals: int = 0
  first_eval: float = 0.0

  def add_evaluation(self, seconds: float) -> None:
    if not self.evals:
      self.first_eval = seconds
    self.eval_seconds += seconds
    self.evals += 1

  def _per_evaluation(self) -> float:
    if self.evals < 2:
      return 0.0
    return (self.eval_seconds - self.first_eval) / (self.evals - 1)

  def seconds_left(self, step: int, now: float) -> float | None:
    """None until a step after the first has been timed."""
    steps = step - self.first_step
    if steps <= 0:
      return None
    per_step = max(0.0, now - self.start - self.eval_seconds) / steps
    evals = evaluations_after(step, self.num_steps, self.eval_every)
    return ((self.num_steps - step) * per_step +
            (evals + TEN_CROP_COST * (step < self.num_steps)) * self._per_evaluation())


@dataclasses.dataclass
class Progress:
  """The console's progress lines: one per report, at most one every
  `every_secs` (0: every report); the first and the last always."""
  num_steps: int
  steps_per_epoch: int
  every_secs: float
  last: float | None = None

  def due(self, step: int, now: float) -> bool:
    return (self.last is None or step == self.num_steps or
            now - self.last >= self.every_secs)

  def line(self, step: int, now: float, scalars: Mapping[str, float],
           eta: Eta | None) -> str:
    self.last = now
    left = eta.seconds_left(step, now) if eta else None
    return (f'step {step}/{self.num_steps} ({100 * step / self.num_steps:.1f}%), '
            f'epoch {step / self.steps_per_epoch:.2f}: loss '
            f'{scalars["train_loss"]:.4f}, {scalars["images_per_sec"]:.0f} img/s, '
            f'data wait {100 * scalars["data_wait_fraction"]:.0f}%, ETA '
            f'{"?" if left is None else duration(left)}')


def evaluation(step: int, epoch: float, val: Mapping[str, float],
               seconds: float) -> str:
  """The console's line for a centre-crop evaluation."""
  return (f'Validation at step {step} (epoch {epoch:.2f}): top-1 error '
          f'{val["top1_error"]:.4f}, top-5 error {val["top5_error"]:.4f}, loss '
          f'{val["loss"]:.4f} ({seconds:.1f} s)')


def _say(what: str) -> None:
  logging.info('%s...', what)


@contextlib.contextmanager
def phase(what: str, after_secs: float = 3.0) -> Iterator[None]:
  """Logs 'what...' once if the block still runs after `after_secs`: a
  line for a slow start-up phase, none for a quick one."""
  timer = threading.Timer(after_secs, _say, (what,))
  timer.daemon = True
  timer.start()
  try:
    yield
  finally:
    timer.cancel()
