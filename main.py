"""Entry point: python main.py --config=configs/alexnet.py --workdir=DIR [--mode=...]."""

import importlib
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration; FILE:variants, e.g. '
    'configs/alexnet.py:lrn=off,pool=2x2.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics, checkpoints and results.')

# --mode: (module, function, what it takes, help). Modules load only when their
# mode runs; each function takes the config, its `data` part, or the config and
# --workdir, and returns what to print (train logs instead).
MODES = {
    'train': ('train', 'train_and_evaluate', 'workdir',
              'train and evaluate, resuming from the workdir\'s checkpoints'),
    'eval': ('evaluation', 'report', 'workdir',
             'top-1/top-5 errors of a saved checkpoint (config.eval.checkpoint), '
             'centre crop and 10-crop'),
    'summary': ('summary', 'summarize', 'config',
                'every layer\'s output shape, parameters and FLOPs'),
    'benchmark': ('benchmark', 'report', 'config',
                  'train-step img/s against the same network as a single tower'),
    'comm_report': ('comm_report', 'report', 'config',
                    'the collectives of the compiled train step and their bytes'),
    'stats': ('data_stats', 'write', 'data',
              "write the training split's mean image, channel mean/std and RGB "
              'PCA to data.stats_file'),
    'prepare': ('prepare_data', 'prepare', 'data',
                'write the dataset as 256x256 JPEGs to data.prepared_dir'),
    'benchmark_input': ('benchmark_input', 'report', 'config',
                        'input-pipeline img/s against PIL and JPEG decoding alone'),
}
flags.DEFINE_enum('mode', 'train', list(MODES),
                  '; '.join(f'{mode}: {help_}' for mode, (*_, help_) in MODES.items()))
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
  except (AttributeError, KeyError) as e:
    # ml_collections reports a missing key as a nested, quoted KeyError.
    key = re.search(r"'([\w.]+)", str(e))
    key = key.group(1) if key else str(e)
    hint = re.search(r'Did you mean "([\w.]+)"', str(e))
    culprits = [a for a in argv if a.startswith('--config.') and
                key in a.split('=')[0].split('.')]
    sys.exit(f'Error: unknown config key {key!r} in {" ".join(culprits) or argv}.'
             + (f' Did you mean {hint.group(1)!r}?' if hint else '') +
             ' Keys are listed in the README (config reference); a new key must '
             'be added to the config file, not only overridden.')
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    # config_flags embeds the config file's traceback: keep its last line.
    message = lines[0] + (f' {lines[-1]}' if len(lines) > 1 else '')
    sys.exit(f'Error: {message}\nPass --helpshort to see the flags.')


class _QuietLibraries:
  """Drops orbax's and TFDS's routine INFO lines, which would bury the run's own."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno > std_logging.INFO or not any(
        f'{os.sep}{lib}{os.sep}' in record.pathname
        for lib in ('orbax', 'tensorflow_datasets')))


def main(argv):
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  module, function, takes, _ = MODES[FLAGS.mode]
  if takes == 'workdir' and not FLAGS.workdir:
    raise app.UsageError(f'--workdir is required for --mode={FLAGS.mode}.')
  import parallel
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  config = FLAGS.config
  if takes == 'config':  # fc8's size; train and eval read it themselves
    import input_pipeline
    config = input_pipeline.with_dataset_classes(config)
  logging.info('Config:\n%s', config)
  run = getattr(importlib.import_module(module), function)
  args = {'config': (config,), 'data': (config.data,),
          'workdir': (config, FLAGS.workdir)}[takes]
  output = run(*args)
  if isinstance(output, str):
    print(output)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
