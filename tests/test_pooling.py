"""models/pooling.py: the max pool's gradient equals JAX's own (XLA's
select-and-scatter) to float tolerance, ties included, on the paper's
overlapping pools, the non-overlapping ablation and bfloat16."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import layers, pooling


@pytest.mark.parametrize('shape, window, stride, dtype', [
    ((2, 3, 13, 13, 4), 3, 2, jnp.float32),   # pool5-like: 13 -> 6, overlapping
    ((1, 2, 14, 12, 3), 3, 2, jnp.float32),   # a row and a column no window reaches
    ((2, 2, 13, 13, 3), 2, 2, jnp.float32),   # pool=2x2: windows that do not overlap
    ((1, 2, 11, 11, 5), 3, 2, jnp.bfloat16),
    ((1, 2, 15, 16, 3), 5, 2, jnp.float32),   # inputs in up to three windows a side
    ((1, 1, 16, 17, 2), 4, 3, jnp.float32),   # stride 3
])
def test_gradient_is_jaxs_with_ties(shape, window, stride, dtype):
  rng = np.random.RandomState(0)
  # After a ReLU most windows hold several equal maxima (zeros, here small integers).
  x = jnp.asarray(np.maximum(rng.randint(-3, 4, shape), 0), dtype)
  reference = lambda x: nn.max_pool(x, (window, window), (stride, stride))
  ours = lambda x: pooling.max_pool(x, window, stride)
  y, pullback = jax.vjp(ours, x)
  expected_y, expected_pullback = jax.vjp(reference, x)
  np.testing.assert_array_equal(np.float32(y), np.float32(expected_y))
  g = jnp.asarray(rng.randn(*y.shape), dtype)
  tolerance = 1e-6 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.float32(pullback(g)[0]), np.float32(expected_pullback(g)[0]),
                             atol=tolerance, rtol=tolerance)


def test_the_network_pools_with_it_inside_jit_and_grad():
  x = jnp.asarray(np.random.RandomState(1).randn(2, 1, 9, 9, 2), jnp.float32)
  pool = layers.MaxPool(3, 2)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(pool.apply({}, x) ** 2)))(x)
  expected = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (3, 3), (2, 2)) ** 2))(x)
  np.testing.assert_allclose(grad, expected, atol=1e-6)
  # Each window's gradient goes to one input: at most a nonzero a window.
  assert 0 < int((grad != 0).sum()) <= pool.apply({}, x).size
