"""Named AlexNet architectures and sizes: the fields of models.AlexNet they set.

The config variants `arch=NAME` and `size=NAME` (configs/alexnet.py) pick them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_PAPER = dict(features=(96, 256, 384, 384, 256), towers=2, norm='lrn',
              conv1_padding=0, image_size=227, init='paper',
              dropout_position='after')

ARCHITECTURES: dict[str, dict] = {
    # The paper (section 3.5): 96, 256, 384, 384, 256 kernels in two towers,
    # LRN after conv1 and conv2, 227x227 input, N(0, 0.01) init (section 5);
    # dropout after fc6 and fc7 (section 4.2).
    'paper': _PAPER,
    # The one-GPU net the paper compares its two towers with (section 3.2):
    # one tower with half the kernels of conv1..conv4; its footnote keeps
    # conv5 and the fully connected layers whole. `kernel_fraction` applies
    # to whatever widths the size or config gives the two-tower net.
    'one_gpu': {**_PAPER, 'towers': 1, 'kernel_fraction': (0.5, 0.5, 0.5, 0.5, 1.0)},
    # Krizhevsky 2014 / torchvision: one tower, no LRN, 224 input, padded
    # conv1, and torchvision's dropout before fc6 and fc7.
    'owt': dict(features=(64, 192, 384, 256, 256), towers=1, norm='none',
                conv1_padding=2, image_size=224, init='modern',
                dropout_position='before'),
}

# Widths that replace the architecture's; `tiny` trains in seconds on a CPU,
# for tests and smoke runs.
SIZES: dict[str, dict] = {
    'full': {},
    'tiny': dict(features=(16, 32, 32, 32, 16), fc_features=(64, 64)),
}


def conv_features(arch: Mapping, widths: Sequence[int]) -> tuple[int, ...]:
  """conv1..conv5 kernels of `arch` given the widths of its size or config."""
  fractions = arch.get('kernel_fraction', (1.0,) * len(widths))
  return tuple(max(1, round(w * f)) for w, f in zip(widths, fractions))
