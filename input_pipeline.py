"""Host input pipeline: datasets to NumPy batches with tf.data.

Sources: any TFDS image-classification dataset (`data.name`, e.g.
imagenet2012 from its manually downloaded archives, or the embedded
`demo_shapes`), a folder of images with one sub-folder per class
(`data.image_folder`, image_folder.py), or the 256x256 copy that
`--mode=prepare` writes (`data.prepared_dir`, prepare_data.py).

Preprocessing is the paper's: the shorter side scaled to `resize_size` and
the central square kept, the mean subtracted (per channel, or the per-pixel
mean image of a stats file), then for training a random `image_size` crop,
a horizontal reflection and PCA lighting, and for evaluation the centre crop
or the ten crops (corners, centre and their reflections).

Batches carry the crops as uint8 pixels and, per image, the colour `shift`
to add to them (minus the mean, plus the lighting offset) and, in training,
whether to `flip` (reflect) it; the compiled step finishes with
(image + shift) / std, reflected where flip is set (trainer.standardize).
On the host, float arithmetic over every pixel slowed the pipeline by about
a sixth and quadrupled the bytes sent to the devices, and reflecting cost
another pass; on the device all of it fuses into one.

Each process reads a disjoint shard; `batch_size` here is the per-process
batch. The training stream is a pure function of (seed, process, epoch):
epoch e is the shard shuffled with a seed derived from them, and each
example's crop, flip and lighting are drawn from that seed by its position
in the epoch. So a run resumed at step k computes where step k lies
and skips to it without decoding what it skips.

Nothing here downloads: TFDS datasets must be prepared, or be preparable from
a manual directory (imagenet2012), or be the embedded demo.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

import demo_dataset  # noqa: F401  (registers `demo_shapes` with TFDS)
import image_folder

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


# The datasets this process has already met the other processes for.
_COORDINATED: set[tuple[str | None, ...]] = set()


def get_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder for `data.name` in `data.data_dir`.

  demo_shapes is generated if needed; a manual dataset whose files are in
  place is prepared from them. Anything else that is not prepared raises
  DatasetNotFoundError saying where the files belong.

  With several processes, the first call on each (all processes make it)
  lets process 0 prepare the dataset before the others look: processes
  sharing a data_dir would otherwise race to write it. A process whose
  data_dir is its own prepares it after that.
  """
  key = (data.name, data.data_dir, data.manual_dir)
  if jax.process_count() == 1 or key in _COORDINATED:
    return _prepared_builder(data)
  if jax.process_index() == 0:
    _prepared_builder(data)
  multihost_utils.sync_global_devices(f'prepare {key}')
  _COORDINATED.add(key)
  return _prepared_builder(data)


def _builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `data.name`, prepared or not."""
  try:
    return tfds.builder(data.name, data_dir=data.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f'Unknown dataset {data.name!r}: TFDS has no builder of that name and '
        f'found no prepared copy in {data.data_dir or tfds.core.constants.DATA_DIR}.'
    ) from e


def _prepared_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  builder = _builder(data)
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


# ---------------------------------------------------------------------------
# Sources: TFDS datasets and image folders behind one interface.


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset as this process sees it.

  `read(split, shuffle_seed)` gives this process's shard of `split` as
  {'image', 'label': int} examples, in a fixed order without a seed, or
  shuffled as a function of the seed. `load(example['image'])` is the
  encoded image: for TFDS, 'image' already; for image folders, 'image' is a
  path and `load` reads the file, inside the map that decodes it. With
  `views`, every image is already the paper's view at data.resize_size (the
  prepared copy, checked on opening), so crops of it need no resampling.
  """
  num_classes: int
  num_examples: Callable[[str], int]   # over all processes
  read: Callable[[str, int | None], tf.data.Dataset]
  load: Callable[[tf.Tensor], tf.Tensor]
  views: bool = False


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  """In order, and without tf.data's autotuner.

  The autotuner at times ran a map of two workers on one CPU for a whole
  iterator: rounds of --mode=benchmark_input at 0.6x, demo epochs waiting
  70% of the time for data. Without it, maps run one worker per CPU.
  """
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  return ds.with_options(options)


