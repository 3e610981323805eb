"""Each layer's forward and backward time in JAX beside PyTorch's, on this machine.

  python -m tools.layer_times --arch=paper --batch_size=64 [--repeats=5]

Every layer of the network (conv1..conv5, the LRNs, the max pools, fc6..fc8)
runs alone on a random input of the shape it gets in the network: in JAX
the project's own module (models/layers.py, jitted), in PyTorch
tools/torch_alexnet.py's, eager, channels-last (the layout PyTorch's
fastest modes use on CPU). Backward is the gradient with respect to the
layer's input and parameters (conv1's parameters only, as in a train step)
from a saved forward pass: JAX's vjp residuals, PyTorch's autograd graph.
Printed: the median of `repeats` runs after a warm-up, in milliseconds, and
JAX's time over PyTorch's (above 1: JAX is slower). Where the whole train
step's gap lies is where these ratios are far above 1; the sums leave out
what the step fuses between layers (ReLU, dropout, the loss, the update).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from runtime import xla_flags

# The layers timed, in the network's order, as models/alexnet.py names them.
LAYERS = ('conv1', 'lrn1', 'pool1', 'conv2', 'lrn2', 'pool2', 'conv3', 'conv4',
          'conv5', 'pool5', 'fc6', 'fc7', 'fc8')


@dataclasses.dataclass
class Row:
  layer: str
  shape: tuple[int, ...]  # the layer's input as JAX holds it
  jax_forward: float
  jax_backward: float
  torch_forward: float
  torch_backward: float


def _median_ms(run: Callable[[], Any], sync: Callable[[Any], Any], repeats: int) -> float:
  sync(run())  # warm-up: compilation, allocation
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    sync(run())
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def jax_layers(config: Any) -> dict[str, tuple[Any, Any]]:
  """LAYERS' modules, unbound, and their inputs' abstract shapes, from one
  abstract forward pass of the network."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from models import AlexNet

  found: dict[str, tuple[Any, Any]] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == '__call__' and len(module.path) == 1
        and module.name in LAYERS):
      found[module.name] = (module.clone(parent=None),
                            jax.ShapeDtypeStruct(args[0].shape, args[0].dtype))
    return next_fun(*args, **kwargs)

  size = config.data.image_size
  images = jnp.zeros((config.batch_size, size, size, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda: AlexNet(**config.model).init(jax.random.PRNGKey(0), images))
  return found


def time_jax(module: Any, shape: Any, repeats: int,
             input_grad: bool) -> tuple[float, float, int]:
  """(forward, backward) milliseconds of one layer in JAX, and its output's size."""
  import jax
  import numpy as np

  x = jax.random.normal(jax.random.PRNGKey(0), shape.shape, shape.dtype)
  variables = module.init(jax.random.PRNGKey(1), x)

  def forward(variables, x):
    return module.apply(variables, x)

  fwd = jax.jit(forward)
  y, pullback = jax.vjp(forward, variables, x) if input_grad else jax.vjp(
      lambda v: forward(v, x), variables)
  cotangent = jax.numpy.asarray(np.random.RandomState(2).randn(*y.shape), y.dtype)
  bwd = jax.jit(lambda pullback, g: pullback(g))
  return (_median_ms(lambda: fwd(variables, x), jax.block_until_ready, repeats),
          _median_ms(lambda: bwd(pullback, cotangent), jax.block_until_ready, repeats),
          y.size)


def torch_layers(config: Any) -> dict[str, Any]:
  """LAYERS' PyTorch modules (tools/torch_alexnet.py), channels-last."""
  import torch

  from tools import torch_alexnet

  net = torch_alexnet.AlexNet(config.model.to_dict(), config.data.image_size).to(
      memory_format=torch.channels_last)
  pool = net.pool
  return {'conv1': net.conv1, 'lrn1': net.norms[0], 'pool1': pool, 'conv2': net.conv2,
          'lrn2': net.norms[1], 'pool2': pool, 'conv3': net.conv3, 'conv4': net.conv4,
          'conv5': net.conv5, 'pool5': pool, 'fc6': net.fc6, 'fc7': net.fc7, 'fc8': net.fc8}


def time_torch(layer: Any, jax_shape: tuple[int, ...], repeats: int,
               input_grad: bool, output_size: int) -> tuple[float, float]:
  """(forward, backward) milliseconds of one layer in PyTorch, on the input
  JAX's `jax_shape` stands for: (towers, N, H, W, C) -> N, towers * C, H, W.
  Its output must have JAX's `output_size` elements: the same layer."""
  import torch

  torch.manual_seed(0)
  if len(jax_shape) == 5:
    towers, n, h, w, c = jax_shape
    x = torch.randn(n, towers * c, h, w).contiguous(memory_format=torch.channels_last)
  else:
    x = torch.randn(*jax_shape)
  x.requires_grad_(input_grad)
  inputs = ([x] if input_grad else []) + list(layer.parameters())
  with torch.no_grad():
    forward = _median_ms(lambda: layer(x), lambda _: None, repeats)
  y = layer(x)
  if y.numel() != output_size:
    raise ValueError(f'{layer}: {y.numel()} outputs in PyTorch, {output_size} in JAX.')
  g = torch.randn_like(y)
  backward = _median_ms(
      lambda: torch.autograd.grad(y, inputs, g, retain_graph=True), lambda _: None, repeats)
  return forward, backward


def measure(arch: str, batch_size: int, repeats: int, variants: str = '') -> list[Row]:
  """LAYERS' rows for ARCH (with configs/alexnet.py `variants`, e.g. size=tiny)."""
  xla_flags.apply()  # before JAX starts its backend
  import torch

  from tools import benchmark

  torch.set_num_threads(os.cpu_count())
  config = benchmark.arch_config(
      ','.join(filter(None, [benchmark.ARCHITECTURES[arch], variants])), batch_size, 0)
  modules, theirs = jax_layers(config), torch_layers(config)
  rows = []
  for name in LAYERS:
    module, shape = modules[name]
    input_grad = name != 'conv1'  # a train step needs no gradient of the images
    forward, backward, output_size = time_jax(module, shape, repeats, input_grad)
    rows.append(Row(name, tuple(shape.shape), forward, backward,
                    *time_torch(theirs[name], tuple(shape.shape), repeats, input_grad,
                                output_size)))
  return rows


def format_rows(rows: list[Row]) -> str:
  lines = [(f'{"layer":6s} {"input (JAX)":22s} {"fwd JAX ms":>10s} {"torch":>8s} {"ratio":>6s}'
            f' {"bwd JAX ms":>10s} {"torch":>8s} {"ratio":>6s}')]
  total = Row('total', (), *(sum(getattr(r, f) for r in rows) for f in
                             ('jax_forward', 'jax_backward', 'torch_forward', 'torch_backward')))
  for r in [*rows, total]:
    lines.append(f'{r.layer:6s} {"x".join(map(str, r.shape)):22s} {r.jax_forward:10.1f} '
                 f'{r.torch_forward:8.1f} {r.jax_forward / r.torch_forward:6.2f} '
                 f'{r.jax_backward:10.1f} {r.torch_backward:8.1f} '
                 f'{r.jax_backward / r.torch_backward:6.2f}')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arch', default='paper', help='of tools/benchmark.py: ARCHITECTURES')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--variants', default='', help="configs/alexnet.py's, e.g. size=tiny")
  args = parser.parse_args()
  from runtime import processor
  print(f'Per-layer times, {args.arch}, batch {args.batch_size}, float32, median of '
        f'{args.repeats}; {processor.this().describe()}, {os.cpu_count()} threads; '
        f'load average {os.getloadavg()[0]:.1f} at the start.')
  print(format_rows(measure(args.arch, args.batch_size, args.repeats, args.variants)))


if __name__ == '__main__':
  main()
