"""Where examples come from: TFDS datasets, image folders, ImageNet as
clusters keep it, and the prepared copy.

Each source is seen through one interface, `Source`: this process's shard
of a split as encoded images and labels. Nothing here downloads: a TFDS
dataset must be prepared, or preparable from a manual directory
(imagenet2012), or be the embedded demo.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import tarfile
from collections.abc import Callable

import jax
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils
from tensorflow_datasets.datasets.siscore import labels as siscore_labels

import parallel
from data import demo_shapes, image_folder, imagenet_folder
from runtime import errors

# Archives that imagenet2012's TFDS builder reads from the manual directory.
_IMAGENET_ARCHIVES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')

# What --mode=prepare records of its copy, and the folders it writes
# data.train_split and data.eval_split to.
PREPARED_INFO = 'prepared.json'
PREPARED_SPLITS = ('train', 'validation')


class DatasetNotFoundError(errors.NotFound):
  """The dataset is neither prepared nor preparable without a download."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset as this process sees it.

  `read(split, shuffle_seed, shard)` gives part `shard` of `split` (default:
  this process's, parallel.process_shard) as
  {'image', 'label': int} examples, in a fixed order without a seed, or
  shuffled as a function of the seed. `load(example['image'])` is the
  encoded image: for TFDS, 'image' already; for image folders, 'image' is a
  path and `load` reads the file, inside the map that decodes it. With
  `views`, every image is already the paper's view at data.resize_size (the
  prepared copy, checked on opening), so crops of it need no resampling.
  `fingerprint(split)` names what the split holds (its files' digest, or
  the TFDS dataset, version and size): statistics and checkpoints record it.
  A TFDS dataset is prepared, where it must be, when first read or sized.
  """
  name: str                            # what it reads: a folder, or the TFDS name
  description: str                     # what kind of source, for the statistics' record
  class_names: tuple[str, ...]         # label k's name
  cache_dir: str                       # where statistics of it are cached
  num_examples: Callable[[str], int]   # over all processes
  fingerprint: Callable[[str], str]
  read: Callable[..., tf.data.Dataset]  # (split, shuffle_seed, shard=None)
  load: Callable[[tf.Tensor], tf.Tensor]
  views: bool = False

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# ---------------------------------------------------------------------------
# TFDS datasets: found, or prepared from what is on disk.


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
    archives = [os.path.join(manual_dir, f) for f in _IMAGENET_ARCHIVES]
    if not all(os.path.isfile(a) for a in archives):
      return False
    for archive in archives:
      if not tarfile.is_tarfile(archive):
        raise errors.InvalidInput(
            f'{archive} is not a tar archive (a download cut short, or another '
            "file under that name); download it again from image-net.org.")
    return True
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

  if builder.name == demo_shapes.NAME:
    logging.info('Generating the demo dataset %s in %s, once (about a minute '
                 'on a laptop CPU).', builder.info.full_name, builder.data_dir_root)
    _prepare(builder, manual_dir=None)
    return builder

  manual_dir = data.manual_dir or _default_manual_dir(builder)
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and _manual_files_present(
      builder, manual_dir):
    _prepare(builder, manual_dir=manual_dir)
    return builder
  raise DatasetNotFoundError(_not_found_message(builder, manual_dir))


# ---------------------------------------------------------------------------
# Sources.


def deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  """In order, and without tf.data's autotuner, which at times ran a map of
  two workers on one CPU for a whole iterator (docs/performance.md)."""
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  return ds.with_options(options)


def _tfds_source(data: ml_collections.ConfigDict) -> Source:
  metadata = _builder(data)  # names and sizes need no prepared copy
  prepared = functools.cache(lambda: get_builder(data))

  def read(split: str, shuffle_seed: int | None,
           shard: parallel.Shard | None = None) -> tf.data.Dataset:
    shard = shard or parallel.process_shard()
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed,
        # A fixed interleaving order keeps seeded epochs repeatable.
        interleave_cycle_length=16, interleave_block_length=1)
    ds = prepared().as_dataset(
        split=tfds.split_for_jax_process(split, process_index=shard.index,
                                         process_count=shard.count),
        shuffle_files=shuffle_seed is not None,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=read_config)
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
    if shuffle_seed is not None:
      # Records are read file by file; the buffer mixes neighbouring files.
      ds = ds.shuffle(data.shuffle_buffer, seed=shuffle_seed)
    return deterministic(ds)

  num_examples = lambda split: prepared().info.splits[split].num_examples
  full_name = metadata.info.full_name
  return Source(
      name=data.name, description=full_name,
      class_names=readable_names(metadata.info.features['label'].names),
      cache_dir=os.fspath(metadata.data_dir), num_examples=num_examples,
      fingerprint=lambda split: f'{full_name} {split} {num_examples(split)}',
      read=read, load=lambda image: image)


def _folder_source(folder: image_folder.ImageFolder, description: str, *,
                   class_names: tuple[str, ...] | None = None,
                   split_names: dict[str, str] | None = None,
                   views: bool = False) -> Source:
  """`split_names` maps config split names to the folder's, where they differ."""
  rename = lambda split: (split_names or {}).get(split, split)

  def read(split: str, shuffle_seed: int | None,
           shard: parallel.Shard | None = None) -> tf.data.Dataset:
    shard = shard or parallel.process_shard()
    return deterministic(folder.read(
        rename(split), process_index=shard.index, process_count=shard.count,
        shuffle_seed=shuffle_seed))

  return Source(
      name=folder.root, description=description,
      class_names=readable_names(class_names or folder.class_names),
      cache_dir=folder.root,
      num_examples=lambda split: folder.num_examples(rename(split)),
      fingerprint=lambda split: folder.fingerprint(rename(split)),
      read=read, load=folder.load, views=views)


