"""python -m sweeps: a tiny sweep end to end, interrupted and resumed; its report
against results.json; commands, the SLURM array; bad points; the statistics."""

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import run_files
from configs.sweeps import Claim, Point, Sweep
import run_files
from sweeps import report as sweep_report, runs as sweep_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 2 points x 2 seeds, as configs/sweeps/paper_ablations.py declares its 4 x N.
TINY_SWEEP = '''
import run_files
from configs.sweeps import Claim, Point, Sweep


def get_sweep(arg=None):
  changed = Point(POINT)
  return Sweep(points=(Point(), changed), seeds=(0, 1),
               claims=(Claim('Response normalisation', '3.3', changed=changed.label,
                             reference='baseline', top1=1.4, top5=1.2),))
'''
RUNS = ['baseline/seed=0', 'lrn=off/seed=0', 'baseline/seed=1', 'lrn=off/seed=1']


def _sweep_file(tmp_path, point="'lrn=off'") -> str:
  path = tmp_path / 'tiny_sweep.py'
  path.write_text(TINY_SWEEP.replace('POINT', point))
  return str(path)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def _args(sweep_file, workdir, data_dir, *flags):
  return [sys.executable, '-m', 'sweeps', f'--sweep={sweep_file}',
          '--config=configs/demo.py:size=tiny', f'--workdir={workdir}', *flags, '--',
          f'--config.data.data_dir={data_dir}', '--config.num_train_steps=2',
          '--config.batch_size=16', '--config.eval_batch_size=32']


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_JOB')}
  return dict(env, TF_CPP_MIN_LOG_LEVEL='2', **extra)


def _sweep(*args, timeout=600):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=_env())


def _results(workdir, run):
  with open(os.path.join(workdir, run, 'results.json')) as f:
    return json.load(f)


def _metrics(run_dir):
  path = run_dir / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.endswith('}')] if path.exists() else []


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _stamps(run_dir):
  """Modification times of everything a run writes."""
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(run_dir) for name in names}


def test_paired_effect_and_interval_on_known_inputs():
  # Differences 1, 2, 3 (seed 5 has no pair): mean 2, sd 1, and the textbook
  # t(0.975, 2 df) = 4.303, so the interval is 2 +- 4.303 / sqrt(3).
  effect = sweep_report.paired_effect({0: 3.0, 1: 5.0, 2: 7.0, 5: 9.0},
                                      {0: 2.0, 1: 3.0, 2: 4.0})
  assert effect.n == 3 and effect.mean == pytest.approx(2.0)
  assert effect.low == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3)
  assert effect.high == pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-3)
  single = sweep_report.paired_effect({0: 3.0}, {0: 1.0})
  assert single.n == 1 and single.mean == 2.0 and math.isnan(single.low)
  assert sweep_report.paired_effect({0: 3.0}, {1: 1.0}).n == 0


def test_claim_rows_say_sign_and_whether_the_paper_lies_inside():
  claim = Claim('LRN', '3.3', changed='off', reference='on', top1=1.4, top5=-1.0)
  # Top-1 errors rise by 1, 2, 3 points (interval [-0.48, 4.48]); top-5 by 5, 5.1, 5.2.
  finished = {
      'on': {s: {'val_top1_error_10crop': 0.1, 'val_top5_error_10crop': 0.01}
             for s in range(3)},
      'off': {s: {'val_top1_error_10crop': 0.1 + (s + 1) / 100,
                  'val_top5_error_10crop': 0.01 + (5 + s / 10) / 100} for s in range(3)}}
  row, = sweep_report.claim_rows([claim], (0, 1, 2), finished)
  assert row['seeds'] == 3
  assert row['top1_effect'] == pytest.approx(2.0)
  assert (row['top1_same_sign'], row['top1_paper_inside']) == ('yes', 'yes')
  assert row['top5_effect'] == pytest.approx(5.1)
  assert (row['top5_same_sign'], row['top5_paper_inside']) == ('no', 'no')
  missing, = sweep_report.claim_rows([claim], (0, 1, 2), {'on': finished['on']})
  assert missing['seeds'] == 0 and missing['top1_same_sign'] == 'n/a'


