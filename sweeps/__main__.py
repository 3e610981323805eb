"""python -m sweeps: every point of a sweep file with every seed, trained here
one after another or emitted for a scheduler, and a report against the paper.

  python -m sweeps --sweep=configs/sweeps/paper_ablations.py:seeds=3 \\
      --config=configs/demo.py --workdir=runs/paper_demo [-- --config.KEY=VALUE ...]

Every run's config is built before any trains (sweeps/runs.py), so a bad
variant or key stops the sweep with nothing started. Re-running the sweep
skips finished runs and main.py resumes the others from their checkpoints.
SIGTERM goes to the run in progress, which saves; the sweep then stops.

--dry_run prints the commands; --emit=commands writes them to
WORKDIR/commands.txt and --emit=slurm an sbatch array script,
WORKDIR/sweep.sbatch, one array task per run; --report writes the report
(sweeps/report.py) from the runs that have finished, as a sweep does when
it ends. docs/sweeps.md has the details.
"""

from __future__ import annotations

import datetime
import os
import shlex
import signal
import subprocess
import sys

from absl import app, flags, logging

import run_files
from sweeps import report, slurm
from sweeps.runs import (MAIN, Run, SweepError, check, finished, load_sweep, plan,
                         record)

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
      if code == 0 and record(run.workdir, run.args):
        continue
      if not sigterm.stopped:
        logging.error('Run %s failed (exit status %d); going on with the others.',
                      run.workdir, code)
        failed.append(run)
  return failed, sigterm.stopped


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
    print(slurm.emit(FLAGS.emit, runs, FLAGS.workdir, FLAGS.sweep, FLAGS.sbatch))
  if FLAGS.dry_run or FLAGS.emit:
    return
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.report:
    failed, stopped = [], False
  else:
    try:
      # One sweep at a time: a second would find the first's runs locked and
      # report them as failed.
      with run_files.WorkdirLock(FLAGS.workdir):
        failed, stopped = train(runs)
    except run_files.WorkdirLockedError as e:
      sys.exit(f'Error: {e}')
  if stopped:
    logging.warning('Stopped by SIGTERM; run the same command to resume.')
    return
  # The command that trains (or resumes) the runs reported.
  command = shlex.join(['python', '-m', 'sweeps', *(
      a for a in sys.argv[1:] if a.split('=')[0] not in ('--report', '--noreport'))])
  print(report.write(FLAGS.workdir, sweep, runs, command,
                           datetime.date.today().isoformat()))
  if failed:
    sys.exit('Error: these runs failed (their logs are above): '
             + ', '.join(run.workdir for run in failed))


if __name__ == '__main__':
  app.run(main)
