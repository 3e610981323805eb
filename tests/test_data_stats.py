"""Statistics: --mode=stats recovers a known colour covariance on one process
or two, the lighting's strength follows it, training reads it, and the
paper's config computes its mean image once into a cache that is checked."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

import evaluation
import input_pipeline
import run_files
import train
import trainer
from configs import alexnet as alexnet_config
from configs import demo as demo_config
from data import batching, preprocessing, sources, statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 72  # the network takes crops of 67 or more, and crops fit the resize
EIGVAL = np.array([0.01, 0.003, 0.0005])      # [0, 1] pixel units
EIGVEC = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
MEAN = np.array([0.5, 0.45, 0.4])


def _write_images(directory, count, rng, first=0):
  """PNGs whose pixels are N(MEAN, the known covariance). PNG is lossless
  and SIZE x SIZE needs no resampling: the pixels reach the statistics as
  drawn (up to rounding to 0-255)."""
  covariance = EIGVEC @ np.diag(EIGVAL) @ EIGVEC.T
  os.makedirs(directory, exist_ok=True)
  for i in range(first, first + count):
    pixels = rng.multivariate_normal(MEAN, covariance, (SIZE, SIZE))
    Image.fromarray(np.clip(np.round(pixels * 255), 0, 255).astype(
        np.uint8)).save(directory / f'{i}.png')


def _stats_command(root, *flags):
  return [sys.executable, 'main.py', '--config=configs/demo.py', '--mode=stats',
          f'--config.data.image_folder={root}',
          f'--config.data.resize_size={SIZE}', f'--config.data.image_size={SIZE}', *flags]


@pytest.fixture(scope='module')
def stats(tmp_path_factory):
  """Runs --mode=stats on one process on PNGs of the known covariance."""
  root = tmp_path_factory.mktemp('colours')
  rng = np.random.default_rng(0)
  for split, count in (('train', 48), ('validation', 2)):
    _write_images(root / split / 'only', count, rng)
  path = root / 'stats.npz'
  result = subprocess.run(
      _stats_command(root, f'--config.data.stats_file={path}'),
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Statistics of 48 training images' in result.stdout
  return root, str(path)


def test_stats_recover_eigenvalues_and_eigenvectors(stats):
  _, path = stats
  s = statistics.load_stats(path)
  np.testing.assert_allclose(s['eigval'], EIGVAL, rtol=0.03)
  # Eigenvectors agree up to sign.
  np.testing.assert_allclose(np.abs(np.sum(s['eigvec'] * EIGVEC, axis=0)), 1,
                             atol=0.02)
  np.testing.assert_allclose(s['mean_rgb'], 255 * MEAN, atol=1)
  np.testing.assert_allclose(
      s['std_rgb'], 255 * np.sqrt(np.diag(EIGVEC @ np.diag(EIGVAL) @ EIGVEC.T)),
      rtol=0.02)
  assert s['mean_image'].shape == (SIZE, SIZE, 3)
  np.testing.assert_allclose(s['mean_image'].mean((0, 1)), s['mean_rgb'],
                             atol=1e-3)
  assert int(s['num_images']) == 48
  assert (s['dataset'].item(), s['split'].item(), int(s['resize_size']),
          int(s['num_examples'])) == ('image folder, val_fraction=0.0',
                                      'train', SIZE, 48)


def test_lighting_strength_follows_the_computed_eigenvalues(stats):
  # The paper's lambda_i are the covariance's eigenvalues (variances), so
  # the colour shift's std along p_i is sigma lambda_i, and per channel
  # 255 sigma sqrt(sum_i lambda_i^2 p_ci^2) with the true covariance's.
  _, path = stats
  sigma, n = 0.1, 20_000
  data = ml_collections.ConfigDict(dict(resize_size=SIZE, image_size=SIZE,
                                        pca_sigma=sigma))
  s = statistics.load_stats(path)
  norm = statistics.Normalization(mean=s['mean_rgb'], eigval=s['eigval'],
                                  eigvec=s['eigvec'])
  shifts = batching.augmentation(data, norm, 5, n)['lighting']
  expected = 255 * sigma * np.sqrt(np.diag(
      EIGVEC @ np.diag(EIGVAL ** 2) @ EIGVEC.T))
  np.testing.assert_allclose(shifts.std(axis=0), expected, rtol=0.05)
  np.testing.assert_allclose(
      preprocessing.lighting_std(s['eigval'], s['eigvec'], sigma), expected,
      rtol=0.05)


def test_default_eigenvalues_are_variances_of_unit_range_pixels():
  # As variances, the defaults (fb.resnet.torch's) give ImageNet's per-pixel
  # std over the training images, 0.2806, 0.2736, 0.2877 (pytorch/vision
  # issue 1439); as standard deviations they would give about 0.125.
  data = alexnet_config.get_config().data
  eigvec = np.array(data.eigvec)
  np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-4)
  channel_std = np.sqrt(np.diag(eigvec @ np.diag(data.eigval) @ eigvec.T))
  np.testing.assert_allclose(channel_std, [0.2806, 0.2736, 0.2877], atol=0.005)


def test_two_processes_sum_their_shards_into_one_processes_statistics(
    stats, free_port):
  # Without data.stats_file, into the cache in the image folder; process 0
  # writes it, process 1 waits.
  root, one_process = stats
  address = f'localhost:{free_port()}'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  workers = [subprocess.Popen(
      _stats_command(root, f'--coordinator_address={address}',
                     '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=env) for i in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  for worker, output in zip(workers, outputs):
    assert worker.returncode == 0, output[-3000:]
    assert 'Statistics of 48 training images' in output
  assert 'Statistics: 24 images read' in outputs[1]  # its own shard
  path = root / '.statistics' / f'train_{SIZE}.npz'
  two, one = statistics.load_stats(str(path)), statistics.load_stats(one_process)
  for key in statistics.STATS_KEYS + statistics.RECORD_KEYS:
    if two[key].dtype.kind == 'f':
      np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-6)
    else:
      np.testing.assert_array_equal(two[key], one[key])


def test_paper_config_subtracts_the_mean_image_and_the_demo_the_channel_mean():
  assert alexnet_config.get_config().data.mean_image
  assert alexnet_config.get_config('arch=owt').data.mean_image
  assert not alexnet_config.get_config('mean=channel').data.mean_image
  assert not demo_config.get_config().data.mean_image
  assert demo_config.get_config('mean=image').data.mean_image
  with pytest.raises(ValueError, match="mean='pixel' is not one of: image, "
                     'channel'):
    alexnet_config.get_config('mean=pixel')


@pytest.fixture
def paper_data(tmp_path):
  """The paper's data config on a folder of three classes, no validation/."""
  rng = np.random.default_rng(1)
  for name in ('a', 'b', 'c'):
    _write_images(tmp_path / name, 6, rng)
  data = alexnet_config.get_config().data
  data.update(dict(image_folder=str(tmp_path), val_fraction=0.34,
                   resize_size=SIZE, image_size=28))
  return data