def _tfds_source(data: ml_collections.ConfigDict) -> Source:
  builder = get_builder(data)

  def read(split: str, shuffle_seed: int | None) -> tf.data.Dataset:
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed,
        # A fixed interleaving order keeps seeded epochs repeatable.
        interleave_cycle_length=16, interleave_block_length=1)
    ds = builder.as_dataset(
        split=tfds.split_for_jax_process(split),
        shuffle_files=shuffle_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=read_config)
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
    if shuffle_seed is not None:
      # Records are read file by file; the buffer mixes neighbouring files.
      ds = ds.shuffle(data.shuffle_buffer, seed=shuffle_seed)
    return _deterministic(ds)

  return Source(num_classes=builder.info.features['label'].num_classes,
                num_examples=lambda split: builder.info.splits[split].num_examples,
                read=read, load=lambda image: image)


def _folder_source(root: str, val_fraction: float,
                   split_names: dict[str, str] | None = None,
                   views: bool = False) -> Source:
  """`split_names` maps config split names to the folder's, where they differ."""
  folder = image_folder.scan(root, val_fraction=val_fraction)
  rename = lambda split: (split_names or {}).get(split, split)

  def read(split: str, shuffle_seed: int | None) -> tf.data.Dataset:
    return _deterministic(folder.read(
        rename(split), process_index=jax.process_index(),
        process_count=jax.process_count(), shuffle_seed=shuffle_seed))

  return Source(num_classes=len(folder.class_names),
                num_examples=lambda split: folder.num_examples(rename(split)),
                read=read, load=tf.io.read_file, views=views)


PREPARED_INFO = 'prepared.json'  # what --mode=prepare records of its copy


def _check_prepared(data: ml_collections.ConfigDict) -> None:
  """The prepared copy exists and holds data.resize_size squares, which
  are then cropped without resampling."""
  if not os.path.isdir(data.prepared_dir):
    raise DatasetNotFoundError(
        f'data.prepared_dir={data.prepared_dir!r} does not exist; write it '
        'with --mode=prepare (same config), or unset it to read the source '
        'directly.')
  try:
    with open(os.path.join(data.prepared_dir, PREPARED_INFO)) as f:
      prepared_size = json.load(f)['resize_size']
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(
        f'data.prepared_dir={data.prepared_dir!r} has no readable '
        f'{PREPARED_INFO} ({e!r}), so it was not written by this version of '
        '--mode=prepare; delete it and prepare it again.') from e
  if prepared_size != data.resize_size:
    raise ValueError(
        f'data.prepared_dir={data.prepared_dir!r} holds {prepared_size}x'
        f'{prepared_size} images, but data.resize_size is {data.resize_size}; '
        f'set --config.data.resize_size={prepared_size}, or prepare another '
        'copy at this size.')


def get_source(data: ml_collections.ConfigDict) -> Source:
  """The configured source: prepared_dir, else image_folder, else TFDS."""
  if data.prepared_dir:
    _check_prepared(data)
    # prepare_data.py writes train_split to train/ and eval_split to validation/.
    return _folder_source(data.prepared_dir, 0.0, {
        data.train_split: 'train', data.eval_split: 'validation'}, views=True)
  if data.image_folder:
    return _folder_source(data.image_folder, data.val_fraction)
  return _tfds_source(data)


def dataset_info(data: ml_collections.ConfigDict) -> DatasetInfo:
  """Number of classes and of train / eval examples (over all processes)."""
  source = get_source(data)
  return DatasetInfo(
      num_classes=source.num_classes,
      num_train_examples=source.num_examples(data.train_split),
      num_eval_examples=source.num_examples(data.eval_split))


