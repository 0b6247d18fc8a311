#!/usr/bin/env bash
# One call on a fresh GPU machine (torch 2.11+cu130, Python 3.12, nvcc, no network):
# build libarwrap with its CUDA kernels against the torch there, run the CUDA tests,
# benchmark the CUDA kernels against the anchors, print the table last.
#   (here)   bench/fetch_gpu_wheels.sh
#   (device) run command="bash bench/gpu_check.sh" carry=["bench/wheels"] timeout_s=600
# Budget: ~3 min build, ~2 min tests, ~2 min benchmark.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
log() { printf '[gpu_check %s] %s\n' "$(date +%T)" "$*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

log "installing wheels (no network)"
if [[ -d bench/wheels ]]; then
  "$PY" -m pip install -q --no-index --find-links bench/wheels --no-deps bench/wheels/*.whl 2>&1 | tail -3
else
  log "no bench/wheels: x-transformers tests and the Liger/CCE anchors will be skipped"
fi

log "building (CUDA, $(nproc) cores)"
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -q . \
      -Ccmake.define.ARWRAP_WITH_CUDA=ON -Ccmake.define.ARWRAP_CUDA_ARCHITECTURES=90 \
      -Cbuild-dir=build/gpu > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"
  log "BUILD FAILED"
  exit 1
fi
log "built in $(( $(date +%s) - start )) s"
"$PY" -c "import arwrap_cpp; assert arwrap_cpp.built_with_cuda(), 'built without CUDA'; print('arwrap_cpp with CUDA')"

log "CUDA tests"
# the CUDA variants live beside their operator (tests/ops) and module (tests/modules)
"$PY" -m pytest -q tests/ops tests/modules/test_transformer_cuda.py -k cuda 2>&1 | tail -25

log "benchmark"
"$PY" bench/bench_gpu.py --out "$OUT/gpu" 2>&1 | tail -30
log "done"
