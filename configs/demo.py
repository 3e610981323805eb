"""A scaled-down AlexNet on the embedded demo dataset: minutes on a laptop CPU.

The same layers and towers as the paper's network (five convolutions, LRN,
overlapping pooling, three fully connected layers, two towers), narrower and
on 71x71 crops of 80x80 generated images of ten shape classes. The dataset is
generated on first use under data_dir; nothing is downloaded. Accepts the
same variants as configs/alexnet.py, e.g. configs/demo.py:lrn=off,towers=1
(`arch=one_gpu` halves the demo's conv1..conv4 as it does the paper's);
`size=tiny` is the tiny network on the 320-image `demo_shapes/tiny`, for
tests; `size=smoke` the same without dropout, 200 steps of 32 images at a
constant rate of 0.01, evaluated every 50: the README's check, in about a
minute, that an install learns.
"""

from __future__ import annotations

import ml_collections

from configs import alexnet, variants
from models import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  v = variants.parse(arg, alexnet.VARIANTS)
  smoke = v['size'] == 'smoke'
  if smoke:
    v['size'] = 'tiny'
  # The paper's N(0, 0.01) init is slow to start; the demo should learn at
  # once. The per-channel mean spares the tests computing a mean image.
  config = alexnet.build({**v, 'init': v['init'] or 'modern',
                          'mean': v['mean'] or 'channel'})

  config.data.name = 'demo_shapes/tiny' if v['size'] == 'tiny' else 'demo_shapes'
  config.data.resize_size = 80
  config.data.image_size = 71
  config.data.mean_rgb = (127.5, 127.5, 127.5)
  config.data.std_rgb = (64.0, 64.0, 64.0)
  config.data.shuffle_buffer = 8_000

  config.model.num_classes = 10
  if v['size'] == 'full':
    config.model.features = presets.conv_features(
        presets.ARCHITECTURES[v['arch']], (32, 64, 96, 96, 64))
    config.model.fc_features = (256, 256)
  config.optimizer.learning_rate = 0.02

  config.num_epochs = 12
  config.schedule.patience = 3
  config.eval_every_epochs = 1.0
  config.log_every_steps = 62  # about once an epoch
  if smoke:
    # The tiny network leaves chance in about 100 such steps (with dropout,
    # or at 128 images a step, not within 200); no plateau cuts the rate.
    config.batch_size = config.eval_batch_size = 32
    config.num_train_steps = 200
    config.eval_every_epochs = 5.0
    config.log_every_steps = 25
    config.model.dropout_rate = 0.0
    config.optimizer.learning_rate = 0.01
    config.schedule.max_reductions = 0
  return config
