"""Image folders: layouts, odd files, corrupt files, and the 256x256 copy."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import checkpointing
import evaluation
import input_pipeline
import train
from configs import demo as demo_config
from data import image_folder, prepare, preprocessing, sources


def _write(path, array: np.ndarray, fmt: str = 'JPEG', mode: str | None = None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  image.save(path, fmt)


def _pattern(rng, label: int, size: int = 40) -> np.ndarray:
  """A class-coloured image with noise, so that classes are learnable."""
  base = np.zeros((size, size, 3)) + 60
  base[..., label % 3] = 200
  return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _folder(root, *, per_class=6, classes=('a', 'b', 'c'), split_dirs=True,
            seed=0):
  rng = np.random.default_rng(seed)
  for split in (('train', 'validation') if split_dirs else ('',)):
    for label, name in enumerate(classes):
      for i in range(per_class):
        _write(os.path.join(root, split, name, f'{i}.jpg'),
               _pattern(rng, label))
  return str(root)


def _config(root, **data):
  config = demo_config.get_config('size=tiny')
  config.data.image_folder = str(root)
  config.data.resize_size = 40
  config.data.image_size = 32
  config.data.shuffle_buffer = 64
  config.data.update(data)
  return config


def test_split_folders_give_classes_labels_and_sizes(tmp_path):
  root = _folder(tmp_path, per_class=4)
  folder = image_folder.scan(root)
  assert folder.class_names == ('a', 'b', 'c')
  paths, labels = folder.splits['validation'].paths, folder.splits['validation'].labels
  assert len(paths) == 12 and sorted(set(labels.tolist())) == [0, 1, 2]
  assert all(p.startswith(f'validation/{folder.class_names[l]}/'.encode())
             for p, l in zip(paths, labels))
  info = input_pipeline.load(_config(root).data)
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (3, 12, 12)


def test_val_fraction_holds_out_each_class_disjointly(tmp_path):
  root = _folder(tmp_path, per_class=10, split_dirs=False)
  folder = image_folder.scan(root, val_fraction=0.2)
  train_paths = folder.splits['train'].paths
  val_paths, val_labels = folder.splits['validation'].paths, folder.splits['validation'].labels
  assert len(val_paths) == 6 and len(train_paths) == 24
  assert not set(train_paths) & set(val_paths)
  assert sorted(val_labels.tolist()) == [0, 0, 1, 1, 2, 2]
  again = image_folder.scan(root, val_fraction=0.2)
  np.testing.assert_array_equal(again.splits['validation'].paths, val_paths)
  with pytest.raises(ValueError, match='val_fraction'):
    image_folder.scan(root)


def test_processes_read_disjoint_shards(tmp_path):
  folder = image_folder.scan(_folder(tmp_path, per_class=5))
  shards = [[ex['image'] for ex in folder.read(
      'train', process_index=i, process_count=3).as_numpy_iterator()]
            for i in range(3)]
  everything = sum(shards, [])
  assert sorted(len(s) for s in shards) == [5, 5, 5]
  assert len(set(everything)) == 15


def _odd_files(root):
  """A corrupt file, a CMYK JPEG, a PNG named .jpg and a grayscale JPEG."""
  rng = np.random.default_rng(1)
  good = _pattern(rng, 0)
  _write(f'{root}/train/a/cmyk.jpg', good, mode='CMYK')
  _write(f'{root}/train/a/png_named.jpg', _pattern(rng, 0), fmt='PNG')
  _write(f'{root}/train/b/gray.jpg', _pattern(rng, 1)[..., 0])
  buffer = io.BytesIO()
  Image.fromarray(_pattern(rng, 1)).save(buffer, 'JPEG')
  with open(f'{root}/train/b/truncated.jpg', 'wb') as f:
    f.write(buffer.getvalue()[:300])
  return good


def test_odd_files_decode_rgb(tmp_path):
  good = _odd_files(tmp_path)
  for name in ('a/cmyk.jpg', 'a/png_named.jpg', 'b/gray.jpg'):
    encoded = tf.io.read_file(f'{tmp_path}/train/{name}')
    image = preprocessing.decode_central_square(encoded, 40).numpy()
    assert image.shape == (40, 40, 3)
    assert image.std() > 5
  cmyk = preprocessing.decode_central_square(
      tf.io.read_file(f'{tmp_path}/train/a/cmyk.jpg'), 40).numpy()
  # CMYK -> RGB keeps the colours (up to JPEG's loss).
  assert np.abs(cmyk.mean((0, 1)) - good.mean((0, 1))).max() < 12


def test_odd_folder_trains_and_reports_one_skipped_file(tmp_path):
  root = _folder(tmp_path / 'data', per_class=3, classes=('a', 'b'))
  _odd_files(root)
  config = _config(root, pca_sigma=0.1)
  config.model.num_classes = 2
  config.data.resize_size = config.data.image_size = 67
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 2   # one epoch of the 10 files, 9 decodable
  config.log_every_steps = 1
  results = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert results['val_examples'] == 6
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(
      str(tmp_path / 'work'), size_guidance={'tensors': 0})
  events.Reload()
  skipped = [tf.make_ndarray(e.tensor_proto)
             for e in events.Tensors('skipped_images')]
  assert skipped[-1] == 1


def test_epochs_cut_short_by_corrupt_files_go_on(tmp_path):
  # 6 good files and 5 truncated ones at batch 1: 11 steps an epoch planned,
  # 6 delivered, ending before the next epoch would have been started ahead.
  root = _folder(tmp_path, per_class=3, classes=('a', 'b'))
  for i in range(5):
    with open(f'{root}/train/b/truncated{i}.jpg', 'wb') as f:
      f.write(open(f'{root}/train/a/0.jpg', 'rb').read()[:300])
  batches = input_pipeline.load(_config(root).data).train_iterator(batch_size=1, seed=0)
  labels = [int(next(batches)['label'][0]) for _ in range(18)]
  batches.close()
  for epoch in range(3):
    assert sorted(labels[6 * epoch:6 * epoch + 6]) == [0, 0, 0, 1, 1, 1]
  assert batches.skipped >= 1
  with pytest.raises(StopIteration):
    next(batches)


def test_corrupt_file_fails_fast_when_configured(tmp_path):
  root = _folder(tmp_path, per_class=3, classes=('a', 'b'))
  _odd_files(root)
  data = _config(root, skip_corrupt=False).data
  with pytest.raises(ValueError, match='skip_corrupt'):
    batches = input_pipeline.load(data).train_iterator(batch_size=10, seed=0)
    next(batches)


def test_prepare_writes_the_papers_squares_and_training_reads_them(tmp_path, monkeypatch):
  root = _folder(tmp_path / 'src', per_class=2, classes=('a', 'b'))
  # A landscape image: its central square is what gets stored.
  wide = np.zeros((40, 80, 3), np.uint8)
  wide[:, 20:60] = 250
  _write(f'{root}/validation/a/wide.png', wide, fmt='PNG')
  prepared = str(tmp_path / 'prepared')
  data = _config(root, prepared_dir=prepared, resize_size=32,
                 image_size=32).data
  summary = prepare.prepare(data)
  assert 'validation: wrote 5 of 5' in summary
  files = glob.glob(f'{prepared}/validation/*/*.jpg')
  assert len(files) == 5
  assert {os.path.basename(os.path.dirname(f)) for f in files} == {
      '00000', '00001'}
  sizes = {Image.open(f).size for f in files}
  assert sizes == {(32, 32)}
  # The wide PNG's central square is all bright: exactly one copy is.
  assert sum(np.asarray(Image.open(f)).min() > 200 for f in files) == 1
  # The copy's listing and class names were written with it.
  counts = _count_reads(monkeypatch, prepared)
  info = input_pipeline.load(data)
  assert counts['listed'] == 0 and info.class_names == ('a', 'b')
  monkeypatch.undo()
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (2, 4, 5)
  batch = next(input_pipeline.load(data).train_iterator(batch_size=4, seed=0))
  assert batch['image'].shape == (4, 32, 32, 3)
  # Whole-square crops of the copy are its images, pixel for pixel.
  stored = [tf.io.decode_jpeg(open(f, 'rb').read(),
                              dct_method='INTEGER_ACCURATE').numpy()
            for f in glob.glob(f'{prepared}/train/*/*.jpg')]
  for image in batch['image']:
    assert any(np.array_equal(image, s) for s in stored)
  with pytest.raises(FileExistsError):
    prepare.prepare(data)
  # Its crops are not resampled, so the copy must hold this resize_size.
  larger = _config(root, prepared_dir=prepared, resize_size=48,
                   image_size=32).data
  with pytest.raises(ValueError, match=r'32x32 images.*resize_size=32'):
    input_pipeline.load(larger).train_iterator(batch_size=4, seed=0)
  info_file = os.path.join(prepared, sources.PREPARED_INFO)
  with open(info_file, 'w') as f:
    f.write('{"resize')  # cut short
  with pytest.raises(ValueError, match='prepare it again'):
    input_pipeline.load(data).train_iterator(batch_size=4, seed=0)
  os.remove(info_file)
  with pytest.raises(ValueError, match='prepare it again'):
    input_pipeline.load(data).train_iterator(batch_size=4, seed=0)


def test_an_evaluation_of_no_decodable_image_is_an_error(tmp_path):
  root = _folder(tmp_path / 'data', per_class=4, classes=('a', 'b'))
  for path in glob.glob(f'{root}/validation/*/*.jpg'):
    with open(path, 'w') as f:
      f.write('not an image')
  config = _config(root)
  config.model.num_classes = 2
  config.data.resize_size = config.data.image_size = 67
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 1
  with pytest.raises(ValueError, match=r"No example of split 'validation' of .* "
                     'could be evaluated'):
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert not (tmp_path / 'work' / 'results.json').exists()


def test_a_training_split_without_a_decodable_batch_is_an_error(tmp_path):
  # Text files named .jpg, as in a folder of failed downloads.
  for split in ('train', 'validation'):
    for name in ('a', 'b'):
      os.makedirs(tmp_path / split / name)
      for i in range(6):
        (tmp_path / split / name / f'{i}.jpg').write_text('not an image')
  config = _config(tmp_path)
  config.model.num_classes = 2
  config.data.resize_size = config.data.image_size = 67
  config.batch_size = config.eval_batch_size = 8
  with pytest.raises(ValueError, match=(
      rf"Epoch 0 of split 'train' of '{tmp_path}' gave no batch of 8: of the 12 "
      r'images this process tried, fewer than 8 decoded .*skip_corrupt')):
    train.train_and_evaluate(config, str(tmp_path / 'work'))


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
  root = _folder(tmp_path, per_class=2, classes=('a', 'b'))
  os.makedirs(tmp_path / 'train' / 'empty')
  os.makedirs(tmp_path / 'validation' / 'empty')
  (tmp_path / 'train' / 'empty' / 'notes.txt').write_text('not an image')
  with pytest.raises(ValueError, match=r"The class folders 'empty' of .* hold no "
                     'images .* in any split'):
    image_folder.scan(root)
  # A class with training images only is a class.
  os.rmdir(tmp_path / 'validation' / 'empty')
  _write(str(tmp_path / 'train' / 'empty' / '0.jpg'), _pattern(np.random.default_rng(0), 0))
  assert image_folder.scan(root).class_names == ('a', 'b', 'empty')


def test_links_are_followed_and_broken_ones_named(tmp_path, caplog):
  root = _folder(tmp_path / 'data', per_class=2, classes=('a', 'b'))
  _folder(tmp_path / 'elsewhere', per_class=3, classes=('c',))
  os.symlink(tmp_path / 'elsewhere' / 'train' / 'c', tmp_path / 'data' / 'train' / 'c')
  os.symlink(tmp_path / 'nowhere', tmp_path / 'data' / 'train' / 'gone')
  os.symlink('loop.jpg', tmp_path / 'data' / 'train' / 'a' / 'loop.jpg')
  with caplog.at_level('WARNING'):
    folder = image_folder.scan(root)
  assert folder.class_names == ('a', 'b', 'c')
  assert folder.num_examples('train') == 2 + 2 + 3
  assert 'Left out' in caplog.text and 'gone' in caplog.text
  assert 'loop.jpg' in caplog.text


def test_a_folder_without_folders_is_named_so(tmp_path):
  (tmp_path / 'readme.txt').write_text('nothing here')
  with pytest.raises(ValueError, match='holds no folders: put the images in one '
                     'folder per class'):
    image_folder.scan(str(tmp_path))


def test_a_file_that_cannot_be_read_names_the_setting():
  # A file that vanished or a link that broke after the scan: not an
  # InvalidArgumentError, and still the designed message.
  def batches():
    yield {}
    raise tf.errors.NotFoundError(None, None, '/data/a/0.jpg; No such file or directory')
  with pytest.raises(ValueError, match=r'could not be read or decoded: /data/a/0.jpg; '
                     r'No such file or directory\. Set --config.data.skip_corrupt=True'):
    list(preprocessing.explain_errors(batches()))


def _count_reads(monkeypatch, root):
  """Counts os.scandir of ROOT's class folders, and the reads of its
  statistics' cache."""
  counts = {'listed': 0, 'statistics': 0}
  scandir, load = os.scandir, np.load

  def counting_scandir(path='.'):
    if os.path.dirname(os.path.dirname(str(path))) == str(root):
      counts['listed'] += 1
    return scandir(path)

  def counting_load(file, *args, **kwargs):
    loaded = load(file, *args, **kwargs)
    counts['statistics'] += '.statistics' in str(file)
    return loaded

  monkeypatch.setattr(os, 'scandir', counting_scandir)
  monkeypatch.setattr(np, 'load', counting_load)
  return counts


