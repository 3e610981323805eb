"""runtime/console.py: the progress line, the ETA over the run so far (from
given times), the evaluation line and the slow-phase line."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading

import pytest

import run_files
from runtime import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCALARS = {'train_loss': 1.23456, 'images_per_sec': 187.4, 'data_wait_fraction': 0.034}


@pytest.mark.parametrize('seconds, text', [
    (0, '0:00:00'), (59.4, '0:00:59'), (59.6, '0:01:00'), (3599, '0:59:59'),
    (3600, '1:00:00'), (36 * 3600 + 61, '36:01:01'), (-5, '0:00:00')])
def test_duration_is_h_mm_ss(seconds, text):
  assert console.duration(seconds) == text


@pytest.mark.parametrize('step, num_steps, every, count', [
    (0, 744, 62, 12), (62, 744, 62, 11), (61, 744, 62, 12), (744, 744, 62, 0),
    (0, 20, 8, 3), (16, 20, 8, 1), (20, 20, 8, 0)])
def test_evaluations_after_counts_the_periodic_and_the_last(step, num_steps, every, count):
  assert console.evaluations_after(step, num_steps, every) == count


def test_eta_is_the_mean_step_time_over_the_session():
  eta = console.Eta(num_steps=100, eval_every=50, first_step=1, start=1000.0)
  assert eta.seconds_left(1, 1000.0) is None  # nothing timed yet
  # 10 steps in 5 s: 0.5 s a step, 80 to go; no evaluation timed yet.
  assert eta.seconds_left(11, 1005.0) == pytest.approx(44.5)
  # A slow stretch moves it a little, not to that stretch's rate.
  assert eta.seconds_left(21, 1015.0) == pytest.approx(79 * 0.75)


def test_eta_counts_evaluations_and_the_ten_crop_test_but_not_compiling():
  eta = console.Eta(num_steps=100, eval_every=25, first_step=0, start=0.0)
  eta.add_evaluation(10.0)  # at step 25, compiling: no measure of the others
  # 25 steps in 20 s, 10 of them evaluating: 0.4 s a step.
  assert eta.seconds_left(25, 20.0) == pytest.approx(75 * 0.4)
  eta.add_evaluation(3.0)
  eta.add_evaluation(5.0)
  # 75 steps in 48 s, 18 of them evaluating: 0.4 s a step; the last
  # evaluation and the 10-crop test, as ten, at 4 s each.
  assert eta.seconds_left(75, 48.0) == pytest.approx(25 * 0.4 + 11 * 4.0)
  assert eta.seconds_left(100, 70.0) == 0


def test_progress_prints_the_first_the_last_and_every_few_seconds():
  progress = console.Progress(num_steps=100, steps_per_epoch=10, every_secs=10.0)
  assert progress.due(5, 100.0)
  progress.line(5, 100.0, SCALARS, None)
  assert not progress.due(10, 109.9)
  assert progress.due(15, 110.0)
  assert progress.due(100, 100.5)  # the last
  every = console.Progress(num_steps=100, steps_per_epoch=10, every_secs=0.0)
  every.line(5, 100.0, SCALARS, None)
  assert every.due(10, 100.0)


def test_progress_line_reads_at_a_glance():
  progress = console.Progress(num_steps=744, steps_per_epoch=62, every_secs=10.0)
  eta = console.Eta(num_steps=744, eval_every=62, first_step=1, start=0.0)
  assert progress.line(124, 246.0, SCALARS, eta) == (
      'step 124/744 (16.7%), epoch 2.00: loss 1.2346, 187 img/s, data wait 3%, '
      'ETA 0:20:40')
  assert progress.line(1, 0.0, SCALARS, None).endswith('ETA ?')


def test_evaluation_line_has_errors_and_loss_only():
  val = {'top1_error': 0.125, 'top5_error': 0.0, 'loss': 0.259, 'examples': 1000,
         'relu_zeros_conv1': 0.5}
  assert console.evaluation(124, 2.0, val, 3.21) == (
      'Validation at step 124 (epoch 2.00): top-1 error 0.1250, top-5 error '
      '0.0000, loss 0.2590 (3.2 s)')


class _Collect(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages, self.logged = [], threading.Event()

  def emit(self, record):
    self.messages.append(record.getMessage())
    self.logged.set()


@pytest.fixture
def collect():
  handler = _Collect()
  absl_logger = logging.getLogger('absl')
  absl_logger.addHandler(handler)
  level = absl_logger.level
  absl_logger.setLevel(logging.INFO)
  yield handler
  absl_logger.removeHandler(handler)
  absl_logger.setLevel(level)


def test_a_slow_phase_says_what_it_does_once(collect):
  with console.phase('Compiling the train step', after_secs=0):
    assert collect.logged.wait(60)  # the block outlasts the delay
  assert collect.messages == ['Compiling the train step...']


def test_a_quick_phase_says_nothing(collect):
  with console.phase('Reading the dataset', after_secs=3600):
    pass
  assert collect.messages == []


def test_a_run_prints_its_lines_and_logs_every_scalar(tmp_path, tiny_demo_flags):
  result = subprocess.run(
      [sys.executable, 'main.py', *tiny_demo_flags(tmp_path)], cwd=REPO,
      capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert any(re.search(r'\] step 3/6 \(50\.0%\), epoch .*: loss .*, \d+ img/s, data '
                       r'wait \d+%, ETA \d+:\d\d:\d\d$', line) for line in lines)
  assert any(re.search(r'\] Validation at step 6 \(epoch .*\): top-1 error .*, top-5 '
                       r'error .*, loss .* \(.* s\)$', line) for line in lines)
  for noise in ('Setting work unit notes', 'steps_per_sec', 'uptime', 'relu_zeros',
                'Got images'):
    assert noise not in result.stderr
  records = run_files.read_metrics(str(tmp_path / 'work'))
  logged = set().union(*records)
  assert {'steps_per_sec', 'uptime', 'images_per_sec', 'val_relu_zeros_conv1'} <= logged
