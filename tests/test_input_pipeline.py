"""Tests of the demo dataset and the tf.data input pipeline (CPU, seconds)."""

from __future__ import annotations

import collections
import io
import os
import tarfile

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import input_pipeline
import trainer
from configs import alexnet
from data import batching, demo_shapes, preprocessing, sources, statistics
from tools import synthetic_photos

MEAN = (120.0, 110.0, 100.0)
STD = (60.0, 50.0, 40.0)


def _data_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  data = alexnet.get_config('mean=channel').data
  data.name = 'demo_shapes/tiny'
  data.data_dir = str(data_dir)
  data.resize_size = 80
  data.image_size = 64
  data.mean_rgb = MEAN
  data.std_rgb = STD
  data.shuffle_buffer = 256
  data.pca_sigma = 0.0  # tests that want lighting turn it on
  for key, value in overrides.items():
    data[key] = value
  return data


def _decoded(data, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All (images uint8, labels) of `split` in file order."""
  builder = sources.get_builder(data)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  # Decoded as the pipeline decodes: with libjpeg's exact inverse DCT.
  ds = ds.map(lambda ex: {'image': tf.io.decode_jpeg(
      ex['image'], channels=3, dct_method='INTEGER_ACCURATE'), 'label': ex['label']})
  ds = tfds.as_numpy(ds.batch(1 << 20))
  batch = next(iter(ds))
  return batch['image'], batch['label']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A data_dir with the tiny demo prepared once for the module."""
  path = tmp_path_factory.mktemp('tfds')
  sources.get_builder(_data_config(path))
  return path


@pytest.fixture(scope='module')
def train_images(data_dir):
  return _decoded(_data_config(data_dir), 'train')[0]


# --- The demo dataset. ---


def test_demo_builder_metadata(data_dir):
  builder = sources.get_builder(_data_config(data_dir))
  assert isinstance(builder, demo_shapes.DemoShapes)
  assert builder.builder_config.name == 'tiny'
  assert builder.info.features['label'].names == list(demo_shapes.CLASS_NAMES)
  assert builder.info.features['image'].shape == (80, 80, 3)
  info = input_pipeline.load(_data_config(data_dir))
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (
      10, 320, 100)
  # The default config is the full dataset.
  full = tfds.builder('demo_shapes', data_dir=str(data_dir))
  assert full.builder_config.name == 'full'
  assert (full.builder_config.num_train,
          full.builder_config.num_validation) == (8000, 1000)


def test_demo_is_deterministic(data_dir, tmp_path):
  data = _data_config(data_dir)
  fresh = _data_config(tmp_path)
  images, labels = _decoded(data, 'validation')
  fresh_images, fresh_labels = _decoded(fresh, 'validation')
  np.testing.assert_array_equal(labels, fresh_labels)
  np.testing.assert_array_equal(images[0], fresh_images[0])
  # Not trivially equal: the images differ from one another.
  assert not np.array_equal(images[0], images[1])
  assert images[0].std() > 10


def test_demo_is_balanced_and_splits_differ(data_dir, train_images):
  data = _data_config(data_dir)
  _, train_labels = _decoded(data, 'train')
  val_images, _ = _decoded(data, 'validation')
  counts = collections.Counter(train_labels.tolist())
  assert sorted(counts) == list(range(10))
  assert min(counts.values()) >= 0.8 * 32 and max(counts.values()) <= 1.2 * 32
  # Validation images are new draws, not copies of training images.
  assert not any(np.array_equal(val_images[0], t) for t in train_images)


# --- Training batches. ---


def _locate(crop: np.ndarray, images: np.ndarray):
  """Finds (index, top, left) such that `crop` is that window, or None."""
  crop, images = crop.astype(np.int32), images.astype(np.int32)
  size = crop.shape[0]
  height = images.shape[1]
  # Windows' first rows, first 8 pixels: (N, tops, lefts, 3, 8).
  heads = np.lib.stride_tricks.sliding_window_view(
      images[:, :height - size + 1], size, axis=2)[..., :8]
  # Match a few pixels first, then confirm candidates on the whole window.
  diff = np.abs(heads - crop[0, :8].T).max(axis=(-2, -1))
  for index, top, left in zip(*np.nonzero(diff == 0)):
    if np.array_equal(images[index, top:top + size, left:left + size], crop):
      return int(index), int(top), int(left)
  return None


def test_train_batch_shapes_and_dtypes(data_dir):
  batch = next(input_pipeline.load(_data_config(data_dir)).train_iterator(
      batch_size=16, seed=0))
  assert set(batch) == {'image', 'shift', 'flip', 'label'}
  assert batch['image'].shape == (16, 64, 64, 3)
  assert batch['image'].dtype == np.uint8
  # Without lighting, each image's shift is minus the mean.
  np.testing.assert_array_equal(
      batch['shift'], np.broadcast_to(-np.float32(MEAN), (16, 1, 1, 3)))
  assert batch['flip'].shape == (16,) and batch['flip'].dtype == bool
  assert batch['label'].shape == (16,)
  assert batch['label'].dtype == np.int32
  assert batch['label'].min() >= 0 and batch['label'].max() < 10


def test_train_images_are_whole_images_flipped_by_the_step(data_dir,
                                                          train_images):
  # With image_size == resize_size the crop is the whole image, so each
  # training image is a dataset image, pixel for pixel; the compiled step
  # reflects those whose 'flip' is set, and the model sees the paper's
  # normalisation of it: (image - mean) / std.
  data = _data_config(data_dir, image_size=80)
  batch = next(input_pipeline.load(data).train_iterator(batch_size=32, seed=0))
  assert 0 < batch['flip'].sum() < 32  # Both orientations occur.
  got = np.asarray(trainer.standardize(batch, data.std_rgb))
  for image, flip, standardized in zip(batch['image'], batch['flip'], got):
    found = _locate(image, train_images)
    assert found is not None
    assert found[1:] == (0, 0)
    source = train_images[found[0]]
    source = source[:, ::-1] if flip else source
    np.testing.assert_allclose(
        standardized, (source - np.float32(MEAN)) / np.float32(STD), atol=1e-5)


def test_train_crops_are_random_windows(data_dir, train_images):
  data = _data_config(data_dir, image_size=64)
  batch = next(input_pipeline.load(data).train_iterator(batch_size=8, seed=3))
  offsets = set()
  for image in batch['image']:
    found = _locate(image, train_images)
    assert found is not None, 'a training crop is not a window of any image'
    offsets.add(found[1:])
  assert len(offsets) > 1
  assert all(0 <= t <= 16 and 0 <= l <= 16 for t, l in offsets)


def test_train_iterator_is_seeded(data_dir):
  data = _data_config(data_dir)

  def batches(seed, n=12):
    # 12 batches of 32 cross the 320-example epoch boundary.
    it = input_pipeline.load(data).train_iterator(batch_size=32, seed=seed)
    return [next(it) for _ in range(n)]

  a, b, c = batches(0), batches(0), batches(1)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]['image'], c[0]['image'])
  assert not np.array_equal(a[0]['label'], c[0]['label'])
  # The first epoch holds every example once (drop_remainder drops none).
  first_epoch = np.concatenate([x['label'] for x in a[:10]])
  _, labels = _decoded(data, 'train')
  assert sorted(first_epoch.tolist()) == sorted(labels.tolist())


