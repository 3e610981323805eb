"""The AlexNet family in PyTorch, for --mode=benchmark's side-by-side train step.

The same layers as models/alexnet.py, from the same config.model fields:
towers as grouped convolutions where the paper splits them (conv2, conv4,
conv5; conv1 and conv3 see every map), LRN within each tower as the same
banded matmul over channels, overlapping max pooling, dropout where the
config places it; cross-entropy and SGD with momentum and weight decay.
Only the benchmark's PyTorch worker imports this module: PyTorch is a
benchmark dependency (requirements-torch.txt), never the product's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LocalResponseNorm(nn.Module):
  """The paper's LRN within each tower (models/layers.py's formula): alpha
  times the plain sum of squares, as a banded matmul over each tower's
  channels. PyTorch's own F.local_response_norm (an average pool over a
  padded copy) ran several times slower on CPU; this is its best form."""

  def __init__(self, towers: int, channels: int, k: float, n: int,
               alpha: float, beta: float):
    super().__init__()
    self.towers, self.k, self.alpha, self.beta = towers, k, alpha, beta
    i = torch.arange(channels // towers)
    self.register_buffer('band', ((i[:, None] - i[None, :]).abs() <= n // 2).float())

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    # (N, H, W, towers, C / towers): a view when x is channels-last.
    t = x.permute(0, 2, 3, 1).reshape(n, h, w, self.towers, c // self.towers)
    sum_sq = torch.matmul(t.square(), self.band.to(t.dtype))
    y = t / (self.k + self.alpha * sum_sq).pow(self.beta)
    return y.reshape(n, h, w, c).permute(0, 3, 1, 2)


class AlexNet(nn.Module):
  """models.AlexNet's network from its config fields (config.model)."""

  def __init__(self, model: Mapping[str, Any], image_size: int):
    super().__init__()
    c1, c2, c3, c4, c5 = model['features']
    towers = model['towers']
    if model['norm'] not in ('lrn', 'none'):
      raise ValueError(f"The PyTorch benchmark model has no norm={model['norm']!r}; "
                       "use 'lrn' or 'none'.")
    self.conv1 = nn.Conv2d(3, c1, model['conv1_kernel'], model['conv1_stride'],
                           model['conv1_padding'])
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=towers)
    self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
    self.conv4 = nn.Conv2d(c3, c4, 3, padding=1, groups=towers)
    self.conv5 = nn.Conv2d(c4, c5, 3, padding=1, groups=towers)
    self.norms = nn.ModuleList(
        LocalResponseNorm(towers, c, model['lrn_k'], model['lrn_n'],
                          model['lrn_alpha'], model['lrn_beta'])
        if model['norm'] == 'lrn' else nn.Identity() for c in (c1, c2))
    self.norm_after_pool = model['norm_position'] == 'after_pool'
    self.pool = nn.MaxPool2d(model['pool_window'], model['pool_stride'])
    self.dropout = nn.Dropout(model['dropout_rate'])
    self.dropout_before = model['dropout_position'] == 'before'
    size = (image_size + 2 * model['conv1_padding'] - model['conv1_kernel']
            ) // model['conv1_stride'] + 1
    for _ in range(3):
      size = (size - model['pool_window']) // model['pool_stride'] + 1
    fc6, fc7 = model['fc_features']
    self.fc6 = nn.Linear(c5 * size * size, fc6)
    self.fc7 = nn.Linear(fc6, fc7)
    self.fc8 = nn.Linear(fc7, model['num_classes'])

  def _normalize_and_pool(self, i: int, x: torch.Tensor) -> torch.Tensor:
    if self.norm_after_pool:
      return self.norms[i](self.pool(x))
    return self.pool(self.norms[i](x))

  def _dense(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if self.dropout_before:
      return F.relu(layer(self.dropout(x)), inplace=True)
    return self.dropout(F.relu(layer(x), inplace=True))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self._normalize_and_pool(0, F.relu(self.conv1(x), inplace=True))
    x = self._normalize_and_pool(1, F.relu(self.conv2(x), inplace=True))
    x = F.relu(self.conv3(x), inplace=True)
    x = F.relu(self.conv4(x), inplace=True)
    x = self.pool(F.relu(self.conv5(x), inplace=True))
    x = self._dense(self.fc7, self._dense(self.fc6, torch.flatten(x, 1)))
    return self.fc8(x)


def train_step(model: nn.Module, optimizer: Mapping[str, float], *,
               amp_dtype: torch.dtype | None = None
               ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """A function (images, labels) -> loss that takes one SGD step (momentum,
  weight decay: config.optimizer) on `model`, in autocast to `amp_dtype`
  when given."""
  sgd = torch.optim.SGD(model.parameters(), lr=optimizer['learning_rate'],
                        momentum=optimizer['momentum'],
                        weight_decay=optimizer['weight_decay'])
  device = next(model.parameters()).device.type

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    sgd.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=amp_dtype or torch.float32,
                        enabled=amp_dtype is not None):
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    sgd.step()
    return loss

  return step
