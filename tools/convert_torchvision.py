"""torchvision's AlexNet weights as a checkpoint of the `arch=owt` network.

  python -m tools.convert_torchvision --config=configs/alexnet.py:arch=owt,mean=channel \\
      --weights=alexnet-owt-7be5be79.pth --workdir=runs/torchvision \\
      '--config.data.mean_rgb=(123.675, 116.28, 103.53)' \\
      '--config.data.std_rgb=(58.395, 57.12, 57.375)'

reads a torchvision AlexNet state dict (torch.load with weights_only=True:
tensors only, never arbitrary pickled objects; a {'state_dict': ...}
wrapper is accepted) and saves it as step 0 of
WORKDIR's checkpoints, which --mode=eval, --mode=predict and the figures
then restore as 'latest', and --config.init_from starts a run from. Pass
the same --config flags as those later commands: a checkpoint records its
config, and a restore with another model or data config is refused.

PyTorch is needed by this tool alone (requirements-torch.txt).

The layouts: torchvision's features.0/3/6/8/10 are conv1..conv5, its
classifier.1/4/6 fc6..fc8. A PyTorch convolution's weight is (out, in, kh,
kw), a tower kernel here (towers=1, kh, kw, in, out); a Linear weight is
(out, in), a Dense kernel (in, out). PyTorch flattens pool5's maps as (C, H,
W), this network as (H, W, C), so fc6's input rows are permuted. For 224x224
inputs pool5 is already 6x6, where torchvision's adaptive average pooling
changes nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

import checkpointing
import parallel
from trainer import Trainer

_CONVS = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
          'conv4': 'features.8', 'conv5': 'features.10'}
_DENSES = {'fc6': 'classifier.1', 'fc7': 'classifier.4', 'fc8': 'classifier.6'}
# The model fields torchvision's network has (models/presets.py: 'owt').
_TORCHVISION_MODEL = dict(towers=1, norm='none', conv1_kernel=11, conv1_stride=4,
                          conv1_padding=2, pool_window=3, pool_stride=2)
_TORCHVISION_IMAGE_SIZE = 224
# torchvision's normalisation, (x / 255 - mean) / std, in this pipeline's
# 0-255 units: data.mean_rgb = 255 mean, data.std_rgb = 255 std.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


_SAVE = 'save the model with torch.save(model.state_dict(), path)'


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A .pth state dict (or {'state_dict': it}) as float32 NumPy arrays;
  tensors only (weights_only). What is wrong with the file is named."""
  import pickle  # noqa: PLC0415  (torch.load's errors)

  import torch  # noqa: PLC0415  (the converter's own dependency, requirements-torch.txt)
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise ValueError(f'{path} is empty (0 bytes): not a saved state dict; {_SAVE}.')
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
    raise ValueError(
        f'{path} is not a PyTorch file of tensors that torch.load(weights_only='
        f'True) can read ({type(e).__name__}: {str(e).splitlines()[0]}); {_SAVE}. '
        'Never load it with weights_only=False unless you trust its source.') from e
  if isinstance(state, Mapping) and isinstance(state.get('state_dict'), Mapping):
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise ValueError(f'{path} holds a {type(state).__name__}, not a state dict; '
                     f'{_SAVE}.')
  if other := [k for k, v in state.items() if not isinstance(v, torch.Tensor)]:
    raise ValueError(f'{path}: {other[:3]} are not tensors; a state dict maps '
                     f'names to tensors ({_SAVE}).')
  state = {k: v.detach().float().numpy() for k, v in state.items()}
  check_state_dict(state, path)
  return state


def check_state_dict(state: Mapping[str, np.ndarray], what: str = 'The state dict') -> None:
  """Raises ValueError naming `what` and the keys it lacks, or the arrays
  whose number of dimensions is not torchvision AlexNet's."""
  missing = sorted({f'{p}.{w}' for p in (*_CONVS.values(), *_DENSES.values())
                    for w in ('weight', 'bias')} - set(state))
  if missing:
    raise ValueError(f'{what} is not a torchvision AlexNet state dict: it lacks '
                     f'{missing} (it has {sorted(state)[:8]}...).')
  ndim = {**{f'{p}.weight': 4 for p in _CONVS.values()},
          **{f'{p}.weight': 2 for p in _DENSES.values()},
          **{f'{p}.bias': 1 for p in (*_CONVS.values(), *_DENSES.values())}}
  wrong = [f'{k} has shape {tuple(np.shape(state[k]))}, not {n}-D'
           for k, n in ndim.items() if np.ndim(state[k]) != n]
  if wrong:
    raise ValueError(f'{what} is not a torchvision AlexNet state dict: '
                     + '; '.join(wrong) + '.')