def test_crop_larger_than_resize_is_rejected(data_dir):
  data = _data_config(data_dir, image_size=96)
  with pytest.raises(ValueError, match='image_size'):
    input_pipeline.load(data).train_iterator(batch_size=8, seed=0)


# --- Evaluation batches. ---


def test_eval_is_exact_centre_crop_of_each_example_once(data_dir):
  data = _data_config(data_dir, image_size=72)
  images, labels = _decoded(data, 'validation')
  batches = list(input_pipeline.load(data).eval_iterator(batch_size=32))
  assert len(batches) == 4  # ceil(100 / 32)
  for batch in batches:
    assert set(batch) == {'image', 'shift', 'label', 'mask'}
    assert batch['image'].shape == (32, 72, 72, 3)
    assert batch['image'].dtype == np.uint8
    assert batch['shift'].shape == (32, 1, 1, 3)
    assert batch['label'].dtype == np.int32
    assert batch['mask'].dtype == np.float32
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 100
  np.testing.assert_array_equal(mask, np.arange(128) < 100)
  real = mask > 0
  got_images = np.concatenate([b['image'] for b in batches])[real]
  got_labels = np.concatenate([b['label'] for b in batches])[real]
  np.testing.assert_array_equal(got_labels, labels)
  # resize_size 80 leaves the 80x80 images as they are; the centre 72
  # crop starts at (4, 4).
  np.testing.assert_array_equal(got_images, images[:, 4:76, 4:76])
  got_shifts = np.concatenate([b['shift'] for b in batches])[real]
  np.testing.assert_array_equal(
      got_shifts, np.broadcast_to(-np.float32(MEAN), (100, 1, 1, 3)))