def test_a_run_lists_its_folder_once_and_the_next_run_not_at_all(
    tmp_path, monkeypatch):
  root = _folder(tmp_path / 'data', per_class=8, classes=('a', 'b'))
  config = _config(root, mean_image=True, resize_size=67, image_size=67)
  config.batch_size = config.eval_batch_size = 8
  config.model.num_classes = 0
  config.num_train_steps, config.eval_every_epochs = 4, 1.0  # two evaluations
  counts = _count_reads(monkeypatch, tmp_path / 'data')
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  # Four class folders, each listed once; the statistics computed, then
  # read by no one again.
  assert counts == {'listed': 4, 'statistics': 0}
  assert os.path.isfile(os.path.join(root, '.listing', 'images.npz'))

  counts.update(listed=0)
  config.num_train_steps = 6  # the same run, resumed: listing and statistics read once
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert counts == {'listed': 0, 'statistics': 1}
  counts.update(statistics=0)
  config.eval.checkpoint = 'latest'
  evaluation.report(config, str(tmp_path / 'work'))
  assert counts == {'listed': 0, 'statistics': 1}


def test_a_changed_folder_is_listed_again_with_a_warning(tmp_path, caplog):
  root = _folder(tmp_path, per_class=2, classes=('a', 'b'))
  assert image_folder.scan(root).num_examples('train') == 4
  _write(f'{root}/train/b/new.jpg', _pattern(np.random.default_rng(0), 1))
  os.remove(f'{root}/train/a/0.jpg')
  os.makedirs(f'{root}/train/c')
  _write(f'{root}/train/c/0.jpg', _pattern(np.random.default_rng(0), 2))
  with caplog.at_level('WARNING'):
    folder = image_folder.scan(root)
  assert folder.num_examples('train') == 5 and folder.class_names == ('a', 'b', 'c')
  assert ('folders added: 1 (train/c); folders whose files changed: 2 '
          '(train/a, train/b)); listing those folders again') in caplog.text


