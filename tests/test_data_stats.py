"""--mode=stats recovers a known colour covariance, and training reads it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import input_pipeline
import trainer
from configs import demo as demo_config
from data import statistics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
EIGVAL = np.array([0.01, 0.003, 0.0005])      # [0, 1] pixel units
EIGVEC = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
MEAN = np.array([0.5, 0.45, 0.4])


@pytest.fixture(scope='module')
def stats(tmp_path_factory):
  """Runs --mode=stats on PNGs whose pixels are N(MEAN, known covariance)."""
  root = tmp_path_factory.mktemp('colours')
  rng = np.random.default_rng(0)
  covariance = EIGVEC @ np.diag(EIGVAL) @ EIGVEC.T
  for split, count in (('train', 48), ('validation', 2)):
    for i in range(count):
      pixels = rng.multivariate_normal(MEAN, covariance, (SIZE, SIZE))
      directory = root / split / 'only'
      os.makedirs(directory, exist_ok=True)
      # PNG is lossless and SIZE x SIZE needs no resampling: the pixels
      # reach the statistics as drawn (up to rounding to 0-255).
      Image.fromarray(np.clip(np.round(pixels * 255), 0, 255).astype(
          np.uint8)).save(directory / f'{i}.png')
  path = root / 'stats.npz'
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py', '--mode=stats',
       f'--config.data.image_folder={root}', f'--config.data.resize_size={SIZE}',
       f'--config.data.stats_file={path}'],
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


def test_training_subtracts_the_mean_image_of_the_stats_file(stats):
  root, path = stats
  config = demo_config.get_config()
  data = config.data
  data.update(dict(image_folder=str(root), resize_size=SIZE, image_size=28,
                   stats_file=path, mean_image=True, pca_sigma=0.0,
                   std_rgb=(1.0, 1.0, 1.0)))
  assert statistics.normalization(data).mean.shape == (SIZE, SIZE, 3)
  batch = next(input_pipeline.train_iterator(data, batch_size=48, seed=0))
  assert batch['shift'].shape == (48, 28, 28, 3)
  # Centred per pixel: every position averages to about zero over the set.
  centred = np.asarray(trainer.standardize(batch, data.std_rgb))
  assert np.abs(centred.mean(axis=0)).max() < 0.5 * 255 * np.sqrt(EIGVAL[0])
  assert np.abs(centred.mean()) < 1
  data.mean_image = False
  np.testing.assert_array_equal(statistics.normalization(data).mean,
                                statistics.load_stats(path)['mean_rgb'])


def test_mean_image_without_stats_file_is_refused():
  data = demo_config.get_config().data
  data.mean_image = True
  with pytest.raises(ValueError, match='stats_file'):
    statistics.normalization(data)