def test_eval_resizes_shorter_side(data_dir):
  data = _data_config(data_dir, resize_size=120, image_size=100)
  batch = next(input_pipeline.load(data).eval_iterator(batch_size=8))
  assert batch['image'].shape == (8, 100, 100, 3)
  assert batch['mask'].sum() == 8
  # Upsampled 80 -> 120, the centre 100 is the source's centre 66.7 pixels.
  images, _ = _decoded(data, 'validation')
  expected = tf.image.resize(images[:8, 7:73, 7:73], [100, 100]).numpy()
  assert np.abs(batch['image'] - expected).mean() < 3


# --- Missing and unknown datasets. ---


@pytest.fixture
def no_downloads(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('download_and_prepare must not be called')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)


def test_missing_imagenet_names_where_to_put_archives(tmp_path, no_downloads):
  data = _data_config(tmp_path, name='imagenet2012')
  with pytest.raises(input_pipeline.DatasetNotFoundError) as e:
    sources.get_builder(data)
  message = str(e.value)
  assert 'imagenet2012' in message
  assert str(tmp_path) in message
  manual = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert os.path.join(manual, 'ILSVRC2012_img_train.tar') in message
  assert os.path.join(manual, 'ILSVRC2012_img_val.tar') in message
  assert isinstance(e.value, FileNotFoundError)
  assert not (tmp_path / 'imagenet2012').exists()


def test_missing_imagenet_with_custom_manual_dir(tmp_path, no_downloads):
  manual = tmp_path / 'archives'
  manual.mkdir()
  (manual / 'ILSVRC2012_img_train.tar').touch()  # The val archive is missing.
  data = _data_config(tmp_path / 'tfds', name='imagenet2012',
                      manual_dir=str(manual))
  with pytest.raises(input_pipeline.DatasetNotFoundError,
                     match='ILSVRC2012_img_val.tar') as e:
    sources.get_builder(data)
  assert str(manual / 'ILSVRC2012_img_train.tar') in str(e.value)


def test_imagenet_archives_present_prepares_from_manual_dir(tmp_path,
                                                            monkeypatch):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'):
    tarfile.open(manual / name, 'w').close()  # empty archives
  calls = []

  def record(self, *args, download_config=None, **kwargs):
    calls.append((self.name, download_config))

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', record)
  data = _data_config(tmp_path, name='imagenet2012', manual_dir=str(manual))
  builder = sources.get_builder(data)
  assert builder.name == 'imagenet2012'
  assert len(calls) == 1
  name, config = calls[0]
  assert name == 'imagenet2012'
  assert str(config.manual_dir) == str(manual)
  assert not config.try_download_gcs


def test_unknown_dataset(tmp_path, no_downloads):
  data = _data_config(tmp_path, name='no_such_dataset_xyz')
  with pytest.raises(input_pipeline.DatasetNotFoundError,
                     match='no_such_dataset_xyz'):
    sources.get_builder(data)


# --- The number of classes. ---


@pytest.mark.parametrize('name,classes', [('imagenet2012', 1000),
                                          ('demo_shapes', 10)])
def test_class_count_comes_from_the_dataset_unprepared(tmp_path, no_downloads,
                                                       name, classes):
  config = alexnet.get_config()
  config.data = _data_config(tmp_path, name=name)
  resolved = input_pipeline.with_dataset_classes(config)
  assert resolved.model.num_classes == classes
  assert config.model.num_classes == 0  # a copy: the caller's is unchanged
  assert not list(tmp_path.iterdir())  # nothing prepared or written


