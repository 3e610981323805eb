"""Max pooling over height and width whose gradient is a sum of padded
copies, not XLA's select-and-scatter.

XLA:CPU computes the gradient of a max pool (reduce_window) with
select-and-scatter, which on the paper's overlapping 3x3/2 pools ran 8-13
times slower than PyTorch's backward (tools/layer_times.py,
docs/performance.md). Here the backward visits the window's offsets in
order: at each, the outputs whose maximum sits there and was not found at
an earlier offset take the gradient, which lax.pad (interior padding
stride - 1) spreads back onto the input. The first maximum of a window
wins, as in XLA's select-and-scatter, so the gradient is the same.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _strides(x: jax.Array, stride: int) -> tuple[int, ...]:
  return (1,) * (x.ndim - 3) + (stride, stride, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """(..., H, W, C) -> (..., (H - window) // stride + 1, ..., C), VALID windows."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1,) * (x.ndim - 3) + (window, window, 1),
                           _strides(x, stride), 'VALID')


def _forward(x, window, stride):
  y = max_pool(x, window, stride)
  return y, (x, y)


def _backward(window, stride, residuals, g):
  x, y = residuals
  out_h, out_w = y.shape[-3:-1]
  lead = x.ndim - 3
  taken = jnp.zeros(y.shape, bool)
  dx = jnp.zeros(x.shape, g.dtype)
  for di in range(window):
    for dj in range(window):
      start = (0,) * lead + (di, dj, 0)
      limit = (*x.shape[:lead], di + stride * (out_h - 1) + 1,
               dj + stride * (out_w - 1) + 1, x.shape[-1])
      hit = (lax.slice(x, start, limit, _strides(x, stride)) == y) & ~taken
      taken = taken | hit
      # Output (i, j) lands on input (di + stride i, dj + stride j).
      pads = [(0, 0, 0)] * lead + [
          (di, x.shape[-3] - limit[-3], stride - 1),
          (dj, x.shape[-2] - limit[-2], stride - 1), (0, 0, 0)]
      dx = dx + lax.pad(jnp.where(hit, g, 0).astype(g.dtype), jnp.zeros((), g.dtype), pads)
  return (dx,)


max_pool.defvjp(_forward, _backward)
