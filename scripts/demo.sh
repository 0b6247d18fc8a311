#!/usr/bin/env bash
# The main job (until the C++ trainer lands): trains a small x-transformers
# decoder on real text with the arwrap fused loss, side by side with
# x-transformers' own loss. Extra arguments go to examples/demo_loss.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VPY" examples/demo_loss.py "$@"
