"""tools/convert_torchvision.py: torchvision's AlexNet, converted, gives
PyTorch's logits, and its checkpoint is one that eval, predict and
init_from restore."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import checkpointing
import evaluation
from configs import alexnet
from models import AlexNet
from tools import convert_torchvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 224


def _torchvision_alexnet(widths=(64, 192, 384, 256, 256), fc=4096) -> nn.Module:
  """torchvision.models.alexnet's layout and forward pass (torchvision itself
  is not needed; `widths` and `fc` narrow it), with weights that keep
  activations at unit scale, so that a tolerance of 1e-4 on the logits
  says something."""
  c1, c2, c3, c4, c5 = widths

  class TorchvisionAlexNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(
          nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2),
          nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
          nn.MaxPool2d(kernel_size=3, stride=2))
      self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
      self.classifier = nn.Sequential(
          nn.Dropout(p=0.5), nn.Linear(c5 * 6 * 6, fc), nn.ReLU(inplace=True),
          nn.Dropout(p=0.5), nn.Linear(fc, fc), nn.ReLU(inplace=True),
          nn.Linear(fc, 1000))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  torch.manual_seed(0)
  model = TorchvisionAlexNet()
  for layer in model.modules():
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')
      nn.init.normal_(layer.bias, std=0.1)
  return model.eval()


def _saved(tmp_path_factory, size: str):
  """The model of `size` (configs/alexnet.py's), its saved state dict, and
  uint8 images with their normalised form and its logits."""
  model = (_torchvision_alexnet() if size == 'full' else
           _torchvision_alexnet(**dict(zip(('widths', 'fc'), _tiny_widths()))))
  path = tmp_path_factory.mktemp('weights') / 'alexnet.pth'
  torch.save(model.state_dict(), path)
  images = np.random.default_rng(0).integers(0, 256, (8, SIZE, SIZE, 3), np.uint8)
  inputs = (np.float32(images) - np.float32(convert_torchvision.MEAN_RGB)) / np.float32(
      convert_torchvision.STD_RGB)
  with torch.no_grad():
    logits = model(torch.from_numpy(inputs.transpose(0, 3, 1, 2))).numpy()
  return path, images, inputs, logits


def _tiny_widths():
  model = _config('tiny').model
  return model.features, model.fc_features[0]


@pytest.fixture(scope='module')
def torch_model(tmp_path_factory):
  return _saved(tmp_path_factory, 'full')


@pytest.fixture(scope='module')
def tiny_torch_model(tmp_path_factory):
  """The narrow network's checkpoint writes and restores in seconds."""
  return _saved(tmp_path_factory, 'tiny')


def _config(size='full'):
  config = alexnet.get_config(f'arch=owt,mean=channel,size={size}')
  config.data.mean_rgb = convert_torchvision.MEAN_RGB
  config.data.std_rgb = convert_torchvision.STD_RGB
  config.batch_size = config.eval_batch_size = 8
  return config


def test_converted_weights_give_pytorchs_logits(torch_model):
  path, _, inputs, expected = torch_model
  assert expected.std() > 0.5, 'logits too small for the tolerance to matter'
  params = convert_torchvision.convert(convert_torchvision.load_state_dict(path))
  config = _config()
  config.model.num_classes = 1000
  logits = np.asarray(AlexNet(**config.model).apply({'params': params}, inputs))
  print('max abs logit difference:', np.abs(logits - expected).max())
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_checkpoint_is_what_eval_predict_and_init_from_restore(tiny_torch_model,
                                                               tmp_path):
  path, images, _, expected = tiny_torch_model
  config = _config('tiny')
  workdir = str(tmp_path / 'torchvision')
  result = subprocess.run(
      [sys.executable, '-m', 'tools.convert_torchvision',
       '--config=configs/alexnet.py:arch=owt,mean=channel,size=tiny', f'--weights={path}',
       f'--workdir={workdir}', '--config.batch_size=8', '--config.eval_batch_size=8',
       f'--config.data.mean_rgb={config.data.mean_rgb}',
       f'--config.data.std_rgb={config.data.std_rgb}'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'as checkpoint 0 in' in result.stdout

  # --mode=eval and --mode=predict restore it as 'latest', with the pipeline's
  # own normalisation of uint8 pixels.
  chosen = evaluation.restore_chosen(config, workdir)
  assert chosen.step == 0
  out = chosen.trainer.predict(chosen.state, {
      'image': images, 'shift': np.tile(-np.float32(config.data.mean_rgb), (8, 1, 1, 1))})
  np.testing.assert_allclose(np.log(out['probabilities']),
                             jax.nn.log_softmax(expected), rtol=0, atol=1e-4)
  # --config.init_from takes its parameters.
  zeros = chosen.state.replace(params=jax.tree.map(jnp.zeros_like, chosen.state.params))
  loaded = checkpointing.load_params(workdir, chosen.trainer, zeros)
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(chosen.state.params)):
    np.testing.assert_array_equal(a, b)

  with pytest.raises(FileExistsError, match='new --workdir'):
    convert_torchvision.write(config, convert_torchvision.load_state_dict(path), workdir)


def test_a_network_other_than_torchvisions_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r'model.towers=2 \(needs 1\).*arch=owt'):
    convert_torchvision.write(alexnet.get_config(), {}, str(tmp_path / 'w'))
  # Its weights were trained on torchvision's per-channel mean.
  with pytest.raises(ValueError, match=r'not the paper\'s mean image.*arch=owt,mean=channel'):
    convert_torchvision.write(alexnet.get_config('arch=owt'), {}, str(tmp_path / 'w'))


def _broken(tmp_path, original, how):
  """A copy of `original`'s state dict file, broken as `how` says."""
  path = tmp_path / f'{how}.pth'
  state = torch.load(original, weights_only=True)
  if how == 'no_fc8_bias':
    del state['classifier.6.bias']
  elif how == 'flat_conv1':
    state['features.0.weight'] = state['features.0.weight'][0]
  elif how == 'wrapped':
    state = {'state_dict': state, 'epoch': 90}
  elif how == 'empty':
    path.write_bytes(b'')
    return path
  elif how == 'garbage':
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path
  torch.save(state, path)
  return path


@pytest.mark.parametrize('how, message', [
    ('no_fc8_bias', r"is not a torchvision AlexNet state dict: it lacks \['classifier.6.bias'\]"),
    ('flat_conv1', r'is not a torchvision AlexNet state dict: features.0.weight has '
                   r'shape \(3, 11, 11\), not 4-D'),
    ('empty', r'is empty \(0 bytes\): not a saved state dict'),
    ('garbage', r'is not a PyTorch file of tensors that torch.load\(weights_only=True\) '
                r'can read \(UnpicklingError')])
def test_a_broken_weights_file_is_named_with_what_is_wrong(tiny_torch_model, tmp_path,
                                                           how, message):
  path = _broken(tmp_path, tiny_torch_model[0], how)
  with pytest.raises(ValueError, match=f'^{path} {message}'):
    convert_torchvision.load_state_dict(str(path))


def test_a_state_dict_wrapper_is_accepted_and_the_input_size_checked(tiny_torch_model,
                                                                      tmp_path):
  path = tiny_torch_model[0]
  wrapped = convert_torchvision.load_state_dict(str(_broken(tmp_path, path, 'wrapped')))
  plain = convert_torchvision.load_state_dict(str(path))
  assert wrapped.keys() == plain.keys()
  config = _config('tiny')
  config.data.image_size = 227
  with pytest.raises(ValueError, match=r"data.image_size=227: torchvision's AlexNet "
                                       'takes 224x224 inputs'):
    convert_torchvision.write(config, plain, str(tmp_path / 'w'))
