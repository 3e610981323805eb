"""The device mesh, and shardings derived from logical axis names.

One mesh with axes ('data', 'model'). Parameters and activations carry logical
axis names (flax.linen.with_logical_partitioning / with_logical_constraint);
the config's `axis_rules` map them to mesh axes, so a parallelism strategy is a
rule table, not a code path: the strategies are in configs/parallelism.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
from absl import logging
import ml_collections
import numpy as np
from jax._src import clusters  # the layout jax.distributed detects; no public API
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from models.layers import LOGICAL_AXES
from runtime import errors

MESH_AXES = ('data', 'model')

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


class DistributedError(errors.UserError, RuntimeError):
  """The processes of a multi-process run cannot form one job."""


def _cluster_detected() -> bool:
  """Whether a cluster manager started this process, so jax.distributed can
  read the process layout from the environment (Cloud TPU: its metadata)."""
  env = os.environ
  slurm_tasks = int(env.get('SLURM_NTASKS', '1'))
  if slurm_tasks > 1 and 'SLURM_STEP_NODELIST' not in env:
    # A batch script or a shell on an allocated node: no job step, so no layout.
    raise DistributedError(
        f'SLURM_NTASKS={slurm_tasks} but this process is not in a job step '
        '(no SLURM_STEP_NODELIST): it was started without srun. Launch every process '
        'with srun, e.g. `srun python main.py ...` in the sbatch script '
        '(python -m cluster writes one).')
  return (slurm_tasks > 1 or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or 'TPU_WORKER_HOSTNAMES' in env or 'TPU_PROCESS_ADDRESSES' in env
          or importlib.util.find_spec('libtpu') is not None)


def _wait_for_coordinator(address: str, process_id: int, timeout_s: int) -> None:
  """Fails with a message, not JAX's abort, if the coordinator never listens."""
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=5).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise DistributedError(
            f'Process {process_id} could not reach the coordinator at {address} within '
            f'{timeout_s} s ({e}). Check that process 0 is running with the same '
            f'--num_processes, that {host} resolves from this host and port {port} is '
            'not blocked by a firewall, or wait longer with --distributed_timeout.'
        ) from e
      time.sleep(1)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           timeout_s: int = 300) -> None:
  """Starts JAX's multi-process runtime when there are several processes.

  Explicit arguments win; otherwise SLURM, Open MPI and multi-host Cloud TPU
  are detected by jax.distributed itself. A single process does nothing.
  Processes other than 0 wait up to `timeout_s` for the coordinator.
  """
  explicit = coordinator_address is not None
  if not explicit and not _cluster_detected():
    return
  # CPU devices of several processes talk through gloo (no-op on GPU/TPU).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # The layout jax.distributed would detect, to name the coordinator it dials.
  address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      coordinator_address, num_processes, process_id, None, None, timeout_s)
  if address and index:
    _wait_for_coordinator(address, index, timeout_s)
  logging.info('Joining %s processes at coordinator %s.', count, address)
  jax.distributed.initialize(coordinator_address=address, num_processes=count,
                             process_id=index, initialization_timeout=timeout_s)
  logging.info('Process %d of %d; %d local and %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def _simulation_hint(devices: Sequence[jax.Device], needed: int) -> str:
  """How to simulate `needed` (or 8, if it divides 8) devices on a CPU host."""
  if devices[0].platform != 'cpu':
    return ''
  count = 8 if 8 % needed == 0 else needed
  return (f' On a CPU, simulate {count} devices: start the command with '
          f'XLA_FLAGS=--xla_force_host_platform_device_count={count}.')


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'model') mesh; -1 for one axis means 'the rest'."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  data, model = int(mesh_config.data), int(mesh_config.model)
  if model < 1 or data == 0 or data < -1:
    raise errors.InvalidInput(f'Invalid mesh data={data}, model={model}: model must be '
                              '>= 1 and data >= 1 or -1 (all remaining devices).')
  if data == -1:
    if n % model:
      raise errors.InvalidInput(f'Mesh axis model={model} does not divide the {n} '
                                f'devices; choose a model size that divides {n}.'
                                + _simulation_hint(devices, model))
    data = n // model
  if data * model != n:
    raise errors.InvalidInput(f'Mesh data={data} x model={model} = {data * model} does '
                              f'not match the {n} devices; use data=-1 or sizes whose '
                              f'product is {n}.' + _simulation_hint(devices, data * model))
  return jax.make_mesh((data, model), MESH_AXES,
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def check_rules(rules: Rules) -> None:
  """Fails on a rule whose logical or mesh axis does not exist."""
  for logical, mesh_axes in rules:
    if logical not in LOGICAL_AXES:
      raise errors.InvalidInput(
          f'Axis rule ({logical!r}, {mesh_axes!r}) names logical axis {logical!r}, '
          f'which the model does not use; known: {", ".join(sorted(LOGICAL_AXES))}.')
    for axis in _as_tuple(mesh_axes):
      if axis not in MESH_AXES:
        raise errors.InvalidInput(f'Axis rule ({logical!r}, {mesh_axes!r}) names mesh axis '
                                  f'{axis!r}; the mesh axes are {MESH_AXES}.')


def _as_tuple(mesh_axes: str | tuple[str, ...] | None) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def batch_axes(rules: Rules) -> tuple[str, ...]:
  """The mesh axes a batch's leading axis is split over."""
  return _as_tuple(nn.logical_to_mesh_axes(('batch',), list(rules))[0])


def batch_shards(mesh: Mesh, rules: Rules) -> int:
  """How many pieces a batch is split into."""
  return int(np.prod([mesh.shape[a] for a in batch_axes(rules)]))


def check_batch(batch_size: int, mesh: Mesh, rules: Rules,
                what: str = 'batch_size') -> None:
  axes = batch_axes(rules)
  shards = batch_shards(mesh, rules)  # a multiple of the processes' parts
  if batch_size % shards:
    raise errors.InvalidInput(
        f'{what}={batch_size} is not divisible by the {shards} devices of the '
        f"mesh's {'x'.join(axes) or 'batch'} axes; set --config.{what} to a "
        f'multiple of {shards}.')
  input_shard(mesh, rules)  # fails on a layout the input pipeline cannot feed


def host_array(x: jax.Array) -> np.ndarray:
  """The whole of a (sharded) array on this process's host; every process
  must call it."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class Shard:
  """Part `index` of `count` of a split, and of every global batch: what a
  process reads."""
  index: int
  count: int

  def local(self, batch_size: int) -> int:
    """The rows of a global batch of `batch_size` that this part holds."""
    return batch_size // self.count


def process_shard() -> Shard:
  """A part per process: where every process's devices hold rows of their own."""
  return Shard(jax.process_index(), jax.process_count())


def input_shard(mesh: Mesh, rules: Rules) -> Shard:
  """The part of the data this process's devices hold on `mesh`. Processes
  whose devices hold the same rows (a model axis across processes, as with
  the towers and a process per GPU) read the same part, with the same seeds."""
  rows = batch_shards(mesh, rules)
  held = sorted({index[0].indices(rows)[:2] for index in batch_sharding(
      mesh, rules).addressable_devices_indices_map((rows,)).values()})
  start, stop = held[0][0], held[-1][1]
  if sum(b - a for a, b in held) != stop - start:
    raise errors.InvalidInput(
        f"This process's devices hold rows {held} of every {rows} on the mesh "
        f"data={mesh.shape['data']} x model={mesh.shape['model']}, which are not one "
        'block; give each process neighbouring devices (one process per host).')
  return Shard(start // (stop - start), rows // (stop - start))


def check_divisible(abstract_tree: Any, shardings: Any) -> None:
  """Fails at start-up on a dimension that does not split over its mesh axes."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
  for (path, leaf), sharding in zip(leaves, jax.tree.leaves(shardings)):
    for dim, axes in zip(leaf.shape, sharding.spec):
      size = int(np.prod([sharding.mesh.shape[a] for a in _as_tuple(axes)]))
      if dim % size:
        raise errors.InvalidInput(
            f'{jax.tree_util.keystr(path)} has a dimension of {dim}, which does '
            f'not split over mesh axes {axes} of size {size}; choose a mesh '
            'whose model axis divides it (e.g. --config.mesh.model=2).')


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be LogicallyPartitioned boxes.

  Unboxed leaves (step counters, schedule state) are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
  check_divisible(nn.meta.unbox(abstract_tree), shardings)
  return shardings


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Batches are split along their leading axis as the 'batch' rule says."""
  return NamedSharding(mesh, P(batch_axes(rules) or None))


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles this process's batch into a global array sharded over 'data'."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
