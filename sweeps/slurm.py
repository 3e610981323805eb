"""The sbatch array script of a sweep: one array task per run, resumed as a
rerun does and requeued when a signal stops it before its end."""

from __future__ import annotations

import os
import shlex

from cluster import sbatch
from sweeps.runs import Run


def slurm_script(runs: list[Run], workdir: str, name: str, options: list[str]) -> str:
  """An sbatch array script: task k runs runs[k] on one whole node, resuming
  as a rerun does; stopped by SIGTERM before it finishes, it requeues itself."""
  logs = os.path.abspath(os.path.join(workdir, 'slurm'))
  lines = sbatch.header(os.path.basename(os.path.abspath(workdir)), [
      f'--array=0-{len(runs) - 1}', '--nodes=1', '--ntasks=1', '--exclusive',
      f'--output={logs}/%A_%a.out', *options])
  lines += [
      f'# {len(runs)} runs of sweep {name}, one per array task, written by python -m sweeps.',
      f'# Submit: sbatch {os.path.join(workdir, "sweep.sbatch")}    PYTHON: the '
      'interpreter (default: python).',
      'set -uo pipefail',
      'case "${SLURM_ARRAY_TASK_ID:?set by sbatch --array}" in']
  lines += [f'  {k}) workdir={shlex.quote(run.workdir)}; args=({shlex.join(run.args)}) ;;'
            for k, run in enumerate(runs)]
  lines += [
      f'  *) echo "No run $SLURM_ARRAY_TASK_ID: this sweep has runs 0-{len(runs) - 1}." >&2;'
      ' exit 2 ;;',
      'esac']
  # The sweep's own test of a finished run, which records run.json (sweeps/runs.py).
  repo = shlex.quote(os.path.dirname(sbatch.MAIN))
  finished = (f'PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}} '
              '"$python" -m sweeps.runs "$workdir" "${args[@]}"')
  return '\n'.join(lines + sbatch.run_until_final(['--ntasks=1'], finished))


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
