"""Evaluation counts every example once and averages the paper's ten crops."""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest
from PIL import Image

import evaluation
import input_pipeline
import parallel
from trainer import NonFiniteError, Trainer, standardize
from configs import demo as demo_config

SIZE = 67  # the smallest input the paper's geometry takes


def _config(root=None):
  config = demo_config.get_config('size=tiny')
  config.model.num_classes = 3
  config.data.image_folder = root
  config.data.resize_size = config.data.image_size = SIZE
  config.batch_size = config.eval_batch_size = 64
  return config


def _trainer(config, devices):
  mesh = parallel.make_mesh(config.mesh, devices)
  trainer = Trainer(config, mesh)
  return trainer, trainer.init(0)


@pytest.fixture(scope='module')
def folder_1001(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder')
  rng = np.random.default_rng(0)
  for split, count in (('train', 3), ('validation', 1001)):
    for i in range(count):
      directory = root / split / f'class{i % 3}'
      os.makedirs(directory, exist_ok=True)
      pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(directory / f'{i}.png')
  return str(root)


def test_1001_examples_at_batch_64_on_8_devices_count_once(folder_1001):
  config = _config(folder_1001)
  trainer, state = _trainer(config, jax.devices()[:8])
  batches = input_pipeline.load(config.data).eval_iterator(batch_size=64)
  metrics = trainer.evaluate(state, batches)
  assert int(metrics.loss.count) == 1001
  got = {k: float(v) for k, v in metrics.compute().items()}

  # A plain loop, one example at a time, on one device.
  apply = jax.jit(lambda image: trainer.model.apply(
      {'params': state.params}, image, train=False))
  losses, top1, top5 = [], [], []
  for example in input_pipeline.load(config.data).eval_iterator(batch_size=1):
    logits = np.asarray(apply(standardize(example, config.data.std_rgb)))[0]
    label = int(example['label'][0])
    rank = int((logits > logits[label]).sum())
    losses.append(float(optax.softmax_cross_entropy_with_integer_labels(
        logits, label)))
    top1.append(rank >= 1)
    top5.append(rank >= 5)
  assert len(losses) == 1001
  assert got['top1_error'] == pytest.approx(np.mean(top1), abs=1e-6)
  assert got['top5_error'] == pytest.approx(np.mean(top5), abs=1e-6)
  assert got['loss'] == pytest.approx(np.mean(losses), rel=1e-4)


def test_ten_crop_prediction_is_the_mean_of_ten_softmaxes():
  config = _config()
  trainer, state = _trainer(config, jax.devices()[:8])
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (8, 5, SIZE, SIZE, 3)).astype(np.uint8)
  shift = rng.normal(size=(8, 1, 1, 1, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 8).astype(np.int32)
  batch = {'image': images, 'shift': shift, 'label': labels,
           'mask': np.ones(8, np.float32)}
  got = trainer.evaluate(state, iter([batch])).compute()
  images = standardize(batch, config.data.std_rgb)

  crop_probs = np.stack([
      jax.nn.softmax(trainer.model.apply({'params': state.params},
                                         images[:, c], train=False))
      for c in range(10)], axis=1)
  probs = crop_probs.mean(axis=1)
  label_prob = probs[np.arange(8), labels]
  # The crops disagree, so averaging is not the same as any one crop.
  assert np.abs(crop_probs - probs[:, None]).max() > 1e-4
  assert float(got['loss']) == pytest.approx(-np.log(label_prob).mean(), rel=1e-4)
  assert float(got['top1_error']) == pytest.approx(
      np.mean(probs.argmax(-1) != labels), abs=1e-6)


def test_a_diverged_state_is_refused_not_scored(demo_run):
  config, workdir = demo_run
  chosen = evaluation.restore_chosen(config, workdir, input_pipeline.load(config.data))
  diverged = chosen.state.replace(params=jax.tree.map(
      lambda x: x * np.nan, chosen.state.params))
  with pytest.raises(NonFiniteError, match=(
      r"100 of the 100 examples of split 'validation' got NaN or infinite "
      r'logits from the state at step 6: it diverged')):
    evaluation.evaluate(chosen.trainer, diverged, chosen.config, chosen.dataset)
  # The state it came from scores as before.
  errors = evaluation.evaluate(chosen.trainer, chosen.state, chosen.config, chosen.dataset)
  assert 'nonfinite' not in errors and 0 <= errors['top1_error'] <= 1
