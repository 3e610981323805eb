"""The paper's AlexNet on ImageNet, and its ablations.

Variants are parsed from the text after the colon, e.g.
  --config=configs/alexnet.py:lrn=off,pool=2x2
  --config=configs/alexnet.py:arch=owt
  --config=configs/alexnet.py:towers=1,norm=batchnorm,init=modern,dtype=bfloat16
Every field can also be overridden with --config.KEY=VALUE.
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = dict(
    arch='paper',            # paper | owt ("one weird trick" / torchvision layout)
    towers='',               # 1 | 2 (default: 2 for paper, 1 for owt)
    norm='',                 # lrn | batchnorm | none (default: lrn for paper)
    lrn='',                  # on | off: shorthand for norm=lrn | norm=none
    norm_position='before_pool',  # before_pool (the paper) | after_pool (CaffeNet)
    pool='3x3',              # 3x3 (overlapping, stride 2) | 2x2 (non-overlapping)
    init='',                 # paper: N(0, 0.01), biases 1 | modern: He normal, biases 0
    dtype='float32',         # compute dtype: float32 | bfloat16 (params stay float32)
    schedule='plateau',      # plateau | step
    parallel='data',         # a strategy of configs.common.PARALLEL_RULES
)

ARCHITECTURES = {
    # 96, 256, 384, 384, 256 kernels in two towers of 227x227 input (the paper).
    'paper': dict(features=(96, 256, 384, 384, 256), towers=2, norm='lrn',
                  conv1_padding=0, image_size=227),
    # Krizhevsky 2014 / torchvision: one tower, no LRN, 224 input, padded conv1.
    'owt': dict(features=(64, 192, 384, 256, 256), towers=1, norm='none',
                conv1_padding=2, image_size=224),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the paper's training setup, adjusted by the `arg` variants."""
  v = common.parse_arg(arg, **VARIANTS)
  arch = common.choose('arch', v.arch, ARCHITECTURES)
  norm = v.norm or arch['norm']
  if v.lrn:
    norm = common.choose('lrn', v.lrn, {'on': 'lrn', 'off': 'none'})

  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict(dict(
      name='imagenet2012',
      # Where TFDS keeps prepared datasets (None: TFDS's default, ~/tensorflow_datasets).
      data_dir=ml_collections.FieldReference(None, field_type=str),
      # Where manually downloaded archives lie (None: <data_dir>/downloads/manual).
      manual_dir=ml_collections.FieldReference(None, field_type=str),
      train_split='train',
      eval_split='validation',
      resize_size=256,          # shorter side, before cropping
      image_size=arch['image_size'],
      # The paper subtracts the mean and trains on raw centred RGB (0-255).
      mean_rgb=(123.68, 116.78, 103.94),
      std_rgb=(1.0, 1.0, 1.0),
      shuffle_buffer=16_384,
      prefetch=2,
  ))

  config.model = ml_collections.ConfigDict(dict(
      num_classes=1000,
      towers=int(v.towers or arch['towers']),
      features=arch['features'],
      fc_features=(4096, 4096),
      conv1_kernel=11,
      conv1_stride=4,
      conv1_padding=arch['conv1_padding'],
      norm=common.choose('norm', norm, {n: n for n in ('lrn', 'batchnorm', 'none')}),
      norm_position=common.choose(
          'norm_position', v.norm_position,
          {p: p for p in ('before_pool', 'after_pool')}),
      lrn_k=2.0, lrn_n=5, lrn_alpha=1e-4, lrn_beta=0.75,
      pool_window=common.choose('pool', v.pool, {'3x3': 3, '2x2': 2}),
      pool_stride=2,
      dropout_rate=0.5,
      initialization=common.choose('init', v.init or ('paper' if v.arch == 'paper' else 'modern'),
                         {'paper': 'paper', 'modern': 'modern'}),
      dtype=common.choose('dtype', v.dtype, {'float32': 'float32', 'bfloat16': 'bfloat16'}),
  ))
  common.choose('towers', str(config.model.towers), {'1': 1, '2': 2})

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.01,
      momentum=0.9,
      weight_decay=0.0005,
  ))
  config.schedule = ml_collections.ConfigDict(dict(
      name=common.choose('schedule', v.schedule, {'plateau': 'plateau', 'step': 'step'}),
      factor=0.1,
      # plateau: divide when validation top-1 error has not improved by
      # `threshold` (absolute) for `patience` evaluations; at most
      # `max_reductions` times, as in the paper.
      patience=4,
      threshold=0.001,
      max_reductions=3,
      # step: divide at these epochs.
      boundaries=(30, 60, 80),
  ))

  config.batch_size = 128          # global, over all devices and hosts
  config.eval_batch_size = 128
  config.num_epochs = 90
  config.num_train_steps = -1      # > 0 stops earlier (tests, smoke runs)
  config.steps_per_epoch = -1      # > 0 overrides dataset size / batch size
  config.eval_every_epochs = 1.0
  config.log_every_steps = 100

  config.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))  # -1: the rest
  config.axis_rules = common.choose('parallel', v.parallel, common.PARALLEL_RULES)
  return config
