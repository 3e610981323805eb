"""--mode=benchmark: the train step in JAX and in PyTorch, side by side.

For each architecture of ARCHITECTURES (the paper's network, the single
tower, `one_gpu`, `owt`) at the config's batch_size and model.dtype, the
project's own compiled train step and the same network's in PyTorch
(tools/torch_alexnet.py: the same layers, loss and SGD with momentum and
weight decay) each run in a process of their own (tools/benchmark_worker.py),
on a synthetic batch, with every CPU thread; the rounds alternate between
them, so a busy machine slows both alike. PyTorch gets its fastest mode of
those tried (eager or torch.compile, contiguous or channels-last; AMP for
bfloat16, TF32 for float32 on GPUs), named in the output.

Reported per framework: the first step (tracing and compiling included),
the median, min and max of the timed steps, images/s, peak memory, and
model FLOPs utilisation: XLA's FLOPs for the train step over the step time
and the device's peak (on CPU, the best large matmul measured in this run;
on GPU and TPU, the datasheet's figure, named). PyTorch is needed only
here (requirements-torch.txt); benchmark.torch=off measures JAX alone.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import ml_collections
from absl import logging

from configs import alexnet
from runtime import errors, processor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ARCH (as printed) -> the configs/alexnet.py variants of its network.
ARCHITECTURES = {
    'paper': 'arch=paper',
    'towers=1': 'arch=paper,towers=1',
    'one_gpu': 'arch=one_gpu',
    'owt': 'arch=owt',
}

# benchmark.torch -> the PyTorch mode it runs; 'best' (None) tries those of
# CANDIDATES (each layout eager, then torch.compile on the faster) and keeps
# the fastest; 'compile' skips the trials, for a GPU run's time limit.
TORCH_MODES = {
    'best': None,
    'eager': {'compile': False, 'layout': 'contiguous'},
    'compile': {'compile': True, 'layout': 'channels_last'},
}
CANDIDATES = ['contiguous', 'channels_last', 'compile']

# benchmark.malloc -> the GLIBC_TUNABLES both workers start with. 'reuse':
# freed memory stays in the process (one arena, no mmap'd blocks, no trim),
# as a tuned CPU setup has with jemalloc or tcmalloc; with glibc's defaults
# every step page-faults its activations afresh, which cost each framework
# a sixth to a fifth of its CPU step (docs/performance.md#the-allocator).
# 'system': the defaults. A GLIBC_TUNABLES already set is left as it is.
MALLOC = {
    'reuse': 'glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=4294967296:'
             'glibc.malloc.trim_threshold=4294967296',
    'system': None,
}

# Dense peak FLOP/s from vendors' datasheets, the first matching device kind
# wins: (kind contains, float32 peak, bfloat16 peak). float32 is the TF32
# tensor-core peak on GPUs, which XLA and cuDNN use for float32 by default;
# TPUs compute float32 matmuls in bfloat16 passes by default.
DATASHEET_PEAKS = (
    ('H100 PCIe', 378e12, 756e12),
    ('H100', 494.7e12, 989.4e12),
    ('H200', 494.7e12, 989.4e12),
    ('A100', 156e12, 312e12),
    ('TPU v4', 275e12, 275e12),
    ('TPU v5 lite', 197e12, 197e12),
    ('TPU v5', 459e12, 459e12),
    ('TPU v6 lite', 918e12, 918e12),
)


class Worker:
  """A tools/benchmark_worker.py process: one framework's train step."""

  def __init__(self, spec: dict[str, Any], malloc: str | None):
    self.name = spec['framework']
    self.log = tempfile.TemporaryFile('w+')
    # The repository first; a PYTHONPATH already set (the wheels that
    # tools/device_benchmark.sh installs) stays after it.
    path = os.pathsep.join(filter(None, [REPO, os.environ.get('PYTHONPATH')]))
    env = {**os.environ, 'PYTHONPATH': path,
           # Both workers share a GPU; without this JAX takes 75% at start.
           'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45',
           # The first step compiles in both, not reads a cache.
           'JAX_ENABLE_COMPILATION_CACHE': 'false',
           'TORCHINDUCTOR_FORCE_DISABLE_CACHES': '1'}
    if malloc:
      env.setdefault('GLIBC_TUNABLES', malloc)
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'tools.benchmark_worker'], cwd=REPO, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
    self.ready = self.request(spec)

  def request(self, message: dict[str, Any]) -> dict[str, Any]:
    self.process.stdin.write(json.dumps(message) + '\n')
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    reply = json.loads(line) if line else {'error': 'it exited'}
    if 'error' in reply:
      self.process.wait()
      self.log.seek(0)
      tail = ''.join(self.log.readlines()[-15:])
      raise RuntimeError(f'The {self.name} benchmark worker failed: '
                         f'{reply["error"]}\n{tail}')
    return reply

  def steps(self, n: int) -> list[float]:
    return self.request({'steps': n})['times']

  def finish(self) -> dict[str, Any]:
    reply = self.request({'finish': True})
    self.close()
    return reply

  def close(self) -> None:
    self.process.wait()
    self.log.close()


