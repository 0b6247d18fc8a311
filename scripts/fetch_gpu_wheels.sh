#!/usr/bin/env bash
# Downloads, on a machine with network, the wheels scripts/gpu_check.sh installs on the
# GPU machine (which has none): the test dependencies and the benchmark anchors
# (Liger-Kernel, Cut Cross-Entropy), for Python 3.12. Torch and triton are already there.
# Then run gpu_check.sh through the device tool with carry=["bench/wheels"].
# gpu_check.sh installs only the distributions the machine lacks (by name, --no-deps), so
# the packages its image already has (numpy, pytest, pluggy, ...) are never replaced;
# they stay in this list for an image without them. pytest-timeout gives the tests a
# per-test limit (without it, gpu_check.sh uses scripts/pytest_deadline.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/bench/wheels"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
common=(--no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --platform any -d "$DEST")
"$PY" -m pip download "${common[@]}" \
  "x-transformers==2.31.10" einops einx loguru frozendict torch-einops-utils pytest iniconfig pluggy packaging \
  liger-kernel cut-cross-entropy numpy pytest-timeout
ls -la "$DEST"
