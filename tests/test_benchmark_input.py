"""--mode=benchmark_input on a small image folder: every loader runs, the
report has its rows and its last line."""

from __future__ import annotations

import re

from configs import alexnet
from tools import benchmark_input, synthetic_photos


def test_report_times_every_loader_and_ends_with_the_ratios(tmp_path,
                                                           monkeypatch):
  monkeypatch.setattr(benchmark_input, '_IMAGES_PER_ROUND', 64)
  monkeypatch.setattr(benchmark_input, '_ROUNDS', 2)
  synthetic_photos.make_folder(str(tmp_path), 192, num_classes=2)
  config = alexnet.get_config()
  config.data.image_folder = str(tmp_path)
  config.batch_size = 32
  lines = benchmark_input.report(config).splitlines()
  assert lines[0].startswith(f'Input pipeline on {tmp_path} (64 images a '
                             'round, e.g. 500x375)')
  rates = {}
  for line in lines[1:-1]:
    name, rate, rounds = re.fullmatch(
        r'  (\S+)\s+([\d.]+) img/s   \(rounds: (.*)\)', line).groups()
    assert len(rounds.split(', ')) == 2
    rates[name] = float(rate)
  assert set(rates) == {'input', 'decode-only', 'decode+crop', 'PIL'}
  assert all(rate > 0 for rate in rates.values())
  input_rate, vs_pil, vs_decode = re.fullmatch(
      r'input img/s: (\d+)  vs PIL: ([\d.]+)x  vs decode-only: ([\d.]+)x',
      lines[-1]).groups()
  # The rows print one decimal (within 0.05 of the measured rate), the last
  # line a whole rate and two-decimal ratios: compare within those roundings
  # (1515.46 img/s prints as 1515.5 in its row and 1515 on the last line).
  assert abs(int(input_rate) - rates['input']) <= 0.55
  for ratio, baseline in ((vs_pil, 'PIL'), (vs_decode, 'decode-only')):
    low = (rates['input'] - 0.05) / (rates[baseline] + 0.05) - 0.005
    high = (rates['input'] + 0.05) / (rates[baseline] - 0.05) + 0.005
    assert low - 1e-9 <= float(ratio) <= high + 1e-9, (ratio, baseline)