def test_missing_single_and_degenerate_effects_say_so():
  claim = Claim('LRN', '3.3', changed='off', reference='on', top1=1.4, top5=1.2)
  on = {s: {'val_top1_error_10crop': 0.1, 'val_top5_error_10crop': 0.01} for s in range(3)}
  # Seed 0 alone finished 'off'; top-5 rises by the same 1 point on every seed.
  same = {s: {'val_top1_error_10crop': 0.1 + s / 100, 'val_top5_error_10crop': 0.02}
          for s in range(3)}
  none, one, degenerate = sweep_report.claim_rows(
      [claim, dataclasses.replace(claim, changed='one'),
       dataclasses.replace(claim, changed='same')], (0, 1, 2),
      {'on': on, 'one': {0: same[0]}, 'same': same})
  assert (none['seeds'], none['top1_note'], none['top1_same_sign'],
          none['top1_paper_inside']) == (0, 'no pairs', 'n/a', 'n/a')
  assert none['dropped_pairs'] == 3
  assert none['dropped'].startswith('seed 0 (off not finished); seed 1')
  assert (one['seeds'], one['top1_note'], one['top1_same_sign'],
          one['top1_paper_inside']) == (1, 'one pair: no interval', 'no', 'n/a')
  assert (one['dropped_pairs'], one['dropped']) == (
      2, 'seed 1 (one not finished); seed 2 (one not finished)')
  assert degenerate['top5_low'] == degenerate['top5_high'] == pytest.approx(1.0)
  assert degenerate['top5_note'] == 'degenerate: every pair differs by the same'
  assert degenerate['top1_note'] == '' and degenerate['dropped_pairs'] == 0

  no_bar, one_bar, degenerate_bar = sweep_report.effect_bars([none, one, degenerate], 'top1')
  assert no_bar.height is None and no_bar.note == 'no pairs'  # not a bar of 0
  assert one_bar.height == pytest.approx(0.0) and one_bar.error is None
  half = 4.303 / math.sqrt(3)  # differences 0, 1, 2: sd 1
  assert degenerate_bar.error == pytest.approx((half, half), abs=1e-3)
  report = sweep_report._markdown([], [none, one, degenerate], [], 6, 'python -m sweeps', 'today')
  assert '| LRN | 3.3 | off vs on | 0 | 3: seed 0 (off not finished);' in report
  assert 'n/a (no pairs) | +1.4 | n/a | n/a |' in report
  assert '+1.00 [+1.00, +1.00] (degenerate: every pair differs by the same)' in report


