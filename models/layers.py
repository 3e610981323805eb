"""The parts AlexNet is built from: tower convolutions, LRN, pooling.

Activations inside the convolutional stack are tower-major arrays of shape
(towers, batch, height, width, channels_per_tower). Keeping the tower as an
array axis lets a mesh place each tower on its own 'model' shard, while every
tower is still computed with plain convolutions.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from models import pooling, winograd

Initializer = Callable[..., jax.Array]

# Logical axis names of the tower-major activations.
TOWER_ACTIVATION_AXES = ('tower', 'batch', 'height', 'width', 'channels')
# Every logical axis name the model uses; rule tables may map only these.
LOGICAL_AXES = frozenset(TOWER_ACTIVATION_AXES) | {
    'conv_height', 'conv_width', 'conv_in', 'conv_out',   # tower kernels
    'fc_batch', 'fc_in', 'fc_out', 'classes'}             # fully connected


def _mesh_axis(logical: str) -> str | tuple[str, ...] | None:
  """The mesh axis (or axes) the current rules give a logical axis."""
  return nn.logical_to_mesh_axes((logical,))[0]


def _sharded_towers(fn, x, kernel, bias, mix_towers, per_device=False):
  """Runs `fn` per local tower with each tower on its own 'tower' shard.

  Without this, XLA's partitioner would treat indexing the sharded tower
  axis as a reason to move data between shards. Inside shard_map each
  device loops over just the towers it holds, so conv2, conv4 and conv5
  need no communication at all; mixing layers get their input whole.
  `per_device` runs `fn` on each device's own batch even with the towers
  whole, so that its kernel gradient is summed over devices as the kernel
  (Winograd's, in its own domain, is four times the kernel's size).
  """
  tower, batch = _mesh_axis('tower'), _mesh_axis('batch')
  mesh = jax.sharding.get_abstract_mesh()
  shards = 1 if tower is None or mesh.empty else math.prod(
      mesh.shape[a] for a in ((tower,) if isinstance(tower, str) else tower))
  if shards == 1 and (mesh.empty or not per_device):
    return fn(x, kernel, bias)
  if kernel.shape[0] % shards:
    raise ValueError(f'{kernel.shape[0]} towers do not split over the '
                     f'{shards} devices of mesh axis {tower!r}; use a mesh '
                     'with one tower a shard (e.g. --config.mesh.model=2) or 1.')
  P = jax.sharding.PartitionSpec

  def body(x, kernel, bias):
    if per_device and batch is not None:
      # Each device its own copy from here on: the gradient's all-reduce
      # comes back to this point, the kernel, not to where it meets the batch.
      kernel = lax.pcast(kernel, batch, to='varying')
    return fn(x, kernel, bias)

  return jax.shard_map(
      body, in_specs=(P(None if mix_towers else tower, batch), P(tower), P(tower)),
      out_specs=P(tower, batch))(x, kernel, bias)


def merge_towers(x: jax.Array) -> jax.Array:
  """(towers, N, H, W, C) -> (1, N, H, W, towers * C): one input seen by all.

  A transpose and reshape rather than slicing out each tower: on a mesh that
  splits the towers this becomes a single all-gather.
  """
  return jnp.moveaxis(x, 0, -2).reshape(*x.shape[1:-1], -1)[None]


class TowerConv(nn.Module):
  """A convolution split into towers, as the paper split it over two GPUs.

  The kernel has a leading tower axis. Output tower t sees input tower t only,
  or, with `mix_towers`, the maps of all input towers (conv1 on the image,
  conv3 in the paper). Towers are separate plain convolutions, never
  `feature_group_count`: XLA's CPU backward pass for grouped convolutions is
  many times slower than the same work as plain convolutions
  (docs/performance.md).
  """
  towers: int
  features: int                  # summed over towers
  kernel_size: int
  stride: int = 1
  padding: int = 0
  mix_towers: bool = False
  algorithm: str = 'auto'        # models/winograd.py: ALGORITHMS
  kernel_init: Initializer = nn.initializers.normal(0.01)
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.features % self.towers:
      raise ValueError(f'{self.name}: {self.features} kernels do not split '
                       f'into {self.towers} towers.')
    if self.mix_towers:
      x = merge_towers(x)
    elif x.shape[0] != self.towers:
      raise ValueError(f'{self.name}: input has {x.shape[0]} towers, '
                       f'layer has {self.towers}.')
    k = self.kernel_size
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(
            self.kernel_init,
            ('tower', 'conv_height', 'conv_width', 'conv_in', 'conv_out')),
        (self.towers, k, k, x.shape[-1], self.features // self.towers),
        self.param_dtype)
    bias = self.param(
        'bias', nn.with_logical_partitioning(self.bias_init, ('tower', 'conv_out')),
        (self.towers, self.features // self.towers), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = ((self.padding, self.padding),) * 2

    side = min(x.shape[-3:-1]) + 2 * self.padding - k + 1
    use_winograd = winograd.applies(self.algorithm, k, self.stride, x.dtype, side)

    def conv(x, kernel):
      if use_winograd:
        return winograd.conv(x, kernel, self.padding)
      return lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), pad,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    def per_tower(x, kernel, bias):
      towers = kernel.shape[0]
      if self.mix_towers:
        # Towers that see the same input are one convolution with their
        # kernels side by side: one large convolution is faster than several.
        y = conv(x[0], jnp.moveaxis(kernel, 0, -2).reshape(*kernel.shape[1:-1], -1))
        y = jnp.moveaxis(y.reshape(*y.shape[:-1], towers, -1), -2, 0)
        return y + bias[:, None, None, None]
      return jnp.stack([conv(x[t], kernel[t]) + bias[t] for t in range(towers)])

    y = _sharded_towers(per_tower, x, kernel, bias, self.mix_towers, use_winograd)
    return nn.with_logical_constraint(y, TOWER_ACTIVATION_AXES)


class LocalResponseNorm(nn.Module):
  """The paper's local response normalisation, within each tower.

  b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta. Alpha multiplies
  the plain sum (Caffe and PyTorch divide it by n). The window runs over the
  last axis, so it never crosses from one tower's maps into the other's.
  """
  k: float = 2.0
  n: int = 5
  alpha: float = 1e-4
  beta: float = 0.75

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return local_response_norm(x, self.k, self.n, self.alpha, self.beta)


def _window_sum(x: jax.Array, n: int) -> jax.Array:
  """Each channel's sum over the n channels centred on it (fewer at the
  ends): n shifted slices that XLA fuses into one pass over x."""
  half, channels = n // 2, x.shape[-1]
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  return sum(padded[..., i:i + channels] for i in range(n))


def _inverse_power(t: jax.Array, beta: float) -> jax.Array:
  """t ** -beta; for the paper's beta of 3/4 as two square roots, several
  times cheaper on a CPU than pow's exp and log."""
  if beta == 0.75:
    r = lax.rsqrt(t)
    return r * jnp.sqrt(r)
  return jnp.power(t, -beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def local_response_norm(x: jax.Array, k: float, n: int, alpha: float,
                        beta: float) -> jax.Array:
  return _lrn_forward(x, k, n, alpha, beta)[0]


def _lrn_forward(x, k, n, alpha, beta):
  t = k + alpha * _window_sum(jnp.square(x), n)
  scale = _inverse_power(t, beta)
  return x * scale, (x, t, scale)


def _lrn_backward(k, n, alpha, beta, residuals, g):
  # b = a t^-beta with t = k + alpha W(a^2), W symmetric:
  # da = g t^-beta - 2 alpha beta a W(g b / t).
  x, t, scale = residuals
  y = x * scale
  return (g * scale - (2 * alpha * beta) * x * _window_sum(g * y / t, n),)


local_response_norm.defvjp(_lrn_forward, _lrn_backward)


class MaxPool(nn.Module):
  """Max pooling over height and width of tower-major activations, with
  models/pooling.py's gradient (XLA's select-and-scatter was far slower)."""
  window: int = 3
  stride: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return pooling.max_pool(x, self.window, self.stride)
