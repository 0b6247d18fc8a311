#!/usr/bin/env bash
# The main job: builds libarwrap (scripts/bootstrap.sh) and the C++ training program
# arwrap-train (examples/train, a CMake project that uses the installed package through
# find_package(arwrap) as any user's program would), then trains a byte-level language
# model on the Python standard library's source files.
#
# Extra arguments go to arwrap-train, after the defaults here, so they win:
#   scripts/train.sh --steps 1000 --dim 384          # a longer or larger run
#   scripts/train.sh --resume --steps 800            # continue the last run
#   scripts/train.sh --sample 'def main():'          # sample from the last checkpoint
#   scripts/train.sh --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

BUILD="${ARWRAP_TRAIN_BUILD:-$ROOT/build/train}"
STDLIB="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"

cmake_project "$ROOT/examples/train" "$BUILD" arwrap-train

# OpenMP threads that sleep instead of spinning: 3x faster when another process shares the
# cores, about 4% slower on an idle machine
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$BUILD/arwrap-train" --data "$STDLIB" --ext .py --checkpoint "$BUILD/arwrap-train.pt" "$@"
