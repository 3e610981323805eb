"""On a real SLURM cluster (.ci/run starts a one-node one): srun, the single
run's and the sweep's sbatch scripts, preemption and requeue.

Every job runs the tiny demo with one CPU device per process, as on GPU
hosts (a process per GPU).
"""

import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import checkpointing
from sweeps import runs as sweep_runs

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures('slurm_cluster')]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
# Long enough that a signal sent after the first checkpoint lands mid-run.
STEPS = 300
RUN_FLAGS = ['--config=configs/demo.py:size=tiny', f'--config.num_train_steps={STEPS}',
             '--config.checkpoint.every_steps=20', '--config.eval_every_epochs=1000',
             '--config.log_every_steps=50', '--config.batch_size=16',
             '--config.eval_batch_size=16']


def _env(**extra):
  """The jobs' environment: one CPU device per process, this interpreter."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')
         or k == 'SLURM_CONF'}
  return dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=1',
              TF_CPP_MIN_LOG_LEVEL='2', PYTHON=sys.executable, **extra)


@pytest.fixture(scope='module')
def data_flag(tmp_path_factory):
  """One demo dataset for every job, generated before any starts."""
  data_dir = tmp_path_factory.mktemp('tfds')
  result = subprocess.run(
      [sys.executable, 'main.py', *RUN_FLAGS, '--mode=stats',
       f'--config.data.data_dir={data_dir}'], cwd=REPO, env=_env(),
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return f'--config.data.data_dir={data_dir}'


def _sbatch(*args: str) -> str:
  result = subprocess.run(['sbatch', '--parsable', *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().split(';')[0]


def _jobs(job: str) -> dict[str, tuple[str, str]]:
  """The job's (or array's) tasks still known to squeue: id -> (state, reason)."""
  result = subprocess.run(['squeue', '-h', '-r', '-j', job, '-o', '%i|%T|%r'],
                          capture_output=True, text=True, timeout=60)
  rows = [line.split('|') for line in result.stdout.split()]
  return {row[0]: (row[1], row[2]) for row in rows}


def _wait(job: str, timeout: float = 900) -> None:
  """Until every task of `job` has left the queue. SLURM keeps a requeued
  batch job pending for two minutes before it may start again; the test
  lifts that wait (scontrol update StartTime=now)."""
  deadline = time.monotonic() + timeout
  while tasks := _jobs(job):
    for task, (state, reason) in tasks.items():
      if state == 'PENDING' and reason == 'BeginTime':
        subprocess.run(['scontrol', 'update', f'JobId={task}', 'StartTime=now'],
                       capture_output=True, timeout=60)
    assert time.monotonic() < deadline, f'job {job} still queued: {tasks}'
    time.sleep(0.5)


def _until(condition, what: str, timeout: float = 600) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.05)


def _saved_steps(workdir) -> list[int]:
  path = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(
      path) else []


def _params(workdir, step: int = STEPS):
  path = os.path.join(workdir, checkpointing.CHECKPOINT_DIR, str(step), 'state')
  return ocp.PyTreeCheckpointer().restore(path)['params']


def _assert_bitwise_equal(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _srun_main(workdir, data_flag, name='alexnet-test'):
  return subprocess.Popen(
      ['srun', '--ntasks=2', f'--job-name={name}', sys.executable, 'main.py',
       *RUN_FLAGS, data_flag, f'--workdir={workdir}'], cwd=REPO, env=_env(), text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_flag):
  """The run under srun -n 2 from start to end, uninterrupted."""
  workdir = tmp_path_factory.mktemp('uninterrupted') / 'work'
  process = _srun_main(workdir, data_flag)
  out, _ = process.communicate(timeout=900)
  assert process.returncode == 0, out[-3000:]
  return workdir


def test_srun_step_matches_one_process_and_repeats_bitwise(tmp_path):
  # The batch split over both devices (parallel=data): two processes of one
  # device each under srun, twice, then one process of two devices.
  def params(launch, layout, name):
    path = tmp_path / f'{name}.npz'
    result = subprocess.run(
        [*launch, sys.executable, os.path.join(HERE, 'distributed_worker.py'),
         *map(str, layout), str(path), 'data'],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return dict(np.load(path))

  srun = ['srun', '--ntasks=2']
  first, second = (params(srun, ('slurm', 2, 0, 1), name) for name in ('first', 'second'))
  one = params([], ('-', 1, 0, 2), 'one')
  assert first.keys() == one.keys() and len(one) > 10
  for name in one:
    np.testing.assert_array_equal(first[name], second[name])
    np.testing.assert_allclose(first[name], one[name], rtol=1e-5, atol=1e-6)


def test_srun_run_writes_its_files_once(uninterrupted):
  records = [json.loads(line) for line in
             (uninterrupted / 'metrics.jsonl').read_text().splitlines()]
  # Process 0 alone writes: no scalar twice at a step.
  scalars = [(r['step'], key) for r in records for key in r if key != 'step']
  assert len(scalars) == len(set(scalars)) and records[-1]['step'] == STEPS
  results = json.loads((uninterrupted / 'results.json').read_text())
  assert results['step'] == STEPS and 'val_top1_error_10crop' in results


def test_sigterm_to_the_job_step_saves_and_the_rerun_resumes(uninterrupted, data_flag,
                                                             tmp_path):
  workdir = tmp_path / 'work'
  process = _srun_main(workdir, data_flag, name='preempted')
  try:
    _until(lambda: _saved_steps(workdir), 'the first checkpoint')
    job = subprocess.run(['squeue', '-h', '-n', 'preempted', '-o', '%i'],
                         capture_output=True, text=True).stdout.split()
    assert len(job) == 1, job
    # The scheduler's preemption: SIGTERM to every task of the job's steps.
    subprocess.run(['scancel', '--signal=TERM', *job], check=True, timeout=60)
    out, _ = process.communicate(timeout=600)
  finally:
    process.kill()
  assert process.returncode == 0, out[-3000:]
  stopped = set(re.findall(r'Preempted: stopped after step (\d+)', out))
  assert len(stopped) == 1 and out.count('Preempted: stopped') == 2, out[-3000:]
  step = int(stopped.pop())
  assert step < STEPS and _saved_steps(workdir)[-1] == step

  rerun = _srun_main(workdir, data_flag)
  out, _ = rerun.communicate(timeout=900)
  assert rerun.returncode == 0, out[-3000:]
  assert f'Restored checkpoint {step}' in out
  _assert_bitwise_equal(_params(workdir), _params(uninterrupted))


def test_single_run_script_is_preempted_requeues_and_finishes(uninterrupted, data_flag,
                                                             tmp_path):
  # python -m cluster's script for 2 tasks of one device each; the time
  # limit's warning (--signal=B:TERM@N) comes to the batch shell, as here.
  workdir = tmp_path / 'work'
  written = subprocess.run(
      [sys.executable, '-m', 'cluster', '--tasks_per_node=2', '--time=0:30:00', '--',
       *RUN_FLAGS, data_flag, f'--workdir={workdir}'], cwd=REPO, env=_env(),
      capture_output=True, text=True, timeout=300)
  assert written.returncode == 0, written.stderr[-3000:]
  script = workdir / 'train.sbatch'
  assert written.stdout.strip() == f'sbatch {script}'
  job = _sbatch(str(script))
  _until(lambda: _saved_steps(workdir), 'the first checkpoint')
  subprocess.run(['scancel', '--signal=TERM', '--batch', job], check=True, timeout=60)
  _wait(job)
  log = (workdir / 'slurm' / f'{job}.out').read_text()
  assert log.count('Preempted: stopped') == 2, log[-3000:]
  assert 'stopped before its end; it resumes when run again' in log
  assert re.search(r'Restored checkpoint \d+', log), log[-3000:]
  _assert_bitwise_equal(_params(workdir), _params(uninterrupted))


def test_sweep_array_survives_its_preemptions(data_flag, tmp_path):
  sweep_file = tmp_path / 'sweep.py'
  sweep_file.write_text(
      'from configs.sweeps import Point, Sweep\n'
      'def get_sweep(arg=None):\n'
      "  return Sweep(name='preempted', config='configs/demo.py:size=tiny', seeds=(0,),\n"
      "               points=(Point(''), Point('lrn=off')))\n")
  workdir = tmp_path / 'sweep'
  emitted = subprocess.run(
      [sys.executable, '-m', 'sweeps', f'--sweep={sweep_file}', f'--workdir={workdir}',
       '--emit=slurm', '--', *RUN_FLAGS[1:], data_flag], cwd=REPO, env=_env(),
      capture_output=True, text=True, timeout=300)
  assert emitted.returncode == 0, emitted.stderr[-3000:]
  array = _sbatch(str(workdir / 'sweep.sbatch'))
  signalled, requeued = (workdir / 'baseline' / 'seed=0', workdir / 'lrn=off' / 'seed=0')
  # Task 0: the time limit's warning to its batch shell; task 1: the
  # scheduler requeues it while it runs. (The tasks may run one at a time.)
  _until(lambda: _saved_steps(signalled), "task 0's first checkpoint")
  subprocess.run(['scancel', '--signal=TERM', '--batch', f'{array}_0'], check=True,
                 timeout=60)
  _until(lambda: _saved_steps(requeued), "task 1's first checkpoint")
  saved = _saved_steps(requeued)[-1]
  subprocess.run(['scontrol', 'requeue', f'{array}_1'], check=True, timeout=60)
  _wait(array)
  logs = [(workdir / 'slurm' / f'{array}_{k}.out').read_text() for k in range(2)]
  for run, log in zip((signalled, requeued), logs):
    assert sweep_runs.final_results(str(run)), log[-3000:]
    assert re.search(r'Restored checkpoint \d+', log), log[-3000:]
  assert 'Preempted: stopped' in logs[0]
  # Nothing lost beyond the last save: the requeued task resumes from it or later.
  assert int(re.search(r'Restored checkpoint (\d+)', logs[1])[1]) >= saved

  # The signalled run ends where an uninterrupted run of its flags does.
  reference = tmp_path / 'reference'
  planned = subprocess.run(
      [sys.executable, '-m', 'sweeps', f'--sweep={sweep_file}', f'--workdir={reference}',
       '--dry_run', '--', *RUN_FLAGS[1:], data_flag], cwd=REPO, env=_env(),
      capture_output=True, text=True, timeout=300)
  command = planned.stdout.splitlines()[0].split()
  assert command[:2] == ['python', 'main.py'], planned.stdout
  result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  reference = reference / 'baseline' / 'seed=0'
  _assert_bitwise_equal(_params(signalled), _params(reference))
  assert (json.loads((signalled / 'results.json').read_text())['val_top1_error_10crop']
          == json.loads((reference / 'results.json').read_text())['val_top1_error_10crop'])


def test_several_tasks_without_srun_are_told_to_use_it(data_flag, tmp_path):
  log = tmp_path / 'job.out'
  job = _sbatch('--ntasks=2', f'--output={log}', '--wrap',
                f'{sys.executable} main.py {" ".join(RUN_FLAGS)} {data_flag} '
                f'--workdir={tmp_path / "work"}')
  _wait(job)
  lines = log.read_text().strip().splitlines()
  assert lines[-1].startswith('Error: SLURM_NTASKS=2 but this process is not in a job '
                              'step'), lines[-5:]
  assert 'Launch every process with srun' in lines[-1]
  assert 'Traceback' not in log.read_text()
