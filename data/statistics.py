"""Normalisation: the mean to subtract, PCA lighting's basis, and --mode=stats.

The statistics of the training split, seen as the paper stored it (the
central square with its side scaled to data.resize_size):

  mean_image  (resize_size, resize_size, 3), 0-255: the paper's per-pixel mean
      (section 2)
  mean_rgb, std_rgb  (3,), 0-255: per-channel mean and standard deviation
  eigval, eigvec  (3,), (3, 3): the eigenvalues (descending) and eigenvectors
      (columns) of the 3x3 covariance of RGB pixels scaled to [0, 1]: the
      paper's lambda_i (section 4.1), variances, in the convention of the
      config's data.eigval and data.eigvec
  num_images  the images they average (undecodable ones are skipped)

and what they describe, checked whenever they are read: `dataset`, `split`,
`resize_size`, `num_examples` (the split's size) and `listing` (the split's
fingerprint: a digest of its files' paths, sizes and labels, so that other
images in the same number are noticed); and `digest`, of the arrays
themselves, so that an edited or damaged file is noticed too.

With data.mean_image (the paper's config) and no data.stats_file, they are
cached beside the data (`cache_path`): the first run that needs them
computes them, later runs read them, and a stale or unreadable cache is
recomputed with a warning. `--mode=stats` computes them explicitly, into
data.stats_file when it is set. On several processes each sums the moments
of its own shard, the sums are added over all processes (the same numbers as
one process over the whole split, up to float rounding), and process 0
writes the file while the others wait for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
import time
import urllib.parse
import zipfile

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

import run_files
from data import preprocessing, sources
from runtime import errors

STATS_KEYS = ('mean_image', 'mean_rgb', 'std_rgb', 'eigval', 'eigvec',
              'num_images')
RECORD_KEYS = ('dataset', 'split', 'resize_size', 'num_examples', 'listing')
# The cache's folder inside the TFDS dataset's folder, the image folder or
# the prepared copy; hidden, so that it is never taken for a class.
CACHE_DIR = '.statistics'
_BATCH = 32
_PROGRESS_SECONDS = 60.0
# The warnings about a data.stats_file of other data given so far.
_WARNED: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Normalization:
  """The host's part of normalisation: the mean, and PCA lighting's basis.

  The mean is in 0-255 pixels, the eigenvalues and eigenvectors in [0, 1]
  units; dividing by data.std_rgb happens in the compiled step.
  """
  mean: np.ndarray     # (3,) or the mean image (resize_size, resize_size, 3)
  eigval: np.ndarray   # (3,)
  eigvec: np.ndarray   # (3, 3), eigenvectors as columns

  @property
  def mean_image(self) -> np.ndarray | None:
    """The mean image, which the compiled step subtracts under each crop's
    corner (trainer.standardize), or None with a per-channel mean."""
    return self.mean if self.mean.ndim == 3 else None

  @property
  def digest(self) -> str:
    """What the normalisation is: a digest of its arrays."""
    return _digest([self.mean, self.eigval, self.eigvec])

  @property
  def minus_channel_mean(self) -> np.ndarray:
    """(3,) float32 the host adds to every image: minus the per-channel
    mean, or zeros with a mean image."""
    return (np.zeros(3, np.float32) if self.mean_image is not None
            else -np.float32(self.mean))


def _digest(arrays: list[np.ndarray]) -> str:
  digest = hashlib.sha256()
  for a in arrays:
    digest.update(np.ascontiguousarray(a, a.dtype.newbyteorder('<')).tobytes())
  return digest.hexdigest()[:16]


def _arrays_digest(stats: dict[str, np.ndarray]) -> str:
  return _digest([np.asarray(stats[k]) for k in STATS_KEYS])


def cache_path(data: ml_collections.ConfigDict, source: sources.Source) -> str:
  """Where the statistics of data.train_split at data.resize_size are
  cached: in a .statistics folder of the prepared copy, the image folder or
  the TFDS dataset's (versioned) folder."""
  split = urllib.parse.quote(data.train_split, safe='')
  return os.path.join(source.cache_dir, CACHE_DIR, f'{split}_{data.resize_size}.npz')


