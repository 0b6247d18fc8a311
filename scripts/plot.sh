#!/usr/bin/env bash
# Loss curves of one run or several overlaid, from metrics files (arwrap-train --metrics,
# examples/*.py), into a PNG: training and validation loss against steps and wall time.
#   scripts/plot.sh build/train/arwrap-train.metrics.jsonl            # -> ....png beside it
#   scripts/plot.sh fp32.metrics.jsonl bf16.metrics.jsonl -o cmp.png  # overlaid, with a legend
#   scripts/plot.sh --help
# Installs matplotlib (the optional extra `plot`) into .venv on first use; builds nothing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # ROOT, VENV, VPY, say, make_venv, pip_q
make_venv "$VENV"
if ! "$VPY" -c "import matplotlib" 2>/dev/null; then
  say "installing matplotlib into ${VENV} (once)"
  pip_q "matplotlib>=3.6"  # the same requirement as pyproject.toml's optional extra `plot`
  "$VPY" -c "import matplotlib" || { say "matplotlib failed to install"; exit 1; }
fi
# the module imports neither torch nor the compiled package: run it from the source tree
exec "$VPY" "$ROOT/python/arwrap_cpp/plot.py" "$@"
