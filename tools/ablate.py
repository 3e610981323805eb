"""Ablations in one command: train a config and its variants, get a table and a plot.

  python -m tools.ablate --config=configs/demo.py --variant=lrn=off \\
      --variant=pool=2x2 --workdir=runs/ablation

trains the baseline (the config as given) and each variant in its own
sub-workdir with main.py, one after another, then writes ablation.md (top-1 and
top-5 error of each, with the difference from the baseline) and ablation.png
(validation top-1 error against epoch). Every run resumes from its checkpoints
if the sweep is interrupted and started again; finished runs are not redone.
Extra main.py flags, such as --config.num_epochs=5, go after a `--`.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

from absl import app, flags, logging

import run_files

FLAGS = flags.FLAGS
flags.DEFINE_string('config', None, 'Config file, optionally FILE:variants (the baseline).')
flags.DEFINE_multi_string('variant', [], 'A variant to compare, e.g. lrn=off or '
                          'lrn=off,pool=2x2; repeat the flag for more.')
flags.DEFINE_string('workdir', None, 'Directory holding one sub-workdir per run.')
flags.mark_flags_as_required(['config', 'workdir'])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_name(variant: str) -> str:
  return re.sub(r'[^\w.=-]+', '_', variant) if variant else 'baseline'


def with_variant(config: str, variant: str) -> str:
  """configs/x.py:a=1 plus b=2 -> configs/x.py:a=1,b=2."""
  if not variant:
    return config
  return f'{config},{variant}' if ':' in config else f'{config}:{variant}'


def check_config(config: str) -> None:
  """Builds a run's config up front, so a misspelt variant fails before any training."""
  path, _, arg = config.partition(':')
  spec = importlib.util.spec_from_file_location('ablation_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.get_config(arg or None)


def train(config: str, workdir: str, extra: list[str]) -> dict:
  """Trains (or resumes) one run in a subprocess; returns its results.json."""
  command = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={config}',
             f'--workdir={workdir}', *extra]
  logging.info('Running %s', ' '.join(command))
  subprocess.run(command, check=True)
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def table(results: dict[str, dict]) -> str:
  """Markdown table of each run's errors and their change from the baseline."""
  base = results['baseline']
  lines = ['| run | top-1 error | top-5 error | d top-1 | d top-5 | examples | epochs | train s |',
           '|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    d1 = r['val_top1_error'] - base['val_top1_error']
    d5 = r['val_top5_error'] - base['val_top5_error']
    lines.append(
        f"| {name} | {100 * r['val_top1_error']:.2f}% | {100 * r['val_top5_error']:.2f}% "
        f"| {100 * d1:+.2f} | {100 * d5:+.2f} | {r['val_examples']} "
        f"| {r['epoch']:.2f} | {r['train_seconds']:.0f} |")
  return '\n'.join(lines)


def plot(curves: dict[str, list[tuple[float, float]]], path: str) -> None:
  """Validation top-1 error against epoch, one line per run."""
  import matplotlib
  matplotlib.use('Agg')  # no display needed
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, points in curves.items():
    ax.plot(*zip(*points), marker='o', markersize=3, label=name)
  ax.set_xlabel('epoch')
  ax.set_ylabel('validation top-1 error')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def validation_curve(workdir: str, steps_per_epoch: float) -> list[tuple[float, float]]:
  return [(r['step'] / steps_per_epoch, r['val_top1_error'])
          for r in run_files.read_metrics(workdir) if 'val_top1_error' in r]


def main(argv: list[str]) -> None:
  extra = argv[1:]
  os.makedirs(FLAGS.workdir, exist_ok=True)
  variants = ['', *FLAGS.variant]
  for variant in variants:
    check_config(with_variant(FLAGS.config, variant))
  results, curves = {}, {}
  for variant in variants:
    name = run_name(variant)
    workdir = os.path.join(FLAGS.workdir, name)
    results[name] = train(with_variant(FLAGS.config, variant), workdir, extra)
    r = results[name]
    curves[name] = validation_curve(workdir, r['step'] / r['epoch'])
  text = table(results)
  with open(os.path.join(FLAGS.workdir, 'ablation.md'), 'w') as f:
    f.write(text + '\n')
  plot(curves, os.path.join(FLAGS.workdir, 'ablation.png'))
  print(text)
  print(f"Table: {os.path.join(FLAGS.workdir, 'ablation.md')}  "
        f"Plot: {os.path.join(FLAGS.workdir, 'ablation.png')}")


if __name__ == '__main__':
  app.run(main)
