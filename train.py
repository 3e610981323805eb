"""train_and_evaluate(config, workdir): the training loop, evaluation and metrics."""

import contextlib
import functools
import json
import os
import time
from typing import Any, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from optax.contrib import ReduceLROnPlateauState

import checkpointing
import input_pipeline
import lr_schedule
import metric_log
import parallel
from models import AlexNet


@flax.struct.dataclass
class TrainState:
  """Everything that evolves during training."""
  step: jax.Array
  params: Any
  batch_stats: Any                  # BatchNorm running statistics, or {}
  opt_state: optax.OptState
  plateau: ReduceLROnPlateauState   # the learning-rate plateau logic
  rng: jax.Array                    # dropout key; folded with the step


_ERRORS = dict(
    loss=metrics.Average.from_output('loss'),
    top1_error=metrics.Average.from_output('top1_error'),
    top5_error=metrics.Average.from_output('top5_error'))
EvalMetrics = metrics.Collection.create(**_ERRORS)
TrainMetrics = metrics.Collection.create(
    **_ERRORS, learning_rate=metrics.LastValue.from_output('learning_rate'))


def paper_sgd(learning_rate: float, momentum: float,
              weight_decay: float) -> optax.GradientTransformation:
  """The paper's update: v <- m v - wd lr w - lr g;  w <- w + v.

  Scaling by the learning rate before the momentum trace (unlike optax.sgd)
  keeps past steps at the rate they were taken with when the rate drops.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  # The learning rate is injected so each step can set it from the schedule.
  return optax.inject_hyperparams(paper_sgd)(**config.optimizer)


def classification_outputs(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Per-example cross-entropy loss and top-1 / top-5 errors.

  The label's rank (how many classes score higher) gives both errors without
  top_k, which XLA's partitioner would gather across the batch shards.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits > label_logit, axis=-1)
  return dict(
      loss=optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      top1_error=(rank >= 1).astype(jnp.float32),
      top5_error=(rank >= 5).astype(jnp.float32))


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  return {'params': params, **({'batch_stats': state.batch_stats}
                               if state.batch_stats else {})}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation,
               learning_rate: lr_schedule.LearningRate) -> tuple[TrainState, TrainMetrics]:
  """One SGD step on a global batch."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits, updates = model.apply(
        _variables(state, params), batch['image'], train=True,
        rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    outputs = classification_outputs(logits, batch['label'])
    return outputs['loss'].mean(), (outputs, updates)

  grads, (outputs, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  lr = learning_rate(state.step, state.plateau)
  opt_state = state.opt_state
  opt_state.hyperparams['learning_rate'] = lr
  param_updates, opt_state = tx.update(grads, opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get('batch_stats', state.batch_stats),
      opt_state=opt_state)
  return new_state, TrainMetrics.single_from_model_output(learning_rate=lr, **outputs)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *,
              model: nn.Module) -> EvalMetrics:
  images = batch['image']
  if images.ndim == 5:
    # (batch, crops, H, W, C): the paper's test averages the crops' softmax;
    # log of that mean, taken stably, stands in for the logits.
    logits = model.apply(_variables(state, state.params),
                         images.reshape(-1, *images.shape[2:]), train=False)
    log_probs = jax.nn.log_softmax(logits).reshape(*images.shape[:2], -1)
    logits = jax.nn.logsumexp(log_probs, axis=1) - jnp.log(images.shape[1])
  else:
    logits = model.apply(_variables(state, state.params), images, train=False)
  return EvalMetrics.single_from_model_output(
      mask=batch['mask'], **classification_outputs(logits, batch['label']))


