"""The optimizer, the learning-rate plateau, train steps on 1 and 8 devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import lr_schedule
import parallel
from trainer import Trainer, classification_outputs, paper_sgd, synthetic_batch


def _losses(config, devices, steps=4):
  mesh = parallel.make_mesh(config.mesh, devices)
  trainer = Trainer(config, mesh)
  state = trainer.init(config.seed)
  batch = synthetic_batch(config, config.batch_size)
  losses = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics.loss.compute()))
  return np.array(losses), jax.device_get(state.params)


def test_loss_falls_and_is_the_same_on_1_and_8_devices(small_config):
  config = small_config()
  one, params_one = _losses(config, jax.devices()[:1])
  eight, params_eight = _losses(config, jax.devices()[:8])
  assert one[-1] < one[0] - 0.1, one
  np.testing.assert_allclose(one, eight, rtol=2e-5, atol=2e-5)
  for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_eight)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_state_is_sharded_over_the_mesh(small_config):
  config = small_config()
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:8])
  trainer = Trainer(config, mesh)
  state = trainer.init(0)
  kernel = state.params['conv2']['kernel']
  assert kernel.sharding.mesh.shape == {'data': 8, 'model': 1}
  assert len(kernel.sharding.device_set) == 8


def test_paper_sgd_is_the_papers_update_rule():
  tx = optax.inject_hyperparams(paper_sgd)(
      learning_rate=0.01, momentum=0.9, weight_decay=0.0005)
  w = jnp.array([1.0, -2.0])
  state = tx.init(w)
  v, w_ref = np.zeros(2), np.array([1.0, -2.0])
  for lr, g in [(0.01, [0.5, 0.1]), (0.01, [-0.2, 0.3]), (0.001, [0.4, -0.6])]:
    state.hyperparams['learning_rate'] = lr
    updates, state = tx.update(jnp.array(g), state, w)
    w = optax.apply_updates(w, updates)
    v = 0.9 * v - 0.0005 * lr * w_ref - lr * np.array(g)
    w_ref = w_ref + v
  np.testing.assert_allclose(w, w_ref, rtol=1e-6)


def _schedule(patience=2, name='plateau'):
  optimizer = ml_collections.ConfigDict(dict(learning_rate=0.01))
  schedule = ml_collections.ConfigDict(dict(
      name=name, factor=0.1, patience=patience, threshold=0.001,
      max_reductions=3, boundaries=(1, 2)))
  return lr_schedule.LearningRate(optimizer, schedule, steps_per_epoch=10)


def test_plateau_divides_by_ten_after_patience_evals_at_most_three_times():
  lr = _schedule(patience=2)
  state = lr.init()
  rates = []
  for error in [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7] + [0.7] * 8:
    state = lr.after_eval(state, error)
    rates.append(float(lr(0, state)))
  expected = ([0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001,
               0.0001, 0.00001] + [0.00001] * 6)
  np.testing.assert_allclose(rates, expected, rtol=1e-5)


def test_plateau_ignores_improvements_below_threshold():
  lr = _schedule(patience=1)
  state = lr.after_eval(lr.init(), 0.5)
  state = lr.after_eval(state, 0.4995)   # better by less than 0.001
  assert float(lr(0, state)) == pytest.approx(0.001)


def test_step_schedule_divides_at_epoch_boundaries():
  lr = _schedule(name='step')
  state = lr.after_eval(lr.init(), 0.9)
  rates = [float(lr(step, state)) for step in (0, 9, 10, 19, 20, 1000)]
  np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001],
                             rtol=1e-5)


def test_batch_without_shift_is_refused_by_name(small_config):
  config = small_config()
  trainer = Trainer(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))
  batch = synthetic_batch(config, config.batch_size)
  del batch['shift']
  with pytest.raises(ValueError, match=r"lacks \['shift'\]"):
    trainer.train_step(trainer.init(0), batch)


def test_batch_not_divisible_by_devices_is_refused(small_config):
  config = small_config()
  config.batch_size = 12
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:8])
  with pytest.raises(ValueError, match=r'batch_size=12 is not divisible by the 8 devices'):
    Trainer(config, mesh)


@pytest.mark.parametrize('data, model, match', [
    (-1, 3, 'model=3 does not divide the 8 devices'),
    (3, 2, r'data=3 x model=2 = 6 does not match the 8 devices'),
])
def test_impossible_mesh_is_refused(data, model, match):
  config = ml_collections.ConfigDict(dict(data=data, model=model))
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(config, jax.devices()[:8])


def test_rule_naming_an_unknown_mesh_axis_is_refused():
  with pytest.raises(ValueError, match="names mesh axis 'tensor'"):
    parallel.check_rules((('batch', 'data'), ('fc_out', 'tensor')))


def test_ties_and_non_finite_logits_count_as_errors():
  nan, inf = float('nan'), float('inf')
  logits = jnp.array([
      [3., 1., 0., 0., 0., 0., 0.],     # label 0 alone on top: right
      [1., 1., 0., 0., 0., 0., 0.],     # tied with another class: wrong at 1
      [1., 1., 1., 1., 1., 1., 1.],     # tied with all: wrong at 1 and 5
      [nan, nan, nan, nan, nan, nan, nan],
      [9., nan, 0., 0., 0., 0., 0.],    # one NaN logit: not a measured answer
      [inf, 0., 0., 0., 0., 0., 0.]])
  labels = jnp.zeros(len(logits), jnp.int32)
  outputs = classification_outputs(logits, labels)
  np.testing.assert_array_equal(outputs['top1_error'], [0, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(outputs['top5_error'], [0, 0, 1, 1, 1, 1])
