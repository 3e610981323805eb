"""The device mesh, and shardings derived from logical axis names.

One mesh with axes ('data', 'model'). Parameters and activations carry logical
axis names (flax.linen.with_logical_partitioning / with_logical_constraint);
the config's `axis_rules` map them to mesh axes, so a parallelism strategy is a
rule table, not a code path.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'model')

Rules = Sequence[tuple[str, str | None]]


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'model') mesh; -1 for one axis means 'the rest'."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  data, model = int(mesh_config.data), int(mesh_config.model)
  if model < 1 or data == 0 or data < -1:
    raise ValueError(f'Invalid mesh data={data}, model={model}: model must be '
                     '>= 1 and data >= 1 or -1 (all remaining devices).')
  if data == -1:
    if n % model:
      raise ValueError(f'Mesh axis model={model} does not divide the {n} '
                       f'devices; choose a model size that divides {n}.')
    data = n // model
  if data * model != n:
    raise ValueError(f'Mesh data={data} x model={model} = {data * model} does '
                     f'not match the {n} devices; use data=-1 or sizes whose '
                     f'product is {n}.')
  return jax.make_mesh((data, model), MESH_AXES,
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def check_rules(rules: Rules) -> None:
  """Fails on a rule that maps to an axis the mesh does not have."""
  for logical, mesh_axis in rules:
    if mesh_axis is not None and mesh_axis not in MESH_AXES:
      raise ValueError(f'Axis rule ({logical!r}, {mesh_axis!r}) names mesh axis '
                       f'{mesh_axis!r}; the mesh axes are {MESH_AXES}.')


def check_batch(batch_size: int, mesh: Mesh, what: str = 'batch_size') -> None:
  shards = mesh.shape['data']
  if batch_size % shards or batch_size % jax.process_count():
    raise ValueError(
        f'{what}={batch_size} is not divisible by the {shards} devices of the '
        f"mesh's 'data' axis (and {jax.process_count()} processes); set "
        f'--config.{what} to a multiple of {np.lcm(shards, jax.process_count())}.')


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be LogicallyPartitioned boxes.

  Unboxed leaves (step counters, schedule state) are replicated.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over 'data' along their leading axis."""
  return NamedSharding(mesh, P('data'))


def global_batch(local_batch: dict[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles this process's batch into a global array sharded over 'data'."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