def convert(state: Mapping[str, np.ndarray]) -> dict:
  """torchvision AlexNet weights -> this AlexNet's parameters (float32)."""
  check_state_dict(state)
  params = {}
  for name, prefix in _CONVS.items():
    weight = state[f'{prefix}.weight']                    # (out, in, kh, kw)
    params[name] = {'kernel': weight.transpose(2, 3, 1, 0)[None],
                    'bias': state[f'{prefix}.bias'][None]}
  for name, prefix in _DENSES.items():
    kernel = state[f'{prefix}.weight'].T                  # (in, out)
    if name == 'fc6':
      # Rows in PyTorch's (C, H, W) order of pool5's square maps -> (H, W, C).
      c = state['features.10.weight'].shape[0]
      side = math.isqrt(kernel.shape[0] // c)
      kernel = kernel.reshape(c, side, side, -1).transpose(1, 2, 0, 3).reshape(
          kernel.shape)
    params[name] = {'kernel': kernel, 'bias': state[f'{prefix}.bias']}
  return params


def check_model(config: ml_collections.ConfigDict) -> None:
  """The config's network and mean are torchvision's, or a clear error
  naming the keys."""
  wrong = {k: v for k, v in _TORCHVISION_MODEL.items() if config.model[k] != v}
  if wrong:
    raise ValueError(
        'torchvision\'s AlexNet is the `arch=owt` network; this config differs '
        'in ' + ', '.join(f'model.{k}={config.model[k]!r} (needs {v!r})'
                          for k, v in wrong.items()) +
        '. Use --config=configs/alexnet.py:arch=owt,mean=channel.')
  if config.data.image_size != _TORCHVISION_IMAGE_SIZE:
    raise ValueError(
        f'data.image_size={config.data.image_size}: torchvision\'s AlexNet takes '
        f'{_TORCHVISION_IMAGE_SIZE}x{_TORCHVISION_IMAGE_SIZE} inputs (its fc6 '
        'expects pool5 at 6x6); use arch=owt\'s default.')
  if config.data.mean_image:
    raise ValueError(
        "torchvision's weights expect its per-channel normalisation, not the "
        "paper's mean image (data.mean_image=True, arch=owt's default); use "
        '--config=configs/alexnet.py:arch=owt,mean=channel.')


def write(config: ml_collections.ConfigDict, state_dict: Mapping[str, np.ndarray],
          workdir: str) -> str:
  """Saves the converted weights as step 0 of `workdir`'s checkpoints."""
  check_model(config)
  if os.path.isdir(os.path.join(workdir, checkpointing.CHECKPOINT_DIR)):
    raise FileExistsError(f'{workdir} already has checkpoints; convert into a '
                          'new --workdir.')
  config = config.copy_and_resolve_references()
  params = convert(state_dict)
  classes = state_dict['classifier.6.bias'].shape[0]
  if config.model.num_classes not in (0, classes):
    raise ValueError(f'The weights have {classes} classes, the config '
                     f'{config.model.num_classes}; set --config.model.num_classes=0.')
  config.model.num_classes = classes
  trainer = Trainer(config, parallel.make_mesh(config.mesh))
  state = trainer.init(config.seed)
  shapes = jax.tree.map(np.shape, state.params)
  if jax.tree.map(np.shape, params) != shapes:
    raise ValueError(f'The weights\' shapes {jax.tree.map(np.shape, params)} do not '
                     f'fit the config\'s network {shapes}; use '
                     '--config=configs/alexnet.py:arch=owt,mean=channel with its default widths.')
  state = state.replace(params=jax.device_put(params, trainer.state_sharding.params))
  checkpoints = checkpointing.Checkpoints(workdir, config)
  checkpoints.save(state, results={}, evaluated=False)
  checkpoints.wait_until_finished()
  checkpoints.close()
  if (tuple(config.data.mean_rgb), tuple(config.data.std_rgb)) != (MEAN_RGB, STD_RGB):
    logging.warning(
        "torchvision's weights expect its normalisation; this config's "
        'data.mean_rgb=%s, data.std_rgb=%s differ from %s, %s.',
        config.data.mean_rgb, config.data.std_rgb, MEAN_RGB, STD_RGB)
  return checkpoints.directory


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  directory = write(FLAGS.config, load_state_dict(FLAGS.weights), FLAGS.workdir)
  print(f'Wrote torchvision\'s weights from {FLAGS.weights} as checkpoint 0 in '
        f'{directory}.')


if __name__ == '__main__':
  # Defined here, not on import: main.py and python -m sweeps define
  # --config and --workdir too, and tests import these modules together.
  config_flags.DEFINE_config_file(
      'config', None, 'The config the checkpoint is for, e.g. '
      'configs/alexnet.py:arch=owt,mean=channel; the same flags as the later --mode=eval.',
      lock_config=True)
  flags.DEFINE_string('weights', None, 'A torchvision AlexNet state dict (.pth).')
  flags.DEFINE_string('workdir', None, 'A new workdir; the checkpoint is its step 0.')
  flags.mark_flags_as_required(['config', 'weights', 'workdir'])
  app.run(main)
