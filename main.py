"""Entry point: python main.py --config=configs/alexnet.py --workdir=DIR [--mode=...]."""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

import checkpointing
import evaluation
import input_pipeline
import parallel
import train
from configs import command_line, validation
from data import prepare, statistics
from runtime import xla_flags
from tools import benchmark, benchmark_input, comm_report, figures, summary


@dataclasses.dataclass(frozen=True)
class Mode:
  # The config and --workdir (None where the mode needs none) -> what to print.
  run: Callable[[ml_collections.ConfigDict, str | None], object]
  help: str
  needs_workdir: bool = False


MODES = {
    'train': Mode(train.train_and_evaluate, needs_workdir=True,
                  help="train and evaluate, resuming from the workdir's checkpoints"),
    'eval': Mode(evaluation.report, needs_workdir=True,
                 help='top-1/top-5 errors of a saved checkpoint '
                      '(config.eval.checkpoint), centre crop and 10-crop'),
    'predict': Mode(evaluation.predict_report, needs_workdir=True,
                    help='the top classes of config.predict.inputs (image files '
                         'or folders) by a saved checkpoint, as text or JSON '
                         'lines'),
    'filters': Mode(figures.filters, needs_workdir=True,
                    help="a checkpoint's conv1 kernels as a PNG grid and each "
                         "tower's colourfulness (the paper's Figure 3)"),
    'neighbours': Mode(figures.neighbours, needs_workdir=True,
                       help='the training images nearest in fc7 to each of '
                            "config.predict.inputs, as a PNG grid (the paper's "
                            'Figure 4)'),
    'summary': Mode(lambda config, _: summary.report(config),
                    help="every layer's output shape, parameters and FLOPs"),
    'benchmark': Mode(lambda config, _: benchmark.report(config),
                      help='train-step img/s against the same network as a '
                           'single tower'),
    'comm_report': Mode(lambda config, _: comm_report.report(config),
                        help='the collectives of the compiled train step and '
                             'their bytes'),
    'stats': Mode(lambda config, _: statistics.write(
        config.data, input_pipeline.load(config.data).source),
                  help="write the training split's mean image, channel "
                       'mean/std and RGB PCA to data.stats_file'),
    'prepare': Mode(lambda config, _: prepare.prepare(config.data),
                    help='write the dataset as 256x256 JPEGs to '
                         'data.prepared_dir'),
    'benchmark_input': Mode(lambda config, _: benchmark_input.report(config),
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
flags.mark_flags_as_required(['config'])


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; an override of a key the config lacks gets a plain message."""
  try:
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
  except ValueError as e:
    sys.exit(f'Error: {e}')
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  try:
    output = mode.run(FLAGS.config, FLAGS.workdir)
  except Exception as e:  # noqa: BLE001
    # The traceback for a bug report, then what went wrong as the last lines,
    # which no library's background thread can print into or after.
    logging.exception('--mode=%s failed.', FLAGS.mode)
    checkpointing.exit_with_error(f'Error: {e}')
  if isinstance(output, str):
    print(output)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
