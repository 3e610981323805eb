"""Batches the trainer consumes: seeded, resumable training and exact evaluation.

Batches carry the crops as uint8 pixels and, per image, the colour `shift`
to add to them (minus the mean, plus the lighting offset) and, in training,
whether to `flip` (reflect) it; the compiled step finishes with
(image + shift) / std, reflected where flip is set (trainer.standardize),
in one fused pass instead of a pass over the pixels on the host. With a
mean image, batches carry each crop's `corner` instead of the mean under it,
and the step subtracts the mean image's window there.

Each process reads a disjoint shard; `batch_size` here is the per-process
batch. The training stream is a pure function of (seed, process, epoch):
epoch e is the shard shuffled with a seed derived from them, and each
example's crop, flip and lighting are drawn from that seed by its position
in the epoch. So a run resumed at step k computes where step k lies and
skips to it without decoding what it skips.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

import parallel
from data import preprocessing, sources, statistics
from runtime import errors

Batch = dict[str, np.ndarray]


def _check_sizes(data: ml_collections.ConfigDict) -> None:
  if data.image_size > data.resize_size:
    raise errors.InvalidInput(
        f'data.image_size={data.image_size} must not exceed '
        f'data.resize_size={data.resize_size}: crops are taken from the '
        'resized image.')


def batches_per_epoch(source: sources.Source, split: str, batch_size: int,
                      shard: parallel.Shard) -> int:
  """Batches each shard yields from `split` per epoch, the same for every
  shard: the smallest decides, and the epoch's last partial batch is dropped
  (a different remainder every epoch). `batch_size` is the shard's part."""
  return source.num_examples(split) // shard.count // batch_size


def _epoch_seed(seed: int, shard: parallel.Shard, epoch: int) -> int:
  """The seed of one shard's epoch: shuffle order and augmentation, the same
  in every process that reads the shard."""
  return int(np.random.SeedSequence([seed, shard.index, epoch]).generate_state(1)[0])


def augmentation(data: ml_collections.ConfigDict,
                 norm: statistics.Normalization, seed: int,
                 count: int) -> dict[str, np.ndarray]:
  """Draws `count` examples' crop corners, flips and lighting offsets, for
  a whole epoch at once, in NumPy: a dozen small random ops per example in
  tf.data cost far more."""
  rng = np.random.default_rng(seed)
  top, left = rng.integers(0, data.resize_size - data.image_size + 1,
                           (2, count), dtype=np.int32)
  flip = rng.random(count) < 0.5
  alpha = rng.normal(0.0, data.pca_sigma, (count, 3))
  lighting = preprocessing.lighting_offset(alpha, norm.eigval, norm.eigvec)
  return {'top': top, 'left': left, 'flip': flip,
          'lighting': np.float32(lighting)}


class _Starter:
  """Starts epochs in the background, on daemon threads, so that a pipeline
  stuck reading (a hung file system) cannot block the process's exit."""

  def __init__(self, start: Callable[[int, int], Iterator[Batch]]):
    self._start = start

  def submit(self, epoch: int, first: int) -> concurrent.futures.Future:
    future = concurrent.futures.Future()

    def run():
      try:
        future.set_result(self._start(epoch, first))
      except BaseException as e:  # noqa: BLE001  (re-raised by result())
        future.set_exception(e)

    thread = threading.Thread(target=run, daemon=True)
    _STARTING.add(thread)
    thread.start()
    return future


# Threads starting an epoch. A daemon thread that returns from TensorFlow
# while the interpreter finalizes aborts the process, so exit waits for
# them a while (an error can end a run while the next epoch is starting).
_STARTING: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


@atexit.register
def _wait_for_starting_epochs(timeout: float = 30.0) -> None:
  deadline = time.monotonic() + timeout
  for thread in list(_STARTING):
    thread.join(max(0.0, deadline - time.monotonic()))


