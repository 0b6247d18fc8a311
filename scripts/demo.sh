#!/usr/bin/env bash
# A side-by-side demo in Python: trains a small x-transformers decoder on real text with
# arwrap_cpp.shift_tokens and the fused cross_entropy beside x-transformers' own loss (the main job, the C++
# trainer, is scripts/train.sh). Extra arguments go to examples/demo_loss.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VPY" examples/demo_loss.py "$@"
