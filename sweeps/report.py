"""A sweep's report: errors per point over seeds, the claims, two figures.

Written by python -m sweeps into the sweep's workdir, from the runs that have
finished (sweeps.runs.finished: the final 10-crop errors, under the run's
own flags):

  report.md    per point: 10-crop and centre-crop top-1 / top-5 error, mean and
               standard deviation over seeds, parameters, forward FLOPs per
               image, epochs, train time, train img/s; then each claim: the
               measured effect paired by seed with its 95% interval, beside
               the paper's value; then the runs that have not finished
  report.csv   the per-point table, errors as fractions, full precision
  runs.csv     one row per finished run: its results.json and train img/s
  claims.csv   the claims table
  curves.png   validation top-1 error (centre crop) against epoch per point,
               the mean over seeds with their range shaded
  effects.png  the measured effects with their intervals beside the paper's
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

import input_pipeline
import run_files
from configs import command_line
from configs.sweeps import Claim, Sweep
from models import AlexNet
from sweeps import runs as sweep_runs
from sweeps.runs import Run, final_results
from tools import summary

# results.json keys tabulated per point: (key, what the report calls it).
ERRORS = (('val_top1_error_10crop', '10-crop top-1'),
          ('val_top5_error_10crop', '10-crop top-5'),
          ('val_top1_error', 'centre top-1'),
          ('val_top5_error', 'centre top-5'))
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Effect:
  """Mean of the paired differences and its Student-t interval (NaN below
  two pairs)."""
  n: int
  mean: float
  low: float
  high: float


def paired_effect(changed: Mapping[int, float], reference: Mapping[int, float]) -> Effect:
  """changed[seed] - reference[seed] over the seeds both have: the mean and
  its CONFIDENCE interval, mean +- t(n-1) * sd / sqrt(n)."""
  d = np.array([changed[s] - reference[s] for s in sorted(changed) if s in reference])
  if len(d) == 0:
    return Effect(0, math.nan, math.nan, math.nan)
  mean = float(np.mean(d))
  if len(d) < 2:
    return Effect(1, mean, math.nan, math.nan)
  half = (stats.t.ppf((1 + CONFIDENCE) / 2, len(d) - 1) *
          float(np.std(d, ddof=1)) / math.sqrt(len(d)))
  return Effect(len(d), mean, mean - half, mean + half)


def train_images_per_sec(workdir: str) -> float:
  """The median of the logged train img/s: evaluation is outside the logged
  intervals, and the median discounts the ones that held compilation."""
  rates = [r['images_per_sec'] for r in run_files.read_metrics(workdir)
           if 'images_per_sec' in r]
  return float(np.median(rates)) if rates else math.nan


def validation_curve(workdir: str) -> list[tuple[float, float]]:
  """(epoch, centre-crop top-1 error) of each evaluation in the metric log."""
  results = final_results(workdir)
  steps_per_epoch = results['step'] / results['epoch']
  return [(r['step'] / steps_per_epoch, r['val_top1_error'])
          for r in run_files.read_metrics(workdir) if 'val_top1_error' in r]


@dataclasses.dataclass(frozen=True)
class Network:
  params: int
  flops: float


def network(config_args: Sequence[str]) -> Network:
  """Parameters and forward FLOPs per image of the model that main.py's
  config flags `config_args` build (no data is read)."""
  config = input_pipeline.with_dataset_classes(command_line.load(config_args))
  rows = summary.layer_rows(AlexNet(**config.model), config.data.image_size)
  return Network(sum(r.params for r in rows), sum(r.flops for r in rows))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
  return float(np.mean(values)), std


def _percent(mean: float, std: float) -> str:
  if math.isnan(mean):
    return 'n/a'
  return f'{100 * mean:.2f}' + ('' if math.isnan(std) else f' ± {100 * std:.2f}')


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ['point'])
    writer.writeheader()
    for row in rows:
      writer.writerow({k: '' if isinstance(v, float) and math.isnan(v) else v
                       for k, v in row.items()})


def _yes_no(condition: bool, defined: bool) -> str:
  return ('yes' if condition else 'no') if defined else 'n/a'


def _dropped(claim: Claim, seeds: Sequence[int],
             finished: Mapping[str, Mapping[int, Any]]) -> list[str]:
  """The sweep's seeds that give `claim` no pair, and which runs of theirs
  have not finished (not yet run, stopped, failed or diverged)."""
  dropped = []
  for seed in seeds:
    absent = [p for p in (claim.changed, claim.reference)
              if seed not in finished.get(p, {})]
    if absent:
      dropped.append(f'seed {seed} ({", ".join(absent)} not finished)')
  return dropped


def _interval_note(effect: Effect) -> str:
  """What the report says of an effect's interval where it is not a range."""
  if effect.n == 0:
    return 'no pairs'
  if effect.n == 1:
    return 'one pair: no interval'
  if effect.low == effect.high:
    return 'degenerate: every pair differs by the same'
  return ''


