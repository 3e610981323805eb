"""ImageNet (ILSVRC-2012) extracted, as shared clusters keep it: data.imagenet_folder.

  ROOT/train/n01440764/*.JPEG ...   the training images, a folder per synset
  ROOT/val/n01440764/*.JPEG ...     validation in synset folders (as the common
                                    reorganising script leaves it), or flat:
  ROOT/val/ILSVRC2012_val_00000001.JPEG ...  labelled by one of
      LOC_val_solution.csv   Kaggle's: ImageId,PredictionString, the
                             string's first word the synset; looked for in
                             ROOT and up to three folders above it (Kaggle's
                             ILSVRC/Data/CLS-LOC/ is three below it)
      ILSVRC2012_validation_ground_truth.txt  the devkit's: one ILSVRC2012_ID
                             (1-1000) a line, in file-number order, mapped to
                             synsets by the devkit's meta.mat beside it; in
                             ROOT or ROOT/ILSVRC2012_devkit_t12/data

(validation/ is taken for val/ too). Labels are the synsets' positions in
TFDS's imagenet2012 label order, so this folder, TFDS's imagenet2012 and the
prepared copy of either agree on what label k is: checkpoints, statistics
and predictions carry over. The classes are ImageNet's 1000, whether or not
each has images here.
"""

from __future__ import annotations

import csv
import functools
import os
import re

import numpy as np
import scipy.io
import tensorflow as tf
from absl import logging
from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

from data import image_folder, listing
from runtime import errors

KAGGLE_LABELS = 'LOC_val_solution.csv'
DEVKIT_LABELS = 'ILSVRC2012_validation_ground_truth.txt'
DEVKIT_META = 'meta.mat'
_DEVKIT_DATA = os.path.join('ILSVRC2012_devkit_t12', 'data')
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG$', re.IGNORECASE)


@functools.cache
def synsets() -> tuple[str, ...]:
  """ImageNet-1k's synset ids in TFDS's imagenet2012 label order."""
  with tf.io.gfile.GFile(imagenet_common.label_names_file()) as f:
    return tuple(f.read().split())


def _check_synsets(root: str, split_dir: str, classes: list[str]) -> None:
  unknown = sorted(set(classes) - set(synsets()))
  if unknown:
    raise errors.InvalidInput(
        f'{os.path.join(root, split_dir)!r} has folders that are not ImageNet '
        f'synsets: {", ".join(unknown[:5])}{", ..." if len(unknown) > 5 else ""}. '
        'data.imagenet_folder reads ILSVRC-2012 as extracted; for another '
        'folder of class folders, set --config.data.image_folder instead.')


def _by_synset(root: str, split_dir: str) -> list[tuple[str, int, int]]:
  index = {s: i for i, s in enumerate(synsets())}
  by_class = image_folder.images_by_class(root, split_dir)
  _check_synsets(root, split_dir, list(by_class))
  return [(path, size, index[synset]) for synset, files in by_class.items()
          for path, size in files]


def _kaggle_labels(path: str) -> dict[str, str]:
  """LOC_val_solution.csv: image id (the file name without .JPEG) -> synset."""
  labels = {}
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    if reader.fieldnames is None or not {'ImageId', 'PredictionString'} <= set(reader.fieldnames):
      raise errors.InvalidInput(f'{path} has no ImageId and PredictionString columns, so it '
                                "is not Kaggle's ImageNet validation solution file.")
    for line, row in enumerate(reader, start=2):
      words = (row['PredictionString'] or '').split()
      if not words:
        raise errors.InvalidInput(f'{path}, line {line}: no synset for {row["ImageId"]!r}.')
      labels[row['ImageId']] = words[0]
  return labels


