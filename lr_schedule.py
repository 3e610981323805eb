"""The learning rate: base rate x (step decay) x (plateau scale).

The paper divided the learning rate by 10 whenever the validation error
stopped improving, three times in all. That is optax's reduce_on_plateau fed
the validation top-1 error after each evaluation; its state (best error,
evaluations without improvement, current scale) is part of the train state,
so it is checkpointed with everything else. The alternative 'step' schedule
divides at fixed epochs and leaves the plateau scale at 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax.contrib import ReduceLROnPlateauState


class LearningRate:
  """Learning rate as a function of the step and the plateau state."""

  def __init__(self, optimizer: ml_collections.ConfigDict,
               schedule: ml_collections.ConfigDict,
               steps_per_epoch: int | None = None):
    """`steps_per_epoch` places the step schedule's boundaries; None (for
    evaluation and benchmarks, which do not follow the schedule) leaves
    the rate at its base."""
    if schedule.name not in ('plateau', 'step'):
      raise ValueError(f"Unknown schedule {schedule.name!r}: use 'plateau' or 'step'.")
    self.name = schedule.name
    self.base = optimizer.learning_rate
    if self.name == 'step' and steps_per_epoch is not None:
      self._by_step = optax.piecewise_constant_schedule(
          self.base, {int(e * steps_per_epoch): schedule.factor
                      for e in schedule.boundaries})
    else:
      self._by_step = optax.constant_schedule(self.base)
    # min_scale caps the number of reductions at max_reductions.
    self._plateau = optax.contrib.reduce_on_plateau(
        factor=schedule.factor, patience=schedule.patience, rtol=0.0,
        atol=schedule.threshold,
        min_scale=schedule.factor ** schedule.max_reductions)

  def init(self) -> ReduceLROnPlateauState:
    return self._plateau.init(jnp.zeros((), jnp.float32))

  def __call__(self, step: jax.Array, plateau: ReduceLROnPlateauState) -> jax.Array:
    return self._by_step(step) * plateau.scale

  def after_eval(self, plateau: ReduceLROnPlateauState,
                 val_error: float) -> ReduceLROnPlateauState:
    """Feeds one validation error to the plateau logic (no-op for 'step')."""
    if self.name != 'plateau':
      return plateau
    _, plateau = self._plateau.update(
        updates={}, state=plateau, value=jnp.asarray(val_error, jnp.float32))
    return plateau
