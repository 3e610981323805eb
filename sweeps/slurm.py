"""The sbatch array script of a sweep: one array task per run, resumed as a
rerun does and requeued when SIGTERM stops it before its end."""

from __future__ import annotations

import os
import shlex

from sweeps.runs import MAIN, Run


def slurm_script(runs: list[Run], workdir: str, name: str, options: list[str]) -> str:
  """An sbatch array script: task k runs runs[k] on one whole node, resuming
  as a rerun does; stopped by SIGTERM before it finishes, it requeues itself."""
  logs = os.path.abspath(os.path.join(workdir, 'slurm'))
  header = [
      '#!/bin/bash',
      f'# {len(runs)} runs of sweep {name}, one per array task, written by python -m sweeps.',
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
      '# The sweep\'s own test of a finished run (sweeps/runs.py: record).',
      f'if [ "$status" -eq 0 ] && ! PYTHONPATH={shlex.quote(os.path.dirname(MAIN))}'
      '${PYTHONPATH:+:$PYTHONPATH} "$python" -m sweeps.runs "$workdir" "${args[@]}"; then',
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


