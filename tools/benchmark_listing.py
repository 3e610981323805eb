"""Time to the first training batch on an ImageNet-shaped folder, with the
listing kept beside it (data/listing.py) and without.

  python -m tools.benchmark_listing --folder=/tmp/imagenet_shaped

makes FOLDER (once) as train/ and validation/ with --classes class folders
of --per_class and --per_class/10 images, hard links of a few small JPEGs,
so that it costs inodes rather than disk; then, in alternating rounds, each
in a fresh process, times config.data resolved into a dataset (the folder
listed, or its listing read) and its first training batch, once after
deleting the listing and once with the listing the previous round left.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np
from absl import app, flags
from PIL import Image

from data import listing

FLAGS = flags.FLAGS
flags.DEFINE_string('folder', None, 'Where the ImageNet-shaped folder is (made if absent).')
flags.DEFINE_integer('classes', 1000, 'Class folders.')
flags.DEFINE_integer('per_class', 100, 'Training images per class (a tenth as many validation).')
flags.DEFINE_integer('rounds', 3, 'Rounds of each (first-batch times are reported per round).')
flags.mark_flags_as_required(['folder'])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SOURCES = 4  # distinct JPEGs the links point to

# The measurement, in a fresh process: from config.data to the first batch.
_FIRST_BATCH = '''
import json, sys, time
sys.path.insert(0, {repo!r})
import input_pipeline
from configs import alexnet
config = alexnet.get_config('mean=channel')
config.data.image_folder = {folder!r}
start = time.perf_counter()
dataset = input_pipeline.load(config.data)
resolved = time.perf_counter()
next(dataset.train_iterator(batch_size=32, seed=0))
print(json.dumps(dict(resolve=resolved - start, first_batch=time.perf_counter() - start,
                      images=dataset.num_train_examples + dataset.num_eval_examples)))
'''


def make_folder(root: str, classes: int, per_class: int) -> int:
  """Writes the folder of hard links; returns its number of images."""
  rng = np.random.default_rng(0)
  sources = os.path.join(root, '.sources')
  os.makedirs(sources)
  jpegs = []
  for i in range(_SOURCES):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), np.uint8)).save(buffer, 'JPEG')
    jpegs.append(os.path.join(sources, f'{i}.jpg'))
    with open(jpegs[-1], 'wb') as f:
      f.write(buffer.getvalue())
  count = 0
  for split, n in (('train', per_class), ('validation', max(1, per_class // 10))):
    for c in range(classes):
      directory = os.path.join(root, split, f'n{c:08d}')
      os.makedirs(directory)
      for i in range(n):
        os.link(jpegs[(c + i) % _SOURCES], os.path.join(directory, f'{i}.JPEG'))
      count += n
  return count


def _first_batch(folder: str) -> dict[str, float]:
  result = subprocess.run(
      [sys.executable, '-c', _FIRST_BATCH.format(repo=REPO, folder=folder)],
      capture_output=True, text=True, check=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
  del argv
  folder = FLAGS.folder
  if not os.path.isdir(folder):
    print(f'Making {folder}: {make_folder(folder, FLAGS.classes, FLAGS.per_class):,} '
          'images.', flush=True)
  kept = os.path.join(folder, listing.LISTING)
  times: dict[str, list[dict[str, float]]] = {'without': [], 'with': []}
  for _ in range(FLAGS.rounds):
    shutil.rmtree(os.path.dirname(kept), ignore_errors=True)
    times['without'].append(_first_batch(folder))
    times['with'].append(_first_batch(folder))  # reads what the first left
  images = times['with'][0]['images']
  with open('/proc/cpuinfo') as f:
    cpu = next((line.split(':', 1)[1].strip() for line in f
                if line.startswith('model name')), 'unknown processor')
  print(f'Time to the first batch of {folder} ({images:,} images), {cpu}, '
        f'seconds per round (median):')
  for name, rounds in times.items():
    for key in ('resolve', 'first_batch'):
      values = [r[key] for r in rounds]
      print(f'  {name} the listing, {key.replace("_", " ")}: '
            f'{", ".join(f"{v:.2f}" for v in values)} ({statistics.median(values):.2f})')
  ratio = (statistics.median(r['first_batch'] for r in times['without']) /
           statistics.median(r['first_batch'] for r in times['with']))
  print(f'first batch without / with the listing: {ratio:.2f}x')


if __name__ == '__main__':
  app.run(main)