def with_dataset_classes(config: ml_collections.ConfigDict,
                         classes: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.num_classes, where 0, is the dataset's.

  `classes` is the dataset's count where the caller has read it already;
  otherwise it comes from the dataset's metadata (a TFDS builder's features,
  an image folder's class folders): nothing is prepared or decoded, so the
  modes that only build the network have it too. A nonzero
  model.num_classes that differs from the dataset's is refused, naming the
  flag to change.
  """
  data = config.data
  if classes is None:
    classes = (get_source(data).num_classes
               if data.prepared_dir or data.image_folder
               else _builder(data).info.features['label'].num_classes)
  config = config.copy_and_resolve_references()
  if config.model.num_classes == 0:
    config.model.num_classes = classes
  elif config.model.num_classes != classes:
    dataset = data.prepared_dir or data.image_folder or data.name
    raise ValueError(
        f'Dataset {dataset!r} has {classes} classes but the model has '
        f'{config.model.num_classes}; set --config.model.num_classes={classes} '
        "or 0 (the dataset's).")
  return config


# ---------------------------------------------------------------------------
# Normalisation statistics.

STATS_KEYS = ('mean_image', 'mean_rgb', 'std_rgb', 'eigval', 'eigvec',
              'num_images')


def load_stats(path: str) -> dict[str, np.ndarray]:
  """Reads a file written by `--mode=stats` (data_stats.py)."""
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


@dataclasses.dataclass(frozen=True)
class Normalization:
  """The host's part of normalisation: the mean, and PCA lighting's basis.

  The mean is in 0-255 pixels, the eigenvalues and eigenvectors in [0, 1]
  units; dividing by data.std_rgb happens in the compiled step.
  """
  mean: np.ndarray     # (3,) or the mean image (resize_size, resize_size, 3)
  eigval: np.ndarray   # (3,)
  eigvec: np.ndarray   # (3, 3), eigenvectors as columns


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


# ---------------------------------------------------------------------------
# Per-example preprocessing.


_JPEG_RATIOS = (1, 2, 4, 8)  # the downscalings libjpeg does while decoding


def _window(shape: tf.Tensor, *, resize_size: int, top: tf.Tensor,
            left: tf.Tensor, size: int) -> tuple[tf.Tensor, ...]:
  """Where the paper's (size, size) window at (top, left) lies in the image.

  `shape` is the image's (height, width). Returns the index in _JPEG_RATIOS
  of the largest shrink that keeps the window at least `size`, and, in the
  image shrunk by it, the window's corner and side and the image's (height,
  width), rounded up as libjpeg does: float32, whole numbers. Few ops, as
  each op costs tf.data about a microsecond an example.
  """
  shape = tf.cast(shape, tf.float32)
  square = tf.reduce_min(shape)
  scale = square / resize_size  # image pixels per pixel of the paper's view
  ratio_index = tf.reduce_sum(
      tf.cast(scale >= tf.constant(_JPEG_RATIOS[1:], tf.float32), tf.int32))
  ratio = tf.gather(tf.constant(_JPEG_RATIOS, tf.float32), ratio_index)
  # Rounded, not truncated: the window falls within half a decoded pixel.
  corner = tf.round((tf.floor((shape - square) / 2) + scale * tf.cast(
      tf.stack([top, left]), tf.float32)) / ratio)
  shrunk = tf.math.ceil(shape / ratio)
  side = tf.maximum(tf.minimum(tf.round(size * scale / ratio),
                               tf.reduce_min(shrunk - corner)), 1)
  return ratio_index, corner, side, shrunk


Region = tuple[tf.Tensor, tf.Tensor, tf.Tensor]  # pixels, window corner, side


def _jpeg_region(encoded: tf.Tensor, **where) -> Region:
  """Decodes a JPEG around the window only, shrunk by libjpeg where it can."""
  ratio_index, corner, side, shrunk = _window(
      tf.io.extract_jpeg_shape(encoded)[:2], **where)
  # libjpeg-turbo blends each pixel's chroma with its neighbour's; at a
  # cropped edge it has no neighbour. One pixel more on each side brings
  # them in, so the window's pixels are those of a full decode. Its left
  # edge goes down to a multiple of 16, the widest block: libjpeg decodes
  # whole blocks anyway, and TensorFlow then need not shift every row.
  low = tf.floor(tf.maximum(corner - 1, 0) / [1, 16]) * [1, 16]
  high = tf.minimum(corner + side + 1, shrunk)
  region = tf.cast(tf.concat([low, high - low], 0), tf.int32)
  pixels = tf.switch_case(ratio_index, [
      lambda r=r: tf.io.decode_and_crop_jpeg(encoded, region, channels=3,
                                             ratio=r)
      for r in _JPEG_RATIOS])
  return pixels, tf.cast(corner - low, tf.int32), tf.cast(side, tf.int32)


def _other_region(encoded: tf.Tensor, *, resize_size: int, top: tf.Tensor,
                  left: tf.Tensor, size: int) -> Region:
  """A PNG, GIF or BMP (rare: ImageNet has one): the paper's view itself,
  scaled whole with antialiasing (its shorter side may be many times
  resize_size), its window exactly `size`."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scaled = tf.maximum(tf.cast(tf.round(
      shape * resize_size / tf.reduce_min(shape)), tf.int32), resize_size)
  view = tf.cast(tf.round(tf.image.resize(image, scaled, antialias=True)),
                 tf.uint8)
  corner = (scaled - resize_size) // 2 + tf.stack([top, left])
  return view, corner, tf.constant(size)


