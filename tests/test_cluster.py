"""The single run's sbatch script, without a cluster (tests/test_slurm.py
runs it on one)."""

import subprocess

import pytest

from cluster import sbatch

ARGS = ['--config=configs/alexnet.py:parallel=two_tower', '--workdir=runs/paper']


def test_a_process_per_node_drives_its_own_gpus(tmp_path):
  script = sbatch.run_script(ARGS, nodes=2, tasks_per_node=1, gpus_per_task=8,
                             options=['--time=48:00:00'])
  lines = script.splitlines()
  for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --gpus-per-task=8', '#SBATCH --time=48:00:00',
               '#SBATCH --requeue', '#SBATCH --signal=B:TERM@300',
               'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7'):
    assert line in lines
  # SIGTERM goes to the step's tasks through SLURM, never to srun itself.
  assert "trap 'scancel --signal=TERM \"$SLURM_JOB_ID\"' TERM" in script
  (tmp_path / 'train.sbatch').write_text(script)
  assert subprocess.run(['bash', '-n', str(tmp_path / 'train.sbatch')]).returncode == 0


def test_no_gpus_no_device_ids():
  script = sbatch.run_script(ARGS, nodes=1, tasks_per_node=2, gpus_per_task=0, options=[])
  assert 'gpus-per-task' not in script and 'JAX_LOCAL_DEVICE_IDS' not in script


@pytest.mark.parametrize('args, missing', [
    (['--config=configs/alexnet.py'], '--workdir'), (['--workdir=w'], '--config')])
def test_flags_without_a_workdir_or_config_are_refused(tmp_path, args, missing):
  with pytest.raises(ValueError, match=f"main.py flags without {missing}=.*give the run's flags"):
    sbatch.write(args, nodes=1, tasks_per_node=1, gpus_per_task=0, options=[])
  assert not list(tmp_path.iterdir())