def claim_rows(claims: Sequence[Claim], seeds: Sequence[int],
               finished: Mapping[str, Mapping[int, Mapping[str, float]]]
               ) -> list[dict[str, Any]]:
  """Each claim's paired 10-crop effects in percentage points, from the
  finished runs' results by point and seed, and the pairs of the sweep's
  `seeds` dropped because a run of theirs has not finished."""
  rows = []
  for claim in claims:
    dropped = _dropped(claim, seeds, finished)
    row = dict(claim=claim.name, section=claim.section, changed=claim.changed,
               reference=claim.reference)
    for k, paper in (('top1', claim.top1), ('top5', claim.top5)):
      key = f'val_{k}_error_10crop'
      effect = paired_effect(
          {s: 100 * r[key] for s, r in finished.get(claim.changed, {}).items()},
          {s: 100 * r[key] for s, r in finished.get(claim.reference, {}).items()})
      row.update({'seeds': effect.n, f'{k}_effect': effect.mean,
                  f'{k}_low': effect.low, f'{k}_high': effect.high,
                  f'{k}_note': _interval_note(effect),
                  f'{k}_paper': paper,
                  f'{k}_same_sign': _yes_no(np.sign(effect.mean) == np.sign(paper),
                                            math.isfinite(effect.mean)),
                  f'{k}_paper_inside': _yes_no(effect.low <= paper <= effect.high,
                                               math.isfinite(effect.low))})
    row.update(dropped_pairs=len(dropped), dropped='; '.join(dropped))
    rows.append(row)
  return rows


def _figure(columns: int = 1) -> tuple[Figure, Sequence]:
  # A Figure without pyplot: no display, no global figure registry.
  fig = Figure(figsize=(6.5, 4))
  return fig, fig.subplots(1, columns, sharey=True, squeeze=False)[0]


def _save(fig: Figure, path: str) -> None:
  for ax in fig.axes:
    ax.grid(alpha=0.3, axis='y')
  if fig.axes[0].get_legend_handles_labels()[0]:
    fig.axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _plot_curves(curves: Mapping[str, list[list[tuple[float, float]]]], path: str) -> None:
  fig, (ax,) = _figure()
  for name, runs in curves.items():
    by_epoch: dict[float, list[float]] = {}
    for curve in runs:
      for epoch, error in curve:
        by_epoch.setdefault(round(epoch, 6), []).append(100 * error)
    epochs = sorted(by_epoch)
    line, = ax.plot(epochs, [np.mean(by_epoch[e]) for e in epochs], marker='o',
                    markersize=3, label=f'{name} ({len(runs)} seeds)')
    ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                    [max(by_epoch[e]) for e in epochs], color=line.get_color(),
                    alpha=0.2, linewidth=0)
  ax.set_xlabel('epoch')
  ax.set_ylabel('validation top-1 error, centre crop (%)')
  ax.set_title('Mean over seeds; shaded: their range', fontsize=10)
  _save(fig, path)


