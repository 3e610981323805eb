"""How main.py ends: a user error's message alone (its traceback in a file),
a bug's traceback, and one exit status per condition across modes."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

import checkpointing
import parallel
import run_files
from data import image_folder, sources
from runtime import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=cwd,
      capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _images(root, names: list[str]) -> str:
  rng = np.random.default_rng(0)
  for name in names:
    os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(
        os.path.join(root, name))
  return str(root)


def _folder_flags(root: str, workdir) -> list[str]:
  return ['--config=configs/demo.py:size=tiny', f'--workdir={workdir}',
          f'--config.data.image_folder={root}', '--config.model.num_classes=0',
          '--config.batch_size=8', '--config.eval_batch_size=8']


def _two_classes(root) -> str:
  return _images(root, [f'{split}/{c}/{i}.jpg' for split in ('train', 'validation')
                        for c in 'ab' for i in range(4)])


def _assert_message_alone(result: subprocess.CompletedProcess, message: str,
                          log: str | None) -> None:
  """One 'Error:' message naming `message`, no traceback on the console,
  exit 1; the traceback in `log` (a temporary file where None)."""
  assert result.returncode == errors.EXIT_ERROR, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  first = max(i for i, line in enumerate(lines) if line.startswith('Error: '))
  assert message in '\n'.join(lines[first:-1]), lines[first:]
  assert lines[-1].startswith('(its traceback is in '), lines[-1]
  path = lines[-1].removeprefix('(its traceback is in ').split(';')[0]
  if log:
    assert path == log
  with open(path) as f:
    text = f.read()
  assert text.startswith('Traceback') and message in text
  if not log:
    os.remove(path)


# Each kind of user error: (how to make it, the message, whether the workdir exists).
@pytest.mark.parametrize('kind', ['loose_images', 'no_folder', 'classes', 'no_checkpoint'])
def test_a_user_error_is_its_message_alone(tmp_path, kind):
  workdir = tmp_path / 'work'
  if kind == 'loose_images':
    root = _images(tmp_path / 'photos', ['1.jpg', '2.jpg'])
    args, message = _folder_flags(root, workdir), 'holds no folders: put the images'
  elif kind == 'no_folder':
    args = _folder_flags(str(tmp_path / 'nowhere'), workdir)
    message = f"Image folder '{tmp_path / 'nowhere'}' does not exist"
  elif kind == 'classes':
    args = [*_folder_flags(_two_classes(tmp_path / 'photos'), workdir),
            '--config.model.num_classes=3']
    message = 'has 2 classes but the model has 3; set --config.model.num_classes=2'
  else:
    os.makedirs(workdir)
    args = [*_folder_flags(_two_classes(tmp_path / 'photos'), workdir), '--mode=eval']
    message = 'No checkpoint in'
  result = _main(*args)
  # Training creates its workdir first; --mode=eval reads an existing one.
  _assert_message_alone(result, message, str(workdir / errors.ERROR_LOG))


def test_a_config_mismatch_on_resume_is_its_message_alone(demo_run, tmp_path):
  config, workdir = demo_run
  shutil.copytree(workdir, tmp_path / 'work')
  result = _main('--config=configs/demo.py:size=tiny', f'--workdir={tmp_path / "work"}',
                 f'--config.data.data_dir={config.data.data_dir}',
                 '--config.batch_size=16', '--config.eval_batch_size=16',
                 '--config.num_train_steps=9', '--config.model.lrn_k=3.0')
  _assert_message_alone(result, "The config differs from the checkpoint's in keys",
                        str(tmp_path / 'work' / errors.ERROR_LOG))
  assert 'model.lrn_k: 2.0 -> 3.0' in result.stderr


def test_verbose_prints_the_traceback(tmp_path):
  result = _main(*_folder_flags(str(tmp_path / 'nowhere'), tmp_path / 'work'),
                 '--verbose')
  assert result.returncode == errors.EXIT_ERROR
  assert 'Traceback' in result.stderr and 'NotFound' in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith('Error: Image folder')


def test_a_missing_config_file_is_one_line_with_its_path(tmp_path):
  result = _main('--config=config/demo.py', f'--workdir={tmp_path}', cwd=str(tmp_path))
  assert result.returncode == errors.EXIT_ERROR
  assert 'Traceback' not in result.stderr
  lines = [line for line in result.stderr.splitlines() if 'Error' in line]
  assert lines == [(
      f'Error: --config=config/demo.py: no config '
      f'file at {tmp_path}/config/demo.py (a relative path starts from the current '
      f'directory, {tmp_path}).')], result.stderr[-3000:]


def test_a_missing_predict_input_is_named_before_the_checkpoint_loads(tmp_path):
  # No checkpoint in the workdir: the path must be the first thing refused.
  os.makedirs(tmp_path / 'work')
  missing = str(tmp_path / 'photoz')
  result = _main(*_folder_flags(_two_classes(tmp_path / 'photos'), tmp_path / 'work'),
                 '--mode=predict', f'--config.predict.inputs={missing}')
  _assert_message_alone(result, f"--config.predict.inputs names {missing!r}, which "
                        'does not exist', str(tmp_path / 'work' / errors.ERROR_LOG))


@pytest.mark.parametrize('mode', ['predict', 'neighbours'])
def test_unreadable_inputs_exit_with_one_status_in_every_mode(demo_run, tmp_path, mode):
  config, workdir = demo_run
  good = _images(tmp_path, ['good.jpg'])
  (tmp_path / 'bad.jpg').write_bytes(b'not an image')
  result = _main('--config=configs/demo.py:size=tiny', f'--workdir={workdir}',
                 f'--mode={mode}', f'--config.data.data_dir={config.data.data_dir}',
                 f'--config.predict.inputs={good}/good.jpg,{tmp_path}/bad.jpg',
                 '--config.batch_size=16', '--config.eval_batch_size=16',
                 '--config.predict.neighbour_subset=100')
  assert result.returncode == errors.EXIT_SKIPPED, result.stderr[-3000:]
  assert f'Skipped {tmp_path}/bad.jpg: not readable as an image' in result.stderr
  assert f'{good}/good.jpg' in result.stdout  # the readable one is reported
  assert result.stderr.strip().splitlines()[-1].endswith(
      '1 input(s) could not be read as images and were skipped (listed above); '
      f'exiting with status {errors.EXIT_SKIPPED}.')


@pytest.mark.parametrize('error', [
    checkpointing.ConfigMismatchError, checkpointing.DataMismatchError,
    checkpointing.CorruptCheckpointError, checkpointing.CheckpointWriteError,
    sources.DatasetNotFoundError, run_files.WorkdirLockedError])
def test_the_projects_error_classes_are_user_errors(error):
  assert issubclass(error, errors.UserError)


def test_user_errors_raised_by_the_data_code_are_user_errors(tmp_path):
  with pytest.raises(errors.UserError, match='does not exist'):
    image_folder.check_folder(str(tmp_path / 'nowhere'))


def test_describe_keeps_a_user_errors_traceback_in_the_workdir(tmp_path, caplog):
  try:
    raise errors.InvalidInput('set --config.x=1.')
  except errors.UserError as e:
    message = errors.describe(e, '--mode=train', str(tmp_path), verbose=False)
  assert message == (f'Error: set --config.x=1.\n(its traceback is in '
                     f'{tmp_path / errors.ERROR_LOG}; --verbose prints it here)')
  assert 'InvalidInput: set --config.x=1.' in (tmp_path / errors.ERROR_LOG).read_text()
  assert not caplog.records


def test_a_workdir_in_use_gets_no_traceback_file(tmp_path):
  error = run_files.WorkdirLockedError('in use by another run')
  path = errors.write_traceback(error, str(tmp_path))
  assert not path.startswith(str(tmp_path)) and list(tmp_path.iterdir()) == []
  os.remove(path)


def test_describe_logs_a_bugs_traceback(tmp_path, caplog):
  try:
    raise KeyError('a bug')
  except KeyError as e:
    with caplog.at_level(logging.ERROR):
      message = errors.describe(e, '--mode=train', str(tmp_path), verbose=False)
  assert message == "Error: 'a bug'"
  assert caplog.records[-1].exc_info[0] is KeyError
  assert not (tmp_path / errors.ERROR_LOG).exists()


def test_finish_gives_the_skipped_status(capsys):
  assert errors.finish('text') == errors.EXIT_OK
  assert errors.finish(errors.Skipped('rows', 2)) == errors.EXIT_SKIPPED
  assert errors.finish(None) == errors.EXIT_OK
  assert capsys.readouterr().out == 'text\nrows\n'


def test_a_mesh_too_big_for_the_cpu_says_how_to_simulate_devices():
  one = jax.devices()[:1]
  with pytest.raises(errors.InvalidInput, match=(
      r'model=2 does not divide the 1 devices; .* On a CPU, simulate 8 devices: '
      r'start the command with XLA_FLAGS=--xla_force_host_platform_device_count=8\.')):
    parallel.make_mesh(ml_collections.ConfigDict({'data': -1, 'model': 2}), one)
  with pytest.raises(errors.InvalidInput, match='device_count=6\\.'):
    parallel.make_mesh(ml_collections.ConfigDict({'data': 3, 'model': 2}), one)