class TrainIterator(Iterator[Batch]):
  """Endless augmented training batches of part `shard` of the training
  split (parallel.input_shard: this process's devices' part).

  Yields {'image': uint8 (batch_size, S, S, 3), 'shift': float32
  (batch_size, 1, 1, 3), 'flip': bool (batch_size,), 'label': int32
  (batch_size,)}, and with a mean image 'corner': int32 (batch_size, 2),
  each crop's top and left in the resize_size square, with S =
  data.image_size (see the module docstring for `shift` and `flip`), from
  step `start_step` on: the stream equals an uninterrupted run's from that
  step, as long as no image before it in its epoch failed to decode.
  `skipped` counts the images that failed to decode so far (with
  data.skip_corrupt).

  Each epoch is a new tf.data pipeline, which takes about a second to trace
  and fill; `lookahead` batches before an epoch ends, a thread starts the
  next one (0: when it is needed), so for those batches a TFDS source holds
  two shuffle buffers. Each epoch's augmentation is drawn up front: about 21
  bytes an example (27 MB for ImageNet on one process).
  """

  def __init__(self, data: ml_collections.ConfigDict, source: sources.Source,
               norm: statistics.Normalization, *, batch_size: int, seed: int,
               shard: parallel.Shard, start_step: int = 0, lookahead: int = 16):
    _check_sizes(data)
    self._data = data
    self._shard = shard
    self._batch_size = batch_size
    self._lookahead = lookahead
    self._seed = seed
    self._source = source
    self._norm = norm
    self.batches_per_epoch = batches_per_epoch(self._source, data.train_split,
                                               batch_size, shard)
    if self.batches_per_epoch < 1:
      raise errors.InvalidInput(
          f'Each shard of the data has fewer than batch_size={batch_size} training '
          'examples; lower the batch size.')
    self.skipped = 0
    self._batches = preprocessing.explain_errors(self._stream(start_step))

  def __next__(self) -> Batch:
    return next(self._batches)

  def close(self) -> None:
    """Stops this epoch's pipeline, and the next one's if it has started."""
    self._batches.close()

  def _stream(self, start_step: int) -> Iterator[Batch]:
    starter = _Starter(self._started)
    epoch, step_in_epoch = divmod(start_step, self.batches_per_epoch)
    upcoming = starter.submit(epoch, step_in_epoch * self._batch_size)
    while True:
      batches, upcoming = upcoming.result(), None
      first = expected = step_in_epoch * self._batch_size
      start_next_at = max(
          self.batches_per_epoch - step_in_epoch - self._lookahead, 0)
      yielded = 0
      for i, batch in enumerate(batches):
        if i == start_next_at:
          upcoming = starter.submit(epoch + 1, 0)
        index = batch.pop('index')
        # Examples missing before this batch's last one failed to decode.
        skipped = int(index[-1]) + 1 - expected - len(index)
        expected = int(index[-1]) + 1
        if skipped:
          self.skipped += skipped
          logging.warning('Skipped %d undecodable training image(s); %d so far.',
                          skipped, self.skipped)
        if len(index) < self._batch_size:
          break  # the epoch's tail, short because images were skipped
        yielded += 1
        yield batch
      if not yielded:
        raise self._no_batch_error(epoch, first)
      if upcoming is None:  # no lookahead, or images were skipped
        upcoming = starter.submit(epoch + 1, 0)
      epoch, step_in_epoch = epoch + 1, 0

  def _no_batch_error(self, epoch: int, first: int) -> errors.InvalidInput:
    data = self._data
    tried = (self._source.num_examples(data.train_split) //
             self._shard.count - first)
    return errors.InvalidInput(
        f'Epoch {epoch} of split {data.train_split!r} of '
        f'{self._source.name!r} gave no batch of {self._batch_size}: '
        f'of the {tried} images this process tried, fewer than '
        f'{self._batch_size} decoded (the rest were skipped, as '
        'data.skip_corrupt=True says). Check the files, or set '
        '--config.data.skip_corrupt=False to stop at the first bad one.')

  def _started(self, epoch: int, first: int) -> Iterator[Batch]:
    """Epoch `epoch`'s batches from example `first`, the first one ready."""
    batches = iter(tfds.as_numpy(self._epoch(epoch, first)))
    try:
      return itertools.chain([next(batches)], batches)
    except StopIteration:
      return iter(())

  def _epoch(self, epoch: int, first: int) -> tf.data.Dataset:
    """Epoch `epoch` from its example `first` on, as batches."""
    data, norm, source = self._data, self._norm, self._source
    epoch_seed = _epoch_seed(self._seed, self._shard, epoch)
    # Skipping happens on encoded records, before any decoding.
    examples = source.read(data.train_split, epoch_seed, self._shard).skip(first)
    # Enough draws for the largest shard; zip stops at this shard's end.
    count = math.ceil(source.num_examples(data.train_split) / self._shard.count)
    draws = {k: v[first:] for k, v in
             augmentation(data, norm, epoch_seed, count).items()}
    ds = tf.data.Dataset.zip(
        examples.enumerate(start=first),
        tf.data.Dataset.from_tensor_slices(draws))
    size = data.image_size
    mean_image = norm.mean_image is not None
    # Negated (and shaped) once here, not per example. A mean image's window
    # under each crop is taken in the compiled step (trainer.standardize)
    # from the crop's corner: a float32 window per example cost the pipeline
    # a third of its rate.
    minus_mean = norm.minus_channel_mean[None, None]

    def preprocess(indexed, draw):
      index, example = indexed
      # The random crop of the resize_size square; only its window is decoded.
      image = preprocessing.decode_crop(
          source.load(example['image']), resize_size=data.resize_size,
          top=draw['top'], left=draw['left'], size=size, dct=data.jpeg_dct,
          resample=not source.views)
      # Reflecting is left to the compiled step, where it fuses with
      # normalisation (trainer.standardize).
      batch = {'image': image, 'shift': minus_mean + draw['lighting'],
               'flip': draw['flip'], 'label': tf.cast(example['label'], tf.int32),
               'index': index}
      if mean_image:
        batch['corner'] = tf.stack([draw['top'], draw['left']])
      return batch

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = preprocessing.skip_undecodable(ds, data)
    # A short last batch is only seen when images were skipped; _stream
    # counts it and drops it.
    ds = ds.batch(self._batch_size)
    ds = ds.take(self.batches_per_epoch - first // self._batch_size)
    return ds.prefetch(data.prefetch)


def _eval_batches_per_shard(num_examples: int, batch_size: int, count: int) -> int:
  # Shards differ in size by at most one example; padding every process to
  # the largest shard keeps them in step for collective evaluation steps.
  largest = math.ceil(num_examples / count)
  return math.ceil(largest / batch_size)


def _eval_view(data: ml_collections.ConfigDict, norm: statistics.Normalization,
               *, ten_crop: bool, resample: bool
               ) -> tuple[Callable[[tf.Tensor], Batch], Batch]:
  """Encoded image -> what evaluation sees of it (section 4.1): 'image', its
  centre crop, or the ten crops' five patches (the compiled step adds their
  reflections), uint8; 'shift', minus the per-channel mean; and with a mean
  image, the crops' 'corner', under which the compiled step subtracts it.
  Also returns the keys that are the same for every image."""
  size = data.image_size
  corners = preprocessing.eval_corners(data.resize_size, size, ten_crop)
  constant = {'shift': tf.constant(
      norm.minus_channel_mean.reshape([1] * corners.ndim + [1, 3]))}
  if norm.mean_image is not None:
    constant['corner'] = tf.constant(corners)

  def view(encoded: tf.Tensor) -> Batch:
    # The whole square, then the crops: exactly the paper's view, where a
    # window decoded alone can fall up to half a source pixel off.
    image = preprocessing.decode_central_square(
        encoded, data.resize_size, dct=data.jpeg_dct, resample=resample)
    return {'image': preprocessing.crops(image, corners, size), **constant}

  return view, constant


def eval_batches(data: ml_collections.ConfigDict, source: sources.Source,
                 norm: statistics.Normalization, *, batch_size: int,
                 shard: parallel.Shard, ten_crop: bool = False) -> Iterator[Batch]:
  """One pass over part `shard` of the evaluation split.

  Yields {'image': uint8 (batch_size, S, S, 3), or (batch_size, 5, S, S, 3),
  the ten crops' five unreflected patches, with `ten_crop`; 'shift':
  float32, minus the per-channel mean, broadcastable to the images; with a
  mean image 'corner': int32 (batch_size, 2) or (batch_size, 5, 2), the
  crops' corners in the paper's view; 'label': int32 (batch_size,); 'mask':
  float32 (batch_size,)};
  every example appears exactly once with mask 1, and padding (mask 0)
  fills the last batches. All processes yield the same number of batches.
  An image that fails to decode (with data.skip_corrupt) is left out, which
  the mask's sum shows.
  """
  _check_sizes(data)
  view, constant = _eval_view(data, norm, ten_crop=ten_crop,
                              resample=not source.views)

  def preprocess(example):
    return {**view(source.load(example['image'])),
            'label': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = source.read(data.eval_split, None, shard)
  ds = preprocessing.skip_undecodable(
      ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE), data)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(ds.element_spec['image'].shape, tf.uint8), **constant,
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32)}).repeat()
  num_batches = _eval_batches_per_shard(
      source.num_examples(data.eval_split), batch_size, shard.count)
  ds = ds.concatenate(padding).take(num_batches * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(data.prefetch)
  return preprocessing.explain_errors(iter(tfds.as_numpy(ds)))


def indexed_views(data: ml_collections.ConfigDict, norm: statistics.Normalization,
                  examples: tf.data.Dataset,
                  load: Callable[[tf.Tensor], tf.Tensor], *, batch_size: int,
                  ten_crop: bool = False, resample: bool = True) -> Iterator[Batch]:
  """Evaluation's view of {'index': int64, 'image'} examples, in order.

  `load` turns 'image' into the encoded image (tf.io.read_file for paths).
  Yields batches of `batch_size` with the examples' keys and 'image',
  'shift' (and 'corner') as eval_batches makes them, the last padded with
  index -1. An example whose image cannot be read or decoded is left out,
  whatever data.skip_corrupt says: the indices missing from the batches
  name them.
  """
  _check_sizes(data)
  view, _ = _eval_view(data, norm, ten_crop=ten_crop, resample=resample)
  ds = examples.map(lambda ex: {**ex, **view(load(ex['image']))},
                    num_parallel_calls=tf.data.AUTOTUNE)
  ds = sources.deterministic(ds.ignore_errors()).batch(batch_size)
  for batch in tfds.as_numpy(ds.prefetch(data.prefetch)):
    missing = batch_size - len(batch['index'])
    if missing:
      batch = {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
               for k, v in batch.items()}
      batch['index'][-missing:] = -1
    yield batch