@dataclasses.dataclass(frozen=True)
class _Bar:
  x: float
  height: float | None        # None: nothing measured, no bar
  error: tuple[float, float] | None  # below and above; None: no interval
  note: str                   # _interval_note, written on the figure


def effect_bars(rows: list[dict[str, Any]], k: str) -> list[_Bar]:
  """The measured `k` ('top1', 'top5') bars of effects.png, one per claim:
  none where no pair finished, no error bar where there is no interval."""
  bars = []
  for x, row in enumerate(rows):
    mean, low, high = row[f'{k}_effect'], row[f'{k}_low'], row[f'{k}_high']
    bars.append(_Bar(
        x - 0.2, mean if math.isfinite(mean) else None,
        (mean - low, high - mean) if math.isfinite(low) else None,
        row[f'{k}_note']))
  return bars


def _plot_effects(rows: list[dict[str, Any]], path: str) -> None:
  fig, axes = _figure(columns=2)
  x = np.arange(len(rows))
  for ax, k in zip(axes, ('top1', 'top5')):
    label = 'measured, 95% interval'
    for bar in effect_bars(rows, k):
      if bar.height is not None:
        ax.bar(bar.x, bar.height, 0.4, color='tab:blue', label=label, capsize=4,
               yerr=None if bar.error is None else np.array(bar.error)[:, None])
        label = None
      if bar.note:
        ax.text(bar.x, bar.height or 0, bar.note, rotation=90, fontsize=7,
                ha='center', va='bottom')
    ax.bar(x + 0.2, [row[f'{k}_paper'] for row in rows], 0.4,
           color='tab:gray', label='paper')
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xticks(x, [textwrap.fill(f"{row['claim']} ({row['section']})", 14)
                      for row in rows], fontsize=8)
    ax.set_title(f"10-crop {k.replace('top', 'top-')} error", fontsize=10)
  axes[0].set_ylabel('changed minus reference (points)')
  _save(fig, path)


def _collect(runs: Sequence[Run]):
  """Finished runs' results (with train img/s) by point and seed, their
  validation curves by point, and the runs not finished."""
  finished: dict[str, dict[int, dict[str, Any]]] = {}
  curves: dict[str, list] = {}
  missing = []
  for run in runs:
    if not sweep_runs.finished(run):
      missing.append(run)
      continue
    results = final_results(run.workdir)
    finished.setdefault(run.point.label, {})[run.seed] = {
        **results, 'images_per_sec': train_images_per_sec(run.workdir)}
    curves.setdefault(run.point.label, []).append(validation_curve(run.workdir))
  return finished, curves, missing


