"""The host processor: its model and the instruction-set features that XLA's
CPU flags and the benchmark's comparisons depend on, from /proc/cpuinfo."""

from __future__ import annotations

import dataclasses

# The features that matter here: AVX-512 (and its bfloat16 and VNNI dot
# products), which oneDNN and XNNPACK use where present, and Intel's AMX tiles.
FEATURES = ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'amx_bf16')
CPUINFO = '/proc/cpuinfo'


@dataclasses.dataclass(frozen=True)
class Processor:
  model: str
  features: frozenset[str]  # those of FEATURES it has

  def describe(self) -> str:
    """E.g. 'AMD EPYC (avx2, avx512f, avx512_bf16, avx512_vnni; no AMX)'."""
    has = [f for f in FEATURES if f in self.features]
    amx = '' if 'amx_tile' in self.features else '; no AMX'
    return f'{self.model} ({", ".join(has) or "no AVX2 or AVX-512"}{amx})'


def parse(cpuinfo: str) -> Processor:
  """The first processor of /proc/cpuinfo's text (x86 'flags', Arm 'Features')."""
  fields: dict[str, str] = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  model = fields.get('model name') or fields.get('CPU part') or 'unknown processor'
  flags = set((fields.get('flags') or fields.get('Features') or '').split())
  return Processor(model, frozenset(flags & set(FEATURES)))


def this() -> Processor:
  """This machine's processor; an unknown one where /proc/cpuinfo is not."""
  try:
    with open(CPUINFO) as f:
      return parse(f.read())
  except OSError:
    return Processor('unknown processor (no /proc/cpuinfo)', frozenset())
