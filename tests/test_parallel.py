"""Parallelism strategies on 8 simulated devices, the comm report, many processes."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import parallel
from trainer import Trainer, synthetic_batch
from configs import alexnet as alexnet_config
from configs import parallelism
from configs import demo as demo_config
from tools import comm_report

STRATEGIES = sorted(parallelism.STRATEGIES)
HERE = os.path.dirname(os.path.abspath(__file__))


def _config(strategy, data=1, model=1):
  config = demo_config.get_config(f'parallel={strategy},size=tiny')
  config.data.image_size = 67
  config.batch_size = 16
  config.mesh.data, config.mesh.model = data, model
  return config


def _two_steps(config):
  devices = jax.devices()[:config.mesh.data * config.mesh.model]
  trainer = Trainer(config, parallel.make_mesh(config.mesh, devices))
  state = trainer.init(config.seed)
  losses = []
  for step in range(2):
    state, metrics = trainer.train_step(state, synthetic_batch(config, 16, step))
    losses.append(float(metrics.loss.compute()))
  return np.array(losses), jax.device_get(state.params), state


@pytest.fixture(scope='module')
def single_device():
  return _two_steps(_config('data'))


@pytest.mark.parametrize('strategy', STRATEGIES)
@pytest.mark.parametrize('data, model', [(8, 1), (4, 2)])
def test_strategy_matches_one_device(strategy, data, model, single_device):
  losses, params, _ = _two_steps(_config(strategy, data, model))
  np.testing.assert_allclose(losses, single_device[0], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_device[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_two_tower_splits_tower_parameters_over_model():
  _, _, state = _two_steps(_config('two_tower', 4, 2))
  for layer in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
    kernel = state.params[layer]['kernel']
    assert kernel.sharding.spec[0] == 'model', (layer, kernel.sharding.spec)
    # Each device holds one of the two towers' kernels.
    assert {s.data.shape[0] for s in kernel.addressable_shards} == {1}
    momentum = state.opt_state.inner_state[2].trace[layer]['kernel']
    assert momentum.sharding.spec == kernel.sharding.spec
  fc6 = state.params['fc6']['kernel']
  assert fc6.sharding.spec == P(None, 'model')


def test_two_tower_talks_only_where_the_paper_joins_the_towers():
  found = comm_report.compiled_collectives(_config('two_tower', 4, 2))
  forward = [c for c in found if c.phase == 'forward']
  # conv1, conv2, LRN, pooling, conv4 and conv5 run per tower, silently.
  assert {c.layer for c in forward} <= {'conv3', 'fc6', 'fc7', 'fc8'}, forward
  conv3 = [c for c in forward if c.layer == 'conv3']
  assert [c.kind for c in conv3] == ['all-gather']
  # Joining the towers is between the two devices of a data shard; the
  # parameters' gradients are summed across data shards only.
  assert {c.axes for c in forward} == {('model',)}
  gradients = [c for c in found if c.kind == 'all-reduce' and 'arrays' in c.layer]
  assert [c.axes for c in gradients] == [('data',)]
  # The gathered pooled conv2 maps: (batch 16 / 4 data shards) x 3 x 3 x
  # (2 towers x 16) float32 at this test's 67x67 input.
  assert conv3[0].bytes == 4 * 3 * 3 * 32 * 4


@pytest.mark.parametrize('strategy', STRATEGIES)
def test_comm_report_total_is_the_sum_of_its_rows(strategy):
  config = _config(strategy, 4, 2)
  found = comm_report.compiled_collectives(config)
  text = comm_report.format_report(found, config)
  rows = [line for line in text.splitlines()
          if line.split()[0] in ('forward', 'backward', 'update')]
  assert len(rows) == len(found) > 0
  listed = sum(int(line.split()[-1].replace(',', '')) for line in rows)
  assert text.splitlines()[-1] == f'Total collective bytes per step: {listed}'


@pytest.mark.parametrize('algorithm', ['direct', 'winograd'])
def test_data_parallel_all_reduces_exactly_the_gradients(algorithm):
  config = _config('data', 8, 1)
  # Winograd's runs per device so that its kernels' gradients, not their
  # four times larger transforms, are what the devices sum.
  config.model.conv_algorithm = algorithm
  found = comm_report.compiled_collectives(config)
  trainer = Trainer(config, parallel.make_mesh(config.mesh))
  state = trainer.abstract_state()
  param_bytes = sum(p.size * p.dtype.itemsize for p in jax.tree.leaves(state.params))
  reduced = sum(c.bytes for c in found if c.kind == 'all-reduce')
  # The three metric sums (loss, top-1, top-5) ride along in the same op.
  assert reduced - param_bytes in (0, 3 * 4)
  assert {(c.kind, c.axes) for c in found} == {('all-reduce', ('data',))}


@pytest.mark.parametrize('notation', [
    'replica_groups={{0,2,4,6},{1,3,5,7}}',
    'replica_groups=[2,4]<=[4,2]T(1,0)',
    "replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}",
    "replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_1'}"])
def test_replica_groups_in_each_notation_give_the_axis(notation):
  # Four ways XLA writes the same groups: devices 0,2,4,6 and 1,3,5,7 of a
  # 4x2 mesh, which differ along 'data' only.
  line = f'%ar = f32[8]{{0}} all-reduce(%x), channel_id=1, {notation}, to_apply=%add'
  (found,) = comm_report.collectives(line, {'data': 4, 'model': 2})
  assert found.axes == ('data',)
  (across,) = comm_report.collectives(line.replace(notation, 'replica_groups={}'),
                                      {'data': 4, 'model': 2})
  assert across.axes == ('data', 'model')


def test_collective_permute_pairs_give_the_axis():
  line = ('%cp = f32[8]{0} collective-permute(%x), channel_id=1, '
          'source_target_pairs={{0,1},{1,0},{2,3},{3,2}}')
  (found,) = comm_report.collectives(line, {'data': 2, 'model': 2})
  assert found.axes == ('model',)


def test_paper_config_on_a_4x2_mesh_reports_its_collectives(capsys):
  config = alexnet_config.get_config('parallel=two_tower')
  config.model.num_classes = 1000  # ImageNet's, the dataset's by default
  config.mesh.data = 4
  text = comm_report.report(config)
  assert 'forward   conv3     all-gather' in text
  assert text.splitlines()[-1].startswith('Total collective bytes per step: ')


def test_unknown_logical_axis_is_refused():
  config = _config('data')
  config.axis_rules = (('batch', 'data'), ('towr', 'model'))
  with pytest.raises(ValueError, match="names logical axis 'towr'"):
    Trainer(config, parallel.make_mesh(config.mesh, jax.devices()[:1]))


def test_more_model_shards_than_towers_is_refused():
  config = _config('two_tower', 2, 4)
  with pytest.raises(ValueError, match="2 towers do not split over the 4 devices"):
    Trainer(config, parallel.make_mesh(config.mesh))


def test_model_axis_that_does_not_divide_a_layer_is_refused():
  config = _config('owt', 1, 8)
  config.model.fc_features = (60, 60)
  with pytest.raises(ValueError, match=r"params\['fc6'\]\['(bias|kernel)'\] has a dimension of 60"):
    Trainer(config, parallel.make_mesh(config.mesh))


def _worker(*args):
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, 'distributed_worker.py'), *map(str, args)],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _losses(proc):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  return json.loads(next(l for l in out.splitlines() if l.startswith('LOSSES '))[7:])


def test_the_towers_across_two_processes_match_one_process(free_port, tmp_path):
  # One device per process (as with a process per GPU): each model pair
  # joins devices of both processes, which must then feed the same rows.
  address = f'localhost:{free_port()}'
  two = [_worker(address, 2, i, 1, tmp_path / 'two.npz', 'two_tower') for i in range(2)]
  losses = [_losses(w) for w in two]
  one = _worker('-', 1, 0, 2, tmp_path / 'one.npz', 'two_tower')
  np.testing.assert_allclose(losses[0], _losses(one), rtol=1e-5)
  assert losses[0] == losses[1]
  ours, theirs = np.load(tmp_path / 'two.npz'), np.load(tmp_path / 'one.npz')
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_process(free_port):
  address = f'localhost:{free_port()}'
  workers = [_worker(address, 2, i, 4) for i in range(2)]
  two = [_losses(w) for w in workers]
  one = _losses(_worker('-', 1, 0, 8))
  np.testing.assert_allclose(two[0], one, rtol=1e-5)
  np.testing.assert_allclose(two[1], one, rtol=1e-5)


def test_an_unreachable_coordinator_is_named_within_the_timeout(free_port, tmp_path):
  address = f'localhost:{free_port()}'  # nothing listens there
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py:size=tiny',
       f'--workdir={tmp_path / "work"}', f'--coordinator_address={address}',
       '--num_processes=2', '--process_id=1', '--distributed_timeout=2'],
      cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'Error: Process 1 could not reach the coordinator at {address} '
                         'within 2 s'), result.stderr[-3000:]
  assert '--distributed_timeout' in last
