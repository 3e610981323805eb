"""Host input pipeline: TFDS datasets to NumPy batches with tf.data.

Training batches are randomly cropped and flipped as in the paper; evaluation
batches are centre crops. Both are normalised with the config's per-channel
mean and std. Each process reads its own shard of the split
(`tfds.split_for_jax_process`); `batch_size` here is the per-process batch.

The embedded `demo_shapes` dataset (demo_dataset.py) is generated on first
use. Other datasets must already be prepared, or, for manual datasets such as
imagenet2012, have their archives in the manual directory; this module never
downloads anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import demo_dataset  # noqa: F401  (registers `demo_shapes` with TFDS)

DEMO_NAME = 'demo_shapes'

# Archives that imagenet2012's TFDS builder reads from the manual directory.
_IMAGENET_ARCHIVES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')

Batch = dict[str, np.ndarray]


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is neither prepared nor preparable without a download."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train_examples: int
  num_eval_examples: int


# ---------------------------------------------------------------------------
# Finding and preparing datasets.


def _default_manual_dir(builder: tfds.core.DatasetBuilder) -> str:
  # TFDS's own default, which download_and_prepare uses when given None.
  return os.fspath(builder.data_dir_root / 'downloads' / 'manual')


def _not_found_message(builder: tfds.core.DatasetBuilder,
                       manual_dir: str) -> str:
  lines = [
      f'Dataset {builder.info.full_name!r} is not prepared in '
      f'{builder.data_dir_root} (TFDS looks for it in {builder.data_dir}).']
  if builder.name == 'imagenet2012':
    lines += [
        'Download the ILSVRC-2012 archives from https://image-net.org/ '
        '(registration required) and place',
        *(f'  {os.path.join(manual_dir, f)}' for f in _IMAGENET_ARCHIVES),
        'The first run then prepares the dataset there (this takes hours); '
        'pass --config.data.manual_dir to use another manual '
        'directory, or --config.data.data_dir for another data_dir.']
  elif builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    lines += [
        f'Place its manually downloaded files in {manual_dir}:',
        str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).strip()]
  else:
    name = builder.name
    if builder.builder_config:
      name += f'/{builder.builder_config.name}'
    lines += [
        'This pipeline does not download datasets; prepare it first, e.g. '
        f'`tfds build {name} --data_dir={builder.data_dir_root}`.']
  return '\n'.join(lines)


def _manual_files_present(builder: tfds.core.DatasetBuilder,
                          manual_dir: str) -> bool:
  if builder.name == 'imagenet2012':
    # Both are needed: training and evaluation read different splits.
    return all(os.path.isfile(os.path.join(manual_dir, f))
               for f in _IMAGENET_ARCHIVES)
  return os.path.isdir(manual_dir) and bool(os.listdir(manual_dir))


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None) -> None:
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      # Never look for a prepared copy on GCS: no network is assumed.
      try_download_gcs=False))


def get_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder for `data.name` in `data.data_dir`.

  demo_shapes is generated if needed; a manual dataset whose files are in
  place is prepared from them. Anything else that is not prepared raises
  DatasetNotFoundError saying where the files belong.
  """
  try:
    builder = tfds.builder(data.name, data_dir=data.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f'Unknown dataset {data.name!r}: TFDS has no builder of that name and '
        f'found no prepared copy in {data.data_dir or tfds.core.constants.DATA_DIR}.'
    ) from e
  if builder.is_prepared():
    return builder

  if builder.name == DEMO_NAME:
    _prepare(builder, manual_dir=None)
    return builder

  manual_dir = data.manual_dir or _default_manual_dir(builder)
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and _manual_files_present(
      builder, manual_dir):
    _prepare(builder, manual_dir=manual_dir)
    return builder
  raise DatasetNotFoundError(_not_found_message(builder, manual_dir))


def dataset_info(data: ml_collections.ConfigDict) -> DatasetInfo:
  """Number of classes and of train / eval examples (over all processes)."""
  info = get_builder(data).info
  return DatasetInfo(
      num_classes=info.features['label'].num_classes,
      num_train_examples=info.splits[data.train_split].num_examples,
      num_eval_examples=info.splits[data.eval_split].num_examples)


# ---------------------------------------------------------------------------
# Per-example preprocessing.


