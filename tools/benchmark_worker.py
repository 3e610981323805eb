"""One framework's train step in a process of its own, driven by tools/benchmark.py.

  python -m tools.benchmark_worker   (started by --mode=benchmark, not by hand)

reads a JSON spec on stdin (framework 'jax' or 'torch', the network, batch,
dtype), builds and runs the first step, then answers JSON requests a line
each: {"steps": n} times n steps; {"finish": true} reports peak memory and
exits. Framework 'choose_torch_mode' instead tries PyTorch's modes and
answers with the fastest, so that the measured process holds one model.
Each framework has a process of its own so that its threads, memory peak
and imports do not touch the other's; the parent alternates rounds
between them. Only the framework's own modules are imported: the PyTorch
worker never imports JAX, nor the JAX worker PyTorch.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

# Large enough to reach a CPU's and a GPU's matmul peak, small enough to be quick.
_MATMUL_SIZE = {'cpu': 2048, 'gpu': 8192}
# Steps each PyTorch mode runs after its first when the best mode is chosen.
_TRIAL_STEPS = 2


def _timed(fn: Callable[[], Any], sync: Callable[[Any], Any]) -> float:
  start = time.perf_counter()
  sync(fn())
  return time.perf_counter() - start


def _matmul_peak(matmul: Callable[[], Any], sync: Callable[[Any], Any],
                 size: int, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` size x size matmuls (after a warm-up)."""
  sync(matmul())
  return 2 * size ** 3 / min(_timed(matmul, sync) for _ in range(repeats))


def _peak_rss_bytes() -> int:
  """This process's peak resident memory. Not getrusage's ru_maxrss, which
  Linux carries over from the parent that started this process."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024  # kB
  raise OSError('/proc/self/status has no VmHWM line.')


class JaxStep:
  """The project's own compiled train step (trainer.Trainer) on a synthetic batch."""

  def __init__(self, spec: dict[str, Any]):
    from runtime import xla_flags
    self.xla_flags = xla_flags.apply()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import parallel
    from tools import benchmark
    from trainer import Trainer, synthetic_batch

    self.jax = jax
    config = benchmark.arch_config(spec['variants'], spec['batch_size'],
                                   spec['num_classes'])
    mesh = parallel.make_mesh(config.mesh)
    # A run's step subtracts the mean image under each crop (data.mean_image);
    # its values do not change the step's cost.
    mean_image = (np.full((config.data.resize_size,) * 2 + (3,), 120, np.float32)
                  if config.data.mean_image else None)
    trainer = Trainer(config, mesh, mean_image=mean_image)
    self.platform = jax.devices()[0].platform
    self.device_kind = jax.devices()[0].device_kind
    self.state = trainer.init(config.seed)
    self.batch = parallel.global_batch(
        synthetic_batch(config, parallel.process_shard().local(config.batch_size),
                        corners=mean_image is not None),
        trainer.batch_sharding)
    jax.block_until_ready((self.state, self.batch))

    start = time.perf_counter()
    self.compiled = trainer.lower_train_step().compile()
    self.state, _ = self.compiled(self.state, self.batch)
    jax.block_until_ready(self.state)
    self.first_step = time.perf_counter() - start
    # MFU counts the network's FLOPs as XLA's own convolutions take them,
    # whichever algorithm runs (Winograd's take fewer; models/winograd.py).
    nominal = config.copy_and_resolve_references()
    nominal.model.conv_algorithm = 'direct'
    cost = Trainer(nominal, mesh, mean_image=mean_image).lower_train_step().compile(
        ).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older JAX: one per device
    self.flops = float(cost.get('flops', 0.0))
    self.mode = 'jit'
    self.threads = os.cpu_count() if self.platform == 'cpu' else None
    size = _MATMUL_SIZE.get(self.platform, _MATMUL_SIZE['gpu'])
    a = jnp.ones((size, size), config.model.dtype)
    matmul = jax.jit(lambda a: a @ a)
    self.matmul_flops_per_s = _matmul_peak(lambda: matmul(a), jax.block_until_ready, size)

  def step(self) -> float:
    def run():
      self.state, _ = self.compiled(self.state, self.batch)
      return self.state
    return _timed(run, self.jax.block_until_ready)

  def peak_memory(self) -> tuple[int, str]:
    if self.platform == 'cpu':
      return _peak_rss_bytes(), 'process peak RSS'
    stats = self.jax.devices()[0].memory_stats() or {}
    return int(stats.get('peak_bytes_in_use', 0)), 'device peak bytes in use'


