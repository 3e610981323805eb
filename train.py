"""train_and_evaluate(config, workdir): the training loop, evaluation and metrics."""

import contextlib
import functools
import os
import time
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

import checkpointing
import evaluation
import input_pipeline
import parallel
import run_files
from configs import validation
from models import kernels
from runtime import console, errors, profiling
from trainer import NonFiniteError, Trainer, TrainMetrics


def _check_finite(step_metrics: list[TrainMetrics], first_step: int) -> None:
  for i, m in enumerate(step_metrics):
    loss = float(m.loss.compute())
    if not np.isfinite(loss):
      raise NonFiniteError(
          f'Training loss became {loss} at step {first_step + i}; stopped. '
          'Lower --config.optimizer.learning_rate or check the input data.')


def _carry(pending: list[TrainMetrics]) -> list[float] | None:
  """Training metrics not yet logged, merged, as JSON numbers."""
  if not pending:
    return None
  merged = functools.reduce(TrainMetrics.merge, jax.device_get(pending))
  return [float(x) for x in jax.tree.leaves(merged)]


def _uncarry(values: list[float] | None) -> list[TrainMetrics]:
  """_carry's metrics back, exactly (float32 and int32 survive JSON)."""
  if not values:
    return []
  template = jax.tree.leaves(TrainMetrics.empty())
  return [jax.tree.unflatten(jax.tree.structure(TrainMetrics.empty()), [
      np.asarray(v, t.dtype) for v, t in zip(values, template, strict=True)])]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming its latest checkpoint; returns
  the final validation results. Another run in the workdir is refused."""
  validation.check(config)
  os.makedirs(workdir, exist_ok=True)
  with run_files.WorkdirLock(workdir):
    return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  mesh = parallel.make_mesh(config.mesh)
  # The part of the data this process's devices hold (one per process unless
  # the model axis joins devices of several processes).
  shard = parallel.input_shard(mesh, config.axis_rules)
  with console.phase('Reading the dataset'):
    dataset = input_pipeline.load(config.data)
  config = input_pipeline.with_dataset_classes(config, dataset)
  local_batch = shard.local(config.batch_size)
  steps_per_epoch = dataset.steps_per_epoch(local_batch, shard)
  if steps_per_epoch < 1:
    raise errors.InvalidInput(
        f'The training split of {dataset.name!r} has {dataset.num_train_examples} '
        f'examples, fewer than one batch of {config.batch_size} '
        f'({local_batch} in each of {shard.count} parts of the data); lower '
        '--config.batch_size.')
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))

  trainer = Trainer(config, mesh, steps_per_epoch, dataset.mean_image)
  checkpoints = checkpointing.Checkpoints(workdir, config, dataset=dataset.identity())
  with console.phase(f'Restoring the latest checkpoint in {checkpoints.directory}'):
    restored = checkpoints.restore_latest(trainer)
  if restored is not None:
    state, results, carried = restored.state, restored.results, restored.progress
  else:
    with console.phase('Initialising the network'):
      state, results, carried = trainer.init(config.seed), {}, {}
    if config.init_from:
      state = checkpointing.load_params(config.init_from, trainer, state)
  first_step = int(state.step)
  checkpointing.check_disk_space(
      checkpoints.directory, state,
      copies=config.checkpoint.keep + config.checkpoint.keep_best)
  if first_step > num_steps:
    raise errors.InvalidInput(
        f'The checkpoint in {checkpoints.directory} is at step {first_step}, past '
        f'this run\'s {num_steps} steps; raise --config.num_epochs or '
        '--config.num_train_steps, or start a new --workdir.')
  if restored is not None and first_step < num_steps:
    # The final state's 10-crop test is this run's to earn again: one that
    # stops early must not look finished with an earlier run's numbers.
    results = {k: v for k, v in results.items() if not k.endswith('_10crop')}
    if jax.process_index() == 0:
      run_files.write_results(workdir, results)
  if jax.process_index() == 0:
    run_files.write_config(workdir, config)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info(
      'Training AlexNet (%s parameters) on %s: %d training and %d validation '
      'images, %d classes; %d steps of %d images (%d an epoch) from step %d, '
      'on a %s mesh of %d devices. Writing to %s (the whole config: %s).',
      f'{params:,}', dataset.name, dataset.num_train_examples,
      dataset.num_eval_examples, dataset.num_classes, num_steps, config.batch_size, steps_per_epoch,
      first_step, dict(mesh.shape), mesh.size, workdir, run_files.CONFIG)

  # Every scalar to TensorBoard and metrics.jsonl; the console gets console.py's lines.
  writers = []
  if jax.process_index() == 0:
    summaries = metric_writers.SummaryWriter(workdir)
    summaries.write_hparams({k: str(v) for k, v in flax.traverse_util.flatten_dict(
        config.to_dict(), sep='.').items()})
    writers += [summaries, run_files.JsonlWriter(workdir, resume_step=first_step)]
  writer = metric_writers.AsyncMultiWriter(writers)
  progress = console.Progress(num_steps, steps_per_epoch, config.console_every_secs)
  eta = None  # from the end of this session's first step, once compiled
  # The checkpoint's step is also the number of batches consumed.
  train_iter = dataset.train_iterator(batch_size=local_batch, seed=config.seed,
                                      shard=shard, start_step=first_step)
  save_every = config.checkpoint.every_steps

  # A resumed run's time adds to the time counted up to its checkpoint, and
  # its first logged interval takes in the steps a preempted run had not logged.
  session_start = time.perf_counter()
  start = session_start - carried.get('train_seconds', results.get('train_seconds', 0.0))
  pending: list[TrainMetrics] = _uncarry(carried.get('pending'))
  interval_start, data_wait = time.perf_counter(), 0.0

  def log_interval(step: int) -> None:
    """Writes the mean training metrics since the last call, at `step`."""
    nonlocal pending, interval_start, data_wait
    if not pending:
      return
    pending = jax.device_get(pending)
    _check_finite(pending, step + 1 - len(pending))
    now = time.perf_counter()
    interval = now - interval_start
    summary = {f'train_{k}': v for k, v in
               functools.reduce(TrainMetrics.merge, pending).compute().items()}
    summary['images_per_sec'] = len(pending) * config.batch_size / interval
    summary['steps_per_sec'] = len(pending) / interval
    summary['data_wait_fraction'] = data_wait / interval
    summary['skipped_images'] = train_iter.skipped
    summary['uptime'] = now - session_start
    writer.write_scalars(step, summary)
    if progress.due(step, now):
      logging.info('%s', progress.line(step, now, summary, eta))
    pending, interval_start, data_wait = [], time.perf_counter(), 0.0

  def bookkeeping() -> dict[str, Any]:
    """What a resumed run needs to go on as this one would: the time so
    far and the training metrics not yet logged."""
    return {'train_seconds': time.perf_counter() - start,
            'pending': _carry(pending)}

  preempted = waiting_for_data = False
  trace = profiling.StepTrace(workdir, config.profile_steps, first_step)
  with checkpointing.Preemption(checkpoints) as preemption:
    for step in range(first_step, num_steps):
      trace.before_step(step, state)
      t = time.perf_counter()
      batch = preemption.next_or_none(train_iter)
      data_wait += time.perf_counter() - t
      if batch is None:  # SIGTERM while waiting for data: save this step
        if step not in checkpoints.steps():  # unless the loop just saved it
          checkpoints.save(state, results=results, evaluated=False,
                           progress=bookkeeping())
        preempted = waiting_for_data = True
        break
      with (console.phase('Compiling the train step') if eta is None
            else contextlib.nullcontext()):
        state, step_metrics = trainer.train_step(state, batch)
      if eta is None:
        eta = console.Eta(num_steps, eval_every, step + 1, time.perf_counter())
      pending.append(step_metrics)

      done = step + 1 == num_steps
      evaluate = (step + 1) % eval_every == 0 or done
      preempted = preemption.requested(step + 1)
      scheduled = (evaluate or (step + 1) % steps_per_epoch == 0 or
                   (save_every > 0 and (step + 1) % save_every == 0))
      save = scheduled or preempted
      # Logging at every scheduled save makes a resumed run average over the
      # same steps as an uninterrupted one, so both write the same metric
      # log; a preempted save carries its steps instead (bookkeeping).
      if (step + 1) % config.log_every_steps == 0 or scheduled:
        log_interval(step + 1)

      if evaluate:
        eval_start = time.perf_counter()
        val = evaluation.evaluate(trainer, state, config, dataset)
        eval_seconds = time.perf_counter() - eval_start
        eta.add_evaluation(eval_seconds)
        logging.info('%s', console.evaluation(step + 1, (step + 1) / steps_per_epoch,
                                              val, eval_seconds))
        # The paper's test (section 4.1), of the final state only: 10x the work.
        final = (evaluation.evaluate(trainer, state, config, dataset, ten_crop=True)
                 if done else None)
        state = trainer.after_eval(state, val['top1_error'])
        results = dict(
            val_top1_error=val['top1_error'],
            val_top5_error=val['top5_error'],
            val_loss=val['loss'],
            val_examples=val['examples'],
            step=step + 1,
            epoch=(step + 1) / steps_per_epoch,
            train_seconds=time.perf_counter() - start)
        if final:
          results.update(val_top1_error_10crop=final['top1_error'],
                         val_top5_error_10crop=final['top5_error'],
                         val_examples_10crop=final['examples'])
          logging.info('10-crop test of the final state: top-1 error %.4f, top-5 '
                       'error %.4f, on %d examples.', final['top1_error'],
                       final['top5_error'], final['examples'])
        # The ReLUs' sparsity (section 3.1) goes to the logs, not results.
        writer.write_scalars(step + 1, {
            **{k: v for k, v in results.items() if k.startswith('val_')},
            **{f'val_{k}': v for k, v in val.items() if k.startswith('relu_zeros_')}})
        # The paper's Figure 3 as it develops (every process gathers).
        writer.write_images(step + 1, {'conv1_kernels': kernels.filter_grid(
            parallel.host_array(state.params['conv1']['kernel']))[None]})
        if jax.process_index() == 0:
          run_files.write_results(workdir, results)
        # Reset the interval so evaluation time does not count as training time.
        interval_start, data_wait = time.perf_counter(), 0.0

      if save:
        checkpoints.save(state, results=results, evaluated=evaluate,
                         progress=bookkeeping())
      if preempted:
        break
  trace.stop(state)
  if not waiting_for_data:  # else the iterator is busy on another thread
    train_iter.close()
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
