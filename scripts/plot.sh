#!/usr/bin/env bash
# Loss curves of one run or several overlaid, from metrics files (arwrap-train --metrics,
# examples/*.py), into a PNG: training and validation loss against steps and wall time.
#   scripts/plot.sh build/train/arwrap-train.metrics.jsonl            # -> ....png beside it
#   scripts/plot.sh fp32.metrics.jsonl bf16.metrics.jsonl -o cmp.png  # overlaid, with a legend
#   scripts/plot.sh --help
# Installs matplotlib (the optional extra `plot`) into .venv on first use; builds nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARWRAP_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
say() { printf '[arwrap] %s\n' "$*" >&2; }
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import matplotlib" 2>/dev/null; then
  say "installing matplotlib into ${VENV} (once)"
  # the same requirement as pyproject.toml's optional extra `plot`
  "$VPY" -m pip install --disable-pip-version-check -q "matplotlib>=3.6" 2>&1 | grep -v "^WARNING: Location" || true
  "$VPY" -c "import matplotlib" || { say "matplotlib failed to install"; exit 1; }
fi
# the module imports neither torch nor the compiled package: run it from the source tree
exec "$VPY" "$ROOT/python/arwrap_cpp/plot.py" "$@"
