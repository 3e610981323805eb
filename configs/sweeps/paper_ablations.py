"""The paper's three comparisons, each against the paper's network, over seeds.

  python -m sweeps --sweep=configs/sweeps/paper_ablations.py:seeds=3 \\
      --config=configs/demo.py --workdir=runs/paper_demo

Points: the baseline (the base config), `lrn=off` (section 3.3), `pool=2x2`
(section 3.4) and `arch=one_gpu` (section 3.2); `seeds=N` runs each with seeds
0..N-1 (default 3). The claims are the paper's reductions of top-1 and top-5
error, as the rise when its feature is removed.
"""

from __future__ import annotations

from configs import variants
from configs.sweeps import Claim, Point, Sweep


def get_sweep(arg: str | None = None) -> Sweep:
  v = variants.parse(arg, {'seeds': '3'})
  if not v['seeds'].isdigit() or int(v['seeds']) < 1:
    raise ValueError(f"Sweep argument seeds={v['seeds']!r} is not a positive integer.")
  return Sweep(
      points=(Point(), Point('lrn=off'), Point('pool=2x2'), Point('arch=one_gpu')),
      seeds=tuple(range(int(v['seeds']))),
      claims=(
          Claim('Response normalisation', '3.3', changed='lrn=off',
                reference='baseline', top1=1.4, top5=1.2),
          Claim('Overlapping pooling', '3.4', changed='pool=2x2',
                reference='baseline', top1=0.4, top5=0.3),
          Claim('Two GPUs', '3.2', changed='arch=one_gpu',
                reference='baseline', top1=1.7, top5=1.2),
      ))