def bilinear(image: tf.Tensor, size: int) -> tf.Tensor:
  """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear (half-pixel centres).

  In 8-bit fixed point (QuantizedResizeBilinear, weights in 1/128ths): one
  op, 30% faster than resizing in float, rounding and casting back. Pixels
  are 0.36 levels off float bilinear on average (rounding to uint8 alone:
  0.25), under 2.5 at most, without bias.
  """
  resized = tf.raw_ops.QuantizedResizeBilinear(
      images=tf.bitcast(image, tf.quint8)[tf.newaxis], size=[size, size],
      min=0.0, max=255.0, half_pixel_centers=True)[0]
  return tf.bitcast(resized, tf.uint8)[0]


def decode_crop(encoded: tf.Tensor, *, resize_size: int, top: tf.Tensor,
                left: tf.Tensor, size: int, resample: bool = True) -> tf.Tensor:
  """A window of the image as the paper stored it, as uint8 pixels.

  The paper's view of an image is its central square scaled to
  (resize_size, resize_size); this returns that view's (size, size) window
  at (top, left). It maps the window back onto the encoded image and decodes
  only that, letting libjpeg shrink by 2, 4 or 8 while decoding where the
  window is that much larger than `size`; bilinear resampling does the rest.
  Up to half a decoded pixel in where the window falls, this is scaling
  then cropping, at a fraction of the cost. Non-JPEG files (PNGs named
  .JPEG, ...) are decoded and scaled whole; grayscale and CMYK files come
  out RGB. `resample=False` is for images known to be the paper's view
  already (the prepared copy), whose windows are exactly `size`.
  """
  where = dict(resize_size=resize_size, top=top, left=left, size=size)
  # Only decoding is branched on: in tf.data, the same ops ran slower
  # inside a branch than outside one.
  pixels, corner, side = tf.cond(
      tf.io.is_jpeg(encoded), lambda: _jpeg_region(encoded, **where),
      lambda: _other_region(encoded, **where))
  image = tf.slice(pixels, tf.concat([corner, [0]], 0), [side, side, 3])
  # The window is under twice `size`, where bilinear needs no antialiasing;
  # an exact fit comes out unchanged. Decided per dataset, not per image:
  # a tf.cond on the window's side cost the pipeline 2%.
  if resample:
    return bilinear(image, size)
  return tf.ensure_shape(image, [size, size, 3])


