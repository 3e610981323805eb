"""Evaluation: a state's errors on the evaluation split; --mode=eval, a
saved checkpoint's centre-crop and 10-crop errors; --mode=predict, its
top classes for image files."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

import checkpointing
import input_pipeline
import parallel
from data import image_folder, preprocessing
from runtime import errors
from trainer import NonFiniteError, Trainer, TrainState

# The paper's test averages the softmax over ten crops (corners, centre and
# their mirror images); the centre crop alone is the common cheaper number.
CROPS = (('centre crop', False), ('10-crop', True))


def evaluate(trainer: Trainer, state: TrainState, config: ml_collections.ConfigDict,
             dataset: input_pipeline.Dataset, *, ten_crop: bool = False
             ) -> dict[str, float]:
  """`state`'s loss, top-1 and top-5 error on `dataset`'s
  config.data.eval_split, and the number of examples they count (`examples`).

  An evaluation that counts no example (every image undecodable) is an
  error, not a NaN reported as a result; so is one where an example gets a
  NaN or infinite logit (NonFiniteError): a diverged state has no error
  rate worth reporting.
  """
  shard = parallel.input_shard(trainer.mesh, config.axis_rules)
  batches = dataset.eval_iterator(batch_size=shard.local(config.eval_batch_size),
                                  shard=shard, ten_crop=ten_crop)
  metrics = trainer.evaluate(state, batches)
  examples = int(metrics.loss.count)
  if not examples:
    raise errors.InvalidInput(
        f'No example of split {config.data.eval_split!r} of '
        f'{dataset.name!r} could be evaluated: '
        'every image failed to decode. Check the files, or evaluate another '
        'split with --config.data.eval_split.')
  if nonfinite := round(float(metrics.nonfinite.total)):
    raise NonFiniteError(
        f'{nonfinite:,} of the {examples:,} examples of split '
        f'{config.data.eval_split!r} got NaN or infinite logits from the state '
        f'at step {int(state.step)}: it diverged, and its errors are not '
        'reported. Evaluate an earlier checkpoint (--config.eval.checkpoint='
        'STEP), or train again with a lower --config.optimizer.learning_rate.')
  values = {k: float(v) for k, v in metrics.compute().items() if k != 'nonfinite'}
  return {**values, 'examples': examples}


def _choose_step(which: str, checkpoints: checkpointing.Checkpoints) -> int:
  steps = checkpoints.steps()
  if not steps:
    raise errors.NotFound(
        f'No checkpoint in {checkpoints.directory}; train first, or pass the '
        "--workdir of a run that saved one.")
  if which == 'latest':
    return steps[-1]
  if which == 'best':
    best = checkpoints.best_step()
    if best is None:
      raise errors.InvalidInput(f'No checkpoint in {checkpoints.directory} was saved '
                                "after an evaluation; use --config.eval.checkpoint=latest.")
    return best
  if which.isdigit() and int(which) in steps:
    return int(which)
  raise errors.InvalidInput(f'--config.eval.checkpoint={which!r} is not latest, best or '
                            f'one of the saved steps {steps}.')


@dataclasses.dataclass(frozen=True)
class Chosen:
  """The checkpoint config.eval.checkpoint names, restored."""
  config: ml_collections.ConfigDict   # with the dataset's class count
  trainer: Trainer
  state: TrainState
  step: int
  description: str                    # 'Checkpoint STEP (WHICH) of DIR'
  dataset: input_pipeline.Dataset | None


def restore_chosen(config: ml_collections.ConfigDict, workdir: str,
                   dataset: input_pipeline.Dataset | None = None) -> Chosen:
  """Restores config.eval.checkpoint (latest, best or a step) of `workdir`
  for `dataset`, whose images it is to see (its normalisation); without one,
  for looking at the parameters alone."""
  config = input_pipeline.with_dataset_classes(config, dataset)
  trainer = Trainer(config, parallel.make_mesh(config.mesh),
                    mean_image=dataset.mean_image if dataset else None)
  checkpoints = checkpointing.Checkpoints(workdir, config, read_only=True)
  step = _choose_step(str(config.eval.checkpoint), checkpoints)
  state = checkpoints.restore(trainer, step).state
  checkpoints.close()
  return Chosen(config, trainer, state, step,
                f'Checkpoint {step} ({config.eval.checkpoint}) of '
                f'{checkpoints.directory}', dataset)


def report(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Evaluates config.eval.checkpoint of `workdir`; returns a table."""
  chosen = restore_chosen(config, workdir, input_pipeline.load(config.data))
  config = chosen.config
  lines = [f'{chosen.description}, split {config.data.eval_split!r}:',
           f'{"crop":<12}{"top-1 error":>13}{"top-5 error":>13}{"examples":>10}']
  for name, ten_crop in CROPS:
    errors = evaluate(chosen.trainer, chosen.state, config, chosen.dataset,
                      ten_crop=ten_crop)
    lines.append(f'{name:<12}{errors["top1_error"]:>13.4f}'
                 f'{errors["top5_error"]:>13.4f}{errors["examples"]:>10,}')
  return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Outputs:
  """predict_step's outputs for some examples, and those left out."""
  index: np.ndarray               # (n,) the examples' indices
  # 'probabilities', 'fc7', the crops ('image') and the examples' other
  # keys ('label'), (n, ...) each.
  values: dict[str, np.ndarray]
  skipped: list[int]              # indices up to these that failed to load


