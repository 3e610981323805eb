"""Winograd's convolution: exact in exact arithmetic, close to XLA's in
float32, forward and backward, and used where `conv_algorithm` says."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import alexnet as alexnet_config
from models import AlexNet, winograd


@pytest.mark.parametrize('m, r', [(2, 3), (3, 3), (4, 3), (2, 5)])
def test_the_transforms_compute_a_correlation_exactly(m, r):
  at, g, bt = winograd.matrices(m, r)
  rng = np.random.RandomState(m * 10 + r)
  d, kernel = rng.randn(m + r - 1), rng.randn(r)
  expected = np.correlate(d, kernel, mode='valid')
  np.testing.assert_allclose(at @ ((g @ kernel) * (bt @ d)), expected, rtol=0, atol=1e-12)


def _direct(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding),) * 2,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape, padding, tile', [
    ((2, 13, 13, 8), 1, 4),      # conv3-conv5's maps, the default tile
    ((2, 7, 10, 5), 1, 2),       # not square, ragged tiles
    ((1, 9, 6, 3), 0, 3),        # no padding
    ((2, 13, 13, 8), 2, 4),      # more padding than the kernel's half
])
def test_equals_xlas_convolution_forward_and_backward(shape, padding, tile):
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*shape), jnp.float32)
  kernel = jnp.asarray(rng.randn(3, 3, shape[-1], 6) * 0.1, jnp.float32)
  y, pullback = jax.vjp(lambda x, k: winograd.conv(x, k, padding, tile), x, kernel)
  expected, expected_pullback = jax.vjp(lambda x, k: _direct(x, k, padding), x, kernel)
  assert y.shape == expected.shape
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(y, expected, rtol=0, atol=2e-5 * scale)
  g = jnp.asarray(rng.randn(*y.shape), jnp.float32)
  for got, want in zip(pullback(g), expected_pullback(g)):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.abs(want).max()))


def test_which_convolutions_it_takes():
  assert winograd.applies('winograd', 3, 1, jnp.bfloat16, 3)
  assert not winograd.applies('winograd', 5, 1, jnp.float32, 13)  # conv2
  assert not winograd.applies('winograd', 3, 2, jnp.float32, 13)  # strided
  assert not winograd.applies('direct', 3, 1, jnp.float32, 13)
  on_cpu = jax.default_backend() == 'cpu'
  assert winograd.applies('auto', 3, 1, jnp.float32, 13) == on_cpu   # the paper's conv3-5
  assert not winograd.applies('auto', 3, 1, jnp.float32, 3)          # the demo's
  assert not winograd.applies('auto', 3, 1, jnp.bfloat16, 13)        # too coarse for its transforms
  with pytest.raises(ValueError, match="Unknown conv_algorithm 'fft'"):
    winograd.applies('fft', 3, 1, jnp.float32, 13)


def _model(algorithm, dtype='float32'):
  config = alexnet_config.get_config('size=tiny')
  config.model.num_classes = 10
  config.model.conv_algorithm = algorithm
  config.model.dtype = dtype
  return AlexNet(**config.model), config.data.image_size


def test_the_network_computes_the_same_either_way():
  # In float64, so that no ReLU or pool's maximum switches on float32
  # rounding: the whole network's gradients then agree to 1e-10, where a
  # wrong transform would be off by order 1.
  with jax.enable_x64(True):
    # 99x99 images: conv3-conv5 on 5x5 maps, two tiles a side.
    images = jnp.asarray(np.random.RandomState(1).randn(2, 99, 99, 3) * 50)
    direct, _ = _model('direct', 'float64')
    variables = jax.tree.map(lambda v: v.astype(jnp.float64),
                             nn.meta.unbox(direct.init(jax.random.PRNGKey(0), images)))
    loss = lambda model, v: model.apply(v, images).sum()
    grad = jax.jit(jax.value_and_grad(loss, 1), static_argnums=0)
    expected, expected_grads = grad(direct, variables)
    got, grads = grad(_model('winograd', 'float64')[0], variables)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6'):
      want = expected_grads['params'][name]['kernel']
      difference = jnp.linalg.norm(grads['params'][name]['kernel'] - want)
      assert difference < 1e-10 * jnp.linalg.norm(want), name


def test_conv3_to_conv5_are_matrix_products_under_winograd():
  model, size = _model('winograd')
  images = jnp.zeros((2, size, size, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: model.apply(p, images).sum()))(params))
  # Of XLA's 8 forward, 8 kernel-gradient and 7 input-gradient convolutions
  # (tests/test_model.py) conv1's and conv2's two towers' remain.
  assert jaxpr.count('conv_general_dilated[') == 3 + 3 + 2
