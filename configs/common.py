"""Shared helpers for configs: variant parsing and the default training setup."""

from __future__ import annotations

import ml_collections

# Parallelism strategies: a mesh 'model' size and a rule table mapping the
# model's logical axis names (models/layers.py: LOGICAL_AXES) to mesh axes.
# Names a table leaves out are replicated. Rules apply in order and a mesh
# axis is used once per array: fc6 and fc7 split their outputs over 'model'
# ('fc_out' first), fc8, whose classes stay whole, splits its inputs.
PARALLEL: dict[str, dict] = {
    # Pure data parallelism: every device holds all parameters.
    'data': dict(model=1, rules=(
        ('batch', 'data'), ('fc_batch', 'data'))),
    # The paper: each tower on its own 'model' shard; conv3 and fc6-fc8 read
    # both towers, the only places the shards exchange activations.
    'two_tower': dict(model=2, rules=(
        ('batch', 'data'), ('fc_batch', 'data'), ('tower', 'model'),
        ('fc_out', 'model'), ('fc_in', 'model'))),
    # Krizhevsky 2014: convolutions data parallel over every device, fully
    # connected layers model parallel (their batch gathered over 'model').
    'owt': dict(model=2, rules=(
        ('batch', ('data', 'model')), ('fc_batch', 'data'), ('fc_out', 'model'),
        ('fc_in', 'model'))),
    # Data parallel with the fully connected weights and their momentum
    # (96% of the state) sharded over 'data', gathered when used.
    'fsdp': dict(model=1, rules=(
        ('batch', 'data'), ('fc_batch', 'data'), ('fc_in', 'data'))),
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