def _refuse_to_compute(monkeypatch):
  def compute(*_):
    raise AssertionError('computed again')
  monkeypatch.setattr(statistics, 'compute', compute)


def test_paper_config_computes_the_mean_image_once_then_reads_it(
    paper_data, monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(statistics, '_PROGRESS_SECONDS', 0.0)
  norm = input_pipeline.load(paper_data).normalization
  assert norm.mean.shape == (SIZE, SIZE, 3)
  assert 'computing them once' in caplog.text
  assert 'Statistics: 12 of 12 images (100%)' in caplog.text
  path = statistics.cache_path(paper_data, sources.open_source(paper_data))
  assert path == os.path.join(paper_data.image_folder, '.statistics',
                              f'train_{SIZE}.npz')
  cache = statistics.load_stats(path)
  assert int(cache['num_images']) == 12  # 4 of each class's 6 for training
  np.testing.assert_array_equal(norm.mean, cache['mean_image'])
  np.testing.assert_array_equal(norm.eigval, cache['eigval'])
  # The cache's hidden folder is not a class.
  assert sources.open_source(paper_data).num_classes == 3

  _refuse_to_compute(monkeypatch)
  caplog.clear()
  again = input_pipeline.load(paper_data).normalization
  np.testing.assert_array_equal(again.mean, norm.mean)
  assert 'computing' not in caplog.text
  batch = next(input_pipeline.load(paper_data).train_iterator(batch_size=4, seed=0))
  # The mean image under each crop is the compiled step's to subtract.
  assert batch['shift'].shape == (4, 1, 1, 3) and batch['corner'].shape == (4, 2)
  np.testing.assert_array_equal(input_pipeline.load(paper_data).mean_image, norm.mean)


def test_a_corrupt_or_stale_cache_is_recomputed_with_a_warning(
    paper_data, caplog):
  caplog.set_level(logging.INFO)
  input_pipeline.load(paper_data).normalization
  path = statistics.cache_path(paper_data, sources.open_source(paper_data))
  with open(path, 'wb') as f:
    f.write(b'not a zip file')
  caplog.clear()
  input_pipeline.load(paper_data).normalization
  assert f'The statistics in {path} are unreadable' in caplog.text
  assert int(statistics.load_stats(path)['num_images']) == 12

  # Two more training images: the cache no longer describes the folder.
  _write_images(pathlib.Path(paper_data.image_folder) / 'a', 3,
                np.random.default_rng(2), first=6)
  caplog.clear()
  input_pipeline.load(paper_data).normalization
  assert 'are stale: they describe num_examples 12, not 14' in caplog.text
  assert int(statistics.load_stats(path)['num_images']) == 14

  caplog.clear()
  paper_data.resize_size = 24
  assert input_pipeline.load(paper_data).normalization.mean.shape == (24, 24, 3)
  assert 'computing them once' in caplog.text  # a cache per size
  assert os.path.isfile(path)


def test_a_cache_of_other_images_in_the_same_number_is_recomputed(paper_data, caplog):
  before = input_pipeline.load(paper_data).normalization
  # One image gone, one new in its place: the count holds, the images do not.
  folder = pathlib.Path(paper_data.image_folder) / 'a'
  os.remove(folder / '0.png')
  _write_images(folder, 1, np.random.default_rng(7), first=9)
  caplog.set_level(logging.WARNING)
  after = input_pipeline.load(paper_data).normalization
  assert ("are stale: they describe other images of split 'train' than there "
          'are now (listing') in caplog.text
  assert not np.array_equal(after.mean, before.mean)
  path = statistics.cache_path(paper_data, sources.open_source(paper_data))
  assert int(statistics.load_stats(path)['num_images']) == 12


def test_an_edited_cache_is_recomputed(paper_data, caplog):
  norm = input_pipeline.load(paper_data).normalization
  path = statistics.cache_path(paper_data, sources.open_source(paper_data))
  with np.load(path) as f:
    edited = dict(f)
  edited['mean_image'] = np.full_like(edited['mean_image'], 1e6)
  np.savez(path.removesuffix('.npz'), **edited)  # the old digest with it
  caplog.set_level(logging.WARNING)
  again = input_pipeline.load(paper_data).normalization
  assert 'do not match the digest written with them (edited or damaged)' in caplog.text
  np.testing.assert_array_equal(again.mean, norm.mean)
  # A stats file given by hand is refused, not recomputed.
  np.savez(path.removesuffix('.npz'), **edited)
  with pytest.raises(ValueError, match=r'unreadable .*edited or damaged.*rewrite it'):
    statistics.load_stats(path)


def test_an_unwritable_cache_names_the_remedy(paper_data):
  # A file where the cache's folder should be: the folder cannot be made.
  open(os.path.join(paper_data.image_folder, statistics.CACHE_DIR), 'w').close()
  with pytest.raises(PermissionError, match=r'Set --config.data.stats_file='
                     r'PATH.npz somewhere writable'):
    input_pipeline.load(paper_data).normalization


def test_a_stats_file_of_other_data_is_used_with_a_warning(stats, paper_data,
                                                           caplog):
  _, path = stats
  caplog.set_level(logging.INFO)
  paper_data.stats_file = path
  norm = input_pipeline.load(paper_data).normalization
  np.testing.assert_array_equal(norm.mean, statistics.load_stats(path)['mean_image'])
  assert 'num_examples 48, not 12' in caplog.text
  assert "using it as data.stats_file says" in caplog.text
  paper_data.resize_size = 30
  with pytest.raises(ValueError, match='recompute it with --mode=stats'):
    input_pipeline.load(paper_data).normalization


def test_training_subtracts_the_mean_image_of_the_stats_file(stats):
  root, path = stats
  config = demo_config.get_config()
  data = config.data
  data.update(dict(image_folder=str(root), resize_size=SIZE, image_size=28,
                   stats_file=path, mean_image=True, pca_sigma=0.0,
                   std_rgb=(1.0, 1.0, 1.0)))
  mean = input_pipeline.load(data).normalization.mean
  assert mean.shape == (SIZE, SIZE, 3)
  batch = next(input_pipeline.load(data).train_iterator(batch_size=48, seed=0))
  centred = np.asarray(trainer.standardize(batch, data.std_rgb, mean))
  # Each image minus the mean image's window under its crop, then reflected.
  for i, (top, left) in enumerate(batch['corner']):
    expected = batch['image'][i] + batch['shift'][i] - mean[top:top + 28, left:left + 28]
    expected = expected[:, ::-1] if batch['flip'][i] else expected
    np.testing.assert_allclose(centred[i], expected, rtol=1e-6, atol=1e-4)
  with pytest.raises(ValueError, match='given no mean_image'):
    trainer.standardize(batch, data.std_rgb)
  # Centred per pixel: every position averages to about zero over the set.
  assert np.abs(centred.mean(axis=0)).max() < 0.5 * 255 * np.sqrt(EIGVAL[0])
  assert np.abs(centred.mean()) < 1
  data.mean_image = False
  np.testing.assert_array_equal(input_pipeline.load(data).normalization.mean,
                                statistics.load_stats(path)['mean_rgb'])


@pytest.mark.parametrize('ten_crop', [False, True])
def test_evaluation_subtracts_the_mean_image_under_its_crops(stats, ten_crop):
  root, path = stats
  data = demo_config.get_config().data
  data.update(dict(image_folder=str(root), resize_size=SIZE, image_size=28,
                   stats_file=path, mean_image=True, std_rgb=(1.0, 2.0, 4.0)))
  mean = input_pipeline.load(data).normalization.mean
  batch = next(input_pipeline.load(data).eval_iterator(batch_size=4, ten_crop=ten_crop))
  # Corners, not a float32 copy of the mean under every crop, travel.
  assert batch['shift'].shape == (4, *[1] * (batch['image'].ndim - 2), 3)
  assert not batch['shift'].any()
  got = np.asarray(trainer.standardize(batch, data.std_rgb, mean))
  # Each crop minus the mean image's window under it; then the reflections.
  far, mid = SIZE - 28, (SIZE - 28) // 2
  corners = ([(0, 0), (0, far), (far, 0), (far, far), (mid, mid)] if ten_crop
             else [(mid, mid)])
  expected = [batch['image'].reshape(4, -1, 28, 28, 3)[:, c].astype(np.float32)
              - mean[t:t + 28, l:l + 28] for c, (t, l) in enumerate(corners)]
  if ten_crop:
    expected = np.stack(expected + [e[:, :, ::-1] for e in expected], axis=1)
  else:
    expected = expected[0]
  np.testing.assert_allclose(got, expected / np.float32(data.std_rgb),
                             rtol=1e-6, atol=1e-4)


def test_eval_mode_subtracts_the_mean_image_the_run_trained_with(
    paper_data, tmp_path_factory):
  config = alexnet_config.get_config('size=tiny')
  config.data = paper_data
  config.data.update(dict(resize_size=80, image_size=72))
  config.num_train_steps = 2
  config.batch_size = config.eval_batch_size = 8
  workdir = str(tmp_path_factory.mktemp('work'))  # not a class of the folder
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, run_files.RESULTS)) as f:
    results = json.load(f)
  # --mode=eval's restore gives its Trainer the mean image the run used.
  chosen = evaluation.restore_chosen(config, workdir, input_pipeline.load(config.data))
  assert chosen.step == 2
  errors = evaluation.evaluate(chosen.trainer, chosen.state, chosen.config,
                               chosen.dataset, ten_crop=True)
  assert errors['examples'] == results['val_examples_10crop'] > 0
  assert errors['top1_error'] == pytest.approx(results['val_top1_error_10crop'])
  assert errors['top5_error'] == pytest.approx(results['val_top5_error_10crop'])