def _record(data: ml_collections.ConfigDict,
            source: sources.Source) -> dict[str, str | int]:
  """What statistics for this config must describe. An image folder's or
  prepared copy's cache lives inside it, so a moved folder keeps it."""
  return dict(dataset=source.description, split=data.train_split,
              resize_size=int(data.resize_size),
              num_examples=int(source.num_examples(data.train_split)),
              listing=source.fingerprint(data.train_split))


def _differences(stats: dict[str, np.ndarray],
                 expected: dict[str, str | int]) -> list[str]:
  """What `stats` were computed from that differs from `expected`."""
  found = []
  for k in RECORD_KEYS:
    if k not in stats:
      found.append(f'no {k} (written by an older version)')
    elif stats[k].item() != expected[k]:
      found.append(
          f'other images of split {expected["split"]!r} than there are now '
          f'(listing {stats[k].item()}, now {expected[k]})' if k == 'listing'
          else f'{k} {stats[k].item()!r}, not {expected[k]!r}')
  return found


def _read(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    required = STATS_KEYS + RECORD_KEYS[:-1]
    missing = [k for k in required if k not in f.files]
    if missing:
      raise errors.InvalidInput(f'it lacks {missing}')
    stats = {k: f[k] for k in STATS_KEYS + RECORD_KEYS + ('digest',) if k in f.files}
  shapes = {'mean_image': (int(stats['resize_size']),) * 2 + (3,),
            'eigval': (3,), 'eigvec': (3, 3)}
  for key, shape in shapes.items():
    if stats[key].shape != shape or not np.all(np.isfinite(stats[key])):
      raise errors.InvalidInput(f'its {key} is not {shape} finite numbers')
  if 'digest' in stats and stats['digest'].item() != _arrays_digest(stats):
    raise errors.InvalidInput('its arrays do not match the digest written with them '
                              '(edited or damaged)')
  return stats


def load_stats(path: str) -> dict[str, np.ndarray]:
  """Reads a file written by `--mode=stats`: STATS_KEYS and RECORD_KEYS."""
  if not os.path.isfile(path):
    raise errors.NotFound(
        f'Stats file {path!r} does not exist; write it with --mode=stats '
        '(same data config), or unset data.stats_file to use the statistics '
        'cached beside the data.')
  try:
    return _read(path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise errors.InvalidInput(f'Stats file {path!r} is unreadable ({e}); rewrite it '
                              'with --mode=stats.') from e


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set on any process (all processes must call this)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32([flag]))))


def _cache_problem(path: str, expected: dict[str, str | int]
                   ) -> tuple[dict[str, np.ndarray] | None, str | None]:
  """The statistics in `path` if they fit `expected`, else None and why
  (None when there is no file)."""
  try:
    stats = _read(path)
  except FileNotFoundError:
    return None, None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    return None, f'unreadable ({e})'
  differences = _differences(stats, expected)
  if differences:
    return None, f'stale: they describe {"; ".join(differences)}'
  return stats, None


def cached(data: ml_collections.ConfigDict,
           source: sources.Source) -> dict[str, np.ndarray]:
  """The statistics cached beside the data, computed first if they are
  missing, stale or unreadable (all processes must call this together)."""
  path = cache_path(data, source)
  expected = _record(data, source)
  stats, problem = _cache_problem(path, expected)
  if problem:
    logging.warning('The statistics in %s are %s; recomputing them.', path,
                    problem)
  elif stats is None:
    logging.info('No statistics of %s at %dx%d in %s yet: computing them once '
                 '(later runs read them).', source.name,
                 data.resize_size, data.resize_size, path)
  if not _any_process(stats is None):
    return stats
  return _compute_and_write(data, path, source, expected)


