"""python -m cluster: the sbatch script of one training run over many nodes.

  python -m cluster --nodes=2 --tasks_per_node=1 --gpus_per_task=8 \\
      --time=48:00:00 [--sbatch=--partition=gpu] [--submit] \\
      -- --config=configs/alexnet.py --workdir=runs/alexnet

writes WORKDIR/train.sbatch: srun starts main.py with the flags after `--` in
every process (jax.distributed reads the layout from SLURM), a time limit's
or preemption's SIGTERM saves, and the job requeues itself until the run has
finished. --submit also runs sbatch on it.
docs/clusters.md has the details.
"""

from __future__ import annotations

import subprocess
import sys

from absl import app, flags

from cluster import sbatch

FLAGS = flags.FLAGS
flags.DEFINE_integer('nodes', 1, 'Nodes of the job.', lower_bound=1)
flags.DEFINE_integer('tasks_per_node', 1, 'Processes per node: one driving all '
                     "the node's GPUs, or one per GPU (docs/clusters.md).", lower_bound=1)
flags.DEFINE_integer('gpus_per_task', 0, 'GPUs per process (--gpus-per-task); 0: none.',
                     lower_bound=0)
flags.DEFINE_string('time', None, "The job's time limit, e.g. 48:00:00 (--time).")
flags.DEFINE_multi_string('sbatch', [], 'Another #SBATCH option, e.g. '
                          '--sbatch=--partition=gpu; repeat for more.')
flags.DEFINE_bool('submit', False, 'Run sbatch on the script once written.')


def main(argv: list[str]) -> int:
  args = argv[1:]
  options = ([f'--time={FLAGS.time}'] if FLAGS.time else []) + FLAGS.sbatch
  try:
    path = sbatch.write(args, nodes=FLAGS.nodes, tasks_per_node=FLAGS.tasks_per_node,
                        gpus_per_task=FLAGS.gpus_per_task, options=options)
  except ValueError as e:
    print(f'Error: {e}', file=sys.stderr)
    return 1
  if not FLAGS.submit:
    print(f'sbatch {path}')
    return 0
  return subprocess.run(['sbatch', path]).returncode


if __name__ == '__main__':
  app.run(main)
