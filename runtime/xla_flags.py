"""The XLA flags the project sets, before JAX starts its backends.

XLA reads XLA_FLAGS when JAX first uses a backend, not when it is
imported, so apply() works anywhere before the first computation; main.py,
the tests and the benchmark's workers call it first. A flag the user
already set in XLA_FLAGS is left as the user set it. The measurements
behind each flag are in docs/performance.md.
"""

from __future__ import annotations

import os

FLAGS = (
    # XLA:CPU hands convolutions to YNNPACK by default; its kernel gradients
    # (a convolution with a large "kernel", the output's gradient) ran many
    # times slower than Eigen's, and its forward passes slower too. Other
    # YNNPACK fusions (dots, reductions) stay. Ignored by GPU and TPU.
    '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
)


def apply() -> str:
  """Adds FLAGS to the environment's XLA_FLAGS; returns the result."""
  current = os.environ.get('XLA_FLAGS', '')
  added = [flag for flag in FLAGS if flag.split('=')[0] not in current]
  os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return os.environ['XLA_FLAGS']
