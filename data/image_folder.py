"""A folder of images, one sub-folder per class, as a dataset source.

Two layouts are accepted:

  ROOT/train/<class>/*.jpg  and  ROOT/validation/<class>/*.jpg  (or val/)
  ROOT/<class>/*.jpg        with `val_fraction` of each class held out

Classes are the sorted sub-folder names (over both splits), so label k is the
k-th name; hidden folders (.name) are not classes. Any format
tf.io.decode_image reads works (JPEG, PNG, GIF, BMP, grayscale, CMYK),
whatever the file's extension says; files are read as raw bytes and decoded
by the input pipeline.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_VALIDATION_NAMES = ('validation', 'val')


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """File paths and labels of every split."""
  class_names: tuple[str, ...]
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (paths, labels)

  def num_examples(self, split: str) -> int:
    return len(self._split(split)[0])

  def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in self.splits:
      raise ValueError(f'The image folder has splits {sorted(self.splits)}, '
                       f'not {split!r}; set --config.data.train_split / '
                       'eval_split accordingly.')
    return self.splits[split]

  def read(self, split: str, *, process_index: int, process_count: int,
           shuffle_seed: int | None = None) -> tf.data.Dataset:
    """This process's shard of `split` as {'image': path, 'label': int64}.

    Shards are disjoint strided slices of the sorted file list. With a seed
    the shard is fully permuted (paths only, so the cost is nil). Files are
    read where they are decoded (tf.io.read_file in the decoding map): a
    parallel map of their own costs more in thread hand-offs than it saves.
    """
    paths, labels = self._split(split)
    paths = paths[process_index::process_count]
    labels = labels[process_index::process_count]
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


def _images_by_class(directory: str) -> dict[str, list[str]]:
  """Each class folder's image files. Links are followed; entries that are
  neither (a broken link, a link loop) are named in a warning and left out."""
  result, unusable = {}, []
  for name in sorted(os.listdir(directory)):
    class_dir = os.path.join(directory, name)
    # Hidden folders (the statistics' cache, .ipynb_checkpoints) are no class.
    if name.startswith('.'):
      continue
    if not os.path.isdir(class_dir):
      if not os.path.exists(class_dir):
        unusable.append(class_dir)
      continue
    files = []
    for f in sorted(os.listdir(class_dir)):
      path = os.path.join(class_dir, f)
      if f.lower().endswith(_EXTENSIONS):
        # exists() follows links: a broken one or a loop is not there.
        usable = os.path.exists(path) and not os.path.isdir(path)
        (files if usable else unusable).append(path)
    result[name] = files
  if unusable:
    logging.warning('Left out %d entries of %s that are neither folders nor '
                    'files (broken links or link loops): %s', len(unusable),
                    directory, ', '.join(unusable[:5]) +
                    (', ...' if len(unusable) > 5 else ''))
  return result


def _holdout(files: list[str], fraction: float, seed: str) -> np.ndarray:
  """Boolean mask of the held-out files; a function of the names only."""
  n_val = int(round(fraction * len(files)))
  order = np.random.default_rng(list(seed.encode())).permutation(len(files))
  mask = np.zeros(len(files), bool)
  mask[order[:n_val]] = True
  return mask


def scan(root: str, *, val_fraction: float = 0.0) -> ImageFolder:
  """Lists the images under `root` (see the module docstring for layouts)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'Image folder {root!r} does not exist; set '
                            '--config.data.image_folder to a directory.')
  val_dir = next((os.path.join(root, v) for v in _VALIDATION_NAMES
                  if os.path.isdir(os.path.join(root, v))), None)
  train_dir = os.path.join(root, 'train')
  if os.path.isdir(train_dir) and val_dir:
    by_split = {'train': _images_by_class(train_dir),
                'validation': _images_by_class(val_dir)}
  elif os.path.isdir(train_dir) or val_dir:
    raise ValueError(f'{root!r} has one of train/ and validation/ but not the '
                     'other; add the missing one, or put the class folders '
                     'directly under the root and set data.val_fraction.')
  else:
    if not any(os.path.isdir(os.path.join(root, d)) for d in os.listdir(root)):
      raise ValueError(
          f'Image folder {root!r} holds no folders: put the images in one '
          'folder per class, under train/ and validation/ or directly under '
          'it (then with --config.data.val_fraction).')
    if not 0 < val_fraction < 1:
      raise ValueError(
          f'{root!r} has class folders but no train/ and validation/ '
          f'sub-folders; set --config.data.val_fraction in (0, 1) to hold out '
          f'part of each class (it is {val_fraction}).')
    by_split = {'train': {}, 'validation': {}}
    for name, files in _images_by_class(root).items():
      held = _holdout(files, val_fraction, name)
      by_split['train'][name] = [f for f, h in zip(files, held) if not h]
      by_split['validation'][name] = [f for f, h in zip(files, held) if h]

  class_names = tuple(sorted(set().union(*by_split.values())))
  if not class_names:
    raise ValueError(f'No class sub-folders with images in {root!r}.')
  # A class without examples would give fc8 an output it can never learn.
  empty = [name for name in class_names
           if not any(classes.get(name) for classes in by_split.values())]
  if empty:
    raise ValueError(
        f'The class folders {", ".join(map(repr, empty))} of {root!r} hold no '
        f'images (extensions {", ".join(_EXTENSIONS)}) in any split; add '
        'images or remove the folders, since every folder is a class.')
  index = {name: i for i, name in enumerate(class_names)}
  splits = {}
  for split, classes in by_split.items():
    pairs = [(f, index[c]) for c, files in classes.items() for f in files]
    if not pairs:
      raise ValueError(f'The {split} split of {root!r} holds no images '
                       f'(extensions {", ".join(_EXTENSIONS)}).')
    paths, labels = zip(*pairs)
    splits[split] = (np.array(paths), np.array(labels, np.int64))
  return ImageFolder(class_names=class_names, splits=splits)
