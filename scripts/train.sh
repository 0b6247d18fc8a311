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
PREFIX="$("$VPY" -c 'import arwrap_cpp, torch
print(arwrap_cpp.cmake_prefix_path + ";" + torch.utils.cmake_prefix_path)')"
STDLIB="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"

start=$(date +%s)
say "building arwrap-train in ${BUILD#$ROOT/} (about a minute the first time)"
mkdir -p "$BUILD"
gen=()
if [[ ! -f "$BUILD/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
  gen=(-G Ninja)
fi
if ! cmake -S "$ROOT/examples/train" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
     -DCMAKE_PREFIX_PATH="$PREFIX" > "$BUILD/.configure.log" 2>&1; then
  tail -30 "$BUILD/.configure.log" >&2
  say "configuring examples/train failed (log: ${BUILD#$ROOT/}/.configure.log)"
  exit 1
fi
if ! cmake --build "$BUILD" > "$BUILD/.build.log" 2>&1; then
  tail -40 "$BUILD/.build.log" >&2
  say "building arwrap-train failed (log: ${BUILD#$ROOT/}/.build.log)"
  exit 1
fi
say "arwrap-train built in $(( $(date +%s) - start )) s"

# OpenMP threads that sleep instead of spinning: 3x faster when another process shares the
# cores, about 4% slower on an idle machine
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec "$BUILD/arwrap-train" --data "$STDLIB" --ext .py --checkpoint "$BUILD/arwrap-train.pt" "$@"
