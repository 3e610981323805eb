"""--mode=benchmark: JAX and PyTorch train steps side by side (a smoke run,
no timing assertions), the PyTorch network is the same network, and the
XLA flags the project sets are in force."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
import torch
from jax import lax

from runtime import processor, xla_flags
from tools import benchmark, torch_alexnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r'^(paper|towers=1|one_gpu|owt): jax img/s [\d.]+, torch img/s [\d.]+ '
                  r'\(([^)]+)\), ratio [\d.]+, MFU [\d.]+%$', re.M)


def test_smoke_run_prints_the_table_and_a_line_per_architecture(tmp_path):
  """The real command, tiny: the tiny network, batch 2, two timed steps,
  eager PyTorch."""
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/alexnet.py', '--mode=benchmark',
       '--config.batch_size=2', '--config.benchmark.steps=1',
       '--config.benchmark.variants=size=tiny',
       '--config.benchmark.rounds=2', '--config.benchmark.torch=eager',
       '--config.benchmark.architectures=paper'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'XLA_FLAGS': ''})  # one CPU device, as users run it
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert re.search(r'^Train step, batch 2, float32, on cpu .*JAX .*PyTorch ', out, re.M), out
  assert re.search(r'^Peak: [\d,.]+ GFLOP/s \(the best float32 matmul measured', out, re.M)
  # The processor and the flags the JAX worker ran with.
  assert re.search(rf'^Host: {re.escape(processor.this().describe())}; XLA_FLAGS: '
                   rf'{re.escape(xla_flags.COMMON[0])}', out, re.M), out
  # Both workers keep freed memory for reuse unless benchmark.malloc=system.
  assert re.search(rf'^GLIBC_TUNABLES: {re.escape(benchmark.MALLOC["reuse"])} '
                   r'\(benchmark.malloc=reuse, in both workers\)\.$', out, re.M), out
  header = re.search(r'^arch\s+framework\s+mode\s+first step\s+median step \(min-max\)\s+'
                     r'img/s\s+peak memory\s+MFU$', out, re.M)
  assert header, out
  for framework, mode in (('jax', 'jit'), ('torch', 'eager, contiguous')):
    assert re.search(rf'^paper\s+{framework}\s+{mode}\s+[\d.]+ s\s+[\d.]+ s \([\d.]+-[\d.]+\)'
                     r'\s+[\d.]+\s+[\d.]+ GiB\s+[\d.]+%$', out, re.M), out
  assert LINE.findall(out) == [('paper', 'eager, contiguous')]


def _result(arch, framework, seconds):
  return benchmark.Result(arch, framework, 'jit' if framework == 'jax' else 'eager, contiguous',
                          10.0, [seconds, seconds * 2, seconds / 2], 64, 2**30,
                          'process peak RSS')


def test_report_has_a_line_per_architecture_with_ratio_and_mfu():
  results = [_result(arch, framework, seconds)
             for arch in benchmark.ARCHITECTURES
             for framework, seconds in (('jax', 2.0), ('torch', 4.0))]
  flops = {arch: 1e12 for arch in benchmark.ARCHITECTURES}
  text = benchmark.format_report(results, ['header'], 100e9, flops)
  assert [arch for arch, _ in LINE.findall(text)] == list(benchmark.ARCHITECTURES)
  # 64 images in the median 2 s and 4 s; 1e12 FLOPs in 2 s of a 100 GFLOP/s peak.
  assert 'paper: jax img/s 32.0, torch img/s 16.0 (eager, contiguous), ratio 2.00, MFU 500.0%' in text
  assert text.splitlines()[0] == 'header'


def test_unknown_architecture_and_torch_mode_are_named(small_config):
  config = small_config()
  config.benchmark.architectures = 'paper,alexnet2'
  with pytest.raises(ValueError, match=r"\['alexnet2'\]; known: paper, towers=1"):
    benchmark.report(config)
  config.benchmark.torch = 'fastest'
  with pytest.raises(ValueError, match="benchmark.torch='fastest': use one of off, best, eager, compile"):
    benchmark.report(config)
  config.benchmark.torch = 'eager'
  config.benchmark.malloc = 'jemalloc'
  with pytest.raises(ValueError, match="benchmark.malloc='jemalloc': use one of reuse, system"):
    benchmark.report(config)


@pytest.mark.parametrize('arch, params', [
    ('paper', 60_965_224), ('towers=1', 62_378_344), ('one_gpu', 59_798_312),
    ('owt', 61_100_840)])
def test_torch_network_is_the_same_network(arch, params):
  """The parameter counts tests/test_model.py pins for the JAX network."""
  config = benchmark.arch_config(benchmark.ARCHITECTURES[arch], 64, 0)
  model = torch_alexnet.AlexNet(config.model.to_dict(), config.data.image_size)
  assert sum(p.numel() for p in model.parameters()) == params
  logits = model(torch.zeros(2, 3, config.data.image_size, config.data.image_size))
  assert logits.shape == (2, 1000)


def test_torch_lrn_is_the_papers_within_each_tower():
  lrn = torch_alexnet.LocalResponseNorm(towers=2, channels=8, k=2.0, n=5, alpha=1e-2,
                                        beta=0.75)
  x = torch.randn(1, 8, 2, 2) * 10
  y = lrn(x)
  # Map 3 (tower 0's last) sums maps 1..3, not tower 1's map 4.
  s = (x[:, 1:4] ** 2).sum(1)
  torch.testing.assert_close(y[:, 3], x[:, 3] / (2.0 + 1e-2 * s) ** 0.75)


def test_cpu_convolutions_are_not_handed_to_ynnpack():
  """conftest.py applied the flags: XLA:CPU keeps convolutions, kernel
  gradients included, out of YNNPACK fusions (which, without the flag,
  take this conv2-like layer's)."""
  x, w = jnp.ones((8, 27, 27, 48)), jnp.ones((5, 5, 48, 64))

  def loss(x, w):
    return jnp.sum(lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC')))

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert convolutions_in_ynnpack(hlo) == (2, 0)  # the input's and kernel's gradients


def convolutions_in_ynnpack(hlo: str) -> tuple[int, int]:
  """(convolutions, those inside YNNPACK fusions) of compiled HLO text."""
  bodies = dict(re.findall(r'^%([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo, re.S | re.M))
  ynn = set(re.findall(r'calls=%([\w.\-]+), [^\n]*"kind":"__ynn_fusion"', hlo))
  total = hlo.count(' convolution(')
  return total, sum(bodies[name].count(' convolution(') for name in ynn)