def outputs(chosen: Chosen, examples: tf.data.Dataset,
            load: Callable[[tf.Tensor], tf.Tensor], count: int, *,
            ten_crop: bool = False, resample: bool = True) -> Iterator[Outputs]:
  """predict_step over {'index': 0..count-1, 'image', ...} examples, in
  order, a batch at a time, with a progress bar; undecodable examples are
  reported in `skipped` (input_pipeline.Dataset.views)."""
  if jax.process_count() > 1:
    raise errors.InvalidInput('Predictions and figures run as one process; start '
                              'this mode without --num_processes.')
  config = chosen.config
  batches = chosen.dataset.views(
      examples, load, ten_crop=ten_crop, resample=resample,
      batch_size=parallel.process_shard().local(config.eval_batch_size))
  expected = 0
  with tqdm.tqdm(total=count, unit='img', file=sys.stderr) as progress:
    for batch in batches:
      valid = batch['index'] >= 0
      index = batch['index'][valid]
      values = {**chosen.trainer.predict(chosen.state, batch),
                **{k: v for k, v in batch.items() if k not in ('index', 'shift', 'corner')}}
      values = {k: v[valid] for k, v in values.items()}
      # A batch holds at least one example: failures are dropped before
      # batching, and leave gaps in the indices.
      missing = np.setdiff1d(np.arange(expected, index[-1] + 1), index)
      yield Outputs(index, values, [int(i) for i in missing])
      expected = int(index[-1]) + 1
      progress.update(expected - progress.n)
    progress.update(count - progress.n)
    if expected < count:
      yield Outputs(np.zeros(0, np.int64), {}, list(range(expected, count)))


def file_outputs(chosen: Chosen, paths: list[str], *,
                 ten_crop: bool = False) -> Iterator[Outputs]:
  """`outputs` of image files; their indices are into `paths`."""
  examples = tf.data.Dataset.from_tensor_slices(
      {'index': np.arange(len(paths), dtype=np.int64), 'image': paths})
  return outputs(chosen, examples, tf.io.read_file, len(paths), ten_crop=ten_crop)


def split_inputs(inputs: str) -> list[str]:
  """PATH[,PATH...] as paths; `\\,` is a comma within a path."""
  return [p.replace('\\,', ',') for p in re.split(r'(?<!\\),', inputs)]


def input_paths(config: ml_collections.ConfigDict) -> list[str]:
  """config.predict.inputs' files, and the images under its folders."""
  inputs = config.predict.inputs
  if not inputs:
    raise errors.InvalidInput('Set --config.predict.inputs=PATH[,PATH...]: image files '
                              'or folders of them (searched recursively); write a '
                              'comma within a path as \\,.')
  # Named before any checkpoint loads: a misspelt path is no unreadable image.
  missing = [p for p in split_inputs(inputs) if not os.path.exists(p)]
  if missing:
    raise errors.NotFound(
        f'--config.predict.inputs names {", ".join(map(repr, missing))}, which '
        f'do{"es" if len(missing) == 1 else ""} not exist (relative paths start '
        f'from {os.getcwd()}).')
  paths = image_folder.find_images(split_inputs(inputs))
  if not paths:
    raise errors.InvalidInput(f'No image files in --config.predict.inputs={inputs!r} '
                              '(folders are searched for .jpg, .jpeg, .png, .bmp, .gif).')
  return paths


def report_skipped(paths: list[str], skipped: list[int]) -> None:
  """Logs each skipped input's path and why it could not be read."""
  for i in skipped:
    logging.error('Skipped %s: not readable as an image (%s).', paths[i],
                  preprocessing.why_unreadable(paths[i]))


def predict(config: ml_collections.ConfigDict, workdir: str,
            out: TextIO = sys.stdout) -> list[str]:
  """Writes the top config.predict.top_k classes of each of
  config.predict.inputs to `out`, as text or JSON lines
  (config.predict.format); returns the paths skipped as unreadable. A
  model whose probabilities are not finite stops it (NonFiniteError)."""
  if config.predict.format not in ('text', 'json'):
    raise errors.InvalidInput(f'--config.predict.format={config.predict.format!r}: '
                              "use 'text' or 'json'.")
  paths = input_paths(config)
  chosen = restore_chosen(config, workdir, input_pipeline.load(config.data))
  names = chosen.dataset.class_names
  logging.info('%s: predicting %d images.', chosen.description, len(paths))
  skipped = []
  for batch in file_outputs(chosen, paths, ten_crop=config.predict.ten_crop):
    report_skipped(paths, batch.skipped)
    skipped += batch.skipped
    probabilities = batch.values.get('probabilities', np.zeros((0, 0)))
    if not np.isfinite(probabilities).all():
      bad = batch.index[~np.isfinite(probabilities).all(axis=-1)]
      raise NonFiniteError(
          f'{chosen.description} gives NaN or infinite probabilities for '
          f'{len(bad)} image(s) of this batch, the first {paths[bad[0]]}: the '
          'model diverged, and no prediction is written for them. Predict '
          'with an earlier checkpoint (--config.eval.checkpoint=STEP).')
    for i, p in zip(batch.index, probabilities):
      top = np.argsort(-p, kind='stable')[:config.predict.top_k]
      if config.predict.format == 'json':
        out.write(json.dumps({'path': paths[i], 'predictions': [
            {'label': int(k), 'name': names[k], 'probability': float(p[k])}
            for k in top]}, allow_nan=False) + '\n')
      else:
        out.write(paths[i] + '\n' + ''.join(
            f'  {p[k]:.4f}  {names[k]}\n' for k in top))
    out.flush()
  return [paths[i] for i in skipped]


def predict_report(config: ml_collections.ConfigDict,
                   workdir: str) -> errors.Skipped | None:
  """--mode=predict: `predict` to stdout; errors.Skipped when some inputs
  could not be read (main.py then exits with errors.EXIT_SKIPPED)."""
  skipped = predict(config, workdir)
  return errors.Skipped(None, len(skipped)) if skipped else None
