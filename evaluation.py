"""Evaluation: a state's errors on the evaluation split, and --mode=eval, a
saved checkpoint's centre-crop and 10-crop errors."""

from __future__ import annotations

import ml_collections

import checkpointing
import input_pipeline
import parallel
from trainer import Trainer, TrainState

# The paper's test averages the softmax over ten crops (corners, centre and
# their mirror images); the centre crop alone is the common cheaper number.
CROPS = (('centre crop', False), ('10-crop', True))


def evaluate(trainer: Trainer, state: TrainState, config: ml_collections.ConfigDict,
             *, ten_crop: bool = False) -> dict[str, float]:
  """`state`'s loss, top-1 and top-5 error on config.data.eval_split, and
  the number of examples they count (`examples`).

  An evaluation that counts no example (every image undecodable) is an
  error, not a NaN reported as a result.
  """
  batches = input_pipeline.eval_iterator(
      config.data, batch_size=parallel.process_batch_size(config.eval_batch_size),
      ten_crop=ten_crop)
  metrics = trainer.evaluate(state, batches)
  examples = int(metrics.loss.count)
  if not examples:
    raise ValueError(
        f'No example of split {config.data.eval_split!r} of '
        f'{input_pipeline.source_name(config.data)!r} could be evaluated: '
        'every image failed to decode. Check the files, or evaluate another '
        'split with --config.data.eval_split.')
  return {**{k: float(v) for k, v in metrics.compute().items()},
          'examples': examples}


def _choose_step(which: str, checkpoints: checkpointing.Checkpoints) -> int:
  steps = checkpoints.steps()
  if not steps:
    raise FileNotFoundError(
        f'No checkpoint in {checkpoints.directory}; train first, or pass the '
        "--workdir of a run that saved one.")
  if which == 'latest':
    return steps[-1]
  if which == 'best':
    best = checkpoints.best_step()
    if best is None:
      raise ValueError(f'No checkpoint in {checkpoints.directory} was saved '
                       "after an evaluation; use --config.eval.checkpoint=latest.")
    return best
  if which.isdigit() and int(which) in steps:
    return int(which)
  raise ValueError(f'--config.eval.checkpoint={which!r} is not latest, best or '
                   f'one of the saved steps {steps}.')


def report(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Evaluates config.eval.checkpoint of `workdir`; returns a table."""
  config = input_pipeline.with_dataset_classes(config)
  mesh = parallel.make_mesh(config.mesh)
  trainer = Trainer(config, mesh)
  checkpoints = checkpointing.Checkpoints(workdir, config, read_only=True)
  step = _choose_step(str(config.eval.checkpoint), checkpoints)
  state = checkpoints.restore(trainer, step).state
  checkpoints.close()

  lines = [f'Checkpoint {step} ({config.eval.checkpoint}) of {checkpoints.directory}, '
           f'split {config.data.eval_split!r}:',
           f'{"crop":<12}{"top-1 error":>13}{"top-5 error":>13}{"examples":>10}']
  for name, ten_crop in CROPS:
    errors = evaluate(trainer, state, config, ten_crop=ten_crop)
    lines.append(f'{name:<12}{errors["top1_error"]:>13.4f}'
                 f'{errors["top5_error"]:>13.4f}{errors["examples"]:>10,}')
  return '\n'.join(lines)
