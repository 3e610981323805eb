"""AlexNet and its parts. Nothing here knows about data or devices."""

from models.alexnet import AlexNet

__all__ = ['AlexNet']
