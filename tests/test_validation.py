"""Bad settings are refused before anything runs, naming the key and the
valid range."""

import os
import subprocess
import sys

import pytest

from configs import alexnet, demo, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('config', [alexnet.get_config(), demo.get_config(),
                                    alexnet.get_config('arch=owt'),
                                    demo.get_config('size=tiny')])
def test_the_configs_are_valid(config):
  validation.check(config)


@pytest.mark.parametrize('key, value, message', [
    ('batch_size', 0, '--config.batch_size=0: must be an integer >= 1.'),
    ('batch_size', -8, '--config.batch_size=-8: must be an integer >= 1.'),
    ('log_every_steps', 0, '--config.log_every_steps=0: must be an integer >= 1.'),
    ('model.features', (32,),
     '--config.model.features=(32,): must be 5 values, each an integer >= 1.'),
    ('model.fc_features', (4096, 0),
     '--config.model.fc_features=(4096, 0): must be 2 values, each an integer >= 1.'),
    ('checkpoint.keep', 0, '--config.checkpoint.keep=0: must be an integer >= 1: '
     'the latest checkpoint must survive'),
    ('optimizer.momentum', 1.0, '--config.optimizer.momentum=1.0: must be a number in [0, 1).'),
    ('model.norm', 'layer', "--config.model.norm='layer': must be one of 'lrn', "
     "'batchnorm', 'none'."),
    ('eval.checkpoint', 'newest', "--config.eval.checkpoint='newest': must be "
     "'latest', 'best' or a step."),
    ('mesh.data', 0, '--config.mesh.data=0: must be -1 (the devices the model axis '
     'leaves) or an integer >= 1.'),
    ('data.image_size', 32, '--config.data.image_size=32: too small for the network'
     ', whose convolutions and pooling leave nothing of it; the smallest that '
     'works is 67.'),
    ('model.features', (96, 256, 384, 384, 255),
     'each must divide into model.towers=2 towers'),
    ('optimizer.learning_rate', float('inf'),
     '--config.optimizer.learning_rate=inf: must be a finite number > 0.'),
    ('optimizer.learning_rate', float('nan'),
     '--config.optimizer.learning_rate=nan: must be a finite number > 0.'),
    ('model.pool_window', 12, '--config.model.pool_window=12: must be an integer in [1, 11].'),
    ('data.image_size', 257, '--config.data.image_size=257: must not exceed '
     'data.resize_size=256, the side of the resized image the crops are taken from.'),
])
def test_a_bad_setting_is_named_with_its_valid_range(key, value, message):
  config = alexnet.get_config()
  *parents, name = key.split('.')
  section = config
  for parent in parents:
    section = section[parent]
  section[name] = value
  with pytest.raises(ValueError) as error:
    validation.check(config)
  assert message in str(error.value)


def test_every_problem_is_listed_at_once():
  config = alexnet.get_config()
  config.batch_size = 0
  config.checkpoint.keep = 0
  with pytest.raises(ValueError, match=r'(?s)batch_size=0.*checkpoint\.keep=0'):
    validation.check(config)


def test_main_refuses_a_bad_setting_before_building_anything():
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py:size=tiny',
       '--workdir=/nonexistent/never/written', '--config.log_every_steps=0'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      '  --config.log_every_steps=0: must be an integer >= 1.')
  assert 'Traceback' not in result.stderr and 'Training' not in result.stderr
  assert not os.path.exists('/nonexistent/never/written')
