"""The network: shapes, parameter counts, LRN, towers, no grouped convolutions."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import alexnet as alexnet_config
from models import AlexNet, layers


def _model(arg=''):
  config = alexnet_config.get_config(arg)
  config.model.num_classes = 1000  # ImageNet's, the dataset's by default
  return AlexNet(**config.model), config.data.image_size


def _param_count(arg):
  model, size = _model(arg)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))['params']
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))


@pytest.mark.parametrize('arg, expected', [
    ('', 60_965_224),                 # the paper: two towers
    ('towers=1', 62_378_344),         # the same network, one tower
    ('arch=owt', 61_100_840),         # "one weird trick" / torchvision
    ('arch=one_gpu', 59_798_312),     # the paper's one-GPU net (section 3.2)
])
def test_parameter_counts(arg, expected):
  assert _param_count(arg) == expected


@pytest.mark.parametrize('arch, init', [('paper', 'paper'), ('one_gpu', 'paper'),
                                        ('owt', 'modern')])
def test_each_architecture_has_its_initialisation(arch, init):
  assert alexnet_config.get_config(f'arch={arch}').model.initialization == init


def test_output_shape_after_every_layer():
  model, size = _model()
  images = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and len(context.module.path) == 1:
      shapes[context.module.name] = out.shape
    return out

  shapes = {}
  with nn.intercept_methods(capture):
    jax.eval_shape(lambda v: model.apply(v, images), variables)
  tower = lambda hw, c: (2, 2, hw, hw, c // 2)  # (towers, batch, H, W, C/tower)
  assert shapes == {
      'conv1': tower(55, 96), 'lrn1': tower(55, 96), 'pool1': tower(27, 96),
      'conv2': tower(27, 256), 'lrn2': tower(27, 256), 'pool2': tower(13, 256),
      'conv3': tower(13, 384), 'conv4': tower(13, 384), 'conv5': tower(13, 256),
      'pool5': tower(6, 256),
      'fc6': (2, 4096), 'dropout6': (2, 4096), 'fc7': (2, 4096),
      'dropout7': (2, 4096), 'fc8': (2, 1000)}


def _lrn_reference(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """The paper's formula with explicit loops over kernel maps, per tower."""
  b = np.empty_like(a)
  channels = a.shape[-1]
  for i in range(channels):
    lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    b[..., i] = a[..., i] / (k + alpha * s) ** beta
  return b


def test_lrn_matches_paper_formula_within_each_tower():
  rng = np.random.RandomState(0)
  # Large activations so the alpha term matters; towers on the leading axis.
  a = (rng.randn(2, 3, 4, 4, 12) * 60).astype(np.float32)
  b = np.asarray(layers.LocalResponseNorm().apply({}, jnp.asarray(a)))
  expected = np.stack([_lrn_reference(a[t]) for t in range(2)])
  np.testing.assert_allclose(b, expected, rtol=1e-5)
  # At the tower boundary the window stops: tower 0's last map ignores tower 1.
  merged = _lrn_reference(np.concatenate([a[0], a[1]], axis=-1))
  assert not np.allclose(merged[..., 11], expected[0][..., 11], rtol=1e-5)


def test_lrn_differs_from_alpha_over_n_convention():
  a = (np.random.RandomState(1).randn(1, 2, 3, 3, 8) * 60).astype(np.float32)
  paper = layers.LocalResponseNorm().apply({}, jnp.asarray(a))
  caffe_style = layers.LocalResponseNorm(alpha=1e-4 / 5).apply({}, jnp.asarray(a))
  assert not np.allclose(paper, caffe_style, rtol=1e-4)


@pytest.mark.parametrize('window, stride, out', [(3, 2, 6), (2, 2, 6)])
def test_max_pool_takes_each_windows_maximum(window, stride, out):
  """Section 3.4: z x z windows s apart over height and width of each tower's
  maps; overlapping (z=3) and not (z=2) give the same 6x6 from 13x13."""
  x = np.random.RandomState(0).randn(2, 2, 13, 13, 3).astype(np.float32)
  y = np.asarray(layers.MaxPool(window, stride).apply({}, jnp.asarray(x)))
  expected = np.empty((2, 2, out, out, 3), np.float32)
  for i in range(out):
    for j in range(out):
      window_values = x[:, :, i * stride:i * stride + window, j * stride:j * stride + window]
      expected[:, :, i, j] = window_values.max(axis=(2, 3))
  np.testing.assert_array_equal(y, expected)