def decode_central_square(encoded: tf.Tensor, size: int,
                          resample: bool = True) -> tf.Tensor:
  """The paper's view: shorter side scaled to `size`, the central square."""
  return decode_crop(encoded, resize_size=size, top=0, left=0, size=size,
                     resample=resample)


def lighting_offset(alpha: np.ndarray, eigval: np.ndarray,
                    eigvec: np.ndarray) -> np.ndarray:
  """The paper's PCA lighting, sum_i alpha_i l_i p_i, in 0-255 pixel units.

  `alpha` is (..., 3); eigval and eigvec describe pixels scaled to [0, 1],
  hence the 255.
  """
  return 255.0 * (alpha * eigval) @ np.transpose(eigvec)


def augmentation(data: ml_collections.ConfigDict, norm: Normalization,
                 seed: int, count: int) -> dict[str, np.ndarray]:
  """Draws `count` examples' crop corners, flips and lighting offsets.

  Drawn for a whole epoch at once: per example in tf.data, the dozen small
  random ops cost about a tenth of the decoding.
  """
  rng = np.random.default_rng(seed)
  top, left = rng.integers(0, data.resize_size - data.image_size + 1,
                           (2, count), dtype=np.int32)
  flip = rng.random(count) < 0.5
  alpha = rng.normal(0.0, data.pca_sigma, (count, 3))
  lighting = lighting_offset(alpha, norm.eigval, norm.eigvec)
  return {'top': top, 'left': left, 'flip': flip,
          'lighting': np.float32(lighting)}


def ten_crops(image: tf.Tensor, size: int) -> tf.Tensor:
  """The paper's test patches: 4 corners, centre, then their reflections.

  Returns (10, size, size, C) from a square image.
  """
  far = tf.shape(image)[0] - size
  mid = far // 2
  corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  crops = tf.stack([image[t:t + size, l:l + size] for t, l in corners])
  return tf.concat([crops, crops[:, :, ::-1]], axis=0)


def _centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  offset = (tf.shape(image)[0] - size) // 2
  return image[offset:offset + size, offset:offset + size]


def _check_sizes(data: ml_collections.ConfigDict) -> None:
  if data.image_size > data.resize_size:
    raise ValueError(
        f'data.image_size={data.image_size} must not exceed '
        f'data.resize_size={data.resize_size}: crops are taken from the '
        'resized image.')


def _skip_or_explain(ds: tf.data.Dataset,
                     data: ml_collections.ConfigDict) -> tf.data.Dataset:
  # Failed decodes drop the example; callers count the gaps.
  return ds.ignore_errors() if data.skip_corrupt else ds


def _explain_errors(batches: Iterator[Batch]) -> Iterator[Batch]:
  try:
    yield from batches
  except tf.errors.InvalidArgumentError as e:
    raise ValueError(
        f'An image failed to decode: {e.message.splitlines()[0]}. Set '
        '--config.data.skip_corrupt=True to skip (and count) such images.'
    ) from e


# ---------------------------------------------------------------------------
# Training.


def steps_per_epoch(data: ml_collections.ConfigDict, batch_size: int) -> int:
  """Batches each process draws per epoch, the same on every process.

  `batch_size` is per process; the smallest shard decides, and the epoch's
  last partial batch is dropped (a different remainder every epoch).
  """
  return _steps_per_epoch(get_source(data), data.train_split, batch_size)


def _steps_per_epoch(source: Source, split: str, batch_size: int) -> int:
  return source.num_examples(split) // jax.process_count() // batch_size


def _epoch_seed(seed: int, epoch: int) -> int:
  """The seed of one process's epoch: shuffle order and augmentation."""
  return int(np.random.SeedSequence(
      [seed, jax.process_index(), epoch]).generate_state(1)[0])


