"""Test setup: eight simulated CPU devices, the repository on sys.path, and
the helpers several test files share, as fixtures."""

import atexit
import os
import shutil
import socket
import sys
import tempfile

# Must happen before jax is imported anywhere.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Tests (and the main.py runs they start) compile the same small programs
# again and again: one persistent compilation cache for the session, which
# subprocesses inherit through the environment.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='alexnet-tests-jax-cache-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime import xla_flags  # noqa: E402

xla_flags.apply()  # the flags main.py sets, so the tests run what users run

import pytest  # noqa: E402

import train  # noqa: E402
from configs import demo as demo_config  # noqa: E402


@pytest.fixture(scope='session')
def small_config():
  """Makes the tiny demo network's config for synthetic batches of 16 at
  67x67 (the smallest input the paper's geometry takes), on a mesh."""
  def make(arg: str = '', **mesh):
    config = demo_config.get_config(','.join(filter(None, ['size=tiny', arg])))
    config.data.image_size = 67
    config.batch_size = config.eval_batch_size = 16
    config.mesh.update(mesh)
    return config
  return make


@pytest.fixture(scope='session')
def tiny_demo_flags():
  """Makes main.py flags for a 6-step run of the tiny demo under a folder."""
  def make(tmp_path) -> list[str]:
    return [
        '--config=configs/demo.py:size=tiny', f'--workdir={tmp_path / "work"}',
        f'--config.data.data_dir={tmp_path / "tfds"}',
        '--config.num_train_steps=6', '--config.log_every_steps=3',
        '--config.batch_size=16', '--config.eval_batch_size=16']
  return make


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
  """A finished 6-step run of the tiny demo, trained in this process for the
  tests that read a checkpoint: (its config, its workdir)."""
  tmp_path = tmp_path_factory.mktemp('demo_run')
  config = demo_config.get_config('size=tiny')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.num_train_steps = 6
  config.log_every_steps = 3
  config.batch_size = config.eval_batch_size = 16
  workdir = str(tmp_path / 'work')
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope='session')
def free_port():
  """Finds a TCP port on localhost that nothing listens on, for a coordinator."""
  def find() -> int:
    with socket.socket() as s:
      s.bind(('localhost', 0))
      return s.getsockname()[1]
  return find


# Set by .ci/run, which starts a cluster: there the SLURM tests must run.
REQUIRE_SLURM = 'ALEXNET_REQUIRE_SLURM'


def pytest_configure(config):
  config.addinivalue_line('markers', 'slurm: needs a SLURM cluster (SLURM_CONF)')


@pytest.fixture(scope='session')
def slurm_cluster():
  """A SLURM cluster that takes jobs: skips without one, fails in CI."""
  import subprocess
  ready = shutil.which('sbatch') and subprocess.run(
      ['sinfo', '-h'], capture_output=True, timeout=30).returncode == 0
  if not ready:
    reason = ('needs a SLURM cluster: start one with `cluster/local_slurm.sh start '
              '/tmp/slurm` and `export SLURM_CONF=/tmp/slurm/slurm.conf` '
              '(cluster/local_slurm.sh install installs SLURM)')
    if os.environ.get(REQUIRE_SLURM):
      pytest.fail(f'{REQUIRE_SLURM} is set but no cluster answers: {reason}')
    pytest.skip(reason)
