"""Max pooling over height and width whose gradient is routed by the offset
of each window's maximum, not by XLA's select-and-scatter.

XLA:CPU computes the gradient of a max pool (reduce_window) with
select-and-scatter, which on the paper's overlapping 3x3/2 pools ran 8-13
times slower than PyTorch's backward (tools/layer_times.py,
docs/performance.md). Here the forward pass also records, per output, the
offset within its window where the maximum sits (an int8, the first in row
order where several tie, as select-and-scatter takes). The backward pass
visits the offsets in turn: the outputs whose maximum sits there give their
gradient to the input at that offset, which lax.pad (interior padding
stride - 1) spreads back onto the input's grid.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _strides(x: jax.Array, stride: int) -> tuple[int, ...]:
  return (1,) * (x.ndim - 3) + (stride, stride, 1)


def _window_offsets(x_shape: tuple[int, ...], out_hw: tuple[int, int], window: int,
                    stride: int):
  """(offset, start, limit, pads) for each window offset in row order: the
  strided slice of the input at that offset, and the padding that puts an
  output-shaped array back at the input's positions of that offset."""
  lead = len(x_shape) - 3
  for offset in range(window * window):
    di, dj = divmod(offset, window)
    limit_h, limit_w = di + stride * (out_hw[0] - 1) + 1, dj + stride * (out_hw[1] - 1) + 1
    yield (offset, (0,) * lead + (di, dj, 0), (*x_shape[:-3], limit_h, limit_w, x_shape[-1]),
           [(0, 0, 0)] * lead + [(di, x_shape[-3] - limit_h, stride - 1),
                                 (dj, x_shape[-2] - limit_w, stride - 1), (0, 0, 0)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """(..., H, W, C) -> (..., (H - window) // stride + 1, ..., C), VALID windows."""
  if window * window > 127:  # the argmax's offsets are int8
    raise ValueError(f'Max pooling windows of up to 11x11 are supported, not {window}x{window}.')
  return lax.reduce_window(x, -jnp.inf, lax.max, (1,) * (x.ndim - 3) + (window, window, 1),
                           _strides(x, stride), 'VALID')


def _forward(x, window, stride):
  y = max_pool(x, window, stride)
  # Offsets visited last to first, so the first that holds the maximum wins;
  # none does (window * window) where the maximum is NaN: no gradient.
  argmax = jnp.full(y.shape, window * window, jnp.int8)
  for offset, start, limit, _ in reversed(list(
      _window_offsets(x.shape, y.shape[-3:-1], window, stride))):
    argmax = jnp.where(lax.slice(x, start, limit, _strides(x, stride)) == y,
                       jnp.int8(offset), argmax)
  return y, (x.shape, argmax)


def _backward(window, stride, residuals, g):
  x_shape, argmax = residuals
  dx = jnp.zeros(x_shape, g.dtype)
  for offset, _, _, pads in _window_offsets(x_shape, g.shape[-3:-1], window, stride):
    dx = dx + lax.pad(jnp.where(argmax == offset, g, 0).astype(g.dtype),
                      jnp.zeros((), g.dtype), pads)
  return (dx,)


max_pool.defvjp(_forward, _backward)
