"""--mode=comm_report: every collective in the compiled train step.

Compiles the train step for the configured mesh (simulated CPU devices are
fine) and lists each all-gather, all-reduce, reduce-scatter, all-to-all and
collective-permute in the partitioned program, with the bytes of its result
on each device per step, the mesh axes its groups of devices span (from its
replica groups), the layer it belongs to (from the op's source name stack,
where XLA kept it) and whether it serves the forward pass, the backward pass
or the optimizer update.
"""

import collections
import dataclasses
import re

import jax
import ml_collections
import numpy as np

import input_pipeline
import parallel
from trainer import Trainer

KINDS = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all',
         'collective-permute')
_OP = re.compile(r'=\s*(?P<shape>.+?)\s+(?P<kind>' + '|'.join(KINDS) +
                 r')(?:-start)?\(')
_ARRAY = re.compile(r'\b(?P<dtype>pred|[sufbc]\d+|bf16|f8\w*)\[(?P<dims>[\d,]*)\]')
_LAYER = re.compile(r'/(conv\d|fc\d|lrn\d|bn\d|pool\d|dropout\d|flatten)/')
_BYTES = {'pred': 1, 'bf16': 2}


@dataclasses.dataclass(frozen=True)
class Collective:
  kind: str
  bytes: int     # result bytes on each device, per step
  layer: str     # conv1..fc8, 'N arrays' when combined, '' when unnamed
  phase: str     # forward | backward | update
  axes: tuple[str, ...]  # the mesh axes along which its device groups extend


def _shape_bytes(shape: str) -> int:
  total = 0
  for m in _ARRAY.finditer(shape):
    dtype = m['dtype']
    width = _BYTES.get(dtype) or max(1, int(re.sub(r'\D', '', dtype)[:2] or 8) // 8)
    total += width * int(np.prod([int(d) for d in m['dims'].split(',') if d]))
  return total


def _device_groups(line: str, num_devices: int) -> np.ndarray:
  """(groups, devices per group) of an HLO collective, in its notations.

  Device ids index the program's devices, in the mesh's row-major order. A
  collective-permute's source-target pairs count as groups of two.
  """
  ids = np.arange(num_devices)
  if m := re.search(r'(?:replica_groups|source_target_pairs)='
                    r'\{((?:\{[\d,]*\},?)*)\}', line):
    groups = [[int(d) for d in g.split(',') if d]
              for g in re.findall(r'\{([\d,]*)\}', m[1])]
    # {} is one group of all devices; collective-permutes have none.
    return np.array(groups) if groups else ids[None]
  if m := re.search(r'replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', line):
    dims = lambda text: [int(d) for d in text.split(',')]
    iota = ids.reshape(dims(m[2]))
    if m[3]:
      iota = iota.transpose(dims(m[3]))
    return iota.reshape(dims(m[1]))
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\]"
                    r"(?:, device_ids=\(([^)]*\)?)\))? \{([^}]*)\}", line):
    names = re.findall(r"'(\w+)'=(\d+)", m[1])
    spanned = re.findall(r"'(\w+)'", m[3])
    iota = _device_order(m[2], ids).reshape([int(size) for _, size in names])
    inner = [i for i, (name, _) in enumerate(names) if name in spanned]
    outer = [i for i in range(len(names)) if i not in inner]
    size = int(np.prod([iota.shape[i] for i in inner]))
    return iota.transpose(outer + inner).reshape(-1, size)
  if 'replica_groups=' in line:
    raise ValueError(f'Unrecognised replica_groups notation in: {line.strip()}')
  return ids[None]


def _device_order(spec: str | None, ids: np.ndarray) -> np.ndarray:
  """The devices a mesh-notation group list lays out: all in order, an iota
  such as [4,2]T(1,0) (reshaped, transposed, flattened), or a list."""
  if not spec:
    return ids
  if m := re.fullmatch(r'\[([\d,]+)\](?:T\(([\d,]+)\))?', spec):
    order = ids.reshape([int(d) for d in m[1].split(',')])
    if m[2]:
      order = order.transpose([int(d) for d in m[2].split(',')])
    return order.reshape(-1)
  return np.array([int(d) for d in spec.split(',')])


def _axes(groups: np.ndarray, mesh_shape: dict[str, int]) -> tuple[str, ...]:
  """The mesh axes along which the devices of some group differ."""
  coords = np.stack(np.unravel_index(groups, tuple(mesh_shape.values())))
  varies = (coords != coords[:, :, :1]).any(axis=(1, 2))
  return tuple(name for name, v in zip(mesh_shape, varies) if v)


def _phase(op_name: str) -> str:
  if 'transpose(' in op_name:
    return 'backward'
  if 'jvp(' in op_name:
    return 'forward'
  return 'update'


def collectives(hlo_text: str, mesh_shape: dict[str, int]) -> list[Collective]:
  """The collectives of a compiled (partitioned) HLO module's text.

  `mesh_shape` maps the mesh's axis names to their sizes, in order.
  """
  num_devices = int(np.prod(list(mesh_shape.values())))
  found = []
  for line in hlo_text.splitlines():
    op = _OP.search(line)
    if not op or op['kind'] + '-done(' in line:
      continue
    name = re.search(r'op_name="([^"]*)"', line)
    op_name = name[1] if name else ''
    layer = _LAYER.search(op_name)
    arrays = len(_ARRAY.findall(op['shape']))
    # XLA combines many small collectives (the gradient all-reduce) into one
    # and keeps the first one's name, which would misattribute the rest.
    layer = (f'{arrays} arrays' if arrays > 2 and op['kind'] == 'all-reduce'
             else layer[1] if layer else '')
    found.append(Collective(
        kind=op['kind'], bytes=_shape_bytes(op['shape']), layer=layer,
        phase=_phase(op_name),
        axes=_axes(_device_groups(line, num_devices), mesh_shape)))
  return found


def compiled_collectives(config: ml_collections.ConfigDict) -> list[Collective]:
  mesh = parallel.make_mesh(config.mesh)
  trainer = Trainer(config, mesh)
  return collectives(trainer.lower_train_step().compile().as_text(),
                     dict(mesh.shape))


def format_report(found: list[Collective], config: ml_collections.ConfigDict) -> str:
  mesh = dict(parallel.make_mesh(config.mesh).shape)
  lines = [f'Collectives in one train step: mesh {mesh} over {jax.device_count()} '
           f'devices, global batch {config.batch_size}',
           f"{'phase':<10}{'layer':<10}{'collective':<20}{'over':<12}{'bytes/device':>16}"]
  order = {'forward': 0, 'backward': 1, 'update': 2}
  for c in sorted(found, key=lambda c: order[c.phase]):
    lines.append(f'{c.phase:<10}{c.layer or "-":<10}{c.kind:<20}'
                 f'{"+".join(c.axes) or "-":<12}{c.bytes:>16,}')
  by_kind = collections.Counter()
  for c in found:
    by_kind[c.kind] += c.bytes
  lines.append('By kind: ' + (', '.join(f'{k} {v:,}' for k, v in sorted(by_kind.items()))
                              or 'none'))
  lines.append(f'Total collective bytes per step: {sum(c.bytes for c in found)}')
  return '\n'.join(lines)


def report(config: ml_collections.ConfigDict) -> str:
  config = input_pipeline.with_dataset_classes(config)
  return format_report(compiled_collectives(config), config)
