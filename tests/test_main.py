"""main.py end to end, and what bad input gets."""

import glob
import json
import os
import subprocess
import sys

import pytest

import input_pipeline
import train
from configs import demo as demo_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=600):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, 'main.py', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_train_on_demo_writes_events_and_results(tmp_path, tiny_demo_flags):
  result = _main(*tiny_demo_flags(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = tmp_path / 'work'
  assert glob.glob(str(workdir / 'events.out.tfevents.*'))
  results = json.loads((workdir / 'results.json').read_text())
  assert set(results) == {'val_top1_error', 'val_top5_error', 'val_loss',
                          'val_examples', 'step', 'epoch', 'train_seconds',
                          'val_top1_error_10crop', 'val_top5_error_10crop',
                          'val_examples_10crop'}
  assert results['step'] == 6
  assert 0.0 <= results['val_top1_error'] <= 1.0
  assert results['val_examples'] == input_pipeline.load(
      _tiny_data_config(tmp_path)).num_eval_examples
  # The paper's test of the final state: each image's ten crops count once.
  assert results['val_examples_10crop'] == results['val_examples']
  assert 0.0 <= results['val_top1_error_10crop'] <= 1.0
  assert 'Final validation after 6 steps' in result.stderr.strip().splitlines()[-1]


def _tiny_data_config(tmp_path):
  config = demo_config.get_config('size=tiny')
  config.data.data_dir = str(tmp_path / 'tfds')
  return config.data


@pytest.mark.parametrize('arg, total', [
    ('configs/alexnet.py', '60,965,224'),
    ('configs/alexnet.py:arch=owt', '61,100,840'),
    ('configs/alexnet.py:arch=one_gpu', '59,798,312'),  # the paper's one-GPU net
    ('configs/demo.py:towers=1,norm=batchnorm', None)])
def test_summary_needs_no_data_and_ends_with_total(arg, total):
  result = _main(f'--config={arg}', '--mode=summary', timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith('Total params: ')
  if total:
    assert last == f'Total params: {total}'
  if arg == 'configs/alexnet.py':
    for layer in ('conv1', 'lrn1', 'pool1', 'conv5', 'fc6', 'fc7', 'fc8'):
      assert f'\n{layer} ' in result.stdout


def test_unknown_config_key_is_named():
  result = _main('--config=configs/alexnet.py', '--config.model.towerz=2',
                 '--mode=summary', timeout=300)
  assert result.returncode != 0
  # main.py reads the key and the hint from ml_collections' message; this
  # pins that message for the installed version.
  assert "unknown config key 'towerz'" in result.stderr
  assert "Did you mean 'towers'?" in result.stderr


def test_unknown_config_variant_is_named():
  result = _main('--config=configs/alexnet.py:lrn=of', '--mode=summary', timeout=300)
  assert result.returncode != 0
  assert "lrn='of' is not one of: on, off" in result.stderr


def test_missing_dataset_is_named_before_anything_runs(tmp_path):
  config = demo_config.get_config()
  config.data.name = 'imagenet2012'
  config.data.data_dir = str(tmp_path / 'empty')
  config.model.num_classes = 1000
  with pytest.raises(input_pipeline.DatasetNotFoundError,
                     match='ILSVRC2012_img_train.tar'):
    train.train_and_evaluate(config, str(tmp_path / 'work'))


def test_non_finite_loss_stops_and_names_the_step(tmp_path, tiny_demo_flags):
  result = _main(*tiny_demo_flags(tmp_path), '--config.optimizer.learning_rate=1e12',
                 '--config.log_every_steps=1')
  assert result.returncode != 0
  assert 'Training loss became' in result.stderr
  assert 'at step ' in result.stderr
