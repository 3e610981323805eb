"""Checks a config before anything runs: every count positive, every tuple
the right length, every choice one of its values, and an input large enough
for the network; each problem named with its key and the valid range."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_collections

from models import winograd
from runtime import errors

Check = tuple[Callable[[Any], bool], str]  # (is the value valid, valid range)


def _number(x: Any) -> bool:
  """A finite int or float (NaN and infinity are not settings)."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(low: int, high: int | None = None) -> Check:
  return (lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= low
          and (high is None or x <= high),
          f'an integer >= {low}' if high is None else f'an integer in [{low}, {high}]')


def _between(low: float, high: float, *, low_open: bool = False,
             high_open: bool = True) -> Check:
  def valid(x):
    return (_number(x) and (x > low if low_open else x >= low) and
            (x < high if high_open else x <= high))
  return valid, (f'a number in {"(" if low_open else "["}{low}, {high}'
                 f'{")" if high_open else "]"}')


def _positive() -> Check:
  return (lambda x: _number(x) and x > 0), 'a finite number > 0'


def _one_of(*values: Any) -> Check:
  return (lambda x: x in values), f'one of {", ".join(map(repr, values))}'


def _tuple(length: int, item: Check) -> Check:
  valid, expected = item
  return (lambda x: isinstance(x, (tuple, list)) and len(x) == length and
          all(valid(v) for v in x), f'{length} values, each {expected}')


def _optional_str() -> Check:
  return (lambda x: x is None or (isinstance(x, str) and bool(x))), (
      'a non-empty string, or None')


RULES: dict[str, Check] = {
    'seed': _int(0),
    'batch_size': _int(1),
    'eval_batch_size': _int(1),
    'num_epochs': _positive(),
    'num_train_steps': ((lambda x: isinstance(x, int) and (x == -1 or x >= 1)),
                        '-1 (num_epochs decides) or an integer >= 1'),
    'eval_every_epochs': _positive(),
    'log_every_steps': _int(1),
    'console_every_secs': _between(0, float('inf')),
    'data.resize_size': _int(1),
    'data.image_size': _int(1),
    'data.val_fraction': _between(0, 1),
    'data.mean_rgb': _tuple(3, _between(0, 255, high_open=False)),
    'data.std_rgb': _tuple(3, _positive()),
    'data.pca_sigma': _between(0, float('inf')),
    'data.eigval': _tuple(3, _between(0, float('inf'))),
    'data.eigvec': _tuple(3, _tuple(3, _between(-1, 1, high_open=False))),
    'data.shuffle_buffer': _int(1),
    'data.jpeg_dct': _one_of('accurate', 'fast'),
    'data.prefetch': _int(1),
    'model.num_classes': ((lambda x: isinstance(x, int) and x >= 0),
                          "an integer >= 1, or 0 for the dataset's count"),
    'model.towers': _int(1),
    'model.features': _tuple(5, _int(1)),
    'model.fc_features': _tuple(2, _int(1)),
    'model.conv1_kernel': _int(1),
    'model.conv1_stride': _int(1),
    'model.conv1_padding': _int(0),
    'model.norm': _one_of('lrn', 'batchnorm', 'none'),
    'model.norm_position': _one_of('before_pool', 'after_pool'),
    'model.lrn_k': _positive(),
    'model.lrn_n': _int(1),
    'model.lrn_alpha': _between(0, float('inf')),
    'model.lrn_beta': _between(0, float('inf')),
    # models/pooling.py keeps each window's argmax offset as an int8.
    'model.pool_window': _int(1, 11),
    'model.pool_stride': _int(1),
    'model.dropout_rate': _between(0, 1),
    'model.dropout_position': _one_of('after', 'before'),
    'model.initialization': _one_of('paper', 'modern'),
    'model.dtype': _one_of('float32', 'bfloat16'),
    'model.conv_algorithm': _one_of(*winograd.ALGORITHMS),
    'optimizer.learning_rate': _positive(),
    'optimizer.momentum': _between(0, 1),
    'optimizer.weight_decay': _between(0, float('inf')),
    'schedule.name': _one_of('plateau', 'step'),
    'schedule.factor': _between(0, 1, low_open=True),
    'schedule.patience': _int(0),
    'schedule.threshold': _between(0, float('inf')),
    'schedule.max_reductions': _int(0),
    'schedule.boundaries': ((lambda x: isinstance(x, (tuple, list)) and all(
        _number(b) and b > 0 for b in x) and list(x) == sorted(x)),
                            'increasing epochs > 0'),
    'checkpoint.keep': ((lambda x: isinstance(x, int) and x >= 1),
                        'an integer >= 1: the latest checkpoint must survive, '
                        'or a rerun would start again at step 0'),
    'checkpoint.keep_best': _int(0),
    'checkpoint.every_steps': (lambda x: isinstance(x, int),
                               'an integer (<= 0: only at epoch ends, '
                               'evaluations and the end)'),
    'eval.checkpoint': ((lambda x: isinstance(x, str) and (
        x in ('latest', 'best') or x.isdigit())), "'latest', 'best' or a step"),
    'mesh.data': ((lambda x: isinstance(x, int) and (x == -1 or x >= 1)),
                  '-1 (the devices the model axis leaves) or an integer >= 1'),
    'mesh.model': _int(1),
    'predict.format': _one_of('text', 'json'),
    'predict.top_k': _int(1),
    'predict.neighbours': _int(1),
    'predict.neighbour_subset': _int(0),
    'benchmark.steps': _int(1),
    'benchmark.rounds': _int(1),
    'benchmark.torch': _one_of('best', 'eager', 'compile', 'off'),
    'profile_steps': ((lambda x: isinstance(x, (tuple, list)) and (
        len(x) == 0 or (len(x) == 2 and all(isinstance(v, int) for v in x)
                        and x[0] >= 0 and x[1] >= 1))),
                      '() or (first step >= 0, number of steps >= 1)'),
    'init_from': _optional_str(),
    'data.stats_file': _optional_str(),
    'data.image_folder': _optional_str(),
    'data.imagenet_folder': _optional_str(),
    'checkpoint.allow_other_data': (lambda x: isinstance(x, bool), 'True or False'),
    'data.prepared_dir': _optional_str(),
}


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split('.'):
    config = config[part]
  return config


