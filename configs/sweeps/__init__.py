"""Sweeps declared in code: points (config variants and overrides), seeds, and
the claims a report checks them against.

A sweep file defines `get_sweep(arg) -> Sweep`; `python -m sweeps
--sweep=FILE[:arg]` runs every point with every seed (docs/sweeps.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Point:
  """One setting: config variants added to the base config's, and
  --config.KEY=VALUE overrides (values as they would be typed)."""
  variants: str = ''
  overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
  name: str = ''  # '' : the settings themselves, e.g. 'lrn=off'; 'baseline' if none

  @property
  def label(self) -> str:
    settings = [self.variants] + [f'{k}={v}' for k, v in self.overrides.items()]
    return self.name or ','.join(filter(None, settings)) or 'baseline'


@dataclasses.dataclass(frozen=True)
class Claim:
  """An effect the paper reports: the error of point `changed` minus that of
  point `reference`, in percentage points of top-1 and top-5 error."""
  name: str
  section: str
  changed: str
  reference: str
  top1: float
  top5: float


@dataclasses.dataclass(frozen=True)
class Sweep:
  points: tuple[Point, ...]
  seeds: tuple[int, ...]
  claims: tuple[Claim, ...] = ()
  config: str = 'configs/alexnet.py'  # the base config, unless --config names one
