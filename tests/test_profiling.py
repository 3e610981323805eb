"""config.profile_steps: a run writes a profiler trace of exactly those steps."""

from __future__ import annotations

import glob
import gzip
import json

import pytest

from runtime import profiling
import train
from configs import demo as demo_config


def test_trace_holds_the_requested_steps(tmp_path):
  config = demo_config.get_config('size=tiny')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.num_train_steps = 5
  config.batch_size = config.eval_batch_size = 16
  config.profile_steps = (2, 2)
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  sessions = glob.glob(str(tmp_path / 'work' / 'profile' / 'plugins' / 'profile' / '*'))
  assert len(sessions) == 1, sessions
  assert glob.glob(f'{sessions[0]}/*.xplane.pb')  # TensorBoard's profile plugin
  with gzip.open(f'{sessions[0]}/perfetto_trace.json.gz') as f:  # Perfetto's
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  steps = [e['args']['step_num'] for e in events if e.get('name') == 'train']
  assert steps == ['2', '3']


@pytest.mark.parametrize('steps', [(5,), (2, 0), (-1, 3), (1, 2, 3)])
def test_bad_profile_steps_are_named(tmp_path, steps):
  with pytest.raises(ValueError, match=r'profile_steps=.*: give \(first step, number '
                                       r'of steps\), e.g. --config.profile_steps=10,5'):
    profiling.StepTrace(str(tmp_path), steps, first_step=0)
