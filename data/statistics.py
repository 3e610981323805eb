"""Normalisation: the mean to subtract, PCA lighting's basis, and --mode=stats.

`--mode=stats` computes over the training split, seen as the paper stored
it (the central square with its side scaled to data.resize_size),

  mean_image  (resize_size, resize_size, 3), 0-255: the paper's per-pixel mean
  mean_rgb, std_rgb  (3,), 0-255: per-channel mean and standard deviation
  eigval, eigvec  (3,), (3, 3): the eigenvalues (descending) and eigenvectors
      (columns) of the 3x3 covariance of RGB pixels scaled to [0, 1], the
      units of PCA lighting's data.eigval and data.eigvec
  num_images

and writes them to data.stats_file (NumPy .npz), which training then reads.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import run_files
from data import preprocessing, sources

STATS_KEYS = ('mean_image', 'mean_rgb', 'std_rgb', 'eigval', 'eigvec',
              'num_images')
_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Normalization:
  """The host's part of normalisation: the mean, and PCA lighting's basis.

  The mean is in 0-255 pixels, the eigenvalues and eigenvectors in [0, 1]
  units; dividing by data.std_rgb happens in the compiled step.
  """
  mean: np.ndarray     # (3,) or the mean image (resize_size, resize_size, 3)
  eigval: np.ndarray   # (3,)
  eigvec: np.ndarray   # (3, 3), eigenvectors as columns


def load_stats(path: str) -> dict[str, np.ndarray]:
  """Reads a file written by `--mode=stats`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Stats file {path!r} does not exist; write it with --mode=stats '
        '(same data config), or unset data.stats_file.')
  with np.load(path) as f:
    missing = set(STATS_KEYS) - set(f.files)
    if missing:
      raise ValueError(f'{path!r} lacks {sorted(missing)}; rewrite it with '
                       '--mode=stats.')
    return {k: f[k] for k in STATS_KEYS}


def normalization(data: ml_collections.ConfigDict) -> Normalization:
  """The config's normalisation; a stats file replaces mean and PCA."""
  mean = np.float32(data.mean_rgb)
  eigval, eigvec = np.float32(data.eigval), np.float32(data.eigvec)
  if data.stats_file:
    stats = load_stats(data.stats_file)
    mean, eigval, eigvec = stats['mean_rgb'], stats['eigval'], stats['eigvec']
    if data.mean_image:
      mean = stats['mean_image']
      if mean.shape != (data.resize_size, data.resize_size, 3):
        raise ValueError(
            f'The mean image in {data.stats_file!r} is {mean.shape[:2]}, but '
            f'data.resize_size is {data.resize_size}; recompute it with '
            '--mode=stats at this resize_size.')
  elif data.mean_image:
    raise ValueError('data.mean_image=True needs the per-pixel mean of a stats '
                     'file: run --mode=stats and set data.stats_file.')
  return Normalization(mean=np.float32(mean), eigval=np.float32(eigval),
                       eigvec=np.float32(eigvec))


def compute(data: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The statistics of this process's shard of data.train_split."""
  size = data.resize_size
  source = sources.get_source(data)

  def moments(example):
    image = preprocessing.decode_central_square(
        source.load(example['image']), size)
    pixels = tf.reshape(tf.cast(image, tf.float64), [-1, 3]) / 255.0
    # Per-image sums keep float64 accuracy over a million images.
    return {'image': image,
            'sum': tf.reduce_sum(pixels, axis=0),
            'outer': tf.matmul(pixels, pixels, transpose_a=True)}

  ds = source.read(data.train_split, None).map(
      moments, num_parallel_calls=tf.data.AUTOTUNE)
  ds = preprocessing.skip_undecodable(ds, data).batch(_BATCH).prefetch(2)

  image_sum = np.zeros((size, size, 3), np.float64)
  pixel_sum = np.zeros(3, np.float64)
  outer_sum = np.zeros((3, 3), np.float64)
  count = 0
  for batch in preprocessing.explain_errors(tfds.as_numpy(ds)):
    image_sum += batch['image'].sum(axis=0, dtype=np.float64)
    pixel_sum += batch['sum'].sum(axis=0)
    outer_sum += batch['outer'].sum(axis=0)
    count += len(batch['image'])
  if not count:
    raise ValueError(f'The {data.train_split!r} split yielded no images.')

  num_pixels = count * size * size
  mean = pixel_sum / num_pixels
  covariance = outer_sum / num_pixels - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(covariance)
  order = np.argsort(eigval)[::-1]
  return dict(
      mean_image=(image_sum / count).astype(np.float32),
      mean_rgb=(255 * mean).astype(np.float32),
      std_rgb=(255 * np.sqrt(np.diag(covariance))).astype(np.float32),
      eigval=eigval[order].astype(np.float32),
      eigvec=eigvec[:, order].astype(np.float32),
      num_images=np.int64(count))


def write(data: ml_collections.ConfigDict) -> str:
  """Computes the statistics and writes them to data.stats_file; a summary."""
  if not data.stats_file:
    raise ValueError('Set --config.data.stats_file=PATH.npz: where --mode=stats '
                     'writes, and where training then reads.')
  stats = compute(data)
  os.makedirs(os.path.dirname(os.path.abspath(data.stats_file)), exist_ok=True)
  with run_files.atomic_write(data.stats_file, 'wb') as f:
    np.savez(f, **stats)
  np.set_printoptions(precision=4, suppress=True)
  return '\n'.join([
      f'Statistics of {int(stats["num_images"])} training images at '
      f'{data.resize_size}x{data.resize_size}, written to {data.stats_file}:',
      f'mean_rgb (0-255): {stats["mean_rgb"]}',
      f'std_rgb (0-255):  {stats["std_rgb"]}',
      f'eigval ([0, 1] pixels): {stats["eigval"]}',
      f'eigvec (columns):\n{stats["eigvec"]}'])
