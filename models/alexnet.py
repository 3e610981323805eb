"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), layer by layer as in the paper.

conv1 -> LRN -> max-pool -> conv2 -> LRN -> max-pool -> conv3 -> conv4 -> conv5
-> max-pool -> fc6 -> fc7 -> fc8, ReLU after every layer but fc8, dropout on
fc6's and fc7's outputs (the paper's section 4.2) or, as torchvision places it,
on their inputs (`dropout_position`). With two towers, conv2, conv4 and conv5 see only their own tower's
maps; conv3 and the fully connected layers see both.

Each ReLU's output is sown into the 'intermediates' collection as
'<layer>_relu' (RELU_LAYERS): applying with mutable=['intermediates'] returns
them (the training step's sparsity metrics, fc7's features for the paper's
Figure 4); otherwise nothing is kept.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import layers

# The paper sets these biases to 1 "to accelerate the early stages of
# learning by providing the ReLUs with positive inputs"; all others to 0.
_PAPER_UNIT_BIASES = frozenset({'conv2', 'conv4', 'conv5', 'fc6', 'fc7'})

# The layers followed by a ReLU (section 3.1): every one but fc8.
RELU_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')


def relu_output(layer: str) -> str:
  """The 'intermediates' key of `layer`'s ReLU output."""
  return f'{layer}_relu'


def _initializers(init: str, layer: str, towers: bool):
  """(kernel_init, bias_init) of a layer under the 'paper' or 'modern' scheme."""
  if init == 'paper':
    bias = 1.0 if layer in _PAPER_UNIT_BIASES else 0.0
    return nn.initializers.normal(0.01), nn.initializers.constant(bias)
  if init == 'modern':
    # He normal; a tower kernel's leading tower axis is not part of its fan-in.
    kernel = (nn.initializers.variance_scaling(
        2.0, 'fan_in', 'truncated_normal', in_axis=(-4, -3, -2), out_axis=-1,
        batch_axis=(0,)) if towers else nn.initializers.he_normal())
    return kernel, nn.initializers.zeros
  raise ValueError(f"Unknown init {init!r}: use 'paper' or 'modern'.")


class AlexNet(nn.Module):
  """The AlexNet family: the paper's network by default, every ablation a field."""
  num_classes: int = 1000
  towers: int = 2
  features: Sequence[int] = (96, 256, 384, 384, 256)    # conv1..conv5, all towers
  fc_features: Sequence[int] = (4096, 4096)             # fc6, fc7
  conv1_kernel: int = 11
  conv1_stride: int = 4
  conv1_padding: int = 0
  norm: str = 'lrn'                    # lrn | batchnorm | none, after conv1, conv2
  norm_position: str = 'before_pool'   # before_pool (paper) | after_pool (CaffeNet)
  lrn_k: float = 2.0
  lrn_n: int = 5
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  pool_window: int = 3                 # 3 with stride 2: overlapping pooling
  pool_stride: int = 2
  dropout_rate: float = 0.5
  dropout_position: str = 'after'      # after fc6 and fc7 (paper) | before them (torchvision)
  initialization: str = 'paper'        # paper | modern
  dtype: str = 'float32'               # compute dtype; parameters stay float32
  conv_algorithm: str = 'auto'         # auto | direct | winograd (models/winograd.py)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """NHWC float images -> float32 logits (N, num_classes)."""
    # The image as a single input tower: every conv1 tower sees all of it.
    x = nn.with_logical_constraint(
        images.astype(self.dtype)[None], (None, *layers.TOWER_ACTIVATION_AXES[1:]))
    c1, c2, c3, c4, c5 = self.features
    x = self._conv('conv1', x, c1, self.conv1_kernel, self.conv1_stride,
                   self.conv1_padding, mix_towers=True)
    x = self._normalize_and_pool(1, x, train)
    x = self._conv('conv2', x, c2, 5, 1, 2)
    x = self._normalize_and_pool(2, x, train)
    x = self._conv('conv3', x, c3, 3, 1, 1, mix_towers=True)
    x = self._conv('conv4', x, c4, 3, 1, 1)
    x = self._conv('conv5', x, c5, 3, 1, 1)
    x = self._pool('pool5', x)

    # Tower-major flatten, so a single tower flattens exactly as NHWC would.
    with jax.named_scope('flatten'):
      x = jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1)
      x = nn.with_logical_constraint(x, ('fc_batch', 'fc_in'))
    fc6, fc7 = self.fc_features
    x = self._dense('fc6', x, fc6, train)
    x = self._dense('fc7', x, fc7, train)
    x = self._dense('fc8', x, self.num_classes, train)
    return x.astype(jnp.float32)

  def _conv(self, name: str, x: jax.Array, features: int, kernel: int,
            stride: int, padding: int, mix_towers: bool = False) -> jax.Array:
    kernel_init, bias_init = _initializers(self.initialization, name, towers=True)
    x = layers.TowerConv(
        towers=self.towers, features=features, kernel_size=kernel,
        stride=stride, padding=padding, mix_towers=mix_towers,
        algorithm=self.conv_algorithm, kernel_init=kernel_init,
        bias_init=bias_init, dtype=self.dtype, name=name)(x)
    return self._relu(name, x)

  def _dense(self, name: str, x: jax.Array, features: int,
             train: bool) -> jax.Array:
    kernel_init, bias_init = _initializers(self.initialization, name, towers=False)
    is_output = name == 'fc8'
    if not is_output:
      x = self._dropout(name, x, train, 'before')
    x = nn.Dense(
        features, dtype=self.dtype, name=name,
        kernel_init=nn.with_logical_partitioning(
            kernel_init, ('fc_in', 'classes' if is_output else 'fc_out')),
        bias_init=nn.with_logical_partitioning(
            bias_init, ('classes' if is_output else 'fc_out',)))(x)
    if is_output:
      return x
    x = self._relu(name, x)
    x = nn.with_logical_constraint(x, ('fc_batch', 'fc_out'))
    return self._dropout(name, x, train, 'after')

  def _dropout(self, name: str, x: jax.Array, train: bool,
               where: str) -> jax.Array:
    """Dropout of fc6's or fc7's input or output, where dropout_position says."""
    if self.dropout_position not in ('after', 'before'):
      raise ValueError(f'Unknown dropout_position {self.dropout_position!r}: '
                       "use 'after' (the paper) or 'before' (torchvision).")
    if where != self.dropout_position:
      return x
    return nn.Dropout(self.dropout_rate, deterministic=not train,
                      name=f'dropout{name[2:]}')(x)

  def _relu(self, layer: str, x: jax.Array) -> jax.Array:
    x = nn.relu(x)
    self.sow('intermediates', relu_output(layer), x)
    return x

  def _normalize_and_pool(self, i: int, x: jax.Array, train: bool) -> jax.Array:
    if self.norm_position == 'after_pool':
      return self._normalize(i, self._pool(f'pool{i}', x), train)
    if self.norm_position == 'before_pool':
      return self._pool(f'pool{i}', self._normalize(i, x, train))
    raise ValueError(f'Unknown norm_position {self.norm_position!r}: use '
                     "'before_pool' or 'after_pool'.")

  def _normalize(self, i: int, x: jax.Array, train: bool) -> jax.Array:
    if self.norm == 'lrn':
      return layers.LocalResponseNorm(
          self.lrn_k, self.lrn_n, self.lrn_alpha, self.lrn_beta,
          name=f'lrn{i}')(x)
    if self.norm == 'batchnorm':
      # Statistics per tower and channel, over batch and space.
      return nn.BatchNorm(
          use_running_average=not train, axis=(0, -1), momentum=0.9,
          dtype=self.dtype, name=f'bn{i}')(x)
    if self.norm == 'none':
      return x
    raise ValueError(f"Unknown norm {self.norm!r}: use 'lrn', 'batchnorm' or 'none'.")

  def _pool(self, name: str, x: jax.Array) -> jax.Array:
    return layers.MaxPool(self.pool_window, self.pool_stride, name=name)(x)
