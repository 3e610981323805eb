"""--mode=summary: every layer's output shape, parameters and forward FLOPs.

Needs neither data nor a workdir. FLOPs are XLA's cost analysis of each layer
compiled on its own, for one image.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import input_pipeline
from models import AlexNet


@dataclasses.dataclass
class LayerRow:
  name: str
  output: str
  params: int
  flops: float


def _shape_text(shape: tuple[int, ...]) -> str:
  """(towers, 1, H, W, C) -> 'HxWx(towers*C)', showing the split when towers > 1."""
  if len(shape) == 5:
    towers, _, h, w, c = shape
    split = f' ({towers}x{c})' if towers > 1 else ''
    return f'{h}x{w}x{towers * c}{split}'
  return 'x'.join(map(str, shape[1:]))


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _flops(module: nn.Module, args: tuple, kwargs: dict) -> float:
  """XLA's forward FLOPs of one layer applied alone."""
  layer = module.clone(parent=None)
  variables = _abstract(nn.meta.unbox(module.variables))
  lowered = jax.jit(lambda v, *a: layer.apply(v, *a, **kwargs)).lower(
      variables, *_abstract(args))
  cost = lowered.compile().cost_analysis()
  if isinstance(cost, list):  # older JAX returned one dict per device
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def layer_rows(model: AlexNet, image_size: int) -> list[LayerRow]:
  """Runs one abstract forward pass and records each top-level layer."""
  rows: list[LayerRow] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1:
      params = module.variables.get('params', {})
      rows.append(LayerRow(
          name=module.name, output=_shape_text(out.shape),
          params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
          flops=_flops(module, args, kwargs)))
    return out

  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
  return rows


def format_table(rows: list[LayerRow], image_size: int) -> str:
  header = f"{'layer':<8}{'output':>22}{'params':>14}{'forward FLOPs':>16}"
  lines = [f'Input: {image_size}x{image_size}x3', header, '-' * len(header)]
  for r in rows:
    lines.append(f'{r.name:<8}{r.output:>22}{r.params:>14,}{r.flops:>16,.0f}')
  lines.append('-' * len(header))
  lines.append(f'Forward FLOPs per image: {sum(r.flops for r in rows):,.0f}')
  lines.append(f'Total params: {sum(r.params for r in rows):,}')
  return '\n'.join(lines)


def report(config: ml_collections.ConfigDict) -> str:
  """The layer table of `config`'s model, ending with 'Total params: N'."""
  config = input_pipeline.with_dataset_classes(config)
  rows = layer_rows(AlexNet(**config.model), config.data.image_size)
  return format_table(rows, config.data.image_size)
