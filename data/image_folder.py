"""A folder of images, one sub-folder per class, as a dataset source.

Two layouts are accepted:

  ROOT/train/<class>/*.jpg  and  ROOT/validation/<class>/*.jpg  (or val/)
  ROOT/<class>/*.jpg        with `val_fraction` of each class held out

Classes are the sorted sub-folder names (over both splits), so label k is the
k-th name; hidden folders (.name) are not classes. Any format
tf.io.decode_image reads works (JPEG, PNG, GIF, BMP, grayscale, CMYK),
whatever the file's extension says; files are read as raw bytes and decoded
by the input pipeline. The listing of the files is kept beside them
(data/listing.py), so a second start does not list them again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from data import listing
from runtime import errors

_EXTENSIONS = listing.EXTENSIONS
_VALIDATION_NAMES = ('validation', 'val')


@dataclasses.dataclass(frozen=True)
class Split:
  """A split's files: paths relative to the folder's root (UTF-8 bytes),
  labels and sizes in bytes, in the order of the sorted listing."""
  paths: np.ndarray
  labels: np.ndarray
  sizes: np.ndarray

  @functools.cached_property
  def fingerprint(self) -> str:
    """A digest of the files' paths, sizes and labels: what the split holds."""
    digest = hashlib.sha256(b'\n'.join(self.paths.tolist()))
    digest.update(self.sizes.astype('<i8').tobytes())
    digest.update(self.labels.astype('<i8').tobytes())
    return digest.hexdigest()[:16]


def make_split(files: Sequence[tuple[str, int, int]]) -> Split:
  """A Split of (path relative to the root, size, label) triples."""
  return Split(np.array([f[0].encode() for f in files], dtype=bytes),
               np.array([f[2] for f in files], np.int64),
               np.array([f[1] for f in files], np.int64))


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """The files and labels of every split of a folder of images."""
  root: str
  class_names: tuple[str, ...]
  splits: dict[str, Split]

  def num_examples(self, split: str) -> int:
    return len(self._split(split).paths)

  def fingerprint(self, split: str) -> str:
    return self._split(split).fingerprint

  def _split(self, split: str) -> Split:
    if split not in self.splits:
      raise errors.InvalidInput(f'The image folder has splits {sorted(self.splits)}, '
                                f'not {split!r}; set --config.data.train_split / '
                                'eval_split accordingly.')
    return self.splits[split]

  def load(self, path: tf.Tensor) -> tf.Tensor:
    """The encoded image at `path`, relative to the root."""
    return tf.io.read_file(tf.strings.join([self.root + os.sep, path]))

  def read(self, split: str, *, process_index: int, process_count: int,
           shuffle_seed: int | None = None) -> tf.data.Dataset:
    """This process's shard of `split` as {'image': path relative to the
    root, 'label': int64}; `load` reads the file.

    Shards are disjoint strided slices of the sorted file list. With a seed
    the shard is fully permuted (paths only, so the cost is nil). Files are
    read where they are decoded (`load` in the decoding map): a parallel
    map of their own costs more in thread hand-offs than it saves.
    """
    files = self._split(split)
    paths = files.paths[process_index::process_count]
    labels = files.labels[process_index::process_count]
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(len(paths))
      paths, labels = paths[order], labels[order]
    return tf.data.Dataset.from_tensor_slices({'image': paths,
                                               'label': labels})


def find_images(paths: Sequence[str]) -> list[str]:
  """The files among `paths`, then the image files (by extension) under the
  folders among them, recursively, each folder's in sorted order. A path
  that does not exist is kept, for reading it to fail and be reported."""
  found = []
  for path in paths:
    if not os.path.isdir(path):
      found.append(path)
      continue
    for directory, subdirectories, files in os.walk(path):
      subdirectories.sort()
      found += [os.path.join(directory, f) for f in sorted(files)
                if f.lower().endswith(_EXTENSIONS)]
  return found


def folders(directory: str) -> list[str]:
  """The sub-folders of `directory`, sorted, links followed; hidden ones
  (the statistics' cache, .ipynb_checkpoints) are no class. Entries that
  are neither folders nor files (broken links) are named in a warning."""
  found, unusable = [], []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.startswith('.'):
      continue
    if os.path.isdir(path):
      found.append(name)
    elif not os.path.exists(path):
      unusable.append(path)
  if unusable:
    logging.warning('Left out %d entries of %s that are neither folders nor '
                    'files (broken links or link loops): %s', len(unusable),
                    directory, ', '.join(unusable[:5]) +
                    (', ...' if len(unusable) > 5 else ''))
  return found