class TorchStep:
  """tools/torch_alexnet.py's train step in one mode: spec['torch_mode'] is
  {'compile': bool, 'layout': 'contiguous' | 'channels_last'}."""
  xla_flags = None

  def __init__(self, spec: dict[str, Any]):
    import torch

    from tools import torch_alexnet

    self.torch = torch
    self.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    self.platform = 'gpu' if self.device == 'cuda' else 'cpu'
    self.threads = os.cpu_count() if self.device == 'cpu' else None
    if self.threads:
      torch.set_num_threads(self.threads)
    amp = spec['dtype'] == 'bfloat16'
    mode = spec['torch_mode']
    names = ['compile' if mode['compile'] else 'eager', mode['layout']]
    if amp:
      names.append('AMP bfloat16')
    elif self.device == 'cuda':
      # What XLA uses for float32 convolutions and matmuls on such GPUs.
      torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
      names.append('TF32')
    torch.backends.cudnn.benchmark = True
    self.mode = ', '.join(names)
    self.device_kind = (torch.cuda.get_device_name() if self.device == 'cuda'
                        else 'cpu')

    torch.manual_seed(0)
    size, batch = spec['image_size'], spec['batch_size']
    memory_format = (torch.channels_last if mode['layout'] == 'channels_last'
                     else torch.contiguous_format)
    images = torch.randn(batch, 3, size, size, device=self.device).contiguous(
        memory_format=memory_format)
    labels = torch.randint(0, spec['num_classes'], (batch,), device=self.device)
    model = torch_alexnet.AlexNet(spec['model'], size).to(
        self.device, memory_format=memory_format).train()
    step = torch_alexnet.train_step(
        torch.compile(model) if mode['compile'] else model, spec['optimizer'],
        amp_dtype=torch.bfloat16 if amp else None)
    self._run = lambda: step(images, labels)
    self.first_step = self.step()
    self.flops = 0.0  # tools/benchmark.py counts the network's FLOPs with XLA
    n = _MATMUL_SIZE[self.platform]
    a = torch.ones(n, n, device=self.device,
                   dtype=torch.bfloat16 if amp else torch.float32)
    self.matmul_flops_per_s = _matmul_peak(lambda: a @ a, self._sync, n)

  def _sync(self, _: Any) -> None:
    if self.device == 'cuda':
      self.torch.cuda.synchronize()

  def step(self) -> float:
    return _timed(self._run, self._sync)

  def peak_memory(self) -> tuple[int, str]:
    if self.device == 'cpu':
      return _peak_rss_bytes(), 'process peak RSS'
    return int(self.torch.cuda.max_memory_allocated()), 'device peak bytes allocated'


def choose_torch_mode(spec: dict[str, Any]) -> dict[str, Any]:
  """The fastest of spec['torch_modes'] by the median of a few steps: each
  layout eager, then torch.compile with the faster layout."""
  def median_step(mode: dict[str, Any]) -> float:
    worker = TorchStep({**spec, 'torch_mode': mode})
    seconds = statistics.median(worker.step() for _ in range(_TRIAL_STEPS))
    del worker
    gc.collect()
    return seconds

  modes = spec['torch_modes']
  layouts = [m for m in modes if m != 'compile'] or ['contiguous']
  trials = {layout: median_step({'compile': False, 'layout': layout})
            for layout in layouts}
  layout = min(trials, key=trials.get)
  best, seconds = {'compile': False, 'layout': layout}, trials[layout]
  if 'compile' in modes:
    compiled = {'compile': True, 'layout': layout}
    if median_step(compiled) < seconds:
      best = compiled
  return best


def serve(spec: dict[str, Any], requests: TextIO, replies: TextIO) -> None:
  """Builds the step `spec` names and answers `requests` on `replies`."""
  def reply(message: dict[str, Any]) -> None:
    replies.write(json.dumps(message) + '\n')
    replies.flush()

  if spec['framework'] == 'choose_torch_mode':
    reply({'torch_mode': choose_torch_mode(spec)})
    return
  worker = {'jax': JaxStep, 'torch': TorchStep}[spec['framework']](spec)
  reply({'first_step': worker.first_step, 'mode': worker.mode,
         'flops': worker.flops, 'platform': worker.platform,
         'device_kind': worker.device_kind,
         'threads': worker.threads,
         'xla_flags': worker.xla_flags,
         'glibc_tunables': os.environ.get('GLIBC_TUNABLES'),
         'matmul_flops_per_s': worker.matmul_flops_per_s})
  for line in requests:
    request = json.loads(line)
    if 'steps' in request:
      reply({'times': [worker.step() for _ in range(request['steps'])]})
    else:
      memory, source = worker.peak_memory()
      reply({'peak_memory': memory, 'memory_source': source})
      return


def main() -> None:
  # Replies go to the original stdout; anything a library prints goes to stderr.
  replies = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)
  try:
    serve(json.loads(sys.stdin.readline()), sys.stdin, replies)
  except Exception as e:  # noqa: BLE001
    replies.write(json.dumps({'error': f'{type(e).__name__}: {e}'}) + '\n')
    replies.flush()
    raise


if __name__ == '__main__':
  main()
