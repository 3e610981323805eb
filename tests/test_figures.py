"""The paper's figures: conv1's kernels (Figure 3) and fc7 nearest neighbours
(Figure 4) as PNGs; what training writes of them (the kernel grid, ReLU
sparsity)."""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf
from PIL import Image

import evaluation
import input_pipeline
import run_files
from data import sources
from models import kernels
from models.alexnet import RELU_LAYERS
from tools import figures


def _png_size(path: str) -> tuple[int, int]:
  with Image.open(path) as image:
    return image.size  # (width, height)


def _filter_grid_size(config) -> tuple[int, int]:
  """(width, height) of the kernel grid: a row of COLUMNS at most per
  tower's row, the towers' blocks stacked."""
  towers, k = config.model.towers, config.model.conv1_kernel
  per_tower = config.model.features[0] // towers
  columns = min(kernels.COLUMNS, per_tower)
  rows = -(-per_tower // columns)
  cell = k * kernels.SCALE
  return (columns * (cell + kernels.GAP) - kernels.GAP,
          towers * (rows * (cell + kernels.GAP) - kernels.GAP) +
          (towers - 1) * kernels.BLOCK_GAP)


def test_filters_png_one_block_per_tower_and_colourfulness(demo_run):
  config, workdir = demo_run
  text = figures.filters(config, workdir)
  path = os.path.join(workdir, figures.FIGURES, 'conv1_6.png')
  assert f'in {path}' in text
  # The tiny demo: 16 kernels, 8 a tower, 11x11 shown 44x44.
  assert _png_size(path) == _filter_grid_size(config) == (366, 96)
  rows = text.splitlines()[-2:]
  assert [r.split()[:2] for r in rows] == [['1', '8'], ['2', '8']]
  for row in rows:
    mean, median = map(float, row.split()[2:4])
    assert 0 <= mean <= 1 and 0 <= median <= 1


def test_colourfulness_is_0_for_grey_and_1_for_pure_colour_kernels():
  rng = np.random.default_rng(0)
  grey = np.repeat(rng.normal(size=(1, 5, 5, 1, 1)), 3, axis=3)
  opponent = rng.normal(size=(1, 5, 5, 1, 1)) * np.array([1.0, -1.0, 0.0])[:, None]
  constant_red = np.zeros((1, 5, 5, 3, 1))
  constant_red[:, :, :, 0] = 1.0
  weights = np.concatenate([grey, opponent, constant_red], axis=-1)
  np.testing.assert_allclose(kernels.colourfulness(weights), [[0.0, 1.0, 1.0]],
                             atol=1e-12)
  mixed = kernels.colourfulness(grey + 0.5 * opponent)
  assert 0 < mixed[0, 0] < 1


def test_filter_grid_keeps_grey_kernels_grey():
  grey = np.repeat(np.random.default_rng(0).normal(size=(2, 11, 11, 1, 3)), 3, axis=3)
  grid = kernels.filter_grid(grey)
  assert grid.dtype == np.uint8 and grid.shape[2] == 3
  assert (grid[..., 0] == grid[..., 1]).all() and (grid[..., 1] == grid[..., 2]).all()
  assert grid.min() == 0 and (grid < 255).any()  # each kernel spans 0-255


def test_training_logs_relu_sparsity_and_the_kernel_grid(demo_run):
  config, workdir = demo_run
  evaluated = [r for r in run_files.read_metrics(workdir) if 'val_loss' in r]
  assert evaluated
  for record in evaluated:
    for layer in RELU_LAYERS:
      assert 0 < record[f'val_relu_zeros_{layer}'] < 1, (layer, record)
  images = [v for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
            for event in tf.compat.v1.train.summary_iterator(path)
            for v in event.summary.value if v.tag == 'conv1_kernels']
  assert len(images) == 1  # one evaluation, at the end
  width, height, png = tf.make_ndarray(images[0].tensor)[:3]
  assert (int(width), int(height)) == _filter_grid_size(config)
  assert tf.io.decode_png(png).shape[:2] == (int(height), int(width))


def _training_image_files(config, indices, folder) -> list[str]:
  """Training images `indices` (in the split's fixed order) as files."""
  source = sources.open_source(config.data)
  wanted = set(indices)
  paths = {}
  for i, example in enumerate(source.read(config.data.train_split, None).as_numpy_iterator()):
    if i in wanted:
      paths[i] = str(folder / f'train_{i}.jpg')
      with open(paths[i], 'wb') as f:
        f.write(example['image'])
  return [paths[i] for i in indices]


def test_nearest_neighbour_of_a_training_image_is_itself(demo_run, tmp_path):
  config, workdir = demo_run
  config = config.copy_and_resolve_references()
  config.predict.neighbour_subset = 100  # 320 images: one in 4, 80 of them
  config.predict.neighbours = 3
  indices = [0, 100, 316]
  config.predict.inputs = ','.join(_training_image_files(config, indices, tmp_path))
  text = figures.neighbours(config, workdir)

  path = os.path.join(workdir, figures.FIGURES, 'neighbours_6.png')
  size, gap = config.data.image_size, kernels.GAP
  assert _png_size(path) == (4 * size + 3 * gap, 3 * size + 2 * gap)
  assert 'among 80 of' in text and '(one in 4)' in text
  ranked = [line.split() for line in text.splitlines() if line.startswith('  ')]
  assert [int(r[3]) for r in ranked[::3]] == indices
  # Itself up to float16 storage; the next one far away.
  distances = np.float32([r[-1] for r in ranked]).reshape(3, 3)
  assert (distances[:, 0] < 0.01 * distances[:, 1]).all()


def test_training_features_are_computed_once_per_checkpoint(demo_run):
  config, workdir = demo_run
  chosen = evaluation.restore_chosen(config, workdir, input_pipeline.load(config.data))
  features, labels, stride = figures.training_features(chosen, workdir)
  assert stride == 1 and features.dtype == np.float16
  assert features.shape == (320, config.model.fc_features[1])
  assert (labels >= 0).all()
  cache = os.path.join(workdir, figures.FEATURES, '6.npy')
  written = os.stat(cache).st_mtime_ns
  again, labels_again, _ = figures.training_features(chosen, workdir)
  assert os.stat(cache).st_mtime_ns == written
  np.testing.assert_array_equal(again, features)
  np.testing.assert_array_equal(labels_again, labels)


def test_nearest_in_chunks_is_brute_force_nearest(monkeypatch):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(1000, 16)).astype(np.float16)
  valid = rng.random(1000) > 0.1
  queries = rng.normal(size=(5, 16)).astype(np.float32)
  monkeypatch.setattr(figures, '_CHUNK', 16 * 64)  # 64 rows at a time
  rows, distances = figures.nearest(queries, features, valid, k=4)
  brute = np.linalg.norm(queries[:, None] - np.float32(features)[None], axis=-1)
  brute[:, ~valid] = np.inf
  np.testing.assert_array_equal(rows, np.argsort(brute, axis=1)[:, :4])
  np.testing.assert_allclose(distances, np.sort(brute, axis=1)[:, :4], rtol=1e-5)