def _output_side(config: ml_collections.ConfigDict) -> int:
  """The side of pool5's output for data.image_size: conv1 and the three
  poolings shrink it (conv2..conv5 are padded to keep it)."""
  m = config.model
  side = ((config.data.image_size + 2 * m.conv1_padding - m.conv1_kernel)
          // m.conv1_stride + 1)
  for _ in range(3):  # pool1, pool2, pool5
    side = (side - m.pool_window) // m.pool_stride + 1
  return side


def _smallest_input(config: ml_collections.ConfigDict) -> int:
  probe = config.copy_and_resolve_references()
  size = 1
  while True:
    probe.data.image_size = size
    if _output_side(probe) >= 1:
      return size
    size += 1


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError listing every invalid key of `config`, with what it
  may be."""
  problems = []
  for key, (valid, expected) in RULES.items():
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      continue  # a config without the key (the rules cover both configs)
    if not valid(value):
      problems.append(f'--config.{key}={value!r}: must be {expected}.')
  if not problems:
    towers, features = config.model.towers, config.model.features
    if any(f % towers for f in features):
      problems.append(
          f'--config.model.features={tuple(features)}: each must divide into '
          f'model.towers={towers} towers.')
    if config.data.image_folder and config.data.get('imagenet_folder'):
      problems.append(
          '--config.data.image_folder and --config.data.imagenet_folder are both '
          'set: name one source (imagenet_folder for ILSVRC-2012 extracted).')
    if config.data.image_size > config.data.resize_size:
      problems.append(
          f'--config.data.image_size={config.data.image_size}: must not exceed '
          f'data.resize_size={config.data.resize_size}, the side of the resized '
          'image the crops are taken from.')
    if _output_side(config) < 1:
      problems.append(
          f'--config.data.image_size={config.data.image_size}: too small for '
          'the network, whose convolutions and pooling leave nothing of it; '
          f'the smallest that works is {_smallest_input(config)}.')
  if problems:
    raise errors.InvalidInput('Invalid config:\n  ' + '\n  '.join(problems))
