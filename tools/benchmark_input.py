"""--mode=benchmark_input: training-pipeline images/s against baselines.

On the configured dataset, in one run and on the same images, with the same
number of workers (one per CPU):

  input        the training pipeline (train_iterator), batches as NumPy
               (its reflection is left to the compiled step, fused there
               with normalisation, so it is not timed here)
  PIL          a plain PIL + NumPy loader doing the same decode, resize, crop
               and flip in a multiprocessing pool
  decode-only  JPEG decoding alone (tf.data, one thread per worker), with
               the pipeline's inverse DCT (data.jpeg_dct)
  decode+crop  the pipeline's decoding step alone (decode_crop: the crop's
               window decoded and resampled), the same way: what decoding
               costs the pipeline, without shuffling, augmentation or batching

They alternate over a few rounds and each reports its best round, so a
busy shared machine skews them alike. The last line reads
`input img/s: N  vs PIL: Rx  vs decode-only: Dx`.

Without ImageNet, `python -m tools.synthetic_photos DIR` writes an image
folder of ImageNet-like photographs to benchmark on.
"""

from __future__ import annotations

import io
import itertools
import math
import multiprocessing
import os
import time
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image

import input_pipeline
import parallel
from data import preprocessing
from runtime import errors

_IMAGES_PER_ROUND = 512
_ROUNDS = 5


# ---------------------------------------------------------------------------
# The PIL + NumPy baseline.

_worker_images: list[bytes] = []


def _set_worker_images(images: list[bytes]) -> None:
  global _worker_images
  _worker_images = images


def _pil_example(args: tuple[int, int, int, int]) -> np.ndarray:
  """Decode, shorter side to resize_size, central square, random crop, flip."""
  index, resize_size, image_size, seed = args
  rng = np.random.default_rng([seed, index])
  image = Image.open(io.BytesIO(_worker_images[index])).convert('RGB')
  w, h = image.size
  scale = resize_size / min(w, h)
  image = image.resize((max(resize_size, round(w * scale)),
                        max(resize_size, round(h * scale))), Image.BILINEAR)
  w, h = image.size
  left, top = (w - resize_size) // 2, (h - resize_size) // 2
  top += rng.integers(resize_size - image_size + 1)
  left += rng.integers(resize_size - image_size + 1)
  image = image.crop((left, top, left + image_size, top + image_size))
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(image)


def _pil_timer(images: list[bytes], data: ml_collections.ConfigDict,
               batch_size: int, workers: int) -> tuple[Callable[[], float], Callable[[], None]]:
  # spawn: forking a process that runs JAX's threads can deadlock.
  pool = multiprocessing.get_context('spawn').Pool(
      workers, initializer=_set_worker_images, initargs=(images,))

  def run() -> float:
    start = time.perf_counter()
    jobs = [(i, data.resize_size, data.image_size, 0) for i in range(len(images))]
    crops = pool.imap(_pil_example, jobs, chunksize=8)
    for _ in range(len(images) // batch_size):
      # uint8 batches, as the training pipeline's.
      np.stack([next(crops) for _ in range(batch_size)])
    return (len(images) // batch_size) * batch_size / (time.perf_counter() - start)

  run()  # start the workers
  return run, pool.terminate


# ---------------------------------------------------------------------------
# Decoding alone, and the training pipeline.


def _decode_timer(images: list[bytes], workers: int,
                  decode: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[], float]:
  # Consumed as the pipeline is, in NumPy batches, keeping one pixel of each
  # image so that nothing is pruned.
  ds = tf.data.Dataset.from_tensor_slices(images).map(
      lambda x: decode(x)[:1, :1], num_parallel_calls=workers)
  options = tf.data.Options()
  options.autotune.enabled = False  # as in the pipeline (sources.deterministic)
  ds = ds.with_options(options).batch(128)

  def run() -> float:
    start = time.perf_counter()
    for _ in ds.as_numpy_iterator():
      pass
    return len(images) / (time.perf_counter() - start)

  return run


def _pipeline_timer(dataset: input_pipeline.Dataset, batch_size: int,
                    seed: int) -> Callable[[], float]:
  steps = math.ceil(_IMAGES_PER_ROUND / batch_size)
  # Each round begins an epoch, so that (with more than `steps` batches in an
  # epoch) none includes setting up the next epoch's pipeline.
  epoch_starts = itertools.count(0, dataset.steps_per_epoch(batch_size))

  def run() -> float:
    # A new pipeline each round, timed from its first batch on: nothing it
    # decodes while the other loaders run counts, or competes with them.
    batches = dataset.train_iterator(
        batch_size=batch_size, seed=seed, start_step=next(epoch_starts),
        lookahead=0)
    next(batches)
    start = time.perf_counter()
    for _ in range(steps):
      next(batches)
    rate = steps * batch_size / (time.perf_counter() - start)
    batches.close()
    return rate

  return run


def _encoded_training_images(dataset: input_pipeline.Dataset,
                             count: int) -> list[bytes]:
  data, source = dataset.data, dataset.source
  ds = source.read(data.train_split, None).take(count)
  images = list(ds.map(lambda ex: source.load(ex['image'])).as_numpy_iterator())
  if len(images) < count:
    raise errors.InvalidInput(f'The benchmark needs {count} training images; '
                              f'{data.train_split!r} has {len(images)}.')
  return images


def report(config: ml_collections.ConfigDict) -> str:
  """Runs the loaders in alternation; returns the report."""
  data = config.data
  workers = len(os.sched_getaffinity(0))  # the CPUs this process may use
  batch_size = parallel.process_shard().local(config.batch_size)
  dataset = input_pipeline.load(data)
  images = _encoded_training_images(dataset, _IMAGES_PER_ROUND)
  timers = {
      'input': _pipeline_timer(dataset, batch_size, config.seed),
      # DecodeJpeg reads PNGs and GIFs too; JPEGs with the pipeline's DCT.
      'decode-only': _decode_timer(images, workers, lambda x: tf.io.decode_jpeg(
          x, channels=3, dct_method=preprocessing.DCT_METHODS[data.jpeg_dct])),
      'decode+crop': _decode_timer(images, workers, lambda x: preprocessing.decode_crop(
          x, resize_size=data.resize_size, top=0, left=0, size=data.image_size,
          dct=data.jpeg_dct)),
  }
  timers['PIL'], stop_pil = _pil_timer(images, data, batch_size, workers)
  rates = {name: [] for name in timers}
  try:
    for _ in range(_ROUNDS):
      for name, timer in timers.items():
        rates[name].append(timer())
  finally:
    stop_pil()
  best = {k: max(v) for k, v in rates.items()}
  sizes = {Image.open(io.BytesIO(b)).size for b in images[:64]}
  lines = [f'Input pipeline on {dataset.name} ({len(images)} images a round, e.g. '
           f'{sorted(sizes)[0][0]}x{sorted(sizes)[0][1]}), {workers} workers, '
           f'batch {batch_size}, {data.image_size}x{data.image_size} crops, '
           f'best of {_ROUNDS} rounds:']
  lines += [f'  {k:12s} {v:8.1f} img/s   (rounds: '
            f'{", ".join(f"{r:.0f}" for r in rates[k])})' for k, v in best.items()]
  lines.append(f'input img/s: {best["input"]:.0f}  '
               f'vs PIL: {best["input"] / best["PIL"]:.2f}x  '
               f'vs decode-only: {best["input"] / best["decode-only"]:.2f}x')
  return '\n'.join(lines)