@dataclasses.dataclass
class Result:
  arch: str
  framework: str
  mode: str
  first_step: float
  times: list[float]
  batch_size: int
  peak_memory: int
  memory_source: str

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def images_per_sec(self) -> float:
    return self.batch_size / self.median


def arch_variants(arch: str, config: ml_collections.ConfigDict) -> str:
  """ARCH's configs/alexnet.py variants at `config`'s dtype, with the
  benchmark's extra variants (benchmark.variants, e.g. size=tiny)."""
  return ','.join(filter(None, [ARCHITECTURES[arch], f'dtype={config.model.dtype}',
                                config.benchmark.variants]))


def arch_config(variants: str, batch_size: int, num_classes: int) -> ml_collections.ConfigDict:
  """The config both workers build their network from (num_classes 0: ImageNet's)."""
  config = alexnet.get_config(variants)
  config.batch_size = batch_size
  config.model.num_classes = num_classes or 1000
  return config


def _spec(framework: str, variants: str, config: ml_collections.ConfigDict,
          **extra) -> dict[str, Any]:
  return dict(framework=framework, variants=variants,
              batch_size=config.batch_size, num_classes=config.model.num_classes,
              dtype=config.model.dtype, image_size=config.data.image_size,
              model=config.model.to_dict(), optimizer=config.optimizer.to_dict(),
              **extra)


def measure(arch: str, variants: str, config: ml_collections.ConfigDict,
            bench: ml_collections.ConfigDict) -> tuple[list[Result], dict[str, Any]]:
  """ARCH's JAX and PyTorch train steps in alternating rounds; the results
  and the JAX worker's first reply (platform, FLOPs, matmul peak)."""
  specs = {'jax': _spec('jax', variants, config)}
  if bench.torch != 'off':
    mode = TORCH_MODES[bench.torch]
    if mode is None:
      choice = Worker(_spec('choose_torch_mode', variants, config,
                            torch_modes=CANDIDATES), MALLOC[bench.malloc])
      mode = choice.ready['torch_mode']
      choice.close()
    specs['torch'] = _spec('torch', variants, config, torch_mode=mode)
  # One at a time, so that neither's compilation slows the other's.
  workers = {name: Worker(spec, MALLOC[bench.malloc]) for name, spec in specs.items()}
  times = {name: [] for name in workers}
  for worker in workers.values():
    worker.steps(1)  # warm-up, not counted
  for _ in range(bench.rounds):
    for name, worker in workers.items():
      times[name] += worker.steps(bench.steps)
  results = []
  for name, worker in workers.items():
    memory = worker.finish()
    results.append(Result(arch, name, worker.ready['mode'], worker.ready['first_step'],
                          times[name], config.batch_size, memory['peak_memory'],
                          memory['memory_source']))
  return results, {**workers['jax'].ready,
                   'matmul': max(w.ready['matmul_flops_per_s'] for w in workers.values())}


def peak_flops(platform: str, kind: str, dtype: str,
               measured: float) -> tuple[float | None, str]:
  """The device's peak FLOP/s and where it comes from."""
  if platform == 'cpu':
    return measured, f'the best {dtype} matmul measured in this run'
  for name, float32, bfloat16 in DATASHEET_PEAKS:
    if name in kind:
      return ({'float32': float32, 'bfloat16': bfloat16}[dtype],
              f'datasheet, {name}, {dtype}, dense')
  return None, f'no datasheet peak for {kind!r} in tools/benchmark.py'


def _gib(n: int) -> str:
  return f'{n / 2**30:.2f} GiB'


