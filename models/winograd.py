"""Winograd's minimal filtering algorithm for 3x3, stride-1 convolutions.

F(m x m, r x r) computes each m x m tile of the output from an (m + r - 1)^2
tile of the input with (m + r - 1)^2 multiplications instead of m^2 r^2
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016). The input tiles and the kernels are transformed by small
constant matrices, multiplied channel against channel as (m + r - 1)^2
independent matrix products, and transformed back. XLA:CPU runs those
products at about its convolutions' rate, so conv3-conv5 take fewer
multiplications and less time; cuDNN on a GPU chooses such algorithms itself
(docs/performance.md).

Everything here is plain jnp, so the gradients are JAX's own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Interpolation points of the Toom-Cook construction, in the order they are
# taken; small ones keep the transforms' float32 rounding small.
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)

# Output tiles of TILE x TILE: F(4x4, 3x3) takes 36 multiplications where a
# convolution takes 144 (docs/performance.md has the tiles measured).
TILE = 4
ALGORITHMS = ('auto', 'direct', 'winograd')
# 'auto' leaves smaller maps to XLA: on 3x3 maps (the demo's conv3-conv5) the
# transforms cost as much as the products save (docs/performance.md).
MIN_AUTO_SIDE = 2 * TILE


def applies(algorithm: str, kernel_size: int, stride: int, dtype: jnp.dtype,
            side: int) -> bool:
  """Whether a convolution with output maps `side` pixels across runs as
  Winograd's: with 'winograd' every 3x3, stride-1 one; with 'auto' those in
  float32 on a CPU, where XLA's own convolutions are slower (on a GPU cuDNN
  picks its algorithm itself), on maps of at least MIN_AUTO_SIDE."""
  if algorithm not in ALGORITHMS:
    raise ValueError(f'Unknown conv_algorithm {algorithm!r}: use one of {ALGORITHMS}.')
  if algorithm == 'direct' or kernel_size != 3 or stride != 1:
    return False
  return algorithm == 'winograd' or (
      jax.default_backend() == 'cpu' and jnp.dtype(dtype) == jnp.float32
      and side >= MIN_AUTO_SIDE)


@functools.cache
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(A^T, G, B^T) of F(m, r): y = A^T [(G g) * (B^T d)] is the valid
  correlation of a length m + r - 1 input d with a length r kernel g."""
  n = m + r - 1
  if not 2 <= n <= len(POINTS) + 1:
    raise ValueError(f'F({m}, {r}) needs {n - 1} points; POINTS has {len(POINTS)}.')
  a = np.array(POINTS[:n - 1])
  # Evaluate at the points and at infinity (the highest coefficient).
  at = np.zeros((m, n))
  at[:, :-1] = a[None, :] ** np.arange(m)[:, None]
  at[-1, -1] = 1
  g = np.zeros((n, r))
  for j in range(n - 1):
    g[j] = a[j] ** np.arange(r) / np.prod([a[j] - a[k] for k in range(n - 1) if k != j])
  g[-1, -1] = 1
  # B^T is what makes the product the correlation: for each input position l,
  # sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k] for every i, k.
  system = np.einsum('ij,jk->ikj', at, g).reshape(m * r, n)
  target = np.zeros((m * r, n))
  for i in range(m):
    for k in range(r):
      target[i * r + k, i + k] = 1
  bt = np.linalg.lstsq(system, target, rcond=None)[0]
  bt[np.abs(bt) < 1e-12] = 0
  return at, g, bt


def _combine(coefficients: np.ndarray, terms: Sequence[jax.Array]) -> jax.Array:
  """sum_k coefficients[k] * terms[k], skipping zeros: XLA fuses it into one pass."""
  total = None
  for c, term in zip(coefficients, terms):
    if c == 0:
      continue
    term = term if c == 1 else -term if c == -1 else term * float(c)
    total = term if total is None else total + term
  return total


def _along(x: jax.Array, matrix: np.ndarray, axis: int, stride: int, count: int) -> jax.Array:
  """matrix applied to x's windows along `axis`, as a new leading axis: row i
  of the result is sum_k matrix[i, k] * x[k::stride][:count] along `axis`."""
  terms = [lax.slice_in_dim(x, k, k + stride * (count - 1) + 1, stride, axis)
           for k in range(matrix.shape[1])]
  return jnp.stack([_combine(row, terms) for row in matrix])


def conv(x: jax.Array, kernel: jax.Array, padding: int, tile: int = TILE) -> jax.Array:
  """The stride-1 convolution of NHWC `x` with an HWIO `kernel`, zero
  `padding` on every side, computed by F(tile x tile, r x r)."""
  r = kernel.shape[0]
  if kernel.shape[1] != r:
    raise ValueError(f'Winograd convolution needs a square kernel, not {kernel.shape[:2]}.')
  at, g, bt = matrices(tile, r)
  n = tile + r - 1
  batch, height, width, channels = x.shape
  out_h, out_w = height + 2 * padding - r + 1, width + 2 * padding - r + 1
  rows, cols = -(-out_h // tile), -(-out_w // tile)
  x = jnp.pad(x, ((0, 0), (padding, rows * tile + r - 1 - height - padding),
                  (padding, cols * tile + r - 1 - width - padding), (0, 0)))
  # Input tiles B^T d B: (n, n, N, rows, cols, C), n^2 matrices of C columns.
  v = _along(_along(x, bt, 1, tile, rows), bt, 3, tile, cols).swapaxes(0, 1)
  # Kernels G g G^T: (n, n, C, O).
  u = _along(_along(kernel, g, 0, 1, 1)[:, 0], g, 1, 1, 1)[:, :, 0].swapaxes(0, 1)
  m = lax.dot_general(v.reshape(n * n, -1, channels), u.reshape(n * n, channels, -1),
                      (((2,), (1,)), ((0,), (0,))))
  m = m.reshape(n, n, batch, rows, cols, -1)
  # Output tiles A^T m A: (tile, tile, N, rows, cols, O) -> NHWC.
  y = _along(_along(m, at, 0, 1, 1)[:, 0], at, 1, 1, 1)[:, :, 0].swapaxes(0, 1)
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(batch, rows * tile, cols * tile, -1)
  return y[:, :out_h, :out_w]