def _user_file(data: ml_collections.ConfigDict,
               source: sources.Source) -> dict[str, np.ndarray]:
  """data.stats_file, checked against the config: the mean image must fit
  resize_size; statistics of other data are used, with a warning, since
  borrowing them can be deliberate."""
  stats = load_stats(data.stats_file)
  if data.mean_image and stats['mean_image'].shape[0] != data.resize_size:
    raise errors.InvalidInput(
        f'The mean image in {data.stats_file!r} is '
        f'{stats["mean_image"].shape[:2]}, but data.resize_size is '
        f'{data.resize_size}; recompute it with --mode=stats at this '
        'resize_size.')
  differences = _differences(stats, _record(data, source))
  message = (f'{data.stats_file} describes {"; ".join(differences)}; using it '
             'as data.stats_file says.')
  if differences and message not in _WARNED:  # once, not at every evaluation
    _WARNED.add(message)
    logging.warning(message)
  return stats


def normalization(data: ml_collections.ConfigDict,
                  source: sources.Source) -> Normalization:
  """The config's normalisation: with data.stats_file, its statistics;
  else with data.mean_image, the cached ones (`cached`); else data.mean_rgb,
  data.eigval and data.eigvec. Statistics supply the mean image (or the
  per-channel mean without data.mean_image) and PCA lighting's basis.
  `source` is the configured one; it is read only to compute statistics."""
  if not (data.stats_file or data.mean_image):
    return Normalization(mean=np.float32(data.mean_rgb),
                         eigval=np.float32(data.eigval),
                         eigvec=np.float32(data.eigvec))
  stats = (_user_file(data, source) if data.stats_file
           else cached(data, source))
  logging.log_first_n(
      logging.INFO, 'Normalisation: the %s and the PCA lighting basis of the '
      'statistics of %d images (not data.mean_rgb, eigval, eigvec).', 1,
      'mean image' if data.mean_image else 'per-channel mean',
      int(stats['num_images']))
  return Normalization(
      mean=np.float32(stats['mean_image' if data.mean_image else 'mean_rgb']),
      eigval=np.float32(stats['eigval']), eigvec=np.float32(stats['eigvec']))


def _shard_sums(data: ml_collections.ConfigDict,
                source: sources.Source) -> np.ndarray:
  """This process's shard's sums of images, pixels and pixel outer products
  ([0, 1] units), and its image count, flattened into one float64 vector."""
  size = data.resize_size

  def moments(example):
    image = preprocessing.decode_central_square(
        source.load(example['image']), size, dct=data.jpeg_dct)
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
  total = math.ceil(source.num_examples(data.train_split) / jax.process_count())
  logging.info('Statistics: reading %d images of %s at %dx%d (progress every '
               '%.0f s).', total, source.name, size, size,
               _PROGRESS_SECONDS)
  start = last_log = time.monotonic()
  for batch in preprocessing.explain_errors(tfds.as_numpy(ds)):
    image_sum += batch['image'].sum(axis=0, dtype=np.float64)
    pixel_sum += batch['sum'].sum(axis=0)
    outer_sum += batch['outer'].sum(axis=0)
    count += len(batch['image'])
    now = time.monotonic()
    if now - last_log >= _PROGRESS_SECONDS:
      last_log, rate = now, count / (now - start)
      logging.info('Statistics: %d of %d images (%.0f%%), %.0f images/s, about '
                   '%.0f min left.', count, total, 100 * count / total, rate,
                   max(total - count, 0) / rate / 60)
  logging.info('Statistics: %d images read in %.0f s.', count,
               time.monotonic() - start)
  return np.concatenate([image_sum.ravel(), pixel_sum, outer_sum.ravel(),
                         [count]])


def _sum_over_processes(sums: np.ndarray) -> np.ndarray:
  """Adds a float64 vector over processes, in process order. Its bytes
  travel as uint32, since JAX computes in 32 bits unless x64 is on."""
  if jax.process_count() == 1:
    return sums
  gathered = multihost_utils.process_allgather(sums.view(np.uint32))
  return np.ascontiguousarray(gathered).view(np.float64).sum(axis=0)


