"""One process of a multi-process test run: trains a few steps, prints losses.

Usage: distributed_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID LOCAL_DEVICES
(NUM_PROCESSES=1 runs alone). Every process feeds its slice of the same
global batches, so the losses must match a single process holding all devices.
"""

import json
import os
import sys

coordinator, num_processes, process_id, local_devices = sys.argv[1:5]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

import parallel  # noqa: E402
from trainer import Trainer, synthetic_batch  # noqa: E402
from configs import demo  # noqa: E402

STEPS = 3


def main() -> None:
  if int(num_processes) > 1:
    parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = demo.get_config('parallel=two_tower,size=tiny')
  config.data.image_size = 67
  config.batch_size = 16
  config.mesh.data = 4
  trainer = Trainer(config, parallel.make_mesh(config.mesh))
  state = trainer.init(config.seed)
  local = parallel.process_batch_size(config.batch_size)
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  losses = []
  for step in range(STEPS):
    batch = synthetic_batch(config, config.batch_size, step)
    state, metrics = trainer.train_step(
        state, {k: v[rows] for k, v in batch.items()})
    losses.append(float(metrics.loss.compute()))
  print('LOSSES ' + json.dumps(losses), flush=True)


if __name__ == '__main__':
  main()
