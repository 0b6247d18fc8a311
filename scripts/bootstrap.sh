#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv, installs the
# pinned CPU torch and the build tools, and builds + installs arwrap_cpp into it
# with --no-build-isolation (an isolated build would download another torch).
# Sourced by scripts/test.sh and scripts/demo.sh; safe to run again (incremental).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # ROOT, VENV, VPY, say, make_venv, pip_q
TORCH_SPEC="${ARWRAP_TORCH_SPEC:-torch==2.13.0}"
make_venv "$VENV"

if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_SPEC#torch==}') else 1)" 2>/dev/null; then
  say "installing $TORCH_SPEC (CPU build from the local wheel cache when present)"
  pip_q "$TORCH_SPEC"
fi
# torch imports without NumPy but warns ("Failed to initialize NumPy") on every import
if ! "$VPY" -c "import numpy" 2>/dev/null; then
  say "installing numpy"
  pip_q numpy
fi
if ! "$VPY" -c "import scikit_build_core, ninja, cmake" 2>/dev/null; then
  say "installing build tools (scikit-build-core, ninja, cmake)"
  pip_q "scikit-build-core>=0.10" ninja "cmake>=3.25"
fi
"$VPY" -c "import torch" || { say "torch failed to import"; exit 1; }

source "$ROOT/scripts/ensure_gloo.sh"  # libgloo-dev: c10d/Gloo data parallelism

# ccache makes rebuilds take seconds; use it when the machine has it.
if command -v ccache >/dev/null 2>&1; then
  export CMAKE_CXX_COMPILER_LAUNCHER=ccache
fi
export PATH="$VENV/bin:$PATH"
say "building arwrap_cpp (incremental; a clean build compiles ~45 translation units: several minutes on 2 cores)"
mkdir -p "$ROOT/build"
start=$(date +%s)
if ! "$VPY" -m pip install --disable-pip-version-check --no-build-isolation -q "$ROOT[test]" > "$ROOT/build/.last-build.log" 2>&1; then
  tail -40 "$ROOT/build/.last-build.log" >&2
  say "build failed (full log: build/.last-build.log)"
  exit 1
fi
say "built and installed in $(( $(date +%s) - start )) s"
"$VPY" -c "import arwrap_cpp; print('[arwrap] arwrap_cpp', arwrap_cpp.__version__, 'CUDA kernels:', arwrap_cpp.built_with_cuda())" >&2