def _conv_and_input(mix_towers, seed=0):
  conv = layers.TowerConv(towers=2, features=8, kernel_size=3, padding=1,
                          mix_towers=mix_towers)
  x = jnp.asarray(np.random.RandomState(seed).randn(2, 2, 6, 6, 4), jnp.float32)
  params = conv.init(jax.random.PRNGKey(0), x)
  return conv, params, x


def test_own_tower_conv_sees_only_its_tower():
  conv, params, x = _conv_and_input(mix_towers=False)
  y = conv.apply(params, x)
  y_changed = conv.apply(params, x.at[1].add(1.0))   # change tower 1's input maps
  np.testing.assert_array_equal(y[0], y_changed[0])  # tower 0 does not notice
  assert not np.allclose(y[1], y_changed[1])


def test_mixing_conv_sees_both_towers():
  conv, params, x = _conv_and_input(mix_towers=True)
  y = conv.apply(params, x)
  y_changed = conv.apply(params, x.at[1].add(1.0))
  assert not np.allclose(y[0], y_changed[0])
  assert not np.allclose(y[1], y_changed[1])


def test_towers_at_conv2_in_the_full_model():
  """Changing tower 1's conv2 input channels leaves tower 0's conv2 output alone."""
  model, size = _model()
  images = jnp.asarray(np.random.RandomState(0).randn(1, size, size, 3), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), images)
  conv2_params = {'params': nn.meta.unbox(variables['params']['conv2'])}
  conv2 = layers.TowerConv(towers=2, features=256, kernel_size=5, padding=2)
  x = jnp.asarray(np.random.RandomState(1).randn(2, 1, 27, 27, 48), jnp.float32)
  y = conv2.apply(conv2_params, x)
  y_changed = conv2.apply(conv2_params, x.at[1, ..., :10].set(0.0))
  np.testing.assert_array_equal(y[0], y_changed[0])
  assert not np.allclose(y[1], y_changed[1])


def test_two_towers_use_plain_convolutions_forward_and_backward():
  model, size = _model()
  model = model.clone(conv_algorithm='direct')  # Winograd's: tests/test_winograd.py
  images = jnp.zeros((2, size, size, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: model.apply(p, images).sum()))(params))
  groups = re.findall(r'(feature|batch)_group_count=(\d+)', jaxpr)
  assert {count for _, count in groups} == {'1'}
  # conv1 and conv3 are one convolution for both towers (each tower sees the
  # same input), conv2, conv4 and conv5 one per tower: 8 forward, 8 kernel
  # gradients and 7 input gradients (none for the images).
  assert jaxpr.count('conv_general_dilated[') == 8 + 8 + 7


def test_towers_that_see_one_input_compute_what_a_convolution_each_would():
  conv, params, x = _conv_and_input(mix_towers=True)
  kernel, bias = (nn.meta.unbox(params['params'][k]) for k in ('kernel', 'bias'))
  merged = layers.merge_towers(x)[0]
  expected = np.stack([
      jax.lax.conv_general_dilated(merged, kernel[t], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias[t]
      for t in range(2)])
  np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('beta', [0.75, 0.6])
def test_lrn_gradient_is_the_formulas(beta):
  """The hand-written backward pass (and the 3/4 power as square roots)
  against JAX's derivative of the paper's formula."""
  def formula(a):
    i = jnp.arange(a.shape[-1])
    band = (jnp.abs(i[:, None] - i[None, :]) <= 2).astype(a.dtype)
    return a / (2.0 + 1e-4 * jnp.square(a) @ band) ** beta

  rng = np.random.RandomState(2)
  a = jnp.asarray(rng.randn(2, 3, 4, 4, 12) * 60, jnp.float32)
  g = jnp.asarray(rng.randn(*a.shape), jnp.float32)
  lrn = lambda a: layers.LocalResponseNorm(beta=beta).apply({}, a)
  b, pullback = jax.vjp(lrn, a)
  expected_b, expected_pullback = jax.vjp(formula, a)
  np.testing.assert_allclose(b, expected_b, rtol=1e-5)
  np.testing.assert_allclose(pullback(g)[0], expected_pullback(g)[0], rtol=1e-4, atol=1e-6)


def test_paper_initialisation():
  model, size = _model()
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))['params'])
  for layer in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7'):
    np.testing.assert_array_equal(params[layer]['bias'], 1.0)
  for layer in ('conv1', 'conv3', 'fc8'):
    np.testing.assert_array_equal(params[layer]['bias'], 0.0)
  assert abs(float(jnp.std(params['fc6']['kernel'])) - 0.01) < 1e-4


