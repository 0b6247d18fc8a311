#!/usr/bin/env bash
# The whole path from training to serving, Python only in the middle step (docs/deploy.md):
#   1. train in C++:  arwrap-train (scripts/train.sh) writes a checkpoint
#   2. export:        python -m arwrap_cpp.export CHECKPOINT PACKAGE (torch.export + AOTInductor)
#   3. serve in C++:  examples/deploy's arwrap-deploy loads the package and decodes from a prompt
#
# Arguments go to arwrap-train after the defaults here (so they win), e.g.
#   scripts/deploy.sh --steps 300
# ARWRAP_DEPLOY_CHECKPOINT=PATH serves an existing checkpoint instead of training one;
# ARWRAP_DEPLOY_PROMPT (default "def ") and ARWRAP_DEPLOY_TOKENS (default 128) set the decoding.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

BUILD="${ARWRAP_DEPLOY_BUILD:-$ROOT/build/deploy}"
mkdir -p "$BUILD"
CKPT="${ARWRAP_DEPLOY_CHECKPOINT:-}"
if [[ -z "$CKPT" ]]; then
  CKPT="$BUILD/arwrap-train.pt"
  say "1. training in C++ (scripts/train.sh) -> ${CKPT#$ROOT/}"
  bash "$ROOT/scripts/train.sh" --steps 100 --sample-every 0 --checkpoint "$CKPT" "$@"
fi
PACKAGE="${CKPT%.pt}.pt2"
say "2. exporting and compiling (python -m arwrap_cpp.export) -> ${PACKAGE#$ROOT/}"
"$VPY" -m arwrap_cpp.export "$CKPT" "$PACKAGE"
cmake_project "$ROOT/examples/deploy" "$BUILD" arwrap-deploy
say "3. serving in C++ (arwrap-deploy)"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$BUILD/arwrap-deploy" "$PACKAGE" --prompt "${ARWRAP_DEPLOY_PROMPT:-def }" --steps "${ARWRAP_DEPLOY_TOKENS:-128}"
