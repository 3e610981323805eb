"""The data's public face: training batches, evaluation batches, dataset facts.

Sources: any TFDS image-classification dataset (`data.name`, e.g.
imagenet2012 from its manually downloaded archives, or the embedded
`demo_shapes`), a folder of images with one sub-folder per class
(`data.image_folder`), or the 256x256 copy that `--mode=prepare` writes
(`data.prepared_dir`). Preprocessing is the paper's (section 4.1): the
shorter side scaled to `resize_size` and the central square kept, the mean
subtracted, then for training a random `image_size` crop, a horizontal
reflection and PCA lighting, and for evaluation the centre crop or the ten
crops. The parts live in the `data` package; docs/data.md has the details.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_collections
import numpy as np

from data import batching, sources, statistics

Batch = batching.Batch
DatasetInfo = sources.DatasetInfo
DatasetNotFoundError = sources.DatasetNotFoundError


def train_iterator(data: ml_collections.ConfigDict, *, batch_size: int,
                   seed: int, start_step: int = 0,
                   lookahead: int = 16) -> batching.TrainIterator:
  """Endless training batches of this process's shard from step
  `start_step` on, `batch_size` per process (data/batching.py)."""
  return batching.TrainIterator(data, batch_size=batch_size, seed=seed,
                                start_step=start_step, lookahead=lookahead)


def eval_iterator(data: ml_collections.ConfigDict, *, batch_size: int,
                  ten_crop: bool = False) -> Iterator[Batch]:
  """One exact pass over this process's shard of the evaluation split,
  padded with mask-0 examples; `batch_size` per process."""
  return batching.eval_batches(data, batch_size=batch_size, ten_crop=ten_crop)


def mean_image(data: ml_collections.ConfigDict) -> np.ndarray | None:
  """The mean image training batches leave to the compiled step to
  subtract (trainer.Trainer), or None with a per-channel mean."""
  return statistics.normalization(data).mean_image


def steps_per_epoch(data: ml_collections.ConfigDict, batch_size: int) -> int:
  """Training steps in an epoch at `batch_size` per process, as
  train_iterator draws them: the smallest shard's whole batches."""
  return batching.batches_per_epoch(sources.get_source(data), data.train_split,
                                    batch_size)


def dataset_info(data: ml_collections.ConfigDict) -> DatasetInfo:
  """The dataset's classes and train / eval examples (all processes)."""
  return sources.dataset_info(data)


def source_name(data: ml_collections.ConfigDict) -> str:
  """What the configured source reads: the prepared copy, the image folder
  or the TFDS dataset's name."""
  return sources.source_name(data)


def with_dataset_classes(config: ml_collections.ConfigDict,
                         classes: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.num_classes, where 0, is the dataset's.

  `classes` is the dataset's count where the caller has read it already;
  otherwise it comes from the dataset's metadata, so the modes that only
  build the network have it too. A nonzero model.num_classes that differs
  from the dataset's is refused, naming the flag to change.
  """
  if classes is None:
    classes = sources.num_classes(config.data)
  config = config.copy_and_resolve_references()
  if config.model.num_classes == 0:
    config.model.num_classes = classes
  elif config.model.num_classes != classes:
    raise ValueError(
        f'Dataset {source_name(config.data)!r} has {classes} classes '
        f'but the model has {config.model.num_classes}; set '
        f"--config.model.num_classes={classes} or 0 (the dataset's).")
  return config
