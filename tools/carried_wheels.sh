#!/usr/bin/env bash
# Fills .whl/ (gitignored) with the pure-Python wheels that a bare
# accelerator machine lacks and tools/device_benchmark.sh installs there
# offline: such a machine has jax, flax, optax, orbax-checkpoint and PyTorch
# but not ml_collections or clu (nor clu's wrapt and packaging), and reaches
# no package index. Run it here, where pip reaches one:
#
#   bash tools/carried_wheels.sh        # then carry .whl/ with the repository
#
# Versions: requirements.txt's pins for ml_collections and clu; the others
# as this project's venv has them. Only py3-none-any wheels, so that they
# install on any Python 3 there.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
pin() { grep -m1 -iE "^$1==" requirements.txt; }
"$python" -m pip download --quiet --no-deps --only-binary=:all: --platform any \
  --dest .whl "$(pin ml_collections)" "$(pin clu)" wrapt==2.5.2 packaging==26.4
ls .whl