def _prepared_info(data: ml_collections.ConfigDict) -> dict:
  """The prepared copy's prepared.json, checked: it exists and holds
  data.resize_size squares, which are then cropped without resampling."""
  if not os.path.isdir(data.prepared_dir):
    raise DatasetNotFoundError(
        f'data.prepared_dir={data.prepared_dir!r} does not exist; write it '
        'with --mode=prepare (same config), or unset it to read the source '
        'directly.')
  try:
    with open(os.path.join(data.prepared_dir, PREPARED_INFO)) as f:
      info = json.load(f)
    prepared_size = info['resize_size']
  except (OSError, ValueError, KeyError) as e:
    raise errors.InvalidInput(
        f'data.prepared_dir={data.prepared_dir!r} has no readable '
        f'{PREPARED_INFO} ({e!r}), so it was not written by this version of '
        '--mode=prepare; delete it and prepare it again.') from e
  if prepared_size != data.resize_size:
    raise errors.InvalidInput(
        f'data.prepared_dir={data.prepared_dir!r} holds {prepared_size}x'
        f'{prepared_size} images, but data.resize_size is {data.resize_size}; '
        f'set --config.data.resize_size={prepared_size}, or prepare another '
        'copy at this size.')
  return info


def original(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`data` without its prepared copy: the source --mode=prepare reads."""
  data = data.copy_and_resolve_references()
  data.prepared_dir = None
  return data


def open_source(data: ml_collections.ConfigDict) -> Source:
  """The configured source: prepared_dir, else image_folder, else
  imagenet_folder, else the TFDS dataset `name`. A folder is listed here
  (once; data/listing.py keeps the listing); a TFDS dataset is only looked
  up, and prepared when first read."""
  if data.prepared_dir:
    info = _prepared_info(data)
    folder = image_folder.scan(data.prepared_dir, empty_classes=True)
    # Copies written before prepared.json named the classes take the source's.
    names = tuple(info.get('class_names') or
                  open_source(original(data)).class_names)
    return _folder_source(
        folder, 'prepared copy', class_names=names, views=True,
        split_names=dict(zip((data.train_split, data.eval_split), PREPARED_SPLITS)))
  if data.image_folder:
    return _folder_source(image_folder.scan(data.image_folder,
                                            val_fraction=data.val_fraction),
                          f'image folder, val_fraction={data.val_fraction}')
  if data.imagenet_folder:
    return _folder_source(imagenet_folder.scan(data.imagenet_folder), 'ImageNet folder')
  return _tfds_source(data)


@functools.cache
def imagenet_names() -> dict[str, str]:
  """ImageNet-1k's synset ids (imagenet2012's label names) -> WordNet names,
  'n01440764' -> 'tench': the first synonym, or all of them where that is
  ambiguous ('maillot').

  Both lists ship with TFDS: imagenet2012's label file, the synsets in label
  order, and the names in that order that its SI-Score builder maps to.
  """
  synsets = imagenet_folder.synsets()
  names = siscore_labels.IMAGENET_LABELS_LIST
  if len(synsets) != len(names):
    raise RuntimeError(
        f"TFDS's imagenet2012 labels ({len(synsets)}) and ImageNet names "
        f'({len(names)}) no longer match; pin tensorflow-datasets as in '
        'requirements.txt.')
  first = [n.split(',')[0] for n in names]
  count = collections.Counter(first)
  return {s: f if count[f] == 1 else n for s, f, n in zip(synsets, first, names)}


def readable_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """Class names, ImageNet synset ids as their WordNet names (imagenet_names)."""
  readable = imagenet_names()
  return tuple(readable.get(name, name) for name in names)
