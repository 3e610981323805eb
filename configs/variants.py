"""Config variants: 'key=value,...' after the config path, parsed and checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def parse(arg: str | None, defaults: Mapping[str, str | None]) -> dict[str, str | None]:
  """Parses 'key=value,key=value' over `defaults` (None: not set).

  Unknown keys fail loudly so a typo never silently trains the wrong network.
  """
  result = dict(defaults)
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


def choose(name: str, value: str, options: Mapping[str, Any] | tuple[str, ...]) -> Any:
  """Looks up a variant's value, naming the valid choices when it is wrong.

  `options` maps each choice to its value, or lists choices that are their
  own values.
  """
  if value not in options:
    raise ValueError(
        f'Config variant {name}={value!r} is not one of: '
        f'{", ".join(map(str, options))}.')
  return options[value] if isinstance(options, Mapping) else value
