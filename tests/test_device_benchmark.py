"""tools/device_benchmark.sh on a machine like the bare GPU one, without a GPU:
a fresh venv that has jax, jaxlib, flax, optax, orbax-checkpoint, torch and
their dependencies but no TensorFlow, TFDS, ml_collections or clu, and no
index; the script installs the carried wheels (.whl/) offline and runs the
benchmark on the CPU with the tiny network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# What the GPU machine has (and their dependencies, which pip brought).
PRESENT = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch')
ABSENT = ('tensorflow', 'tensorflow-cpu', 'tensorflow-datasets', 'ml-collections', 'clu')


def closure(roots: tuple[str, ...]) -> set[str]:
  """The installed distributions `roots` depend on, extras and markers honoured."""
  seen: set[str] = set()
  todo = [(canonicalize_name(r), frozenset()) for r in roots]
  done: set[tuple[str, frozenset]] = set()
  while todo:
    name, extras = todo.pop()
    if (name, extras) in done:
      continue
    done.add((name, extras))
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
      continue  # a dependency for another platform (its marker said so)
    seen.add(name)
    for line in dist.requires or []:
      req = Requirement(line)
      if req.marker and not any(req.marker.evaluate({'extra': e}) for e in extras or {''}):
        continue
      todo.append((canonicalize_name(req.name), frozenset(req.extras)))
  return seen


def site_view(names: set[str], view: Path) -> None:
  """Symlinks to exactly these distributions' top-level files in `view`."""
  view.mkdir()
  for name in names:
    dist = metadata.distribution(name)
    site = Path(dist.locate_file(''))
    for top in {Path(f).parts[0] for f in dist.files or []} - {'..'}:
      if (site / top).exists() and not (view / top).exists():
        (view / top).symlink_to(site / top)


def test_benchmark_runs_without_the_data_stack_from_carried_wheels(tmp_path):
  wheels = sorted(p.name for p in (REPO / '.whl').glob('*.whl'))
  if not wheels:  # as a fresh checkout has it; fills it from the index
    subprocess.run(['bash', 'tools/carried_wheels.sh'], cwd=REPO, check=True,
                   env={**os.environ, 'PYTHON': sys.executable})
  names = closure(PRESENT)
  assert not names & set(ABSENT), names & set(ABSENT)
  site_view(names, tmp_path / 'view')
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
  python = venv / 'bin' / 'python'
  site = subprocess.run([python, '-c', 'import site; print(site.getsitepackages()[0])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  Path(site, 'gpu_machine.pth').write_text(f'{tmp_path / "view"}\n')
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'XLA_FLAGS')}
  missing = subprocess.run(
      [python, '-c', ('import importlib.util as u; print([m for m in ("tensorflow", '
                       '"tensorflow_datasets", "ml_collections", "clu") if u.find_spec(m)])')],
      capture_output=True, text=True, env=env, check=True)
  assert missing.stdout.strip() == '[]'

  out = tmp_path / 'out'
  result = subprocess.run(['bash', 'tools/device_benchmark.sh'], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=600,
                          env={**env, 'OUT': str(out), 'SMOKE': '1', 'PYTHON': str(python)})
  log = (out / 'log.txt').read_text()
  summary = (out / 'summary.txt').read_text()
  assert result.returncode == 0, result.stderr + log[-3000:]
  # Every carried wheel was needed and installed without an index.
  installed = re.search(r'^carried wheels to install: (.*)$', log, re.MULTILINE).group(1)
  assert sorted(Path(w).name for w in installed.split()) == sorted(
      p.name for p in (REPO / '.whl').glob('*.whl'))
  assert re.search(r'^## benchmark_float32_2_paper: .*\nexit 0 after', summary, re.MULTILINE), summary
  assert re.search(r'^Train step, batch 2, float32, on cpu .*JAX .*PyTorch ', summary, re.MULTILINE)
  assert re.search(r'^Host: .*\(.*\); XLA_FLAGS: ', summary, re.MULTILINE), summary
  assert re.search(r'^paper: jax img/s [\d.]+, torch img/s [\d.]+ \(eager, contiguous\), '
                   r'ratio [\d.]+, MFU [\d.]+%$', summary, re.MULTILINE), summary
  assert 'skipped, no TensorFlow or TFDS here' in summary