def test_a_folder_where_the_listing_cannot_be_written_is_listed_as_before(tmp_path):
  root = _folder(tmp_path, per_class=2, classes=('a', 'b'))
  # Tests run as root, who may write anywhere: a file where the listing's
  # folder would go fails the write as a read-only folder does.
  open(os.path.join(root, '.listing'), 'w').close()
  first, again = image_folder.scan(root), image_folder.scan(root)
  assert first.fingerprint('train') == again.fingerprint('train')
  assert again.num_examples('validation') == 4


def test_resuming_on_changed_data_is_refused_naming_what_differs(tmp_path, caplog):
  root = _folder(tmp_path / 'data', per_class=8, classes=('a', 'b'))
  config = _config(root, mean_image=True, resize_size=67, image_size=67)
  config.batch_size = config.eval_batch_size = 8
  config.model.num_classes = 0
  config.num_train_steps = 2
  workdir = str(tmp_path / 'work')
  train.train_and_evaluate(config, workdir)
  rng = np.random.default_rng(5)
  for i in range(8):
    _write(f'{root}/train/a/new{i}.jpg', _pattern(rng, 0))
  config.num_train_steps = 4
  with pytest.raises(checkpointing.DataMismatchError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert 'The data differ from those checkpoint 2 in' in message
  assert 'train_examples: 16 -> 24' in message and 'train_files: ' in message
  assert 'normalization: ' in message and 'eval_files' not in message
  assert '--config.checkpoint.allow_other_data=True' in message
  # Knowingly: it goes on, and says so.
  config.checkpoint.allow_other_data = True
  with caplog.at_level('WARNING'):
    results = train.train_and_evaluate(config, workdir)
  assert results['step'] == 4
  assert 'Resuming all the same, as checkpoint.allow_other_data says' in caplog.text
