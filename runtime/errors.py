"""User errors and exit statuses: how a mode ends.

A user error is a problem in what the user gave (config, flags, data,
checkpoint, workdir, disk) whose message says what to change. main.py prints
its message alone and keeps the traceback in a file; any other exception is
a bug, printed with its traceback. The exit statuses are in docs/using.md.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import traceback

from absl import logging

EXIT_OK = 0
EXIT_ERROR = 1    # a user error or a bug stopped the mode (also bad flags or config)
EXIT_SKIPPED = 3  # the mode finished, but some inputs were unreadable and skipped

# Where a user error's traceback goes in the workdir.
ERROR_LOG = 'error.log'


class UserError(Exception):
  """Base of the errors in what the user gave; the message names the remedy."""
  # False where the workdir is not this run's to write in (another run's).
  traceback_in_workdir = True


class InvalidInput(UserError, ValueError):
  """A setting, file or dataset that cannot be used as it is."""


class NotFound(UserError, FileNotFoundError):
  """A file, folder, dataset or checkpoint that does not exist."""


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A mode's output when it skipped unreadable inputs (named in its log)."""
  text: str | None
  count: int


def write_traceback(error: UserError, workdir: str | None) -> str:
  """Writes `error`'s traceback to WORKDIR/error.log, or to a temporary file
  when there is no workdir yet (or it is not this run's); returns the path."""
  text = ''.join(traceback.format_exception(error))
  if workdir and os.path.isdir(workdir) and error.traceback_in_workdir:
    path = os.path.join(workdir, ERROR_LOG)
    with open(path, 'w') as f:
      f.write(text)
    return path
  fd, path = tempfile.mkstemp(prefix='alexnet-error-', suffix='.log')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return path


def describe(error: Exception, what: str, workdir: str | None,
             verbose: bool) -> str:
  """Logs a bug's traceback (or a user error's with `verbose`) to the
  console, a user error's to a file otherwise; returns the lines to print
  last: 'Error: ...' and, for a user error, where its traceback is."""
  if isinstance(error, UserError) and not verbose:
    try:
      where = (f'(its traceback is in {write_traceback(error, workdir)}; '
               '--verbose prints it here)')
    except OSError as e:  # a full disk, say: the message matters more
      where = f'(its traceback could not be written: {e}; --verbose prints it)'
    return f'Error: {error}\n{where}'
  logging.error('%s failed.', what, exc_info=error)
  return f'Error: {error}'


def finish(output: object) -> int:
  """Prints a mode's text output; returns the exit status it ends with."""
  text = output.text if isinstance(output, Skipped) else output
  if isinstance(text, str):
    print(text)
  if isinstance(output, Skipped):
    sys.stdout.flush()
    logging.error('%d input(s) could not be read as images and were skipped '
                  '(listed above); exiting with status %d.', output.count,
                  EXIT_SKIPPED)
    return EXIT_SKIPPED
  return EXIT_OK
