"""train_and_evaluate(config, workdir): the training loop, evaluation and metrics."""

import functools
import os
import time
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

import checkpointing
import evaluation
import input_pipeline
import parallel
import run_files
from trainer import Trainer, TrainMetrics


def _check_finite(step_metrics: list[TrainMetrics], first_step: int) -> None:
  for i, m in enumerate(step_metrics):
    loss = float(m.loss.compute())
    if not np.isfinite(loss):
      raise FloatingPointError(
          f'Training loss became {loss} at step {first_step + i}; stopped. '
          'Lower --config.optimizer.learning_rate or check the input data.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`; returns the final validation results."""
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.mesh)
  info = input_pipeline.dataset_info(config.data)
  config = input_pipeline.with_dataset_classes(config, info.num_classes)
  local_batch = parallel.process_batch_size(config.batch_size)
  steps_per_epoch = input_pipeline.steps_per_epoch(config.data, local_batch)
  source = input_pipeline.source_name(config.data)
  if steps_per_epoch < 1:
    raise ValueError(
        f'The training split of {source!r} has {info.num_train_examples} '
        f'examples, fewer than one batch of {config.batch_size} '
        f'({local_batch} on each of {jax.process_count()} processes); lower '
        '--config.batch_size.')
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))

  trainer = Trainer(config, mesh, steps_per_epoch)
  checkpoints = checkpointing.Checkpoints(workdir, config)
  restored = checkpoints.restore_latest(trainer)
  if restored is not None:
    state, results = restored.state, restored.results
  else:
    state, results = trainer.init(config.seed), {}
    if config.init_from:
      state = checkpointing.load_params(config.init_from, trainer, state)
  first_step = int(state.step)
  if first_step > num_steps:
    raise ValueError(
        f'The checkpoint in {checkpoints.directory} is at step {first_step}, past '
        f'this run\'s {num_steps} steps; raise --config.num_epochs or '
        '--config.num_train_steps, or start a new --workdir.')
  logging.info('Training %s for %d steps (%d per epoch) from step %d on a %s mesh '
               'of %d devices.', source, num_steps, steps_per_epoch,
               first_step, dict(mesh.shape), mesh.size)

  writers = [metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)]
  if jax.process_index() == 0:
    writers.append(run_files.JsonlWriter(workdir, resume_step=first_step))
  writer = metric_writers.MultiWriter(writers)
  writer.write_hparams(
      {k: str(v) for k, v in flax.traverse_util.flatten_dict(
          config.to_dict(), sep='.').items()})
  progress = periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.log_every_steps)
  # The checkpoint's step is also the number of batches consumed.
  train_iter = input_pipeline.train_iterator(config.data, batch_size=local_batch,
                                             seed=config.seed, start_step=first_step)
  save_every = config.checkpoint.every_steps

  # A resumed run's time adds to the time its checkpoint's results counted.
  start = time.perf_counter() - results.get('train_seconds', 0.0)
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
          val = evaluation.evaluate(trainer, state, config)
          # The paper's test (section 4.1), of the final state only: 10x the work.
          final = evaluation.evaluate(trainer, state, config, ten_crop=True) if done else None
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
        writer.write_scalars(step + 1, {k: v for k, v in results.items()
                                        if k.startswith('val_')})
        if jax.process_index() == 0:
          run_files.write_results(workdir, results)
        # Reset the interval so evaluation time does not count as training time.
        interval_start, data_wait = time.perf_counter(), 0.0

      if save:
        checkpoints.save(state, results=results, evaluated=evaluate)
      if preempted:
        break
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
