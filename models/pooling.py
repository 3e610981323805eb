"""Max pooling over height and width whose gradient is routed by the offset
of each window's maximum, not by XLA's select-and-scatter.

XLA:CPU computes the gradient of a max pool (reduce_window) with
select-and-scatter, which on the paper's overlapping 3x3/2 pools ran 8-13
times slower than PyTorch's backward (tools/layer_times.py,
docs/performance.md). Here the forward pass also records, per output, the
offset within its window where the maximum sits (an int8, the first in row
order where several tie, as select-and-scatter takes). The backward pass
computes each input's gradient where it lies: an input at (s*i + p, s*j + q)
is offset (p + s*a, q + s*b) of the window (i - a, j - b), so each of the
stride^2 phases (p, q) sums a few windows' gradients, selected by their
offsets, and the phases interleave back into the input's grid in one pass.
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
  """(offset, start, limit) for each window offset in row order: the strided
  slice of the input at that offset."""
  lead = len(x_shape) - 3
  for offset in range(window * window):
    di, dj = divmod(offset, window)
    limit_h, limit_w = di + stride * (out_hw[0] - 1) + 1, dj + stride * (out_hw[1] - 1) + 1
    yield offset, (0,) * lead + (di, dj, 0), (*x_shape[:-3], limit_h, limit_w, x_shape[-1])


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
  for offset, start, limit in reversed(list(
      _window_offsets(x.shape, y.shape[-3:-1], window, stride))):
    argmax = jnp.where(lax.slice(x, start, limit, _strides(x, stride)) == y,
                       jnp.int8(offset), argmax)
  return y, (x.shape, argmax)


def _backward(window, stride, residuals, g):
  x_shape, argmax = residuals
  lead = g.ndim - 3
  height, width, channels = x_shape[-3:]
  rows, cols = -(-height // stride), -(-width // stride)
  back = -(-window // stride) - 1  # windows before an input's own that reach it

  def padded(a, fill):
    # (..., back + rows, back + cols, C): a at [back:, back:], `fill` elsewhere.
    return lax.pad(a, jnp.array(fill, a.dtype), [(0, 0, 0)] * lead + [
        (back, rows - a.shape[-3], 0), (back, cols - a.shape[-2], 0), (0, 0, 0)])

  def windows_back(a, b, t):
    # t of the window a rows and b columns before each input's own.
    return t[..., back - a:back - a + rows, back - b:back - b + cols, :]

  argmax, g = padded(argmax, -1), padded(g, 0)
  phases = []
  for p in range(stride):
    for q in range(stride):
      dx = jnp.zeros((*g.shape[:-3], rows, cols, channels), g.dtype)
      for a in range(back + 1):
        for b in range(back + 1):
          if p + stride * a < window and q + stride * b < window:
            offset = (p + stride * a) * window + q + stride * b
            dx = dx + jnp.where(windows_back(a, b, argmax) == offset,
                                windows_back(a, b, g), 0)
      phases.append(dx)
  # (..., rows, cols, p, q, C) -> (..., rows * stride, cols * stride, C).
  dx = jnp.stack(phases, -2).reshape(*g.shape[:-3], rows, cols, stride, stride, channels)
  dx = jnp.moveaxis(dx, -3, -4).reshape(*g.shape[:-3], rows * stride, cols * stride, channels)
  return (dx[..., :height, :width, :],)


max_pool.defvjp(_forward, _backward)
