"""Named AlexNet architectures and sizes: the fields of models.AlexNet they set.

The config variants `arch=NAME` and `size=NAME` (configs/alexnet.py) pick them.
"""

ARCHITECTURES: dict[str, dict] = {
    # The paper (section 3.5): 96, 256, 384, 384, 256 kernels in two towers,
    # LRN after conv1 and conv2, 227x227 input; dropout after fc6 and fc7
    # (section 4.2).
    'paper': dict(features=(96, 256, 384, 384, 256), towers=2, norm='lrn',
                  conv1_padding=0, image_size=227, dropout_position='after'),
    # Krizhevsky 2014 / torchvision: one tower, no LRN, 224 input, padded
    # conv1, and torchvision's dropout before fc6 and fc7.
    'owt': dict(features=(64, 192, 384, 256, 256), towers=1, norm='none',
                conv1_padding=2, image_size=224, dropout_position='before'),
}

# Widths that replace the architecture's; `tiny` trains in seconds on a CPU,
# for tests and smoke runs.
SIZES: dict[str, dict] = {
    'full': {},
    'tiny': dict(features=(16, 32, 32, 32, 16), fc_features=(64, 64)),
}