def test_class_count_of_an_image_folder_and_a_mismatch(tmp_path):
  for split in ('train', 'validation'):
    for name in ('cat', 'dog', 'eel'):
      os.makedirs(tmp_path / split / name)
      Image.new('RGB', (8, 8)).save(tmp_path / split / name / '0.jpg')
  config = alexnet.get_config()
  config.data.image_folder = str(tmp_path)
  assert input_pipeline.with_dataset_classes(config).model.num_classes == 3
  config.model.num_classes = 1000
  with pytest.raises(ValueError, match=r'has 3 classes but the model has 1000; '
                     r'set --config.model.num_classes=3'):
    input_pipeline.with_dataset_classes(config)


# --- Order and resumption. ---


def _stream(data, n, *, seed=0, start_step=0, batch_size=32):
  it = input_pipeline.load(data).train_iterator(batch_size=batch_size, seed=seed,
                                     start_step=start_step)
  return [next(it) for _ in range(n)]


def test_resume_at_step_k_continues_the_uninterrupted_stream(data_dir):
  data = _data_config(data_dir, pca_sigma=0.1)
  # 320 examples, batch 32: 10 steps an epoch; 23 steps span three epochs.
  # Resume at an epoch boundary and inside an epoch.
  full = _stream(data, 23)
  for k in (10, 13):
    resumed = _stream(data, 23 - k, start_step=k)
    for a, b in zip(full[k:], resumed):
      np.testing.assert_array_equal(a['label'], b['label'])
      np.testing.assert_array_equal(a['image'], b['image'])
  # Epochs are reshuffled, not repeated.
  assert not np.array_equal(full[0]['label'], full[10]['label'])


def test_steps_per_epoch_divides_the_smallest_shard(data_dir):
  assert input_pipeline.load(_data_config(data_dir)).steps_per_epoch(32) == 10
  assert input_pipeline.load(_data_config(data_dir)).steps_per_epoch(48) == 6


# --- PCA lighting. ---

EIGVAL = np.float32([0.2, 0.02, 0.004])
EIGVEC = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].astype(
    np.float32)


def test_lighting_offset_is_the_papers_formula():
  alpha = np.float32([0.3, -1.2, 0.7])
  got = preprocessing.lighting_offset(alpha, EIGVAL, EIGVEC)
  expected = 255 * sum(alpha[i] * EIGVAL[i] * EIGVEC[:, i] for i in range(3))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_lighting_covariance_in_the_eigenbasis_is_sigma2_l2():
  sigma, n = 0.1, 20_000
  data = ml_collections.ConfigDict(dict(resize_size=256, image_size=227,
                                        pca_sigma=sigma))
  norm = statistics.Normalization(mean=np.zeros(3, np.float32),
                                      eigval=EIGVAL, eigvec=EIGVEC)
  offsets = batching.augmentation(data, norm, 7, n)['lighting'] / 255
  in_basis = offsets @ EIGVEC  # coordinates a_i l_i
  covariance = np.cov(in_basis, rowvar=False)
  expected = np.diag((sigma * EIGVAL) ** 2)
  np.testing.assert_allclose(np.diag(covariance), np.diag(expected), rtol=0.05)
  off_diagonal = covariance - np.diag(np.diag(covariance))
  assert np.abs(off_diagonal).max() < 0.05 * expected.max()


def test_training_lighting_shifts_each_image_by_one_colour(data_dir):
  # Same seed, with and without lighting: the crops and flips agree and the
  # difference is one RGB offset per image, of the configured eigenvectors.
  plain = _data_config(data_dir)
  lit = _data_config(data_dir, pca_sigma=0.5, eigval=tuple(EIGVAL.tolist()),
                     eigvec=tuple(map(tuple, EIGVEC.tolist())))
  a = next(input_pipeline.load(plain).train_iterator(batch_size=16, seed=4))
  b = next(input_pipeline.load(lit).train_iterator(batch_size=16, seed=4))
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['flip'], b['flip'])
  per_image = (b['shift'] - a['shift'])[:, 0, 0]
  assert len(np.unique(per_image.round(3), axis=0)) == 16
  # Back in the eigenbasis, the 48 draws of alpha_i look like N(0, 0.5).
  alpha = (per_image / 255) @ EIGVEC / EIGVAL
  assert 0.3 < alpha.std() < 0.75 and abs(alpha.mean()) < 0.25


