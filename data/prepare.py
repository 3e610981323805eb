"""--mode=prepare: write the dataset once as 256x256 JPEGs, as the paper did.

Every image of data.train_split and data.eval_split is scaled so that its
shorter side is data.resize_size, cropped to the central square and written
to data.prepared_dir/{train,validation}/<label, 5 digits>/<n>.jpg, with the
size and the class names in prepared.json, and the listing of the files
(data/listing.py), so that the first run does not list them. Training and evaluation read that folder whenever
data.prepared_dir is set (and data.resize_size matches), and then decode
small JPEGs and skip the resampling. The folder appears only once
complete, so an interrupted preparation is never mistaken for a finished one.
Run it as a single process.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import tensorflow as tf

from data import image_folder, preprocessing, sources
from runtime import errors

_QUALITY = 95  # high, so that the copy adds little to the paper's own JPEGs


def prepare(data: ml_collections.ConfigDict) -> str:
  """Writes data.prepared_dir from the configured source; returns a summary."""
  if not data.prepared_dir:
    raise errors.InvalidInput('Set --config.data.prepared_dir=DIR: where --mode=prepare '
                              'writes, and where training then reads.')
  if os.path.exists(data.prepared_dir):
    raise FileExistsError(f'{data.prepared_dir!r} exists; delete it to '
                          'prepare again, or train from it as it is.')
  source = sources.open_source(sources.original(data))
  tmp = data.prepared_dir + '.incomplete'
  shutil.rmtree(tmp, ignore_errors=True)

  lines = []
  for name, split in zip(sources.PREPARED_SPLITS, (data.train_split, data.eval_split)):
    root = os.path.join(tmp, name)
    # Every class gets a folder, so labels survive even when one is empty.
    for label in range(source.num_classes):
      os.makedirs(os.path.join(root, f'{label:05d}'))

    def write(index, example, root=root):
      image = preprocessing.decode_central_square(
          source.load(example['image']), data.resize_size, dct=data.jpeg_dct)
      jpeg = tf.io.encode_jpeg(image, quality=_QUALITY)
      path = tf.strings.join([
          root, tf.strings.as_string(example['label'], width=5, fill='0'),
          tf.strings.as_string(index) + '.jpg'], separator='/')
      # The output depends on the write, so tf.data cannot prune it.
      with tf.control_dependencies([tf.io.write_file(path, jpeg)]):
        return tf.identity(index)

    ds = source.read(split, None).enumerate().map(
        write, num_parallel_calls=tf.data.AUTOTUNE)
    ds = preprocessing.skip_undecodable(ds, data)
    written = sum(1 for _ in preprocessing.explain_errors(ds.as_numpy_iterator()))
    total = source.num_examples(split)
    lines.append(f'{split}: wrote {written} of {total} images '
                 f'({total - written} undecodable, skipped) to {name}/')
  with open(os.path.join(tmp, sources.PREPARED_INFO), 'w') as f:
    json.dump({'resize_size': data.resize_size,
               'class_names': list(source.class_names)}, f)
  image_folder.scan(tmp, empty_classes=True)  # keeps the listing in it
  os.replace(tmp, data.prepared_dir)
  return '\n'.join([f'Prepared {data.prepared_dir}:'] + lines)
