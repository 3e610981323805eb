"""Shared helpers for configs: variant parsing and the default training setup."""

from __future__ import annotations

import ml_collections

# Logical axis name -> mesh axis. Each strategy is one of these tables.
PARALLEL_RULES: dict[str, tuple[tuple[str, str | None], ...]] = {
    'data': (
        ('batch', 'data'),
        ('tower', None),
        ('fc_in', None),
        ('fc_out', None),
    ),
}


def parse_arg(arg: str | None, **defaults: str) -> ml_collections.ConfigDict:
  """Parses 'key=value,key=value' into a ConfigDict over `defaults`.

  Unknown keys fail loudly so a typo never silently trains the wrong network.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'Config variant {item!r} is not of the form key=value.')
    if key not in defaults:
      raise ValueError(
          f'Unknown config variant {key!r} in {arg!r}; known variants: '
          f'{", ".join(sorted(defaults))}.')
    result[key] = value
  return result


def choose(name: str, value: str, options: dict):
  """Looks up a variant's value, naming the valid choices when it is wrong."""
  if value not in options:
    raise ValueError(
        f'Config variant {name}={value!r} is not one of: '
        f'{", ".join(map(str, options))}.')
  return options[value]
