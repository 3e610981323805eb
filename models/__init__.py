"""AlexNet, its parts (layers) and its named architectures (presets).

Nothing here knows about data or devices.
"""

from models.alexnet import AlexNet

__all__ = ['AlexNet']