def _decode(encoded: tf.Tensor) -> tf.Tensor:
  # decode_image rather than decode_jpeg: ImageNet holds a PNG named .JPEG
  # and grayscale images; channels=3 makes them all RGB.
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
  """Scales `image` so that its shorter side is `size`; returns float32."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  # max() guards against the shorter side rounding below `size`.
  new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
  # Antialiasing matters when shrinking large photos; it is a no-op otherwise.
  return tf.image.resize(image, new_shape, method='bilinear', antialias=True)


def _random_crop_and_flip(image: tf.Tensor, size: int,
                          seed: tf.Tensor) -> tf.Tensor:
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def _normalize(image: tf.Tensor, mean_rgb, std_rgb) -> tf.Tensor:
  mean = tf.constant(mean_rgb, tf.float32)
  std = tf.constant(std_rgb, tf.float32)
  return (tf.cast(image, tf.float32) - mean) / std


# ---------------------------------------------------------------------------
# Datasets.


def _check_sizes(data: ml_collections.ConfigDict) -> None:
  if data.image_size > data.resize_size:
    raise ValueError(
        f'data.image_size={data.image_size} must not exceed '
        f'data.resize_size={data.resize_size}: crops are taken from the '
        'resized image.')


def _read(builder: tfds.core.DatasetBuilder, split: str, *, shuffle: bool,
          seed: int | None = None) -> tf.data.Dataset:
  """This process's shard of `split` as (encoded image, label) examples."""
  read_config = tfds.ReadConfig(
      shuffle_seed=seed,
      # Keep file interleaving in a fixed order so seeded runs repeat.
      interleave_cycle_length=16, interleave_block_length=1)
  ds = builder.as_dataset(
      split=tfds.split_for_jax_process(split),
      shuffle_files=shuffle,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=read_config)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_iterator(data: ml_collections.ConfigDict, *, batch_size: int,
                   seed: int) -> Iterator[Batch]:
  """Endless augmented training batches of this process's shard.

  Yields {'image': float32 (batch_size, S, S, 3), 'label': int32
  (batch_size,)} with S = data.image_size. The same seed (and process layout)
  gives the same batches.
  """
  _check_sizes(data)
  # Different processes read different shards and draw different crops.
  seed = seed * jax.process_count() + jax.process_index()
  ds = _read(get_builder(data), data.train_split, shuffle=True, seed=seed)
  ds = ds.shuffle(data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.repeat()
  # The element's position in the endless stream seeds its augmentation, so
  # the draws do not depend on thread scheduling.
  ds = ds.enumerate()

  def preprocess(index, example):
    element_seed = tf.stack([tf.cast(seed, tf.int64), index])
    image = _decode(example['image'])
    image = _resize_shorter_side(image, data.resize_size)
    image = _random_crop_and_flip(image, data.image_size, element_seed)
    return {'image': _normalize(image, data.mean_rgb, data.std_rgb),
            'label': tf.cast(example['label'], tf.int32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(data.prefetch)
  return iter(tfds.as_numpy(ds))


def _eval_batches_per_process(builder: tfds.core.DatasetBuilder, split: str,
                              batch_size: int) -> int:
  # Shards differ in size by at most one example; padding every process to
  # the largest shard keeps them in step for collective evaluation steps.
  largest = math.ceil(builder.info.splits[split].num_examples /
                      jax.process_count())
  return math.ceil(largest / batch_size)


def eval_iterator(data: ml_collections.ConfigDict, *,
                  batch_size: int) -> Iterator[Batch]:
  """One pass of centre-cropped batches over this process's shard.

  Yields {'image': float32 (batch_size, S, S, 3), 'label': int32
  (batch_size,), 'mask': float32 (batch_size,)}; every example appears exactly
  once with mask 1, and padding (mask 0) fills the last batch. All processes
  yield the same number of batches.
  """
  _check_sizes(data)
  builder = get_builder(data)
  ds = _read(builder, data.eval_split, shuffle=False)

  def preprocess(example):
    image = _decode(example['image'])
    image = _resize_shorter_side(image, data.resize_size)
    image = _centre_crop(image, data.image_size)
    return {'image': _normalize(image, data.mean_rgb, data.std_rgb),
            'label': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  size = data.image_size
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([size, size, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32)}).repeat()
  num_batches = _eval_batches_per_process(builder, data.eval_split, batch_size)
  ds = ds.concatenate(padding).take(num_batches * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(data.prefetch)
  return iter(tfds.as_numpy(ds))
