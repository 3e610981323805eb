"""Sweeps: every point of a sweep file with every seed, trained here one after
another or emitted for a scheduler, and a report against the paper.

  python -m tools.sweep --sweep=configs/sweeps/paper_ablations.py:seeds=3 \\
      --config=configs/demo.py --workdir=runs/paper_demo [-- --config.KEY=VALUE ...]

Each run is main.py in its own sub-workdir, WORKDIR/<point>/seed=<seed>, with
the base config (--config, or the sweep's) plus the point's variants and
overrides, --config.seed and the flags after `--`. Every run's config is
built before any trains, so a bad variant or key stops the sweep with nothing
started. Runs go seed by seed, every point of a seed before the next seed,
so an interrupted sweep leaves complete pairs. A run is finished when its
results.json holds the final 10-crop errors under the same flags (run.json);
re-running the sweep skips finished runs and main.py resumes the others from
their checkpoints. SIGTERM goes to the run in progress, which saves; the
sweep then stops.

--dry_run prints the commands; --emit=commands writes them to
WORKDIR/commands.txt and --emit=slurm an sbatch array script,
WORKDIR/sweep.sbatch, one array task per run; --report writes the report
(tools/sweep_report.py) from the runs that have finished, as a sweep does when
it ends. docs/sweeps.md has the details.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys

from absl import app, flags, logging

from configs import command_line, validation
from configs.sweeps import Point, Sweep
from tools import sweep_report

FLAGS = flags.FLAGS
flags.DEFINE_string('sweep', None, 'Sweep file, FILE[:arg], e.g. '
                    'configs/sweeps/paper_ablations.py:seeds=3.')
flags.DEFINE_string('config', None, "Base config, FILE[:variants]; default: the sweep's.")
flags.DEFINE_string('workdir', None, 'Directory of the runs (one sub-workdir each) '
                    'and the report.')
flags.DEFINE_bool('dry_run', False, 'Print one main.py command per run; train nothing.')
flags.DEFINE_enum('emit', None, ['commands', 'slurm'],
                  'Write the runs for a scheduler instead of training them: '
                  'WORKDIR/commands.txt, or WORKDIR/sweep.sbatch (a SLURM array).')
flags.DEFINE_multi_string('sbatch', [], 'An #SBATCH option for --emit=slurm, e.g. '
                          '--sbatch=--time=48:00:00; repeat for more.')
flags.DEFINE_bool('report', False, 'Only write the report of the runs that have finished.')
flags.mark_flags_as_required(['sweep', 'workdir'])

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py')
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


def plan(sweep: Sweep, config: str, workdir: str, extra: list[str]) -> list[Run]:
  """Every run of `sweep` on base `config`, seed by seed, with `extra` flags."""
  labels = [p.label for p in sweep.points]
  if len(set(labels)) < len(labels) or not labels or not sweep.seeds:
    raise SweepError(f'A sweep needs seeds and points with distinct names; this one '
                     f'has seeds {list(sweep.seeds)} and points {labels}.')
  for claim in sweep.claims:
    for name in (claim.changed, claim.reference):
      if name not in labels:
        raise SweepError(f'Claim {claim.name!r} names point {name!r}; the points '
                         f'are {labels}.')
  for arg in extra:
    if not arg.startswith('--config.') or arg.startswith('--config.seed='):
      raise SweepError(f'{arg} after `--`: only --config.KEY=VALUE flags apply to '
                       'every run, and the sweep sets --config.seed.')
  return [Run(point, seed,
              os.path.join(workdir, point.label.replace(os.sep, '_'), f'seed={seed}'),
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


def finished(run: Run) -> bool:
  """Whether `run` reached its final step with these flags."""
  try:
    with open(os.path.join(run.workdir, RUN_FILE)) as f:
      recorded = json.load(f)['args']
  except (FileNotFoundError, json.JSONDecodeError, KeyError):
    return False
  return recorded == run.args and sweep_report.final_results(run.workdir) is not None


class _ForwardSigterm:
  """SIGTERM to the sweep goes to the run in progress (which saves and exits)
  and stops the sweep after it."""

  def __enter__(self):
    self.child, self.stopped = None, False
    self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def _on_sigterm(self, signum, frame):
    del frame
    self.stopped = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signum)

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def train(runs: list[Run]) -> tuple[list[Run], bool]:
  """Trains the unfinished runs in turn; returns the failed ones and whether
  SIGTERM stopped the sweep."""
  failed = []
  with _ForwardSigterm() as sigterm:
    for i, run in enumerate(runs):
      if sigterm.stopped:
        break
      if finished(run):
        logging.info('Run %d/%d finished already, skipped: %s', i + 1, len(runs),
                     run.workdir)
        continue
      logging.info('Run %d/%d: %s', i + 1, len(runs), run.command(sys.executable))
      sigterm.child = subprocess.Popen([sys.executable, MAIN, *run.args])
      code = sigterm.child.wait()
      if sweep_report.final_results(run.workdir) is not None and code == 0:
        with open(os.path.join(run.workdir, RUN_FILE), 'w') as f:
          json.dump({'args': run.args}, f, indent=2)
      elif not sigterm.stopped:
        logging.error('Run %s failed (exit status %d); going on with the others.',
                      run.workdir, code)
        failed.append(run)
  return failed, sigterm.stopped


def slurm_script(runs: list[Run], workdir: str, name: str, options: list[str]) -> str:
  """An sbatch array script: task k runs runs[k] on one whole node, resuming
  as a rerun does; stopped by SIGTERM before it finishes, it requeues itself."""
  logs = os.path.abspath(os.path.join(workdir, 'slurm'))
  header = [
      '#!/bin/bash',
      f'# {len(runs)} runs of sweep {name}, one per array task, written by tools/sweep.py.',
      f'# Submit: sbatch {os.path.join(workdir, "sweep.sbatch")}    PYTHON: the '
      'interpreter (default: python).',
      f'#SBATCH --job-name={os.path.basename(os.path.abspath(workdir))}',
      f'#SBATCH --array=0-{len(runs) - 1}',
      '#SBATCH --nodes=1',
      '#SBATCH --ntasks=1',
      '#SBATCH --exclusive',
      '#SBATCH --requeue',
      '#SBATCH --signal=B:TERM@300',
      '#SBATCH --open-mode=append',
      f'#SBATCH --output={logs}/%A_%a.out',
      *(f'#SBATCH {option}' for option in options),
      'set -uo pipefail',
      f'cd {shlex.quote(os.getcwd())}',
      'python="${PYTHON:-python}"',
      'case "${SLURM_ARRAY_TASK_ID:?set by sbatch --array}" in']
  cases = [f'  {k}) workdir={shlex.quote(run.workdir)}; args=({shlex.join(run.args)}) ;;'
           for k, run in enumerate(runs)]
  body = [
      f'  *) echo "No run $SLURM_ARRAY_TASK_ID: this sweep has runs 0-{len(runs) - 1}." >&2;'
      ' exit 2 ;;',
      'esac',
      '# srun where SLURM is, so the run gets the job step; the run alone otherwise.',
      'launch=()',
      'if command -v srun >/dev/null; then launch=(srun --ntasks=1); fi',
      f'${{launch[@]+"${{launch[@]}}"}} "$python" {shlex.quote(os.path.relpath(MAIN))} '
      '"${args[@]}" &',
      'pid=$!',
      '# SIGTERM (time limit or preemption): main.py saves and exits 0.',
      'trap \'kill -TERM "$pid" 2>/dev/null\' TERM',
      'wait "$pid"; status=$?',
      'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; status=$?; done',
      f'if [ "$status" -eq 0 ] && ! grep -q \'"{sweep_report.FINAL_KEY}"\' '
      '"$workdir/results.json" 2>/dev/null; then',
      '  echo "Run $SLURM_ARRAY_TASK_ID stopped before its end; it resumes when run again." >&2',
      '  if command -v scontrol >/dev/null; then',
      '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
      '  fi',
      'fi',
      'exit "$status"',
      '']
  return '\n'.join(header + cases + body)


def emit(kind: str, runs: list[Run], workdir: str, name: str, options: list[str]) -> str:
  """Writes `runs` for a scheduler into `workdir`; says where."""
  if kind == 'slurm':
    os.makedirs(os.path.join(workdir, 'slurm'), exist_ok=True)  # sbatch's logs
    path, text = os.path.join(workdir, 'sweep.sbatch'), slurm_script(
        runs, workdir, name, options)
  else:
    os.makedirs(workdir, exist_ok=True)
    path, text = (os.path.join(workdir, 'commands.txt'),
                  ''.join(run.command() + '\n' for run in runs))
  with open(path, 'w') as f:
    f.write(text)
  return (f'{len(runs)} array tasks: sbatch {path}' if kind == 'slurm'
          else f'{len(runs)} commands: {path}')


def main(argv: list[str]) -> None:
  extra = argv[1:]
  try:
    sweep = load_sweep(FLAGS.sweep)
    runs = plan(sweep, FLAGS.config or sweep.config, FLAGS.workdir, extra)
    check(runs)
  except SweepError as e:
    sys.exit(f'Error: {e}')
  if FLAGS.dry_run:
    print('\n'.join(run.command() for run in runs))
  if FLAGS.emit:
    print(emit(FLAGS.emit, runs, FLAGS.workdir, FLAGS.sweep, FLAGS.sbatch))
  if FLAGS.dry_run or FLAGS.emit:
    return
  os.makedirs(FLAGS.workdir, exist_ok=True)
  failed, stopped = ([], False) if FLAGS.report else train(runs)
  if stopped:
    logging.warning('Stopped by SIGTERM; run the same command to resume.')
    return
  # The command that trains (or resumes) the runs reported.
  command = shlex.join(['python', '-m', 'tools.sweep', *(
      a for a in sys.argv[1:] if a.split('=')[0] not in ('--report', '--noreport'))])
  print(sweep_report.write(FLAGS.workdir, sweep, runs, command,
                           datetime.date.today().isoformat()))
  if failed:
    sys.exit('Error: these runs failed (their logs are above): '
             + ', '.join(run.workdir for run in failed))


if __name__ == '__main__':
  app.run(main)