class Trainer:
  """The model, optimizer and schedule, compiled for one mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               steps_per_epoch: int):
    parallel.check_rules(config.axis_rules)
    parallel.check_batch(config.batch_size, mesh, config.axis_rules)
    parallel.check_batch(config.eval_batch_size, mesh, config.axis_rules,
                         'eval_batch_size')
    self.config = config
    self.mesh = mesh
    self.rules = list(config.axis_rules)
    self.model = AlexNet(**config.model)
    self.tx = create_optimizer(config)
    self.learning_rate = lr_schedule.LearningRate(
        config.optimizer, config.schedule, steps_per_epoch)
    self.batch_sharding = parallel.batch_sharding(mesh, self.rules)

    image_size = config.data.image_size
    self._init = functools.partial(self._boxed_state, image_size=image_size)
    with self._context():
      abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    self.state_sharding = parallel.logical_shardings(abstract, mesh, self.rules)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._p_init = jax.jit(lambda rng: nn.meta.unbox(self._init(rng)),
                           out_shardings=self.state_sharding)
    self._p_train_step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx,
                          learning_rate=self.learning_rate),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, replicated), donate_argnums=0)
    self._p_eval_step = jax.jit(
        functools.partial(eval_step, model=self.model),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=replicated)

  @contextlib.contextmanager
  def _context(self):
    """Tracing happens under the mesh and the logical-axis rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def _boxed_state(self, rng: jax.Array, image_size: int) -> TrainState:
    params_rng, dropout_rng = jax.random.split(rng)
    # One example per batch shard, so sharded layers see a divisible batch.
    shards = int(np.prod([self.mesh.shape[a] for a in parallel.batch_axes(self.rules)]))
    dummy = jnp.zeros((shards, image_size, image_size, 3), jnp.float32)
    variables = self.model.init(params_rng, dummy, train=False)
    params = variables['params']
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get('batch_stats', {}),
        opt_state=self.tx.init(params), plateau=self.learning_rate.init(),
        rng=dropout_rng)

  def init(self, seed: int) -> TrainState:
    with self._context():
      return self._p_init(jax.random.PRNGKey(seed))

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and shardings on this mesh, computing nothing.

    Restoring a checkpoint into it reshards the saved state onto this mesh.
    """
    with self._context():
      return jax.eval_shape(self._p_init, jax.random.PRNGKey(0))

  def lower_train_step(self) -> jax.stages.Lowered:
    """The train step lowered for this mesh on abstract inputs (no data, no init)."""
    size = self.config.data.image_size
    batch = self.config.batch_size
    with self._context():
      state = jax.eval_shape(self._p_init, jax.random.PRNGKey(0))
      return self._p_train_step.lower(state, {
          'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32,
                                        sharding=self.batch_sharding),
          'label': jax.ShapeDtypeStruct((batch,), jnp.int32,
                                        sharding=self.batch_sharding)})

  def train_step(self, state: TrainState,
                 batch: dict[str, np.ndarray]) -> tuple[TrainState, TrainMetrics]:
    with self._context():
      return self._p_train_step(state, parallel.global_batch(batch, self.batch_sharding))

  def evaluate(self, state: TrainState,
               batches: Iterator[dict[str, np.ndarray]]) -> EvalMetrics:
    total = None
    with self._context():
      for batch in batches:
        m = self._p_eval_step(state, parallel.global_batch(batch, self.batch_sharding))
        total = m if total is None else total.merge(m)
    if total is None:
      raise ValueError('The evaluation split yielded no batches.')
    return total

  def after_eval(self, state: TrainState, val_top1_error: float) -> TrainState:
    return state.replace(
        plateau=self.learning_rate.after_eval(state.plateau, val_top1_error))


def _check_finite(step_metrics: list[TrainMetrics], first_step: int) -> None:
  for i, m in enumerate(step_metrics):
    loss = float(m.loss.compute())
    if not np.isfinite(loss):
      raise FloatingPointError(
          f'Training loss became {loss} at step {first_step + i}; stopped. '
          'Lower --config.optimizer.learning_rate or check the input data.')


def _write_results(workdir: str, results: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, 'results.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, path)  # readers never see a half-written file


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`; returns the final validation results."""
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.mesh)
  info = input_pipeline.dataset_info(config.data)
  if info.num_classes != config.model.num_classes:
    raise ValueError(
        f'Dataset {config.data.name!r} has {info.num_classes} classes but the '
        f'model has {config.model.num_classes}; set '
        f'--config.model.num_classes={info.num_classes}.')
  steps_per_epoch = (config.steps_per_epoch if config.steps_per_epoch > 0
                     else info.num_train_examples // config.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f'The training split has {info.num_train_examples} examples, '
                     f'fewer than one batch of {config.batch_size}.')
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))

  trainer = Trainer(config, mesh, steps_per_epoch)
  checkpoints = checkpointing.Checkpoints(workdir, config)
  restored = checkpoints.restore_latest(trainer)
  if restored is not None:
    state, results = restored.state, restored.results
    data_position = restored.data_position
  else:
    state, results, data_position = trainer.init(config.seed), {}, 0
    if config.init_from:
      state = checkpointing.load_params(config.init_from, trainer, state)
  first_step = int(state.step)
  if first_step > num_steps:
    raise ValueError(
        f'The checkpoint in {checkpoints.directory} is at step {first_step}, past '
        f'this run\'s {num_steps} steps; raise --config.num_epochs or '
        '--config.num_train_steps, or start a new --workdir.')
  logging.info('Training %s for %d steps (%d per epoch) from step %d on a %s mesh '
               'of %d devices.', config.data.name, num_steps, steps_per_epoch,
               first_step, dict(mesh.shape), mesh.size)

  writers = [metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)]
  if jax.process_index() == 0:
    writers.append(metric_log.JsonlWriter(workdir, resume_step=first_step))
  writer = metric_writers.MultiWriter(writers)
  writer.write_hparams(
      {k: str(v) for k, v in flax.traverse_util.flatten_dict(
          config.to_dict(), sep='.').items()})
  progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every_steps)
  local_batch = config.batch_size // jax.process_count()
  train_iter = input_pipeline.train_iterator(config.data, batch_size=local_batch,
                                             seed=config.seed, start_step=data_position)
  save_every = config.checkpoint.every_steps

  start = time.perf_counter()
  pending: list[TrainMetrics] = []
  interval_start, data_wait = time.perf_counter(), 0.0
  preempted = False
  with checkpointing.Preemption(checkpoints) as preemption:
    for step in range(first_step, num_steps):
      t = time.perf_counter()
      batch = next(train_iter)
      data_wait += time.perf_counter() - t
      state, step_metrics = trainer.train_step(state, batch)
      pending.append(step_metrics)
      progress(step + 1)

      done = step + 1 == num_steps
      evaluate = (step + 1) % eval_every == 0 or done
      preempted = preemption.requested(step + 1)
      save = (evaluate or preempted or (step + 1) % steps_per_epoch == 0 or
              (save_every > 0 and (step + 1) % save_every == 0))
      # Logging at every save makes a resumed run average over the same
      # steps as an uninterrupted one, so both write the same metric log.
      if (step + 1) % config.log_every_steps == 0 or save:
        pending = jax.device_get(pending)
        _check_finite(pending, step + 2 - len(pending))
        interval = time.perf_counter() - interval_start
        summary = {f'train_{k}': v for k, v in
                   functools.reduce(TrainMetrics.merge, pending).compute().items()}
        summary['images_per_sec'] = len(pending) * config.batch_size / interval
        summary['data_wait_fraction'] = data_wait / interval
        summary['skipped_images'] = train_iter.skipped
        writer.write_scalars(step + 1, summary)
        pending, interval_start, data_wait = [], time.perf_counter(), 0.0

      if evaluate:
        with progress.timed('eval'):
          val = trainer.evaluate(state, input_pipeline.eval_iterator(
              config.data, batch_size=config.eval_batch_size // jax.process_count()))
        val_metrics = {k: float(v) for k, v in val.compute().items()}
        state = trainer.after_eval(state, val_metrics['top1_error'])
        results = dict(
            val_top1_error=val_metrics['top1_error'],
            val_top5_error=val_metrics['top5_error'],
            val_loss=val_metrics['loss'],
            val_examples=int(val.loss.count),
            step=step + 1,
            epoch=(step + 1) / steps_per_epoch,
            train_seconds=time.perf_counter() - start)
        writer.write_scalars(step + 1, {k: v for k, v in results.items()
                                        if k.startswith('val_')})
        _write_results(workdir, results)
        # Reset the interval so evaluation time does not count as training time.
        interval_start, data_wait = time.perf_counter(), 0.0

      if save:
        checkpoints.save(state, results=results, evaluated=evaluate)
      if preempted:
        break
  checkpoints.wait_until_finished()
  checkpoints.close()
  writer.flush()
  if preempted:
    logging.warning('Preempted: stopped after step %d with a checkpoint in %s. '
                    'Run the same command to resume.', int(state.step),
                    checkpoints.directory)
    return results
  logging.info(
      'Final validation after %d steps (%.2f epochs, %.0f s): top-1 error %.4f '
      '(accuracy %.2f%%), top-5 error %.4f, loss %.4f, on %d examples.',
      results['step'], results['epoch'], results['train_seconds'],
      results['val_top1_error'], 100 * (1 - results['val_top1_error']),
      results['val_top5_error'], results['val_loss'], results['val_examples'])
  return results
