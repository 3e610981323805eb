"""--mode=predict: named top-5 classes of image files, as text or JSON lines;
unreadable files are reported and skipped; class names."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import checkpointing
import evaluation
from configs import alexnet
from data import demo_shapes, image_folder, sources
from runtime import errors
from trainer import NonFiniteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """Two images in a folder (one in a sub-folder), one given alone, and a
  corrupt file among them: (the inputs flag, the readable paths in order,
  the corrupt one)."""
  root = tmp_path_factory.mktemp('inputs')
  rng = np.random.default_rng(0)
  os.makedirs(root / 'folder' / 'sub')
  Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8)).save(root / 'folder' / 'a.jpg')
  Image.fromarray(rng.integers(0, 256, (60, 60, 3), np.uint8)).save(
      root / 'folder' / 'sub' / 'b.png')
  (root / 'folder' / 'sub' / 'c.jpg').write_bytes(b'not an image')
  (root / 'folder' / 'notes.txt').write_text('not an image file name: ignored')
  Image.fromarray(rng.integers(0, 256, (80, 80, 3), np.uint8)).save(root / 'd.jpg')
  readable = [str(root / 'folder' / 'a.jpg'), str(root / 'folder' / 'sub' / 'b.png'),
              str(root / 'd.jpg')]
  return f'{root / "folder"},{root / "d.jpg"}', readable, str(root / 'folder' / 'sub' / 'c.jpg')


def _check_top5(predictions: list[tuple[str, float]]) -> None:
  assert len(predictions) == 5
  names = [n for n, _ in predictions]
  probabilities = [p for _, p in predictions]
  assert set(names) <= set(demo_shapes.CLASS_NAMES) and len(set(names)) == 5
  assert all(0 <= p <= 1 for p in probabilities)
  assert probabilities == sorted(probabilities, reverse=True)
  assert sum(probabilities) <= 1 + 1e-4


def test_predict_prints_named_top5_and_skips_a_corrupt_file(demo_run, images):
  config, workdir = demo_run
  inputs, readable, corrupt = images
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py:size=tiny',
       f'--workdir={workdir}', '--mode=predict', f'--config.predict.inputs={inputs}',
       f'--config.data.data_dir={config.data.data_dir}', '--config.batch_size=16',
       '--config.eval_batch_size=16'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == errors.EXIT_SKIPPED, result.stderr[-3000:]
  assert f'Skipped {corrupt}: not readable as an image (Unknown image file format' \
      in result.stderr
  assert '1 input(s) could not be read as images' in result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 6 * len(readable)
  for i, path in enumerate(readable):
    assert lines[6 * i] == path
    rows = [line.split(None, 1) for line in lines[6 * i + 1:6 * i + 6]]
    _check_top5([(name, float(p)) for p, name in rows])


def test_json_lines_and_ten_crop(demo_run, images):
  config, workdir = demo_run
  inputs, readable, corrupt = images
  config = config.copy_and_resolve_references()
  config.predict.inputs = inputs
  config.predict.format = 'json'
  out = io.StringIO()
  assert evaluation.predict(config, workdir, out) == [corrupt]
  records = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r['path'] for r in records] == readable
  for r in records:
    _check_top5([(p['name'], p['probability']) for p in r['predictions']])
    assert all(demo_shapes.CLASS_NAMES[p['label']] == p['name'] for p in r['predictions'])

  config.predict.ten_crop = True
  ten = io.StringIO()
  evaluation.predict(config, workdir, ten)
  ten_records = [json.loads(line) for line in ten.getvalue().splitlines()]
  assert [r['path'] for r in ten_records] == readable
  assert ten_records != records  # ten crops average to other probabilities


def test_bad_settings_are_named(demo_run, tmp_path):
  config, workdir = demo_run
  config = config.copy_and_resolve_references()
  with pytest.raises(ValueError, match='--config.predict.inputs=PATH'):
    evaluation.predict(config, workdir)
  config.predict.inputs = str(tmp_path)
  with pytest.raises(ValueError, match='No image files in'):
    evaluation.predict(config, workdir)
  config.predict.format = 'csv'
  with pytest.raises(ValueError, match="use 'text' or 'json'"):
    evaluation.predict(config, workdir)


def test_find_images_recurses_in_order_and_keeps_named_files(tmp_path):
  for name in ('b/2.jpg', 'b/1.PNG', 'a/x.gif', 'a/skip.txt', 'top.bmp'):
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  assert image_folder.find_images([str(tmp_path), str(tmp_path / 'a' / 'skip.txt')]) == [
      str(tmp_path / p) for p in ('top.bmp', 'a/x.gif', 'b/1.PNG', 'b/2.jpg', 'a/skip.txt')]


def test_imagenet_labels_get_their_wordnet_names():
  names = sources.open_source(alexnet.get_config().data).class_names  # metadata only, no data
  assert len(names) == 1000
  # TFDS's imagenet2012 labels are synsets in sorted order: n01440764 first,
  # n15075141 last.
  assert names[0] == 'tench' and names[-1] == 'toilet tissue'
  readable = sources.imagenet_names()
  assert readable['n03888257'] == 'parachute'      # imagenette's synsets too
  assert readable['n02102040'] == 'English springer'
  assert len(set(readable.values())) == 1000       # 'maillot' twice made unique


def test_image_folder_labels_are_its_subfolders(tmp_path):
  for name in ('train/cat', 'train/n01440764', 'validation/cat', 'validation/n01440764'):
    os.makedirs(tmp_path / name)
    Image.new('RGB', (8, 8)).save(tmp_path / name / 'x.png')
  data = alexnet.get_config().data
  data.image_folder = str(tmp_path)
  assert sources.open_source(data).class_names == ('cat', 'tench')


def test_a_diverged_model_writes_no_prediction_and_says_so(demo_run, images, tmp_path):
  # Parameters 1e20 times larger are finite but overflow float32 on the way
  # to the logits, as a diverging run's last saved state can.
  config, workdir = demo_run
  inputs, readable, _ = images
  chosen = evaluation.restore_chosen(config, workdir)
  blown_up = chosen.state.replace(params=jax.tree.map(
      lambda x: x * np.float32(1e20), chosen.state.params))
  checkpoints = checkpointing.Checkpoints(str(tmp_path), chosen.config)
  checkpoints.save(blown_up, results={}, evaluated=False)
  checkpoints.close()
  config = config.copy_and_resolve_references()
  config.predict.inputs = inputs
  config.predict.format = 'json'
  out = io.StringIO()
  with pytest.raises(NonFiniteError, match=(
      rf'Checkpoint 6 \(latest\) of {tmp_path}/checkpoints gives NaN or infinite '
      rf'probabilities for 3 image\(s\) of this batch, the first {readable[0]}: '
      'the model diverged')):
    evaluation.predict(config, str(tmp_path), out)
  assert out.getvalue() == ''


def test_a_comma_within_an_input_path_is_written_backslash_comma(tmp_path):
  os.makedirs(tmp_path / 'a,b')
  for path in (tmp_path / 'a,b' / 'x.png', tmp_path / 'c.png'):
    Image.new('RGB', (8, 8)).save(path)
  config = alexnet.get_config()
  config.predict.inputs = f'{tmp_path}/a\\,b,{tmp_path}/c.png'
  assert evaluation.input_paths(config) == [f'{tmp_path}/a,b/x.png', f'{tmp_path}/c.png']
