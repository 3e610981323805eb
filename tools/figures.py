"""The paper's figures, from a checkpoint (config.eval.checkpoint of --workdir).

  --mode=filters     Figure 3: conv1's kernels as a PNG grid, one block per
                     tower, and each tower's colourfulness
  --mode=neighbours  Figure 4: for each of config.predict.inputs, the
                     training images whose fc7 features are nearest in
                     Euclidean distance, as a PNG grid (query first)

Both write to WORKDIR/figures/. Training writes the filter grid to
TensorBoard at each evaluation (train.py). The training split's fc7
features are computed once per checkpoint and cached in
WORKDIR/features/<step>.npy as float16, read back memory-mapped, so the
search needs little memory whatever the split's size.
"""

from __future__ import annotations

import json
import os

import matplotlib.image
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

import evaluation
import input_pipeline
import parallel
import run_files
from models import kernels as kernels_lib
from runtime import errors

FIGURES = 'figures'
FEATURES = 'features'
_CHUNK = 1 << 24  # feature values compared with the queries at once


# ---------------------------------------------------------------------------
# Figure 3: conv1's kernels (models/kernels.py draws them).


def _save_png(workdir: str, name: str, image: np.ndarray) -> str:
  path = os.path.join(workdir, FIGURES, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with run_files.atomic_write(path, 'wb') as f:
    matplotlib.image.imsave(f, image, format='png')
  return path


def filters(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=filters: writes the checkpoint's conv1 grid; returns the
  towers' colourfulness."""
  chosen = evaluation.restore_chosen(config, workdir)
  kernels = parallel.host_array(chosen.state.params['conv1']['kernel'])
  towers, k, _, _, n = kernels.shape
  path = _save_png(workdir, f'conv1_{chosen.step}.png', kernels_lib.filter_grid(kernels))
  lines = [
      f'{chosen.description}: conv1\'s {towers * n} kernels ({k}x{k}x3) in '
      f'{path}, one block per tower, top to bottom (the paper\'s Figure 3).',
      "Colourfulness, the share of a kernel's variance in its colour (0: grey, "
      '1: no grey part):',
      f'{"tower":<7}{"kernels":>8}{"mean":>8}{"median":>8}{"> 0.5":>8}']
  for t, values in enumerate(kernels_lib.colourfulness(kernels)):
    lines.append(f'{t + 1:<7}{n:>8}{values.mean():>8.3f}{np.median(values):>8.3f}'
                 f'{int((values > 0.5).sum()):>8}')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Figure 4: nearest neighbours in fc7's feature space.


def _subset(config: ml_collections.ConfigDict, total: int) -> tuple[int, int]:
  """(stride, count): every stride-th training image, count of them."""
  limit = config.predict.neighbour_subset
  stride = -(-total // limit) if 0 < limit < total else 1
  return stride, -(-total // stride)


def training_features(chosen: evaluation.Chosen,
                      workdir: str) -> tuple[np.ndarray, np.ndarray, int]:
  """fc7 features (count, d) float16, memory-mapped, and labels (count,)
  (-1: undecodable, not searched) of every stride-th training image, and
  the stride. Computed once per checkpoint, data config and subset, and
  cached in WORKDIR/features/."""
  config = chosen.config
  data, source = config.data, chosen.dataset.source
  stride, count = _subset(config, source.num_examples(data.train_split))
  base = os.path.join(workdir, FEATURES, str(chosen.step))
  key = json.loads(json.dumps({'data': data.to_dict(), 'stride': stride}))
  try:
    with open(base + '.json') as f:
      if json.load(f) == key:
        return np.load(base + '.npy', mmap_mode='r'), np.load(base + '.labels.npy'), stride
  except (OSError, ValueError):
    pass  # not cached yet, or half-written
  logging.info('Computing fc7 features of %d training images of %r (every '
               '%d-th) into %s.npy.', count, source.name,
               stride, base)

  os.makedirs(os.path.dirname(base), exist_ok=True)
  examples = source.read(data.train_split, None).enumerate().filter(
      lambda i, _: i % stride == 0).map(
          lambda i, ex: {'index': i // stride, 'image': ex['image'],
                         'label': ex['label']})
  features, labels = None, np.full(count, -1, np.int64)
  for batch in evaluation.outputs(chosen, examples, source.load, count,
                                  resample=not source.views):
    if features is None:
      features = np.lib.format.open_memmap(
          base + '.npy.tmp', mode='w+', dtype=np.float16,
          shape=(count, batch.values['fc7'].shape[-1]))
    features[batch.index] = batch.values['fc7']
    labels[batch.index] = batch.values['label']
  if features is None:
    raise errors.InvalidInput(f'No training image of {source.name!r} '
                              'could be decoded.')
  features.flush()
  del features
  os.replace(base + '.npy.tmp', base + '.npy')
  with run_files.atomic_write(base + '.labels.npy', 'wb') as f:
    np.save(f, labels)
  with run_files.atomic_write(base + '.json') as f:
    json.dump(key, f)
  return np.load(base + '.npy', mmap_mode='r'), labels, stride


def nearest(queries: np.ndarray, features: np.ndarray, valid: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
  """The `k` rows of `features` (valid ones only) nearest each query in
  Euclidean distance, nearest first, and their distances: (queries, k) each.

  `features` is read a chunk at a time, so it may be a memory map larger
  than memory; the final distances are computed directly, not from the
  expansion |q|^2 - 2 q.f + |f|^2 that ranks the chunks.
  """
  q = np.float32(queries)
  k = min(k, int(valid.sum()))
  best_d = np.full((len(q), 0), np.inf, np.float32)
  best_i = np.zeros((len(q), 0), np.int64)
  rows = max(1, _CHUNK // q.shape[1])
  for start in range(0, len(features), rows):
    f = np.float32(features[start:start + rows])
    d2 = (np.square(q).sum(1)[:, None] - 2 * q @ f.T + np.square(f).sum(1)[None])
    d2[:, ~valid[start:start + rows]] = np.inf
    d = np.concatenate([best_d, d2], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(
        np.arange(start, start + len(f)), d2.shape)], axis=1)
    keep = np.argsort(d, axis=1, kind='stable')[:, :k]
    best_d, best_i = np.take_along_axis(d, keep, 1), np.take_along_axis(i, keep, 1)
  exact = np.linalg.norm(q[:, None] - np.float32(features[best_i.ravel()]).reshape(
      *best_i.shape, -1), axis=-1)
  order = np.argsort(exact, axis=1, kind='stable')
  return np.take_along_axis(best_i, order, 1), np.take_along_axis(exact, order, 1)


def _training_crops(chosen: evaluation.Chosen,
                    indices: np.ndarray) -> dict[int, np.ndarray]:
  """The centre crops of the training images at split `indices`; the
  split's encoded records are read in order, only these decoded."""
  data, source = chosen.config.data, chosen.dataset.source
  wanted = tf.constant(np.unique(indices))
  examples = source.read(data.train_split, None).enumerate().filter(
      lambda i, _: tf.reduce_any(tf.equal(i, wanted))).map(
          lambda i, ex: {'index': i, 'image': ex['image']})
  crops = {}
  for batch in chosen.dataset.views(examples, source.load,
                                    batch_size=len(indices) or 1,
                                    resample=not source.views):
    crops.update({int(i): image for i, image in zip(batch['index'], batch['image'])
                  if i >= 0})
  return crops


def neighbours(config: ml_collections.ConfigDict, workdir: str) -> str | errors.Skipped:
  """--mode=neighbours: writes the grid of config.predict.inputs' nearest
  training images; returns them as text, or errors.Skipped with the text
  when some inputs could not be read (main.py exits with EXIT_SKIPPED, as
  --mode=predict does)."""
  paths = evaluation.input_paths(config)
  chosen = evaluation.restore_chosen(config, workdir, input_pipeline.load(config.data))
  names = chosen.dataset.class_names
  queries, crops, fc7, skipped = [], [], [], []
  for batch in evaluation.file_outputs(chosen, paths):
    evaluation.report_skipped(paths, batch.skipped)
    skipped += batch.skipped
    if len(batch.index):
      queries += list(batch.index)
      crops.append(batch.values['image'])
      fc7.append(batch.values['fc7'])
  if not queries:  # as --mode=predict ends when it can read none
    return errors.Skipped(None, len(skipped))
  features, labels, stride = training_features(chosen, workdir)
  rows, distances = nearest(np.concatenate(fc7), features, labels >= 0,
                            config.predict.neighbours)
  split_index = rows * stride
  found = _training_crops(chosen, split_index.ravel())
  grid = kernels_lib.mosaic(np.stack([image for q, row in zip(np.concatenate(crops), split_index)
                          for image in (q, *(found[int(i)] for i in row))]),
                columns=split_index.shape[1] + 1)
  png = _save_png(workdir, f'neighbours_{chosen.step}.png', grid)

  subset = f' (one in {stride})' if stride > 1 else ''
  lines = [f'{chosen.description}: the training images nearest in fc7 (Euclidean '
           f'distance) among {int((labels >= 0).sum())} of '
           f'{chosen.dataset.name!r} '
           f'{chosen.config.data.train_split!r}{subset}, in {png}, '
           'one row per query, the query first:']
  for q, row, rank_rows, dist in zip(queries, split_index, rows, distances):
    lines.append(paths[q])
    lines += [f'  {r + 1}. training image {int(i)} ({names[labels[j]]}), '
              f'distance {d:.4g}' for r, (i, j, d) in
              enumerate(zip(row, rank_rows, dist))]
  text = '\n'.join(lines)
  return errors.Skipped(text, len(skipped)) if skipped else text
