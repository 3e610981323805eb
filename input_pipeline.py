"""The data's public face: training batches, evaluation batches, dataset facts.

Sources: any TFDS image-classification dataset (`data.name`, e.g.
imagenet2012 from its manually downloaded archives, or the embedded
`demo_shapes`), a folder of images with one sub-folder per class
(`data.image_folder`), or the 256x256 copy that `--mode=prepare` writes
(`data.prepared_dir`), or ImageNet extracted as clusters keep it
(`data.imagenet_folder`). `load(config.data)` resolves it once into a
`Dataset`. Preprocessing is the paper's (section 4.1): the
shorter side scaled to `resize_size` and the central square kept, the mean
subtracted, then for training a random `image_size` crop, a horizontal
reflection and PCA lighting, and for evaluation the centre crop or the ten
crops. The parts live in the `data` package; docs/data.md has the details.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from data import batching, sources, statistics
from runtime import errors

Batch = batching.Batch
DatasetNotFoundError = sources.DatasetNotFoundError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """config.data resolved once for this process: the source (a folder is
  listed once), its splits' sizes, classes and names, and the normalisation
  (the statistics, read or computed when first asked for). Training,
  evaluation, predictions, figures and the data modes take this object;
  nothing below it resolves config.data again."""
  data: ml_collections.ConfigDict
  source: sources.Source

  @property
  def name(self) -> str:
    """What it reads: the prepared copy, a folder or the TFDS dataset's name."""
    return self.source.name

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.source.class_names

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  @property
  def num_train_examples(self) -> int:
    return self.source.num_examples(self.data.train_split)

  @property
  def num_eval_examples(self) -> int:
    return self.source.num_examples(self.data.eval_split)

  @functools.cached_property
  def normalization(self) -> statistics.Normalization:
    """The mean (image) and PCA lighting's basis (data/statistics.py); all
    processes ask for it together, since computing statistics is collective."""
    return statistics.normalization(self.data, self.source)

  @property
  def mean_image(self) -> np.ndarray | None:
    """The mean image training batches leave to the compiled step to
    subtract (trainer.Trainer), or None with a per-channel mean."""
    return self.normalization.mean_image

  def steps_per_epoch(self, batch_size: int) -> int:
    """Training steps in an epoch at `batch_size` per process, as
    train_iterator draws them: the smallest shard's whole batches."""
    return batching.batches_per_epoch(self.source, self.data.train_split,
                                      batch_size)

  def train_iterator(self, *, batch_size: int, seed: int, start_step: int = 0,
                     lookahead: int = 16) -> batching.TrainIterator:
    """Endless training batches of this process's shard from step
    `start_step` on, `batch_size` per process (data/batching.py)."""
    return batching.TrainIterator(
        self.data, self.source, self.normalization, batch_size=batch_size,
        seed=seed, start_step=start_step, lookahead=lookahead)

  def eval_iterator(self, *, batch_size: int,
                    ten_crop: bool = False) -> Iterator[Batch]:
    """One exact pass over this process's shard of the evaluation split,
    padded with mask-0 examples; `batch_size` per process."""
    return batching.eval_batches(self.data, self.source, self.normalization,
                                 batch_size=batch_size, ten_crop=ten_crop)

  def views(self, examples: tf.data.Dataset, load: Callable[[tf.Tensor], tf.Tensor],
            *, batch_size: int, ten_crop: bool = False,
            resample: bool = True) -> Iterator[Batch]:
    """Evaluation's view of {'index', 'image'} examples, in order
    (batching.indexed_views)."""
    return batching.indexed_views(self.data, self.normalization, examples, load,
                                  batch_size=batch_size, ten_crop=ten_crop,
                                  resample=resample)

  def identity(self) -> dict[str, str | int]:
    """What a run trained on, for its checkpoints: resuming on data whose
    identity differs is refused (checkpointing.py)."""
    return dict(
        classes=self.num_classes,
        train_examples=self.num_train_examples,
        eval_examples=self.num_eval_examples,
        train_files=self.source.fingerprint(self.data.train_split),
        eval_files=self.source.fingerprint(self.data.eval_split),
        normalization=self.normalization.digest)


def load(data: ml_collections.ConfigDict) -> Dataset:
  """Resolves config.data: once per process, by the caller that needs data."""
  return Dataset(data, sources.open_source(data))


def write_statistics(data: ml_collections.ConfigDict) -> str:
  """--mode=stats: the training split's statistics, written (data/statistics.py)."""
  return statistics.write(data, load(data).source)


def with_dataset_classes(config: ml_collections.ConfigDict,
                         dataset: Dataset | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.num_classes, where 0, is the dataset's.

  The count is `dataset`'s where the caller has one; otherwise it comes from
  the source's metadata (a TFDS builder's features, a folder's classes), so
  the modes that only build the network have it too. A nonzero
  model.num_classes that differs from the dataset's is refused, naming the
  flag to change.
  """
  source = dataset.source if dataset else sources.open_source(config.data)
  config = config.copy_and_resolve_references()
  if config.model.num_classes == 0:
    config.model.num_classes = source.num_classes
  elif config.model.num_classes != source.num_classes:
    raise errors.InvalidInput(
        f'Dataset {source.name!r} has {source.num_classes} classes '
        f'but the model has {config.model.num_classes}; set '
        f'--config.model.num_classes={source.num_classes} or 0 (the dataset\'s).')
  return config