def compute(data: ml_collections.ConfigDict,
            source: sources.Source) -> dict[str, np.ndarray]:
  """STATS_KEYS of data.train_split, over all processes' shards (all
  processes must call this together)."""
  size = data.resize_size
  sums = _sum_over_processes(_shard_sums(data, source))
  image_sum, pixel_sum, outer_sum, count = np.split(
      sums, np.cumsum([size * size * 3, 3, 9]))
  count = int(count[0])
  if not count:
    raise errors.InvalidInput(f'The {data.train_split!r} split of '
                              f'{source.name!r} yielded no images.')
  num_pixels = count * size * size
  mean = pixel_sum / num_pixels
  covariance = outer_sum.reshape(3, 3) / num_pixels - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(covariance)
  order = np.argsort(eigval)[::-1]
  return dict(
      mean_image=(image_sum.reshape(size, size, 3) / count).astype(np.float32),
      mean_rgb=(255 * mean).astype(np.float32),
      std_rgb=(255 * np.sqrt(np.diag(covariance))).astype(np.float32),
      eigval=eigval[order].astype(np.float32),
      eigvec=eigvec[:, order].astype(np.float32),
      num_images=np.int64(count))


def _save(path: str, stats: dict[str, np.ndarray]) -> None:
  with run_files.atomic_write(path, 'wb') as f:
    np.savez(f, **stats, digest=_arrays_digest(stats))


def _check_writable(path: str) -> None:
  """Fails on every process, before any work, if a process cannot write
  the folder of `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      error = None
  except OSError as e:
    error = e
  if _any_process(error is not None):
    raise PermissionError(
        f'Cannot write the statistics to {path!r} '
        f'({error or "another process cannot"}). Set '
        '--config.data.stats_file=PATH.npz somewhere writable: --mode=stats '
        'writes it there, and training with the same setting reads it.')


def _compute_and_write(data: ml_collections.ConfigDict, path: str,
                       source: sources.Source,
                       record: dict[str, str | int]) -> dict[str, np.ndarray]:
  """Computes the statistics with all processes; process 0 writes them to
  `path` while the others wait, then a process whose `path` is on a disk of
  its own writes its copy."""
  _check_writable(path)
  stats = {**compute(data, source), **record}
  if jax.process_index() == 0:
    _save(path, stats)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'statistics {path}')
    if jax.process_index() > 0 and _cache_problem(path, record)[0] is None:
      _save(path, stats)
  logging.info('Wrote the statistics of %d images to %s.',
               int(stats['num_images']), path)
  return stats


def write(data: ml_collections.ConfigDict, source: sources.Source) -> str:
  """--mode=stats: computes the statistics of `source` and writes them to
  data.stats_file, or to the cache beside the data when it is unset;
  returns a summary."""
  path = data.stats_file or cache_path(data, source)
  stats = _compute_and_write(data, path, source, _record(data, source))
  lighting = preprocessing.lighting_std(stats['eigval'], stats['eigvec'],
                                        data.pca_sigma)
  np.set_printoptions(precision=4, suppress=True)
  return '\n'.join([
      f'Statistics of {int(stats["num_images"])} training images of '
      f'{source.name} (split {data.train_split!r}) at '
      f'{data.resize_size}x{data.resize_size}, written to {path}:',
      f'mean_rgb (0-255): {stats["mean_rgb"]}',
      f'std_rgb (0-255):  {stats["std_rgb"]}',
      f'eigval (variances along the principal axes, [0, 1] pixels): '
      f'{stats["eigval"]}',
      f'eigvec (columns):\n{stats["eigvec"]}',
      f'PCA lighting at data.pca_sigma={data.pca_sigma}: colour shift std per '
      f'channel (0-255): {lighting}'])