def _point_row(name: str, config_args: Sequence[str],
               seeds: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """A point's errors (mean and std over seeds), network and speed."""
  def values(key):
    return [r[key] for r in seeds.values()]
  net = network(config_args)
  row: dict[str, Any] = {'point': name, 'seeds': len(seeds)}
  for key, _ in ERRORS:
    row[f'{key}_mean'], row[f'{key}_std'] = (
        _mean_std(values(key)) if seeds else (math.nan, math.nan))
  row.update(params=net.params, flops=net.flops)
  for key in ('epoch', 'train_seconds', 'images_per_sec'):
    row[f'{key}_mean'] = float(np.mean(values(key))) if seeds else math.nan
  return row


def _number(value: float, spec: str) -> str:
  return 'n/a' if math.isnan(value) else format(value, spec)


def _markdown(points: list[dict[str, Any]], claims: list[dict[str, Any]],
              missing: Sequence[Run], total: int, command: str, date: str) -> str:
  text = [
      f'# Sweep report: {total - len(missing)} of {total} runs finished',
      '', f'Written {date} by', '', f'    {command}', '',
      'Validation errors in %, mean ± standard deviation over the seeds that '
      "finished. 10-crop is the paper's test (section 4.1) of the final state; "
      "centre crop is what training evaluates. FLOPs: forward, per image (XLA's "
      'count). Train s: time in training, evaluation included; train img/s: '
      'the median logged rate of each run, averaged over seeds.', '',
      '| point | seeds | ' + ' | '.join(title for _, title in ERRORS)
      + ' | params | FLOPs | epochs | train s | train img/s |',
      '|---|---|' + '---|' * (len(ERRORS) + 5)]
  for row in points:
    text.append(
        f"| {row['point']} | {row['seeds']} | "
        + ' | '.join(_percent(row[f'{k}_mean'], row[f'{k}_std']) for k, _ in ERRORS)
        + f" | {row['params']:,} | {row['flops'] / 1e6:,.1f} M "
        f"| {_number(row['epoch_mean'], '.2f')} | {_number(row['train_seconds_mean'], ',.0f')} "
        f"| {_number(row['images_per_sec_mean'], ',.1f')} |")
  if claims:
    text += [
        '', "## The paper's claims", '',
        "Effect: the 10-crop error of the changed net minus the reference's, "
        'in percentage points, paired by seed; the mean over seeds and its '
        f'{CONFIDENCE:.0%} interval (Student t over the seed differences). The '
        "paper's value is its reported reduction, i.e. the rise when the "
        'feature is taken away. Fewer than two seeds give no interval; one of '
        'zero width (every pair differs by the same) is degenerate. Pairs '
        'dropped: seeds of the sweep with a run not finished (not yet run, '
        'stopped, failed or diverged), which the effect leaves out.', '',
        '| claim | section | changed vs reference | seeds | pairs dropped | top-1 effect '
        '| paper | same sign | paper inside | top-5 effect | paper | same sign '
        '| paper inside |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for row in claims:
    cells = []
    for k in ('top1', 'top5'):
      low, high = row[f'{k}_low'], row[f'{k}_high']
      interval = '' if math.isnan(low) else f' [{low:+.2f}, {high:+.2f}]'
      note = f' ({row[f"{k}_note"]})' if row[f'{k}_note'] else ''
      cells += [_number(row[f'{k}_effect'], '+.2f') + interval + note,
                f"{row[f'{k}_paper']:+.1f}", row[f'{k}_same_sign'],
                row[f'{k}_paper_inside']]
    dropped = (f"{row['dropped_pairs']}: {row['dropped']}" if row['dropped_pairs']
               else '0')
    text.append(f"| {row['claim']} | {row['section']} | {row['changed']} vs "
                f"{row['reference']} | {row['seeds']} | {dropped} | "
                + ' | '.join(cells) + ' |')
  text += ['', '## Runs not finished', '']
  text += ([f'- {run.point.label}, seed {run.seed}: `{run.workdir}`' for run in missing]
           or ['None.'])
  text += ['', '![validation error per epoch](curves.png)', '',
           "![measured effects beside the paper's](effects.png)", '']
  return '\n'.join(text)


def write(workdir: str, sweep: Sweep, runs: Sequence[Run], command: str, date: str) -> str:
  """Writes the report of `runs` of `sweep` into `workdir`; returns
  report.md's text. `command` and `date` say what produced it."""
  finished, curves, missing = _collect(runs)
  point_args = {}
  for run in runs:
    point_args.setdefault(run.point.label, run.config_args)
  points = [_point_row(name, args, finished.get(name, {}))
            for name, args in point_args.items()]
  claims = claim_rows(sweep.claims, sweep.seeds, finished)
  _write_csv(os.path.join(workdir, 'report.csv'), points)
  _write_csv(os.path.join(workdir, 'runs.csv'), [
      {'point': name, 'seed': seed, **results}
      for name, seeds in finished.items() for seed, results in seeds.items()])
  _write_csv(os.path.join(workdir, 'claims.csv'), claims)
  _plot_curves(curves, os.path.join(workdir, 'curves.png'))
  _plot_effects(claims, os.path.join(workdir, 'effects.png'))
  report = _markdown(points, claims, missing, len(runs), command, date)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(report)
  return report
