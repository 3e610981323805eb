"""Entry point: python main.py --config=configs/alexnet.py --workdir=DIR [--mode=...]."""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration; FILE:variants, e.g. '
    'configs/alexnet.py:lrn=off,pool=2x2.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics, checkpoints and results.')
flags.DEFINE_enum(
    'mode', 'train', ['train', 'summary', 'benchmark', 'stats', 'prepare',
                      'benchmark_input', 'eval', 'comm_report'],
    'train: train and evaluate; summary: print the layer table; benchmark: '
    'train-step img/s against the same network as a single tower; stats: '
    "write the training split's mean image, channel mean/std and RGB PCA to "
    'data.stats_file; prepare: write the dataset as 256x256 JPEGs to '
    'data.prepared_dir; benchmark_input: input-pipeline img/s against PIL '
    'and JPEG decoding alone; eval: top-1/top-5 errors of a saved checkpoint '
    '(config.eval.checkpoint) with centre crop and 10-crop; comm_report: the '
    'collectives of the compiled train step and their bytes.')
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  import parallel
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  if FLAGS.mode == 'summary':
    import summary
    print(summary.summarize(FLAGS.config))
    return
  if FLAGS.mode == 'comm_report':
    import comm_report
    print(comm_report.report(FLAGS.config))
    return
  if FLAGS.mode == 'benchmark':
    import benchmark
    print(benchmark.report(FLAGS.config))
    return
  if FLAGS.mode == 'stats':
    import data_stats
    print(data_stats.write(FLAGS.config.data))
    return
  if FLAGS.mode == 'prepare':
    import prepare_data
    print(prepare_data.prepare(FLAGS.config.data))
    return
  if FLAGS.mode == 'benchmark_input':
    import benchmark_input
    print(benchmark_input.report(FLAGS.config))
    return
  if not FLAGS.workdir:
    raise app.UsageError(f'--workdir is required for --mode={FLAGS.mode}.')
  if FLAGS.mode == 'eval':
    import evaluation
    print(evaluation.report(FLAGS.config, FLAGS.workdir))
    return
  import train  # heavy imports after flag parsing keep --help fast
  logging.info('Config:\n%s', FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