def _devkit_labels(path: str, names: tuple[str, ...]) -> dict[str, str]:
  """The devkit's ground truth: ILSVRC2012_val_<n>.JPEG is line n's id,
  mapped to its synset by meta.mat beside it."""
  meta_path = os.path.join(os.path.dirname(path), DEVKIT_META)
  try:
    meta = scipy.io.loadmat(meta_path, squeeze_me=True)['synsets']
    wnid = {int(i): str(w) for i, w in zip(meta['ILSVRC2012_ID'], meta['WNID'])}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise errors.InvalidInput(
        f'{meta_path} cannot be read ({e}); the devkit\'s ground truth '
        f'{path} needs the devkit\'s meta.mat beside it to map its ids to '
        'synsets.') from e
  with open(path) as f:
    ids = f.read().split()
  labels = {}
  for name in names:
    match = _VAL_NAME.match(name)
    if match is None:
      raise errors.InvalidInput(f'{name} is not named ILSVRC2012_val_<8 digits>.JPEG, so '
                                f'{path} (labels by file number) cannot label it.')
    number = int(match.group(1))
    if number > len(ids):
      continue  # reported as unlabelled
    if not ids[number - 1].isdigit() or int(ids[number - 1]) not in wnid:
      raise errors.InvalidInput(f'{path}, line {number}: {ids[number - 1]!r} is not an '
                                f'ILSVRC2012_ID of {meta_path}.')
    labels[os.path.splitext(name)[0]] = wnid[int(ids[number - 1])]
  return labels


def _labels_file(root: str) -> str:
  """Where the flat validation folder's labels are: Kaggle's CSV or the
  devkit's ground truth."""
  above = [root]
  for _ in range(3):
    above.append(os.path.dirname(above[-1]))
  candidates = ([os.path.join(d, KAGGLE_LABELS) for d in above] +
                [os.path.join(root, DEVKIT_LABELS),
                 os.path.join(root, _DEVKIT_DATA, DEVKIT_LABELS)])
  found = next((c for c in candidates if os.path.isfile(c)), None)
  if found is None:
    raise errors.NotFound(
        f'The validation images of {root!r} are not in synset folders and no '
        'labels file was found; looked for ' + ', '.join(candidates) + '. '
        "Put Kaggle's LOC_val_solution.csv or the devkit's "
        f'{_DEVKIT_DATA} (ILSVRC2012_devkit_t12.tar.gz from image-net.org) '
        'there, or sort the validation images into synset folders.')
  return found


def _flat(root: str, val_dir: str) -> list[tuple[str, int, int]]:
  files = listing.image_files(root, [val_dir])[val_dir]
  path = _labels_file(os.path.abspath(root))
  labels = (_kaggle_labels(path) if path.endswith(KAGGLE_LABELS)
            else _devkit_labels(path, files.names))
  index = {s: i for i, s in enumerate(synsets())}
  unknown = sorted({s for s in labels.values() if s not in index})
  if unknown:
    raise errors.InvalidInput(f'{path} names synsets that are not ImageNet\'s 1000: '
                              f'{", ".join(unknown[:5])}.')
  missing = [n for n in files.names if os.path.splitext(n)[0] not in labels]
  if missing:
    raise errors.InvalidInput(
        f'{len(missing)} of the {len(files.names)} validation images in '
        f'{os.path.join(root, val_dir)!r} have no label in {path} (e.g. '
        f'{missing[0]}): the file is incomplete or labels another set.')
  return [(os.path.join(val_dir, n), size, index[labels[os.path.splitext(n)[0]]])
          for n, size in zip(files.names, files.sizes)]


def scan(root: str) -> image_folder.ImageFolder:
  """Lists ROOT's training and validation images (see the module docstring)."""
  if not os.path.isdir(root):
    raise errors.NotFound(f'ImageNet folder {root!r} does not exist; set '
                          '--config.data.imagenet_folder to the folder that '
                          'holds train/ and val/.')
  val_dir = image_folder.validation_dir(root)
  if not os.path.isdir(os.path.join(root, 'train')) or val_dir is None:
    raise errors.InvalidInput(f'ImageNet folder {root!r} needs train/ and val/ (or '
                              'validation/); it has '
                              f'{sorted(image_folder.folders(root)) or "no folders"}.')
  train = _by_synset(root, 'train')
  validation = (_by_synset(root, val_dir)
                if image_folder.folders(os.path.join(root, val_dir))
                else _flat(root, val_dir))
  for split, files in (('train', train), ('validation', validation)):
    if not files:
      raise errors.InvalidInput(f'The {split} split of ImageNet folder {root!r} holds no '
                                f'images (extensions {", ".join(listing.EXTENSIONS)}).')
  trained = len(np.unique([label for _, _, label in train]))
  if trained < len(synsets()):
    logging.info('%d of ImageNet\'s %d classes have training images in %s.',
                 trained, len(synsets()), root)
  return image_folder.ImageFolder(
      root=root, class_names=synsets(),
      splits={'train': image_folder.make_split(train),
              'validation': image_folder.make_split(validation)})
