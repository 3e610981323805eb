"""How far the host runs ahead of the devices (runtime/dispatch.py): the
window it keeps, and the XLA:CPU deadlock the window prevents."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from runtime import dispatch

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_a_window_leaves_at_most_its_steps_unfinished():
  window = dispatch.Window(steps_ahead=2)
  step = jax.jit(lambda x: jnp.tanh(x @ x) / 64)
  x, outputs = jnp.ones((512, 512)), []
  for _ in range(6):
    x = step(x)
    window.add(x)
    outputs.append(x)
    # All but the last two are computed whatever the machine's speed.
    assert all(out.is_ready() for out in outputs[:-2])


def test_a_window_of_no_steps_is_refused():
  with pytest.raises(ValueError, match='steps_ahead must be at least 1'):
    dispatch.Window(steps_ahead=0)


# 200 train steps and 200 evaluation batches of the tiny net on a 4x2 mesh of
# eight simulated devices. A rendezvous that waits over 10 s aborts the
# process, so a deadlock fails in seconds rather than hanging.
MANY_STEPS = """
import os, sys
os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                           '--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 '
                           '--xla_cpu_collective_call_terminate_timeout_seconds=5')
from runtime import xla_flags
xla_flags.apply()
import jax, numpy as np
import parallel
from configs import demo as demo_config
from trainer import Trainer, synthetic_batch
config = demo_config.get_config('size=tiny')
config.data.image_size = 67
config.batch_size = config.eval_batch_size = 16
config.mesh.update(data=4, model=2)
trainer = Trainer(config, parallel.make_mesh(config.mesh, jax.devices()))
state = trainer.init(0)
batch = synthetic_batch(config, 16)
losses = []
for _ in range(200):
  state, metrics = trainer.train_step(state, batch)
  losses.append(metrics.loss)
eval_batch = {'image': batch['image'], 'shift': batch['shift'],
              'label': batch['label'], 'mask': np.ones(16, bool)}
errors = trainer.evaluate(state, iter([eval_batch] * 200)).compute()
print('trained', len(jax.device_get(losses)), 'evaluated', float(errors['top1_error']))
"""


def test_many_steps_on_simulated_devices_do_not_deadlock():
  # Without the window the host queued every step: XLA:CPU deadlocked in
  # most such runs once 32 were queued per device.
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, '-c', MANY_STEPS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('trained 200 evaluated '), result.stdout