def images_by_class(root: str, split_dir: str) -> dict[str, list[tuple[str, int]]]:
  """Each class folder of ROOT/split_dir: its images' (path relative to
  the root, size), from the listing kept in the root (data/listing.py)."""
  classes = folders(os.path.join(root, split_dir))
  directories = [os.path.join(split_dir, c) for c in classes]
  files = listing.image_files(root, directories)
  return {c: [(prefix + n, size) for n, size in zip(files[d].names, files[d].sizes)]
          for c, d in zip(classes, directories)
          for prefix in [os.path.join(d, '')]}


def _holdout(count: int, fraction: float, seed: str) -> np.ndarray:
  """Boolean mask of the held-out files; a function of the names only."""
  n_val = int(round(fraction * count))
  order = np.random.default_rng(list(seed.encode())).permutation(count)
  mask = np.zeros(count, bool)
  mask[order[:n_val]] = True
  return mask


def validation_dir(root: str) -> str | None:
  """ROOT's validation folder, validation/ or val/, if it has one."""
  return next((v for v in _VALIDATION_NAMES
               if os.path.isdir(os.path.join(root, v))), None)


def check_folder(root: str) -> None:
  if not os.path.isdir(root):
    raise errors.NotFound(f'Image folder {root!r} does not exist; set '
                          '--config.data.image_folder to a directory.')


def scan(root: str, *, val_fraction: float = 0.0,
         empty_classes: bool = False) -> ImageFolder:
  """Lists the images under `root` (see the module docstring for layouts).
  A class folder without images is an error, unless `empty_classes` (the
  prepared copy, which keeps a folder for every label of its source)."""
  check_folder(root)
  val_dir = validation_dir(root)
  has_train = os.path.isdir(os.path.join(root, 'train'))
  if has_train and val_dir:
    by_split = {'train': images_by_class(root, 'train'),
                'validation': images_by_class(root, val_dir)}
  elif has_train or val_dir:
    raise errors.InvalidInput(f'{root!r} has one of train/ and validation/ but not the '
                              'other; add the missing one, or put the class folders '
                              'directly under the root and set data.val_fraction.')
  else:
    if not folders(root):
      raise errors.InvalidInput(
          f'Image folder {root!r} holds no folders: put the images in one '
          'folder per class, under train/ and validation/ or directly under '
          'it (then with --config.data.val_fraction).')
    if not 0 < val_fraction < 1:
      raise errors.InvalidInput(
          f'{root!r} has class folders but no train/ and validation/ '
          f'sub-folders; set --config.data.val_fraction in (0, 1) to hold out '
          f'part of each class (it is {val_fraction}).')
    by_split = {'train': {}, 'validation': {}}
    for name, files in images_by_class(root, '').items():
      held = _holdout(len(files), val_fraction, name)
      by_split['train'][name] = [f for f, h in zip(files, held) if not h]
      by_split['validation'][name] = [f for f, h in zip(files, held) if h]

  class_names = tuple(sorted(set().union(*by_split.values())))
  if not class_names:
    raise errors.InvalidInput(f'No class sub-folders with images in {root!r}.')
  # A class without examples would give fc8 an output it can never learn.
  empty = [name for name in class_names
           if not any(classes.get(name) for classes in by_split.values())]
  if empty and not empty_classes:
    raise errors.InvalidInput(
        f'The class folders {", ".join(map(repr, empty))} of {root!r} hold no '
        f'images (extensions {", ".join(_EXTENSIONS)}) in any split; add '
        'images or remove the folders, since every folder is a class.')
  index = {name: i for i, name in enumerate(class_names)}
  splits = {}
  for split, classes in by_split.items():
    files = [(path, size, index[c]) for c, found in classes.items()
             for path, size in found]
    if not files:
      raise errors.InvalidInput(f'The {split} split of {root!r} holds no images '
                                f'(extensions {", ".join(_EXTENSIONS)}).')
    splits[split] = make_split(files)
  return ImageFolder(root=root, class_names=class_names, splits=splits)