def test_tiny_sweep_interrupted_resumed_and_reported(tmp_path, data_dir):
  sweep_file, workdir = _sweep_file(tmp_path), tmp_path / 'sweep'
  args = _args(sweep_file, workdir, data_dir)
  log = open(tmp_path / 'interrupted.log', 'w')
  process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=_env())
  # The first run is finished once the sweep records its flags; stop the
  # sweep as it goes on to the next.
  first = workdir / RUNS[0]
  deadline = time.time() + 300
  while not (first / 'run.json').exists():
    assert process.poll() is None, (tmp_path / 'interrupted.log').read_text()[-3000:]
    assert time.time() < deadline
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == 0
  log.close()
  assert 'Stopped by SIGTERM' in (tmp_path / 'interrupted.log').read_text()
  assert [r for r in RUNS if (workdir / r / 'run.json').exists()] == [RUNS[0]]

  # A report of what has finished lists the rest as missing.
  partial = _sweep(*_args(sweep_file, workdir, data_dir, '--report'))
  assert partial.returncode == 0, partial.stderr[-3000:]
  assert not (workdir / RUNS[1] / 'run.json').exists()  # --report trains nothing
  report = (workdir / 'report.md').read_text()
  for run in RUNS[1:]:
    point, seed = run.split('/seed=')
    assert f'- {point}, seed {seed}: ' in report
  assert [(r['point'], r['seeds']) for r in _csv(workdir / 'report.csv')] == [
      ('baseline', '1'), ('lrn=off', '0')]

  stamps = _stamps(first)
  result = _sweep(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'finished already, skipped: {first}' in result.stderr
  assert _stamps(first) == stamps  # not retrained, nothing rewritten
  assert all(sweep_runs.final_results(str(workdir / r)) for r in RUNS)

  for name in ('report.md', 'report.csv', 'runs.csv', 'claims.csv'):
    assert (workdir / name).stat().st_size > 0
  for name in ('curves.png', 'effects.png'):
    assert (workdir / name).read_bytes().startswith(b'\x89PNG')
  assert 'None.' in (workdir / 'report.md').read_text()  # no run missing

  # Every number of the CSVs is, or is computed from, the runs' results.json.
  results = {r: _results(workdir, r) for r in RUNS}
  runs = _csv(workdir / 'runs.csv')
  assert sorted(f"{r['point']}/seed={r['seed']}" for r in runs) == sorted(RUNS)
  for row in runs:
    saved = results[f"{row['point']}/seed={row['seed']}"]
    for key, value in saved.items():
      assert float(row[key]) == value, key
    assert float(row['images_per_sec']) > 0
  points = _csv(workdir / 'report.csv')
  assert [p['point'] for p in points] == ['baseline', 'lrn=off']
  for row in points:
    seeds = [results[f"{row['point']}/seed={s}"] for s in (0, 1)]
    assert row['seeds'] == '2'
    for key, _ in sweep_report.ERRORS:
      values = [r[key] for r in seeds]
      assert float(row[f'{key}_mean']) == float(np.mean(values))
      assert float(row[f'{key}_std']) == float(np.std(values, ddof=1))
    assert float(row['epoch_mean']) == float(np.mean([r['epoch'] for r in seeds]))
    assert float(row['train_seconds_mean']) == float(
        np.mean([r['train_seconds'] for r in seeds]))
    assert int(row['params']) > 0 and float(row['flops']) > 0
  # LRN has no parameters: the two points differ in FLOPs only.
  assert points[0]['params'] == points[1]['params']
  assert float(points[0]['flops']) > float(points[1]['flops'])
  claim, = _csv(workdir / 'claims.csv')
  for k in ('top1', 'top5'):
    key = f'val_{k}_error_10crop'
    d = [100 * (results[f'lrn=off/seed={s}'][key] - results[f'baseline/seed={s}'][key])
         for s in (0, 1)]
    assert float(claim[f'{k}_effect']) == pytest.approx(np.mean(d), abs=1e-9)
    assert float(claim[f'{k}_paper']) == {'top1': 1.4, 'top5': 1.2}[k]


def _lines(text):
  return [line for line in text.splitlines() if line.startswith('python ')]


def test_dry_run_and_commands_list_every_run_with_its_flags(tmp_path, data_dir):
  sweep_file = _sweep_file(tmp_path, "'lrn=off', {'optimizer.learning_rate': 0.05}")
  workdir = tmp_path / 'sweep'
  result = _sweep(*_args(sweep_file, workdir, data_dir, '--dry_run', '--emit=commands'))
  assert result.returncode == 0, result.stderr[-3000:]
  printed = _lines(result.stdout)
  assert printed == (workdir / 'commands.txt').read_text().splitlines()
  point = 'lrn=off,optimizer.learning_rate=0.05'
  expected = [('configs/demo.py:size=tiny', 'baseline', 0, ''),
              ('configs/demo.py:size=tiny,lrn=off', point, 0, ' --config.optimizer.learning_rate=0.05'),
              ('configs/demo.py:size=tiny', 'baseline', 1, ''),
              ('configs/demo.py:size=tiny,lrn=off', point, 1, ' --config.optimizer.learning_rate=0.05')]
  assert printed == [
      f'python main.py --config={config} --workdir={workdir}/{name}/seed={seed} '
      f'--config.seed={seed} --config.data.data_dir={data_dir} '
      '--config.num_train_steps=2 --config.batch_size=16 --config.eval_batch_size=32'
      + override for config, name, seed, override in expected]
  assert not any(os.path.isdir(workdir / name) for name in ('baseline', point))


def test_slurm_array_task_runs_its_run_only(tmp_path, data_dir):
  sweep_file, workdir = _sweep_file(tmp_path), tmp_path / 'sweep'
  result = _sweep(*_args(sweep_file, workdir, data_dir, '--emit=slurm',
                         '--sbatch=--time=1:00:00'))
  assert result.returncode == 0, result.stderr[-3000:]
  script = workdir / 'sweep.sbatch'
  text = script.read_text()
  assert '#SBATCH --array=0-3\n' in text and '#SBATCH --time=1:00:00\n' in text
  assert subprocess.run(['bash', '-n', str(script)]).returncode == 0

  def task(k):  # as bash outside SLURM runs it: without srun
    return subprocess.run(['bash', str(script)], capture_output=True, text=True,
                          timeout=600, env=_env(SLURM_ARRAY_TASK_ID=str(k),
                                                PYTHON=sys.executable))

  outside = task(4)
  assert outside.returncode == 2 and 'this sweep has runs 0-3' in outside.stderr
  ran = task(2)
  assert ran.returncode == 0, ran.stderr[-3000:]
  assert sweep_runs.final_results(str(workdir / RUNS[2]))
  assert _results(workdir, RUNS[2])['step'] == 2
  assert [r for r in RUNS if (workdir / r).exists()] == [RUNS[2]]


@pytest.mark.parametrize('point, message', [
    ("'pool=4x4'", "point 'pool=4x4', seed 0: flag --config=configs/demo.py:size=tiny,pool=4x4"),
    ("'', {'model.towerz': 2}", "point 'model.towerz=2', seed 0: unknown config key 'towerz'")])
def test_bad_point_fails_before_any_training(tmp_path, data_dir, point, message):
  workdir = tmp_path / 'sweep'
  result = _sweep(*_args(_sweep_file(tmp_path, point), workdir, data_dir))
  assert result.returncode == 1
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith('Error: ') and message in error
  assert error.endswith('No run was started.')
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


ONE_RUN_SWEEP = '''
from configs.sweeps import Point, Sweep


def get_sweep(arg=None):
  return Sweep(points=(Point(),), seeds=(0,))
'''


def test_a_run_stopped_under_new_flags_is_not_finished_with_its_old_numbers(
    tmp_path, data_dir):
  (tmp_path / 'one.py').write_text(ONE_RUN_SWEEP)
  workdir, run = tmp_path / 'sweep', tmp_path / 'sweep' / 'baseline' / 'seed=0'

  def args(*extra):
    return [sys.executable, '-m', 'sweeps', f'--sweep={tmp_path / "one.py"}',
            '--config=configs/demo.py:size=tiny', f'--workdir={workdir}', '--',
            f'--config.data.data_dir={data_dir}', '--config.batch_size=16',
            '--config.eval_batch_size=32', *extra]

  short = _sweep(*args('--config.num_train_steps=2'))
  assert short.returncode == 0, short.stderr[-3000:]
  assert run_files.FINAL_KEY in _results(workdir, 'baseline/seed=0')
  recorded = (run / 'run.json').read_text()

  # The same run, longer, stopped by SIGTERM once it trains past step 2.
  longer = args('--config.num_train_steps=1000', '--config.eval_every_epochs=100',
                '--config.log_every_steps=1')
  with open(tmp_path / 'longer.log', 'w') as log:
    process = subprocess.Popen(longer, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env=_env())
    deadline = time.time() + 300
    while not any(r['step'] > 2 for r in _metrics(run)):
      assert process.poll() is None, (tmp_path / 'longer.log').read_text()[-3000:]
      assert time.time() < deadline
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 0, (tmp_path / 'longer.log').read_text()[-3000:]
  results = _results(workdir, 'baseline/seed=0')
  saved = [int(d) for d in os.listdir(run / 'checkpoints') if d.isdigit()]
  assert 2 < max(saved) < 1000
  assert not any(k.endswith('_10crop') for k in results), results
  assert (run / 'run.json').read_text() == recorded  # the old flags' record

  planned, = sweep_runs.plan(sweep_runs.load_sweep(str(tmp_path / 'one.py')),
                             'configs/demo.py:size=tiny', str(workdir), longer[7:])
  assert not sweep_runs.finished(planned)
  # The SLURM script's test says the same: not finished, so it requeues.
  check = subprocess.run([sys.executable, '-m', 'sweeps.runs', planned.workdir,
                          *planned.args], cwd=REPO, env=_env(), capture_output=True)
  assert check.returncode == 1, check.stderr[-3000:]
  report = _sweep(*longer[:6], '--report', *longer[6:])
  assert report.returncode == 0, report.stderr[-3000:]
  assert '# Sweep report: 0 of 1 runs finished' in (workdir / 'report.md').read_text()


@pytest.mark.parametrize('points, seeds, message', [
    ((Point(), Point(overrides={'seed': 7})), (0, 1, 2),
     "Point 'seed=7' overrides seed: the sweep sets --config.seed"),
    ((Point(name='a/b'), Point(name='a_b')), (0,),
     "Points 'a/b' and 'a_b' would share the sub-workdir 'a_b'"),
    ((Point(),), (0, 1, 0), r'The seeds \[0, 1, 0\] repeat one')])
def test_a_sweep_that_would_run_one_run_as_two_is_refused(points, seeds, message):
  with pytest.raises(sweep_runs.SweepError, match=message):
    sweep_runs.plan(Sweep(points=points, seeds=seeds), 'configs/demo.py', 'w', [])


def test_a_second_sweep_on_a_workdir_in_use_is_refused_naming_the_holder(
    tmp_path, data_dir):
  (tmp_path / 'one.py').write_text(ONE_RUN_SWEEP)
  workdir = tmp_path / 'sweep'
  workdir.mkdir()
  with run_files.WorkdirLock(str(workdir)):  # as a sweep in progress holds it
    result = _sweep(sys.executable, '-m', 'sweeps', f'--sweep={tmp_path / "one.py"}',
                    '--config=configs/demo.py:size=tiny', f'--workdir={workdir}', '--',
                    f'--config.data.data_dir={data_dir}', '--config.num_train_steps=2')
  assert result.returncode == 1
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith(f'Error: {workdir} is in use by the run of process {os.getpid()}')
  assert 'failed' not in result.stderr
  assert sorted(os.listdir(workdir)) == ['lock']  # no run started, no report
