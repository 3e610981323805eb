"""How far the host may run ahead of the devices.

JAX dispatches a step and returns at once, so a loop of steps can queue many
computations per device. XLA:CPU deadlocks when 32 or more computations with
collectives are queued on its simulated devices (its per-device limit on
computations in flight), and aborts the process once the rendezvous times
out. Waiting for the step two back keeps a device busy while the host makes
the next batch, on any backend, and the queue far below that limit.
"""

from __future__ import annotations

import collections
from typing import Any

import jax

STEPS_AHEAD = 2


class Window:
  """Outputs of the last `steps_ahead` steps; adding one more waits for the
  oldest to be computed."""

  def __init__(self, steps_ahead: int = STEPS_AHEAD):
    if steps_ahead < 1:
      raise ValueError(f'steps_ahead must be at least 1, not {steps_ahead}.')
    self._outputs: collections.deque[Any] = collections.deque()
    self._steps_ahead = steps_ahead

  def add(self, output: Any) -> None:
    """Records a step's output (any pytree of arrays)."""
    self._outputs.append(output)
    while len(self._outputs) > self._steps_ahead:
      jax.block_until_ready(self._outputs.popleft())