def format_report(results: list[Result], header: list[str],
                  peak: float | None, flops: dict[str, float]) -> str:
  def mfu(r: Result) -> str:
    return f'{100 * flops[r.arch] / r.median / peak:.1f}%' if peak else 'n/a'

  rows = [('arch', 'framework', 'mode', 'first step', 'median step (min-max)',
           'img/s', 'peak memory', 'MFU')]
  for r in results:
    rows.append((r.arch, r.framework, r.mode, f'{r.first_step:.1f} s',
                 f'{r.median:.3f} s ({min(r.times):.3f}-{max(r.times):.3f})',
                 f'{r.images_per_sec:.1f}', f'{_gib(r.peak_memory)}', mfu(r)))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = [*header, '']
  for row in rows:
    lines.append('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
  lines.append('')
  by_arch: dict[str, dict[str, Result]] = {}
  for r in results:
    by_arch.setdefault(r.arch, {})[r.framework] = r
  for arch, pair in by_arch.items():
    mine = pair['jax']
    if 'torch' in pair:
      theirs = pair['torch']
      lines.append(f'{arch}: jax img/s {mine.images_per_sec:.1f}, torch img/s '
                   f'{theirs.images_per_sec:.1f} ({theirs.mode}), ratio '
                   f'{mine.images_per_sec / theirs.images_per_sec:.2f}, MFU {mfu(mine)}')
    else:
      lines.append(f'{arch}: jax img/s {mine.images_per_sec:.1f}, MFU {mfu(mine)}')
  return '\n'.join(lines)


def report(config: ml_collections.ConfigDict) -> str:
  bench = config.benchmark
  if bench.torch not in ('off', *TORCH_MODES):
    raise errors.InvalidInput(f'benchmark.torch={bench.torch!r}: use one of off, '
                              f'{", ".join(TORCH_MODES)}.')
  if bench.malloc not in MALLOC:
    raise errors.InvalidInput(f'benchmark.malloc={bench.malloc!r}: use one of '
                              f'{", ".join(MALLOC)}.')
  torch_version = None
  if bench.torch != 'off':
    try:
      torch_version = importlib.metadata.version('torch')
    except importlib.metadata.PackageNotFoundError:
      raise errors.InvalidInput('PyTorch is not installed: pip install -r '
                                'requirements-torch.txt, or pass --config.benchmark.torch=off '
                                'to measure JAX alone.') from None
  names = [a.strip() for a in bench.architectures.split(',') if a.strip()]
  if unknown := [a for a in names if a not in ARCHITECTURES]:
    raise errors.InvalidInput(f'benchmark.architectures names {unknown}; known: '
                              f'{", ".join(ARCHITECTURES)}.')
  results, flops, first = [], {}, None
  for arch in names:
    logging.info('Measuring %s (%d of %d).', arch, names.index(arch) + 1, len(names))
    variants = arch_variants(arch, config)
    arch_results, ready = measure(
        arch, variants, arch_config(variants, config.batch_size, config.model.num_classes),
        bench)
    results += arch_results
    flops[arch] = ready['flops']
    first = first or ready
    first['matmul'] = max(first['matmul'], ready['matmul'])
  import jax  # the parent starts no backend: the workers own the devices
  peak, source = peak_flops(first['platform'], first['device_kind'],
                            config.model.dtype, first['matmul'])
  threads = f', {first["threads"]} threads' if first['threads'] else ''
  header = [
      f'Train step, batch {config.batch_size}, {config.model.dtype}, on '
      f'{first["platform"]} ({first["device_kind"]}{threads}); JAX {jax.__version__}'
      + (f', PyTorch {torch_version}' if torch_version else '') +
      f'; {bench.rounds} alternating rounds of {bench.steps} steps after one warm-up step.',
      'Peak: ' + (f'{peak / 1e9:,.1f} GFLOP/s ({source}).' if peak else source + '.'),
      f'Host: {processor.this().describe()}; XLA_FLAGS: {first["xla_flags"] or "none"}.',
      f'GLIBC_TUNABLES: {first["glibc_tunables"] or "none"} '
      f'(benchmark.malloc={bench.malloc}, in both workers).',
      'Peak memory: ' + '; '.join(sorted({f'{r.framework}: {r.memory_source}'
                                          for r in results})) + '.']
  return format_report(results, header, peak, flops)
