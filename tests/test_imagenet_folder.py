"""data.imagenet_folder: ILSVRC-2012 extracted, its validation images in
synset folders, flat with the devkit's ground truth, or flat with Kaggle's
CSV, on a miniature with the real file names and label formats."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

import input_pipeline
import run_files
import train
from configs import demo as demo_config
from data import imagenet_folder

# Three synsets far apart in TFDS's imagenet2012 order: labels 0, 281, 999.
SYNSETS = ('n01440764', 'n02123045', 'n15075141')
LABELS = (0, 281, 999)
PER_CLASS = 4
# Validation image k (1-based) is of class VAL_CLASSES[k - 1].
VAL_CLASSES = (2, 0, 1, 1, 0, 2)
# The devkit's own ids are not TFDS's order: here id 1 is the last synset.
DEVKIT_IDS = {SYNSETS[2]: 1, SYNSETS[0]: 2, SYNSETS[1]: 3}


def _image(path: str, label: int, rng: np.random.Generator) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.zeros((40, 40, 3)) + 60
  pixels[..., label % 3] = 200
  pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255)
  Image.fromarray(pixels.astype(np.uint8)).save(path, 'JPEG')


def _val_name(k: int) -> str:
  return f'ILSVRC2012_val_{k:08d}.JPEG'


def _miniature(root: str, layout: str) -> str:
  """Writes the miniature in `layout` under `root`; returns the folder that
  data.imagenet_folder names."""
  rng = np.random.default_rng(0)
  folder = (os.path.join(root, 'ILSVRC', 'Data', 'CLS-LOC') if layout == 'kaggle'
            else root)
  for c, synset in enumerate(SYNSETS):
    for i in range(PER_CLASS):
      _image(os.path.join(folder, 'train', synset, f'{synset}_{i}.JPEG'), c, rng)
  for k, c in enumerate(VAL_CLASSES, start=1):
    where = SYNSETS[c] if layout == 'folders' else ''
    _image(os.path.join(folder, 'val', where, _val_name(k)), c, rng)
  if layout == 'devkit':
    data = os.path.join(folder, 'ILSVRC2012_devkit_t12', 'data')
    os.makedirs(data)
    with open(os.path.join(data, imagenet_folder.DEVKIT_LABELS), 'w') as f:
      f.writelines(f'{DEVKIT_IDS[SYNSETS[c]]}\n' for c in VAL_CLASSES)
    meta = np.zeros(3, dtype=[('ILSVRC2012_ID', 'O'), ('WNID', 'O'),
                              ('words', 'O'), ('num_children', 'O')])
    for synset, i in DEVKIT_IDS.items():
      meta[i - 1] = (i, synset, synset, 0)
    scipy.io.savemat(os.path.join(data, imagenet_folder.DEVKIT_META),
                     {'synsets': meta})
  if layout == 'kaggle':
    with open(os.path.join(root, imagenet_folder.KAGGLE_LABELS), 'w') as f:
      f.write('ImageId,PredictionString\n')
      f.writelines(f'{_val_name(k)[:-5]},{SYNSETS[c]} 1 2 30 40 {SYNSETS[c]} 3 4 20 20\n'
                   for k, c in enumerate(VAL_CLASSES, start=1))
  return folder


def _config(folder: str):
  config = demo_config.get_config('size=tiny')
  config.data.imagenet_folder = folder
  config.model.num_classes = 0
  config.data.resize_size = config.data.image_size = 67
  config.num_train_steps = 2
  config.batch_size = config.eval_batch_size = 8
  return config


@pytest.mark.parametrize('layout', ['folders', 'devkit', 'kaggle'])
def test_the_three_layouts_label_as_tfds_and_train(tmp_path, layout):
  folder = _miniature(str(tmp_path / 'imagenet'), layout)
  config = _config(folder)
  dataset = input_pipeline.load(config.data)
  assert dataset.num_classes == 1000
  assert (dataset.num_train_examples, dataset.num_eval_examples) == (12, 6)
  assert [dataset.class_names[k] for k in LABELS] == ['tench', 'tabby', 'toilet tissue']
  examples = list(dataset.source.read('validation', None).as_numpy_iterator())
  labels = {os.path.basename(e['image'].decode()): int(e['label']) for e in examples}
  assert labels == {_val_name(k): LABELS[c] for k, c in enumerate(VAL_CLASSES, start=1)}

  results = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert results['val_examples'] == results['val_examples_10crop'] == 6
  with open(os.path.join(tmp_path, 'work', run_files.CONFIG)) as f:
    assert json.load(f)['model']['num_classes'] == 1000


@pytest.mark.parametrize('damage, message', [
    ('unknown', r"names synsets that are not ImageNet's 1000: n99999999"),
    ('incomplete', r'1 of the 6 validation images .* have no label in .*LOC_val_solution.csv '
                   r'\(e.g. ILSVRC2012_val_00000006.JPEG\)'),
    ('missing', r'not in synset folders and no labels file was found; looked for '),
])
def test_a_bad_labels_file_is_named(tmp_path, damage, message):
  root = str(tmp_path / 'imagenet')
  folder = _miniature(root, 'kaggle')
  csv_path = os.path.join(root, imagenet_folder.KAGGLE_LABELS)
  lines = open(csv_path).read().splitlines()
  if damage == 'unknown':
    lines[1] = lines[1].replace(SYNSETS[2], 'n99999999', 1)
  elif damage == 'incomplete':
    lines = lines[:-1]
  with open(csv_path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  if damage == 'missing':
    os.remove(csv_path)
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    imagenet_folder.scan(folder)


def test_a_folder_that_is_no_synset_is_named(tmp_path):
  folder = _miniature(str(tmp_path), 'folders')
  os.rename(os.path.join(folder, 'train', SYNSETS[1]), os.path.join(folder, 'train', 'cats'))
  with pytest.raises(ValueError, match=r"has folders that are not ImageNet synsets: "
                     r'cats\. .*set --config.data.image_folder instead'):
    imagenet_folder.scan(folder)