# --- Decoding only the crop. ---


@pytest.mark.parametrize('width,height,fmt', [
    (500, 375, 'JPEG'),     # decoded at full size, shrunk ~1.5x
    (1400, 1000, 'JPEG'),   # libjpeg shrinks 2x while decoding
    (3000, 2200, 'JPEG'),   # 8x
    (300, 420, 'JPEG'),     # portrait, shrunk ~1.2x
    (256, 256, 'JPEG'),     # an exact fit: the pixels themselves
    (900, 700, 'PNG')])     # decoded whole
def test_decode_crop_is_scale_then_crop(width, height, fmt):
  # Against the definition: the central square scaled to 256 (antialiased),
  # then the 227 window. The result is closer to it than to the window one
  # pixel over, so the window falls where it should.
  rng = np.random.default_rng(width)
  buffer = io.BytesIO()
  synthetic_photos.photo(rng, width, height).save(buffer, fmt, quality=95)
  full = (tf.io.decode_jpeg(buffer.getvalue(), channels=3,
                            dct_method='INTEGER_ACCURATE') if fmt == 'JPEG'
          else tf.io.decode_image(buffer.getvalue(), channels=3)).numpy()
  square = min(width, height)
  top0, left0 = (height - square) // 2, (width - square) // 2
  view = tf.image.resize(full[top0:top0 + square, left0:left0 + square],
                         [256, 256], antialias=True).numpy()
  for top, left in ((0, 0), (29, 13), (29, 29)):
    got = preprocessing.decode_crop(
        tf.constant(buffer.getvalue()), resize_size=256, top=tf.constant(top),
        left=tf.constant(left), size=227).numpy()
    assert got.dtype == np.uint8
    error = np.abs(got - view[top:top + 227, left:left + 227]).mean()
    step = -1 if top else 1
    shifted = view[top + step:top + step + 227, left + step:left + step + 227]
    assert error < 0.7 * np.abs(got - shifted).mean()
    assert error < (0.01 if (width, height) == (256, 256) else 4)


@pytest.mark.parametrize('width,height,resize_size,size', [
    (3000, 2200, 80, 71),    # 27x: shrunk 8x by libjpeg, then 3x by area
    (6000, 4400, 256, 227),  # 17x: 8x, then 2x
])
def test_large_shrinks_are_antialiased(width, height, resize_size, size):
  # Bilinear resampling after libjpeg's 8x shrink would alias the fine
  # texture: without the area reduction the error is several times larger.
  rng = np.random.default_rng(width)
  buffer = io.BytesIO()
  synthetic_photos.photo(rng, width, height).save(buffer, 'JPEG', quality=95)
  full = tf.io.decode_jpeg(buffer.getvalue(), channels=3,
                           dct_method='INTEGER_ACCURATE').numpy()
  square = min(width, height)
  top0, left0 = (height - square) // 2, (width - square) // 2
  view = tf.image.resize(full[top0:top0 + square, left0:left0 + square],
                         [resize_size, resize_size], antialias=True).numpy()
  top = left = (resize_size - size) // 2
  got = preprocessing.decode_crop(
      tf.constant(buffer.getvalue()), resize_size=resize_size,
      top=tf.constant(top), left=tf.constant(left), size=size).numpy()
  error = np.abs(got - view[top:top + size, left:left + size]).mean()
  assert error < 2.5


@pytest.mark.parametrize('dct', ['accurate', 'fast'])
def test_the_accurate_dct_decodes_as_pil_does(dct):
  # The fast inverse DCT darkens red and blue by about a level on average.
  rng = np.random.default_rng(11)
  buffer = io.BytesIO()
  synthetic_photos.photo(rng, 500, 375).save(buffer, 'JPEG', quality=90)
  got = preprocessing.decode_central_square(tf.constant(buffer.getvalue()),
                                            375, dct=dct, resample=False)
  pil = np.asarray(Image.open(buffer).convert('RGB'))[:, 62:62 + 375]
  bias = (got.numpy().astype(float) - pil).mean(axis=(0, 1))
  if dct == 'accurate':
    np.testing.assert_array_equal(got, pil)
  else:
    assert bias[0] < -0.5 and bias[2] < -0.5, bias


