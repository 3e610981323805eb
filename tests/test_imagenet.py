"""A tiny ImageNet in the official layout through TFDS's imagenet2012 builder.

ILSVRC2012_img_train.tar holds one tar per synset (n01751748.tar holding
n01751748_<i>.JPEG); ILSVRC2012_img_val.tar holds ILSVRC2012_val_<8 digits>
.JPEG files, which the builder labels with the lines of its
validation_labels.txt in sorted file-name order. So the first validation
images here carry the first labels of that file.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import input_pipeline
import train
from configs import demo as demo_config
from data import sources

_LABELS_DIR = os.path.join(os.path.dirname(tfds.__file__), 'datasets',
                           'imagenet2012')
NUM_VAL = 6
PER_SYNSET = 4


def _lines(name: str) -> list[str]:
  with open(os.path.join(_LABELS_DIR, name)) as f:
    return f.read().split()


def _image(rng, fmt='JPEG') -> bytes:
  size = tuple(rng.integers(70, 120, 2))
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
      buffer, fmt)
  return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _tar_bytes(members: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w') as tar:
    for name, data in members.items():
      _add(tar, name, data)
  return buffer.getvalue()


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  """(data config, validation synsets in file order, training synsets)."""
  root = tmp_path_factory.mktemp('imagenet')
  manual = root / 'manual'
  manual.mkdir()
  rng = np.random.default_rng(0)
  val_synsets = _lines('validation_labels.txt')[:NUM_VAL]
  train_synsets = sorted(set(val_synsets[:3]))
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as tar:
    for synset in train_synsets:
      members = {f'{synset}_{i}.JPEG': _image(rng) for i in range(PER_SYNSET)}
      if synset == 'n02105855':  # ImageNet's PNG named .JPEG, as in the tar
        members['n02105855_2933.JPEG'] = _image(rng, 'PNG')
      _add(tar, f'{synset}.tar', _tar_bytes(members))
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as tar:
    for i in range(NUM_VAL):
      _add(tar, f'ILSVRC2012_val_{i + 1:08d}.JPEG', _image(rng))

  config = demo_config.get_config('size=tiny')
  config.data.name = 'imagenet2012'
  config.data.data_dir = str(root / 'tfds')
  config.data.manual_dir = str(manual)
  config.data.resize_size = config.data.image_size = 67
  sources.get_builder(config.data)  # prepares, once for the module
  return config, val_synsets, train_synsets


def test_builder_prepares_both_splits_with_1000_classes(imagenet):
  config, _, train_synsets = imagenet
  info = input_pipeline.load(config.data)
  expected_train = len(train_synsets) * PER_SYNSET + ('n02105855' in train_synsets)
  assert (info.num_classes, info.num_train_examples,
          info.num_eval_examples) == (1000, expected_train, NUM_VAL)


def test_labels_reach_training_and_evaluation(imagenet):
  config, val_synsets, train_synsets = imagenet
  synset_index = {s: i for i, s in enumerate(_lines('labels.txt'))}
  batches = list(input_pipeline.load(config.data).eval_iterator(batch_size=8))
  labels = batches[0]['label'][batches[0]['mask'] > 0]
  # TFDS stores validation files in its own order; compare as multisets.
  assert sorted(labels.tolist()) == sorted(synset_index[s] for s in val_synsets)
  train_labels = next(input_pipeline.load(config.data).train_iterator(batch_size=12, seed=0))['label']
  assert set(train_labels.tolist()) == {synset_index[s] for s in train_synsets}


def test_trains_and_evaluates(imagenet, tmp_path):
  config, _, _ = imagenet
  config = config.copy_and_resolve_references()
  config.model.num_classes = 1000
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 2
  config.log_every_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 2
  assert results['val_examples'] == NUM_VAL


def test_archives_that_are_not_tars_are_named(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'ILSVRC2012_img_train.tar').write_text('<html>Access denied</html>')
  (manual / 'ILSVRC2012_img_val.tar').write_text('<html>Access denied</html>')
  config = demo_config.get_config()
  config.data.name = 'imagenet2012'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(manual)
  with pytest.raises(ValueError, match=(
      rf'{manual}/ILSVRC2012_img_train.tar is not a tar archive .*download it '
      'again')):
    sources.get_builder(config.data)
