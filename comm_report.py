"""--mode=comm_report: every collective in the compiled train step.

Compiles the train step for the configured mesh (simulated CPU devices are
fine) and lists each all-gather, all-reduce, reduce-scatter, all-to-all and
collective-permute in the partitioned program, with the bytes of its result
on each device per step, the layer it belongs to (from the op's source name
stack, where XLA kept it) and whether it serves the forward pass, the
backward pass or the optimizer update.
"""

import collections
import dataclasses
import re

import jax
import ml_collections
import numpy as np

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


def _shape_bytes(shape: str) -> int:
  total = 0
  for m in _ARRAY.finditer(shape):
    dtype = m['dtype']
    width = _BYTES.get(dtype) or max(1, int(re.sub(r'\D', '', dtype)[:2] or 8) // 8)
    total += width * int(np.prod([int(d) for d in m['dims'].split(',') if d]))
  return total


def _phase(op_name: str) -> str:
  if 'transpose(' in op_name:
    return 'backward'
  if 'jvp(' in op_name:
    return 'forward'
  return 'update'


def collectives(hlo_text: str) -> list[Collective]:
  """The collectives of a compiled (partitioned) HLO module's text."""
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
    found.append(Collective(kind=op['kind'], bytes=_shape_bytes(op['shape']),
                            layer=layer, phase=_phase(op_name)))
  return found


def compiled_collectives(config: ml_collections.ConfigDict) -> list[Collective]:
  mesh = parallel.make_mesh(config.mesh)
  trainer = Trainer(config, mesh, steps_per_epoch=1)
  return collectives(trainer.lower_train_step().compile().as_text())


def format_report(found: list[Collective], config: ml_collections.ConfigDict) -> str:
  mesh = dict(data=config.mesh.data, model=config.mesh.model)
  lines = [f'Collectives in one train step: mesh {mesh} over {jax.device_count()} '
           f'devices, global batch {config.batch_size}',
           f"{'phase':<10}{'layer':<10}{'collective':<20}{'bytes/device':>16}"]
  order = {'forward': 0, 'backward': 1, 'update': 2}
  for c in sorted(found, key=lambda c: order[c.phase]):
    lines.append(f'{c.phase:<10}{c.layer or "-":<10}{c.kind:<20}{c.bytes:>16,}')
  by_kind = collections.Counter()
  for c in found:
    by_kind[c.kind] += c.bytes
  lines.append('By kind: ' + (', '.join(f'{k} {v:,}' for k, v in sorted(by_kind.items()))
                              or 'none'))
  lines.append(f'Total collective bytes per step: {sum(c.bytes for c in found)}')
  return '\n'.join(lines)


def report(config: ml_collections.ConfigDict) -> str:
  return format_report(compiled_collectives(config), config)
