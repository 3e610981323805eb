"""sbatch scripts that survive preemption, for a sweep's array and for one run.

The scheduler warns a job before its time limit (`--signal=B:TERM@N`) or a
preemption with SIGTERM to the batch shell. srun answers SIGTERM by ending its
job step, so the script never passes it to srun: it asks SLURM to signal the
step's tasks (`scancel --signal=TERM JOB`, which leaves the batch shell and
srun alone), main.py saves and exits 0 in every process, and the script
requeues the job until the run's results are final.
"""

from __future__ import annotations

import os
import shlex

import run_files

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py')
# Seconds of warning before the time limit: time to finish a step and save.
SIGNAL_LEAD = 300
SCRIPT = 'train.sbatch'


def header(job_name: str, options: list[str]) -> list[str]:
  """The #SBATCH lines every script has, then the caller's `options`."""
  return ['#!/bin/bash',
          f'#SBATCH --job-name={job_name}',
          '#SBATCH --requeue',
          f'#SBATCH --signal=B:TERM@{SIGNAL_LEAD}',
          '#SBATCH --open-mode=append',
          *(f'#SBATCH {option}' for option in options)]


def run_until_final(srun_options: list[str], finished: str) -> list[str]:
  """Shell lines that run main.py "${args[@]}" under srun (alone outside
  SLURM), forward SIGTERM to it as above, and requeue the job if it stopped
  before its end: when the shell command `finished` fails."""
  srun = shlex.join(['srun', *srun_options])
  main = shlex.quote(os.path.relpath(MAIN))
  return [
      f'cd {shlex.quote(os.getcwd())}',
      'python="${PYTHON:-python}"',
      'if [ -n "${SLURM_JOB_ID:-}" ]; then',
      f'  {srun} "$python" {main} "${{args[@]}}" &',
      '  pid=$!',
      "  trap 'scancel --signal=TERM \"$SLURM_JOB_ID\"' TERM",
      'else',
      f'  "$python" {main} "${{args[@]}}" &',
      '  pid=$!',
      "  trap 'kill -TERM \"$pid\" 2>/dev/null' TERM",
      'fi',
      '# A trapped signal ends `wait` early: wait again until the run has ended.',
      'wait "$pid"; status=$?',
      'while kill -0 "$pid" 2>/dev/null; do wait "$pid"; status=$?; done',
      f'if [ "$status" -eq 0 ] && ! {finished}; then',
      '  echo "The run stopped before its end; it resumes when run again." >&2',
      '  if [ -n "${SLURM_JOB_ID:-}" ]; then scontrol requeue "$SLURM_JOB_ID"; fi',
      'fi',
      'exit "$status"',
      '']


def final_results_test(workdir: str) -> str:
  """A shell test: whether the run in `workdir` wrote its final results."""
  return f'grep -q \'"{run_files.FINAL_KEY}"\' {workdir}/{run_files.RESULTS} 2>/dev/null'


def run_script(args: list[str], *, nodes: int, tasks_per_node: int,
               gpus_per_task: int, options: list[str]) -> str:
  """The sbatch script of one training run: main.py with `args` in every one
  of nodes x tasks_per_node processes, one jax.distributed job."""
  workdir = _flag(args, 'workdir')
  logs = os.path.abspath(os.path.join(workdir, 'slurm'))
  resources = [f'--nodes={nodes}', f'--ntasks-per-node={tasks_per_node}',
               f'--output={logs}/%j.out']
  if gpus_per_task:
    resources.append(f'--gpus-per-task={gpus_per_task}')
  lines = header(os.path.basename(os.path.abspath(workdir)), resources + options)
  lines += [f'# Submit: sbatch {os.path.join(workdir, SCRIPT)}    PYTHON: the '
            'interpreter (default: python).',
            'set -uo pipefail',
            f'workdir={shlex.quote(workdir)}',
            f'args=({shlex.join(args)})']
  if gpus_per_task:
    # SLURM shows each task its own GPUs, numbered from 0; jax.distributed
    # would otherwise drive GPU SLURM_LOCALID of them, one per process.
    lines += ['export JAX_LOCAL_DEVICE_IDS='
              + ','.join(map(str, range(gpus_per_task)))]
  return '\n'.join(lines + run_until_final([], final_results_test('"$workdir"')))


def _flag(args: list[str], name: str) -> str:
  for arg in args:
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
  raise ValueError(f'main.py flags without --{name}=...: give the run\'s flags after '
                   f'--, e.g. -- --config=configs/alexnet.py --workdir=runs/alexnet')


def write(args: list[str], **resources) -> str:
  """Writes WORKDIR/train.sbatch for main.py `args`; returns its path."""
  _flag(args, 'config')
  text = run_script(args, **resources)
  workdir = _flag(args, 'workdir')
  os.makedirs(os.path.join(workdir, 'slurm'), exist_ok=True)  # sbatch's logs
  path = os.path.join(workdir, SCRIPT)
  with open(path, 'w') as f:
    f.write(text)
  return path
