"""The runs of a sweep: main.py's flags and sub-workdir for each point and
seed, checked before any trains, and whether each has finished.

Each run is main.py in its own sub-workdir, WORKDIR/<point>/seed=<seed>, with
the base config (--config, or the sweep's) plus the point's variants and
overrides, --config.seed and the flags after `--`. Runs go seed by seed,
every point of a seed before the next seed, so an interrupted sweep leaves
complete pairs. A run is finished when its results.json holds the final
10-crop errors and run.json, recorded after it ended with them, the same
flags (`finished`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import sys
from typing import Any

import run_files
from cluster.sbatch import MAIN
from configs import command_line, validation
from configs.sweeps import Point, Sweep

# The flags of a finished run, written when it finishes.
RUN_FILE = 'run.json'


class SweepError(ValueError):
  """A sweep that cannot run as given; nothing has been started."""


@dataclasses.dataclass(frozen=True)
class Run:
  point: Point
  seed: int
  workdir: str
  config_args: tuple[str, ...]  # --config=FILE:variants, then --config.KEY=VALUE

  @property
  def args(self) -> list[str]:
    """main.py's flags."""
    return [self.config_args[0], f'--workdir={self.workdir}', *self.config_args[1:]]

  def command(self, python: str = 'python') -> str:
    return shlex.join([python, os.path.relpath(MAIN), *self.args])


def load_sweep(spec: str) -> Sweep:
  """The Sweep that FILE[:arg]'s get_sweep(arg) returns."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise SweepError(f'--sweep={spec}: no such file.')
  module_spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} defines no get_sweep(arg) (configs/sweeps/paper_ablations.py '
                     'is an example).')
  try:
    return module.get_sweep(arg or None)
  except ValueError as e:
    raise SweepError(f'--sweep={spec}: {e}') from e


def with_variants(config: str, variants: str) -> str:
  """configs/x.py:a=1 plus b=2 -> configs/x.py:a=1,b=2."""
  if not variants:
    return config
  return f'{config},{variants}' if ':' in config else f'{config}:{variants}'


def _folder(label: str) -> str:
  """A point's sub-workdir name."""
  return label.replace(os.sep, '_')


def plan(sweep: Sweep, config: str, workdir: str, extra: list[str]) -> list[Run]:
  """Every run of `sweep` on base `config`, seed by seed, with `extra` flags."""
  labels = [p.label for p in sweep.points]
  if len(set(labels)) < len(labels) or not labels or not sweep.seeds:
    raise SweepError(f'A sweep needs seeds and points with distinct names; this one '
                     f'has seeds {list(sweep.seeds)} and points {labels}.')
  if len(set(sweep.seeds)) < len(sweep.seeds):
    raise SweepError(f'The seeds {list(sweep.seeds)} repeat one: each seed is a '
                     'pair of runs to compare, so each must be distinct.')
  folders: dict[str, str] = {}
  for label in labels:
    other = folders.setdefault(_folder(label), label)
    if other != label:
      raise SweepError(f'Points {other!r} and {label!r} would share the sub-workdir '
                       f'{_folder(label)!r}; give one another name (Point(name=...)).')
  for point in sweep.points:
    if 'seed' in point.overrides:
      raise SweepError(f'Point {point.label!r} overrides seed: the sweep sets '
                       '--config.seed from its seeds; take it out of the overrides.')
  for claim in sweep.claims:
    for name in (claim.changed, claim.reference):
      if name not in labels:
        raise SweepError(f'Claim {claim.name!r} names point {name!r}; the points '
                         f'are {labels}.')
  for arg in extra:
    if not arg.startswith('--config.') or arg.startswith('--config.seed='):
      raise SweepError(f'{arg} after `--`: only --config.KEY=VALUE flags apply to '
                       'every run, and the sweep sets --config.seed.')
  return [Run(point, seed, os.path.join(workdir, _folder(point.label), f'seed={seed}'),
              (f'--config={with_variants(config, point.variants)}',
               f'--config.seed={seed}', *extra,
               *(f'--config.{k}={v}' for k, v in point.overrides.items())))
          for seed in sweep.seeds for point in sweep.points]


def check(runs: list[Run]) -> None:
  """Builds every run's config as main.py would; the first that fails raises."""
  for run in runs:
    try:
      validation.check(command_line.load(run.config_args))
    except command_line.FLAG_ERRORS as e:
      message = command_line.error_message(e, run.config_args).removeprefix('Error: ')
      raise SweepError(f'point {run.point.label!r}, seed {run.seed}: {message} '
                       'No run was started.') from e
    except ValueError as e:  # validation's, several lines
      raise SweepError(f'point {run.point.label!r}, seed {run.seed}: {e}\n'
                       'No run was started.') from e


def final_results(workdir: str) -> dict[str, Any] | None:
  """The run's results.json if it holds its final step's results, else None."""
  try:
    with open(os.path.join(workdir, run_files.RESULTS)) as f:
      results = json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
  return results if run_files.FINAL_KEY in results else None



def _finished(workdir: str, args: list[str]) -> bool:
  try:
    with open(os.path.join(workdir, RUN_FILE)) as f:
      recorded = json.load(f)['args']
  except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
    return False
  return recorded == args and final_results(workdir) is not None


def finished(run: Run) -> bool:
  """Whether `run` reached its final step with these flags: its results.json
  holds the final 10-crop errors (which a resumed run drops until it earns
  them again) and run.json, recorded after main.py ended with them, the
  same flags."""
  return _finished(run.workdir, run.args)


def record(workdir: str, args: list[str]) -> bool:
  """After main.py `args` exited 0 in `workdir`: records its flags in
  run.json if it reached its final step; returns whether it is finished."""
  if final_results(workdir) is not None:
    with run_files.atomic_write(os.path.join(workdir, RUN_FILE)) as f:
      json.dump({'args': args}, f, indent=2)
  return _finished(workdir, args)


if __name__ == '__main__':
  # python -m sweeps.runs WORKDIR MAIN_ARGS...: `record`, for the SLURM
  # script, after the run exited 0; status 1 if it has not finished.
  sys.exit(0 if record(sys.argv[1], sys.argv[2:]) else 1)
