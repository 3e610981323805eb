"""Configs as main.py's flags build them: `--config=FILE[:variants]` and
`--config.KEY=VALUE` overrides, and the one-line message for flags that build
none (main.py prints it; sweeps/runs.py checks every run's flags with it
before training any)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

# How ml_collections reports an override of a key the config lacks
# (tests/test_main.py pins it for the installed version).
_UNKNOWN_KEY = re.compile(r"'([\w.]+)")
_DID_YOU_MEAN = re.compile(r'Did you mean "([\w.]+)"')

# What parsing config flags raises: an unknown key, or a bad file or value.
FLAG_ERRORS = (AttributeError, KeyError, flags.Error)


def error_message(error: Exception, argv: Sequence[str]) -> str:
  """'Error: ...' in one line for one of FLAG_ERRORS raised parsing `argv`."""
  if not isinstance(error, flags.Error):
    key = _UNKNOWN_KEY.search(str(error))
    key = key.group(1) if key else str(error)
    hint = _DID_YOU_MEAN.search(str(error))
    culprits = [a for a in argv if a.startswith('--config.') and
                key in a.split('=')[0].split('.')]
    return (f'Error: unknown config key {key!r} in {" ".join(culprits) or argv}.'
            + (f' Did you mean {hint.group(1)!r}?' if hint else '') +
            ' Keys are listed in docs/config.md; a new key must be added to '
            'the config file, not only overridden.')
  lines = str(error).strip().splitlines()
  # config_flags embeds the config file's traceback: keep its last line.
  return f'Error: {lines[0]}' + (f' {lines[-1]}' if len(lines) > 1 else '')


def check_config_file(argv: Sequence[str]) -> None:
  """Raises flags.IllegalFlagValueError naming where --config's file was
  looked for if it is not there (config_flags would report it at first use,
  in a traceback)."""
  spec = next((b if a == '--config' else a.split('=', 1)[1]
               for a, b in zip(argv, [*argv[1:], '']) if a == '--config' or
               a.startswith('--config=')), None)
  if spec is None or os.path.isfile(spec.split(':', 1)[0]):
    return
  path = spec.split(':', 1)[0]
  raise flags.IllegalFlagValueError(
      f'--config={spec}: no config file at {os.path.abspath(path)} (a relative '
      f'path starts from the current directory, {os.getcwd()}).')


def load(args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config that main.py's `args` (--config=... and --config.KEY=...)
  build; raises one of FLAG_ERRORS."""
  spec = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  if spec is None:
    raise flags.Error(f'no --config=FILE among {" ".join(args)}.')
  argv = ['main.py', *args]
  check_config_file(argv)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Training configuration.',
                                  flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config
