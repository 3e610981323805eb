"""config.profile_steps: a JAX profiler trace of chosen train steps, in the workdir.

The trace goes to <workdir>/profile: TensorBoard's profile plugin reads it
(`tensorboard --logdir <workdir>/profile`), and Perfetto
(https://ui.perfetto.dev) opens its perfetto_trace.json.gz. Each traced step
is a 'train' step annotation from the start of one loop iteration to the
next: waiting for its batch, the step, and any logging, evaluation or
checkpointing after it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
from absl import logging

from runtime import errors


class StepTrace:
  """Traces steps first..first+count-1 of `steps` = (first, count); () none."""

  def __init__(self, workdir: str, steps: Sequence[int], first_step: int):
    steps = tuple(steps)
    if steps and (len(steps) != 2 or min(steps) < 0 or steps[1] < 1):
      raise errors.InvalidInput(
          f'profile_steps={steps}: give (first step, number of steps), e.g. '
          '--config.profile_steps=10,5, or () to trace none.')
    self.first, self.count = steps or (0, 0)
    self.directory = os.path.join(workdir, 'profile')
    self._annotation = None
    self._active = False
    if self.count and self.first + self.count <= first_step:
      logging.warning('profile_steps=%s: the run starts at step %d, after them; '
                      'nothing is traced.', steps, first_step)

  def before_step(self, step: int, state: Any) -> None:
    """Called at the top of each loop iteration, before `step` takes its batch."""
    self._end_annotation()
    if self._active and step >= self.first + self.count:
      self.stop(state)
    elif not self._active and self.first <= step < self.first + self.count:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self._active = True
    if self._active:
      self._annotation = jax.profiler.StepTraceAnnotation('train', step_num=step)
      self._annotation.__enter__()

  def stop(self, state: Any) -> None:
    """Ends the trace, once the steps traced so far have finished; the loop
    calls it after its last step too."""
    self._end_annotation()
    if self._active:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._active = False
      logging.info('Wrote the profile of steps %d..%d to %s.', self.first,
                   self.first + self.count - 1, self.directory)

  def _end_annotation(self) -> None:
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None
