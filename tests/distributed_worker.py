"""One process of a multi-process test run: trains a few steps, prints losses.

Usage: distributed_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID LOCAL_DEVICES [PARAMS [PARALLEL]]
(NUM_PROCESSES=1 runs alone; COORDINATOR=slurm: the layout srun gives, which
jax.distributed detects). Every process feeds its slice of the same global
batches, so the losses must match a single process holding all devices.
Process 0 writes the final parameters to PARAMS (.npz) if given; PARALLEL
is the strategy (default two_tower).
"""

import json
import os
import sys

coordinator, num_processes, process_id, local_devices = sys.argv[1:5]
params_path = sys.argv[5] if len(sys.argv) > 5 else None
strategy = sys.argv[6] if len(sys.argv) > 6 else 'two_tower'
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import parallel  # noqa: E402
from trainer import Trainer, synthetic_batch  # noqa: E402
from configs import demo  # noqa: E402

STEPS = 3


def main() -> None:
  if coordinator == 'slurm':
    parallel.initialize_distributed()
  elif int(num_processes) > 1:
    parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = demo.get_config(f'parallel={strategy},size=tiny')
  config.data.image_size = 67
  config.batch_size = 16
  config.mesh.data = -1
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
  params = {'/'.join(k.key for k in path): parallel.host_array(leaf) for path, leaf
            in jax.tree_util.tree_leaves_with_path(state.params)}
  if params_path and jax.process_index() == 0:
    np.savez(params_path, **params)


if __name__ == '__main__':
  main()