class TrainIterator(Iterator[Batch]):
  """Endless augmented training batches of this process's shard.

  Yields {'image': uint8 (batch_size, S, S, 3), 'shift': float32
  (batch_size, 1, 1, 3), or (batch_size, S, S, 3) with a mean image,
  'flip': bool (batch_size,), 'label': int32 (batch_size,)} with S =
  data.image_size (see the module docstring for `shift` and `flip`).
  `skipped` counts the images that failed to decode so far (with
  data.skip_corrupt).

  Each epoch is a new tf.data pipeline, which takes about a second to trace
  and fill; `lookahead` batches before an epoch ends, a thread starts the
  next one (0: when it is needed), so for those batches a TFDS source holds
  two shuffle buffers. Each epoch's augmentation is drawn up front: about 21
  bytes an example (27 MB for ImageNet on one process).
  """

  def __init__(self, data: ml_collections.ConfigDict, *, batch_size: int,
               seed: int, start_step: int = 0, lookahead: int = 16):
    _check_sizes(data)
    self._data = data
    self._batch_size = batch_size
    self._lookahead = lookahead
    self._seed = seed
    self._source = get_source(data)
    self._norm = normalization(data)
    self._steps_per_epoch = _steps_per_epoch(self._source, data.train_split,
                                             batch_size)
    if self._steps_per_epoch < 1:
      raise ValueError(
          f'Each process has fewer than batch_size={batch_size} training '
          'examples; lower the batch size.')
    self.skipped = 0
    self._batches = _explain_errors(self._stream(start_step))

  def __next__(self) -> Batch:
    return next(self._batches)

  def close(self) -> None:
    """Stops this epoch's pipeline, and the next one's if it has started."""
    self._batches.close()

  def _stream(self, start_step: int) -> Iterator[Batch]:
    epoch, step_in_epoch = divmod(start_step, self._steps_per_epoch)
    with concurrent.futures.ThreadPoolExecutor(1) as starter:
      upcoming = starter.submit(self._started, epoch,
                                step_in_epoch * self._batch_size)
      while True:
        batches, upcoming = upcoming.result(), None
        expected = step_in_epoch * self._batch_size
        start_next_at = max(
            self._steps_per_epoch - step_in_epoch - self._lookahead, 0)
        for i, batch in enumerate(batches):
          if i == start_next_at:
            upcoming = starter.submit(self._started, epoch + 1, 0)
          index = batch.pop('index')
          # Examples missing before this batch's last one failed to decode.
          skipped = int(index[-1]) + 1 - expected - len(index)
          if skipped:
            self.skipped += skipped
            logging.warning('Skipped %d undecodable training image(s); %d so far.',
                            skipped, self.skipped)
          expected = int(index[-1]) + 1
          yield batch
        if upcoming is None:  # no lookahead, or images were skipped
          upcoming = starter.submit(self._started, epoch + 1, 0)
        epoch, step_in_epoch = epoch + 1, 0

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
    epoch_seed = _epoch_seed(self._seed, epoch)
    # Skipping happens on encoded records, before any decoding.
    examples = source.read(data.train_split, epoch_seed).skip(first)
    # Enough draws for the largest shard; zip stops at this shard's end.
    count = math.ceil(source.num_examples(data.train_split) /
                      jax.process_count())
    draws = {k: v[first:] for k, v in
             augmentation(data, norm, epoch_seed, count).items()}
    ds = tf.data.Dataset.zip(
        examples.enumerate(start=first),
        tf.data.Dataset.from_tensor_slices(draws))
    size = data.image_size
    # Negated (and shaped) once here, not per example.
    minus_mean = -(norm.mean if norm.mean.ndim == 3 else norm.mean[None, None])

    def preprocess(indexed, draw):
      index, example = indexed
      # The random crop of the resize_size square; only its window is decoded.
      image = decode_crop(source.load(example['image']),
                          resize_size=data.resize_size, top=draw['top'],
                          left=draw['left'], size=size,
                          resample=not source.views)
      shift = minus_mean
      if norm.mean.ndim == 3:  # the mean image's window under the crop
        shift = tf.slice(minus_mean, [draw['top'], draw['left'], 0],
                         [size, size, 3])
      # Reflecting is left to the compiled step (trainer.standardize), where
      # it fuses with normalisation; here it was a pass over the pixels.
      return {'image': image, 'shift': shift + draw['lighting'],
              'flip': draw['flip'], 'label': tf.cast(example['label'], tf.int32),
              'index': index}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _skip_or_explain(ds, data)
    ds = ds.batch(self._batch_size, drop_remainder=True)
    ds = ds.take(self._steps_per_epoch - first // self._batch_size)
    return ds.prefetch(data.prefetch)


def train_iterator(data: ml_collections.ConfigDict, *, batch_size: int,
                   seed: int, start_step: int = 0,
                   lookahead: int = 16) -> TrainIterator:
  """Training batches from step `start_step` on (see TrainIterator).

  The stream from `start_step` equals an uninterrupted run's from that step,
  as long as no image before it in its epoch failed to decode.
  """
  return TrainIterator(data, batch_size=batch_size, seed=seed,
                       start_step=start_step, lookahead=lookahead)


# ---------------------------------------------------------------------------
# Evaluation.


def _eval_batches_per_process(num_examples: int, batch_size: int) -> int:
  # Shards differ in size by at most one example; padding every process to
  # the largest shard keeps them in step for collective evaluation steps.
  largest = math.ceil(num_examples / jax.process_count())
  return math.ceil(largest / batch_size)


def _eval_shift(norm: Normalization, size: int, ten_crop: bool) -> tf.Tensor:
  """Minus the mean under the evaluation crops, the same for every image."""
  shift = -tf.constant(norm.mean)
  if norm.mean.ndim == 1:
    return tf.reshape(shift, [1, 1, 1, 3] if ten_crop else [1, 1, 3])
  return ten_crops(shift, size) if ten_crop else _centre_crop(shift, size)


def eval_iterator(data: ml_collections.ConfigDict, *, batch_size: int,
                  ten_crop: bool = False) -> Iterator[Batch]:
  """One pass over this process's shard of the evaluation split.

  Yields {'image': uint8 (batch_size, S, S, 3), or (batch_size, 10, S, S, 3)
  with `ten_crop`, 'shift': float32, minus the mean, broadcastable to the
  images, 'label': int32 (batch_size,), 'mask': float32 (batch_size,)};
  every example appears exactly once with mask 1, and padding (mask 0)
  fills the last batches. All processes yield the same number of batches.
  An image that fails to decode (with data.skip_corrupt) is left out, which
  the mask's sum shows.
  """
  _check_sizes(data)
  source = get_source(data)
  size = data.image_size
  shift = _eval_shift(normalization(data), size, ten_crop)

  def preprocess(example):
    # The whole square, then the crops: exactly the paper's view, where a
    # window decoded alone can fall up to half a source pixel off.
    image = decode_central_square(source.load(example['image']),
                                  data.resize_size,
                                  resample=not source.views)
    image = ten_crops(image, size) if ten_crop else _centre_crop(image, size)
    return {'image': image, 'shift': shift,
            'label': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = source.read(data.eval_split, None)
  ds = _skip_or_explain(
      ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE), data)
  shape = [10, size, size, 3] if ten_crop else [size, size, 3]
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(shape, tf.uint8),
      'shift': tf.zeros_like(shift),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32)}).repeat()
  num_batches = _eval_batches_per_process(
      source.num_examples(data.eval_split), batch_size)
  ds = ds.concatenate(padding).take(num_batches * batch_size)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(data.prefetch)
  return _explain_errors(iter(tfds.as_numpy(ds)))