def test_bfloat16_compute_keeps_float32_params():
  model, size = _model('dtype=bfloat16')
  images = jnp.zeros((1, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  logits = jax.eval_shape(lambda v: model.apply(v, images), variables)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('arg', ['norm=batchnorm', 'lrn=off', 'pool=2x2',
                                 'norm_position=after_pool', 'init=modern'])
def test_ablations_run(arg):
  config = alexnet_config.get_config(f'{arg},size=tiny')
  config.model.num_classes = 7
  model = AlexNet(**config.model)
  x = jnp.ones((2, 99, 99, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  logits, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                          rngs={'dropout': jax.random.PRNGKey(1)})
  assert logits.shape == (2, 7)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize('arch, expected', [
    ('paper', ['fc6', 'dropout6', 'fc7', 'dropout7', 'fc8']),
    # torchvision.models.AlexNet's classifier: Dropout, Linear, ReLU, Dropout,
    # Linear, ReLU, Linear.
    ('owt', ['dropout6', 'fc6', 'dropout7', 'fc7', 'fc8'])])
def test_dropout_placement(arch, expected):
  config = alexnet_config.get_config(f'arch={arch},size=tiny')
  config.model.num_classes = 7
  model = AlexNet(**config.model)
  # The shapes of test_ablations_run, whose compiled operations it reuses.
  images = jnp.asarray(np.random.RandomState(0).rand(2, 99, 99, 3), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), images)
  order, calls = [], {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and len(context.module.path) == 1:
      order.append(context.module.name)
      calls[context.module.name] = (np.asarray(args[0]), np.asarray(out))
    return out

  with nn.intercept_methods(record):
    model.apply(variables, images, train=True,
                rngs={'dropout': jax.random.PRNGKey(1)})
  assert [name for name in order if name[:2] in ('fc', 'dr')] == expected
  fc7_relu = np.maximum(calls['fc7'][1], 0)
  fc8_input = calls['fc8'][0]
  # Tower-major, as the model flattens.
  pool5 = np.moveaxis(calls['pool5'][1], 0, 1).reshape(2, -1)
  # Whichever activations are dropped lose about half their nonzero values,
  # and the survivors are scaled by 1 / (1 - 0.5).
  for name in ('dropout6', 'dropout7'):
    kept, dropped = calls[name][0], calls[name][1]
    nonzero = kept != 0
    assert 0.3 < np.mean(dropped[nonzero] == 0) < 0.7, name
    np.testing.assert_allclose(dropped[dropped != 0], 2 * kept[dropped != 0],
                               rtol=1e-6)
  if arch == 'paper':
    # fc7's output is dropped on its way to fc8; fc6 sees pool5 whole.
    np.testing.assert_array_equal(calls['fc7'][0], calls['dropout6'][1])
    np.testing.assert_array_equal(calls['dropout7'][0], fc7_relu)
    np.testing.assert_array_equal(fc8_input, calls['dropout7'][1])
    np.testing.assert_array_equal(calls['fc6'][0], pool5)
  else:
    # pool5 is dropped on its way to fc6, fc6's output on its way to fc7;
    # fc8 sees fc7's output whole.
    np.testing.assert_array_equal(calls['dropout6'][0], pool5)
    np.testing.assert_array_equal(calls['fc6'][0], calls['dropout6'][1])
    np.testing.assert_array_equal(calls['dropout7'][0],
                                  np.maximum(calls['fc6'][1], 0))
    np.testing.assert_array_equal(fc8_input, fc7_relu)
