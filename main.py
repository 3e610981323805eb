"""Entry point: python main.py --config=configs/alexnet.py --workdir=DIR [--mode=...]."""

from __future__ import annotations

import dataclasses
import importlib
import logging as std_logging
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

import checkpointing
import parallel
from configs import command_line, validation
from runtime import errors, xla_flags


@dataclasses.dataclass(frozen=True)
class Mode:
  # 'module:function', imported when the mode runs: a mode that reads no data
  # (the benchmark) then imports no TensorFlow.
  target: str
  help: str
  needs_workdir: bool = False  # the function takes (config, workdir)
  data_only: bool = False      # the function takes config.data

  def run(self, config: ml_collections.ConfigDict, workdir: str | None) -> object:
    """The mode's function on the config (and workdir); what it returns."""
    module, name = self.target.split(':')
    function = getattr(importlib.import_module(module), name)
    if self.needs_workdir:
      return function(config, workdir)
    return function(config.data if self.data_only else config)


MODES = {
    'train': Mode('train:train_and_evaluate', needs_workdir=True,
                  help="train and evaluate, resuming from the workdir's checkpoints"),
    'eval': Mode('evaluation:report', needs_workdir=True,
                 help='top-1/top-5 errors of a saved checkpoint '
                      '(config.eval.checkpoint), centre crop and 10-crop'),
    'predict': Mode('evaluation:predict_report', needs_workdir=True,
                    help='the top classes of config.predict.inputs (image files '
                         'or folders) by a saved checkpoint, as text or JSON '
                         'lines'),
    'filters': Mode('tools.figures:filters', needs_workdir=True,
                    help="a checkpoint's conv1 kernels as a PNG grid and each "
                         "tower's colourfulness (the paper's Figure 3)"),
    'neighbours': Mode('tools.figures:neighbours', needs_workdir=True,
                       help='the training images nearest in fc7 to each of '
                            "config.predict.inputs, as a PNG grid (the paper's "
                            'Figure 4)'),
    'summary': Mode('tools.summary:report',
                    help="every layer's output shape, parameters and FLOPs"),
    'benchmark': Mode('tools.benchmark:report',
                      help='train-step img/s against the same network in PyTorch'),
    'comm_report': Mode('tools.comm_report:report',
                        help='the collectives of the compiled train step and '
                             'their bytes'),
    'stats': Mode('input_pipeline:write_statistics', data_only=True,
                  help="write the training split's mean image, channel "
                       'mean/std and RGB PCA to data.stats_file'),
    'prepare': Mode('data.prepare:prepare', data_only=True,
                    help='write the dataset as 256x256 JPEGs to '
                         'data.prepared_dir'),
    'benchmark_input': Mode('tools.benchmark_input:report',
                            help='input-pipeline img/s against PIL and JPEG '
                                 'decoding alone'),
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration; FILE:variants, e.g. '
    'configs/alexnet.py:lrn=off,pool=2x2.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics, checkpoints and results.')
flags.DEFINE_enum('mode', 'train', list(MODES),
                  '; '.join(f'{name}: {mode.help}' for name, mode in MODES.items()))
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for several processes without a '
                    'cluster manager (SLURM and Cloud TPU are detected).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_integer('distributed_timeout', 300, 'Seconds a process waits for the '
                     'coordinator and the others to join.', lower_bound=1)
flags.DEFINE_bool('verbose', False, "Print a user error's traceback too (else "
                  'it goes to WORKDIR/error.log).')
flags.mark_flags_as_required(['config'])


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; an override of a key the config lacks gets a plain message."""
  try:
    command_line.check_config_file(argv)
    return FLAGS(argv)
  except command_line.FLAG_ERRORS as e:
    sys.exit(command_line.error_message(e, argv) + (
        '\nPass --helpshort to see the flags.' if isinstance(e, flags.Error) else ''))


class _QuietLibraries:
  """Drops orbax's and TFDS's routine INFO lines, which would bury the run's own."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno > std_logging.INFO or not any(
        f'{os.sep}{lib}{os.sep}' in record.pathname
        for lib in ('orbax', 'tensorflow_datasets')))


def main(argv):
  xla_flags.apply()  # before anything starts a JAX backend
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  mode = MODES[FLAGS.mode]
  if mode.needs_workdir and not FLAGS.workdir:
    raise app.UsageError(f'--workdir is required for --mode={FLAGS.mode}.')
  try:
    validation.check(FLAGS.config)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id, FLAGS.distributed_timeout)
  except (ValueError, parallel.DistributedError) as e:
    sys.exit(f'Error: {e}')
  try:
    output = mode.run(FLAGS.config, FLAGS.workdir)
  except Exception as e:  # noqa: BLE001
    # What went wrong as the last lines (a bug's traceback before them), which
    # no library's background thread can print into or after.
    checkpointing.exit_with_error(
        errors.describe(e, f'--mode={FLAGS.mode}', FLAGS.workdir, FLAGS.verbose))
  return errors.finish(output)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