@pytest.mark.parametrize('subsampling,progressive', [
    (2, False), (1, False), (0, False), (2, True)])  # 4:2:0, 4:2:2, 4:4:4
def test_decoding_only_the_window_gives_a_full_decodes_pixels(subsampling,
                                                               progressive):
  # libjpeg's chroma upsampling differs at a cropped edge; the window must
  # not show it. Resampled the same way, the two agree exactly.
  noise = np.random.default_rng(7).integers(0, 256, (375, 500, 3), np.uint8)
  buffer = io.BytesIO()  # noise: the colour changes at every pixel
  Image.fromarray(noise).save(buffer, 'JPEG', quality=90,
                              subsampling=subsampling, progressive=progressive)
  encoded = tf.constant(buffer.getvalue())
  full = tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE')
  # Windows whose left edge starts a 16-pixel block, or whose right edge
  # ends a chroma sample: there a cropped decode differs.
  for top, left in ((0, 1), (17, 12), (29, 5)):
    where = dict(resize_size=256, top=tf.constant(top), left=tf.constant(left),
                 size=227)
    _, _, (y, x), side, _ = preprocessing._window(tf.shape(full)[:2], **where)
    y, x, side = int(y), int(x), int(side)
    expected = preprocessing.bilinear(full[y:y + side, x:x + side], 227)
    np.testing.assert_array_equal(preprocessing.decode_crop(encoded, **where),
                                  expected)


def test_fixed_point_bilinear_is_close_to_float_bilinear():
  # docs/performance.md: 0.36 levels on average (rounding alone: 0.25), under 2.5, no bias.
  rng = np.random.default_rng(3)
  errors = []
  for side in (227, 260, 333, 450):
    image = np.asarray(synthetic_photos.photo(rng, side, side))
    exact = tf.image.resize(image, [227, 227]).numpy()  # float bilinear
    errors.append(preprocessing.bilinear(image, 227).numpy() - exact)
    if side == 227:
      np.testing.assert_array_equal(errors[-1], 0)  # an exact fit is kept
  errors = np.concatenate([e.ravel() for e in errors[1:]])
  assert np.abs(errors).max() <= 2.5
  assert np.abs(errors).mean() < 0.45
  assert abs(errors.mean()) < 0.05


# --- The paper's ten crops. ---


def test_ten_crops_are_the_corners_centre_and_reflections():
  image = np.arange(6 * 6 * 1, dtype=np.float32).reshape(6, 6, 1)
  patches = preprocessing.crops(
      tf.constant(image), preprocessing.eval_corners(6, 4, ten_crop=True), 4)
  windows = [image[:4, :4], image[:4, 2:], image[2:, :4], image[2:, 2:],
             image[1:5, 1:5]]
  np.testing.assert_array_equal(patches, np.stack(windows))
  np.testing.assert_array_equal(
      preprocessing.crops(tf.constant(image),
                          preprocessing.eval_corners(6, 4, ten_crop=False), 4),
      image[1:5, 1:5])
  # The compiled step adds the reflections after the five patches.
  batch = {'image': patches.numpy()[None], 'shift': np.zeros((1, 1, 1, 1, 1), np.float32)}
  np.testing.assert_array_equal(
      trainer.standardize(batch, (1.0,))[0],
      np.stack(windows + [w[:, ::-1] for w in windows]))


def test_ten_crop_eval_batches(data_dir):
  data = _data_config(data_dir, image_size=72)
  images, labels = _decoded(data, 'validation')
  batches = list(input_pipeline.load(data).eval_iterator(batch_size=64,
                                              ten_crop=True))
  assert [b['image'].shape for b in batches] == [(64, 5, 72, 72, 3)] * 2
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 100
  first = batches[0]['image'][3]
  corners = preprocessing.eval_corners(data.resize_size, 72, ten_crop=True)
  np.testing.assert_array_equal(
      first, preprocessing.crops(tf.constant(images[3]), corners, 72))
  assert batches[0]['shift'].shape == (64, 1, 1, 1, 3)
  assert 'corner' not in batches[0]  # the per-channel mean travels in 'shift'
  np.testing.assert_array_equal(batches[0]['label'], labels[:64])
