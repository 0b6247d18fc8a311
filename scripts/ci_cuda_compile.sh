#!/usr/bin/env bash
# Compile check of the CUDA kernels (csrc/ops/cuda/*.cu) without a GPU: a C++-only
# build of libarwrap against a CUDA build of torch, in its own build dir.
#
#   scripts/ci_cuda_compile.sh            # venv in ~/.cache/arwrap/venv-cu130
#   ARWRAP_CUDA_VENV=/path scripts/ci_cuda_compile.sh
#   ARWRAP_CUDA_BUILD_DIR=build-cuda (default)
#
# The venv (torch 2.14.1+cu130, ~5.4 GB, ~6 min to create) is made once and reused.
# It matches the local nvcc 13.0; cmake/ArwrapCuda.cmake holds the CMake fixes (toolkit root,
# arch list, nvcc's C++20 flag, the venv's nvidia headers) that let it configure without a GPU.
set -euo pipefail

ARWRAP_TAG=ci_cuda_compile
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # ROOT, say
cd "$ROOT"

VENV="${ARWRAP_CUDA_VENV:-${HOME}/.cache/arwrap/venv-cu130}"
BUILD_DIR="${ARWRAP_CUDA_BUILD_DIR:-build-cuda}"
TORCH_SPEC="torch==2.14.1"

# ---- 1. the CUDA torch venv (created at a temp path, moved into place when complete)
if [[ ! -e "$VENV" ]]; then
  say "creating $VENV ($TORCH_SPEC, CUDA build; about 6 minutes)"
  mkdir -p "$(dirname "$VENV")"
  TMP_VENV="$(mktemp -d "$(dirname "$VENV")/.venv-cu130.XXXXXX")"
  trap 'rm -rf "$TMP_VENV"' EXIT
  python3 -m venv "$TMP_VENV"
  "$TMP_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$TMP_VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" scikit-build-core ninja "cmake<4"
  mv "$TMP_VENV" "$VENV"
  trap - EXIT
  # A moved venv keeps the old path in its console scripts' shebangs; everything
  # below calls the interpreter (python -m ...) or the cmake/ninja binaries directly.
else
  say "reusing $VENV"
fi
PY="$VENV/bin/python"
# An existing path that is not a CUDA torch venv is not ours to replace: stop.
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" >/dev/null 2>&1; then
  echo "ci_cuda_compile: FAILED: $VENV exists but its python cannot import a CUDA build of torch;" \
       "remove it (it is recreated) or point ARWRAP_CUDA_VENV elsewhere" >&2
  exit 2
fi

TORCH_PREFIX="$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)" 2>/dev/null)"
TORCH_VERSION="$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null)"
say "torch $TORCH_VERSION at $TORCH_PREFIX"

# cmake and ninja from the venv's packages, located through Python: the venv's
# bin/cmake is a console script whose shebang may name the temp path it was built at.
TOOL_DIRS="$("$PY" - <<'EOF_PY' 2>/dev/null || true
dirs = []
for mod, attr in (("cmake", "CMAKE_BIN_DIR"), ("ninja", "BIN_DIR")):
    try:
        dirs.append(getattr(__import__(mod), attr))
    except Exception:
        pass
print(":".join(dirs))
EOF_PY
)"
export PATH="${TOOL_DIRS:+$TOOL_DIRS:}$PATH"
say "cmake: $(command -v cmake) ($(cmake --version | head -n1)); ninja: $(command -v ninja); nvcc: $(command -v nvcc)"

# ---- 2. configure and build (C++ only, CUDA kernels forced on)
cmake -S . -B "$BUILD_DIR" -G Ninja \
  -DARWRAP_BUILD_PYTHON=OFF \
  -DARWRAP_WITH_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX"

BUILD_LOG="$(mktemp)"
trap 'rm -f "$BUILD_LOG"' EXIT
set +e
cmake --build "$BUILD_DIR" 2>&1 | tee "$BUILD_LOG"
rc=${PIPESTATUS[0]}
set -e

# ---- 3. summary
n_cu=0
n_built=0
while IFS= read -r -d '' cu; do
  n_cu=$((n_cu + 1))
  rel="${cu#"$ROOT"/}"
  obj="$(find "$BUILD_DIR" -path "*/${rel}.o" -print -quit)"
  if [[ -n "$obj" && "$obj" -nt "$cu" ]]; then n_built=$((n_built + 1)); fi
done < <(find "$ROOT/csrc" -name '*.cu' -print0)
n_warn="$(grep -Eci 'warning' "$BUILD_LOG" || true)"
if [[ $rc -ne 0 ]]; then
  echo "ci_cuda_compile: FAILED (cmake --build exit $rc): $n_built of $n_cu .cu files compiled, $n_warn warning lines"
  exit "$rc"
fi
if [[ $n_built -ne $n_cu ]]; then
  echo "ci_cuda_compile: FAILED: only $n_built of $n_cu .cu files have an up-to-date object"
  exit 1
fi
echo "ci_cuda_compile: OK: $n_built of $n_cu .cu files compiled (torch $TORCH_VERSION, $BUILD_DIR), $n_warn warning lines"
