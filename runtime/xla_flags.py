"""The XLA flags the project sets, chosen per processor, before JAX starts its backends.

XLA reads XLA_FLAGS when JAX first uses a backend, not when it is
imported, so apply() works anywhere before the first computation; main.py,
the tests and the benchmark's workers call it first. The flags are COMMON's
and those BY_FEATURE gives the host processor's features
(runtime/processor.py, from /proc/cpuinfo); a flag the user already set in
XLA_FLAGS is left as the user set it. The log says which were chosen. The
measurements behind each flag are in docs/performance.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from absl import logging

from runtime import processor as processor_lib

COMMON = (
    # XLA:CPU hands convolutions to YNNPACK by default; its kernel gradients
    # (a convolution with a large "kernel", the output's gradient) ran many
    # times slower than Eigen's, and its forward passes slower too. Other
    # YNNPACK fusions (dots, reductions) stay. Ignored by GPU and TPU.
    '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
)

# A processor feature -> the flags added where the processor has it; the
# first feature it has decides. A flag enters only once measured faster in
# the whole train step, in one run against COMMON alone, on such a processor.
BY_FEATURE: Mapping[str, Sequence[str]] = {
    # None yet on either. oneDNN's and XNNPACK's convolution flags, the
    # candidates for AVX-512 and AMX, leave the compiled convolutions as
    # they are in the pinned jaxlib (docs/performance.md#per-processor).
    'amx_tile': (),
    'avx512f': (),
}


def choose(processor: processor_lib.Processor,
           by_feature: Mapping[str, Sequence[str]] = BY_FEATURE) -> list[str]:
  """COMMON and the flags of the first feature of `by_feature` the processor has."""
  extra = next((flags for feature, flags in by_feature.items()
                if feature in processor.features), ())
  return [*COMMON, *extra]


def merge(current: str, chosen: Sequence[str]) -> tuple[str, list[str], list[str]]:
  """XLA_FLAGS with `chosen` added after `current`, except flags `current`
  sets already; (the result, the flags added, the names of those the user set)."""
  set_by_user = {token.split('=')[0] for token in current.split()}
  added = [flag for flag in chosen if flag.split('=')[0] not in set_by_user]
  kept = [flag.split('=')[0] for flag in chosen if flag not in added]
  return ' '.join([current, *added]).strip(), added, kept


def apply(processor: processor_lib.Processor | None = None) -> str:
  """Adds the flags chosen for `processor` (this machine's by default) to the
  environment's XLA_FLAGS and logs them; returns the result."""
  processor = processor or processor_lib.this()
  flags, added, kept = merge(os.environ.get('XLA_FLAGS', ''),
                              choose(processor, BY_FEATURE))
  os.environ['XLA_FLAGS'] = flags
  logging.info('XLA flags for %s: added %s%s.', processor.describe(),
               ' '.join(added) or 'none',
               f'; left as XLA_FLAGS has them: {" ".join(kept)}' if kept else '')
  return flags
