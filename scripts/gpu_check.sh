#!/usr/bin/env bash
# One call on a fresh GPU machine (torch 2.11+cu130, Python 3.12, nvcc 13.0, no network):
# pre-flight, build libarwrap with its CUDA kernels against the torch there, a smoke test,
# the CUDA tests (a time limit per test), the benchmark (each row written as it finishes,
# the autotuning contenders last), and a summary.
#   (here)   scripts/fetch_gpu_wheels.sh
#   (device) run command="bash scripts/gpu_check.sh" carry=["bench/wheels"] timeout_s=600
#   bash scripts/gpu_check.sh --preflight-only     # only the checks of step 1
#   GPU_CHECK_STEPS="tests bench" bash scripts/gpu_check.sh   # a second call on the same
#       (warm) machine: the build is incremental (build/gpu is kept), so it may be left out
#
# Everything goes to the terminal and, as it comes (tee, unbuffered), to
# $OUT/gpu_check.log, so a command cut off by its time limit keeps what it had printed;
# each step has its own limit, taken from what is left of GPU_CHECK_BUDGET_S (default
# 540 s, under the device tool's 600 s), so one slow step cannot starve the summary.
# Results: $OUT/gpu_check.log, build.log, tests.log, junit.xml, gpu.md / gpu.jsonl, summary.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
T0=$(date +%s)
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

log() { printf '[gpu_check %s +%ss] %s\n' "$(date +%T)" "$(( $(date +%s) - T0 ))" "$*"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
SUMMARY=()
STEPS=" ${GPU_CHECK_STEPS:-build smoke tests bench} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
# step NAME LIMIT_S CMD...: runs CMD under `timeout`, records its outcome for the summary.
step() {
  local name="$1" limit="$2"; shift 2
  local avail; avail=$(left)
  if (( limit > avail - 15 )); then limit=$(( avail - 15 )); fi
  if (( limit < 20 )); then
    log "SKIP $name: only $avail s of the budget left"
    SUMMARY+=("| $name | skipped (budget) | |")
    return 99
  fi
  log "START $name (limit $limit s)"
  local s=$(date +%s) rc
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  local took=$(( $(date +%s) - s )) what="ok"
  if (( rc == 124 || rc == 137 )); then what="TIMED OUT"; elif (( rc != 0 )); then what="failed (exit $rc)"; fi
  log "END $name: $what in $took s"
  SUMMARY+=("| $name | $what | $took s |")
  return $rc
}

summary() {
  {
    echo "## gpu_check summary ($(date -u +%FT%TZ), $(( $(date +%s) - T0 )) s)"
    echo
    echo "GPU: ${GPU_NAME:-unknown}; torch: ${TORCH_DESC:-unknown}"
    echo
    echo "| step | outcome | time |"
    echo "|---|---|---|"
    printf '%s\n' "${SUMMARY[@]}"
    echo
    if [[ -s "$OUT/tests.log" ]]; then
      echo "tests: $(grep -E '^(=+ )?[0-9]+ (passed|failed)|^=+ .*(passed|failed|error).* =+$' "$OUT/tests.log" | tail -1)"
      grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" | head -40
    fi
    [[ -s "$OUT/gpu.md" ]] && { echo; cat "$OUT/gpu.md"; }
  } > "$OUT/summary.md"
  echo
  cat "$OUT/summary.md"
}
trap summary EXIT

# ---- 1. pre-flight: what the build and the tests need, checked before any time is spent
preflight() {
  local bad=0
  if command -v nvidia-smi >/dev/null; then
    GPU_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    log "GPU: $GPU_NAME"
  else
    log "PRE-FLIGHT: nvidia-smi not found"; bad=1
  fi
  TORCH_DESC="$("$PY" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1 | tail -1)"
  log "python: $("$PY" --version 2>&1); torch: $TORCH_DESC"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
    || { log "PRE-FLIGHT: torch sees no CUDA device"; bad=1; }
  local inc; inc="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
  [[ -f "$inc/Python.h" ]] || { log "PRE-FLIGHT: no Python.h in $inc (python3-dev); the Python module cannot build"; bad=1; }
  if ! command -v nvcc >/dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do
      [[ -x "$d/nvcc" ]] && export PATH="$d:$PATH" && log "nvcc not on PATH: using $d/nvcc" && break
    done
  fi
  if command -v nvcc >/dev/null; then log "nvcc: $(nvcc --version | tail -2 | head -1)"; else log "PRE-FLIGHT: nvcc not found"; bad=1; fi
  for mod in scikit_build_core cmake ninja; do
    "$PY" -c "import $mod" 2>/dev/null || { log "PRE-FLIGHT: python module $mod missing (and no network to fetch it)"; bad=1; }
  done
  "$PY" -c "import pytest" 2>/dev/null || [[ -n "$(ls bench/wheels/pytest-[0-9]*.whl 2>/dev/null)" ]] \
    || { log "PRE-FLIGHT: pytest missing and not in bench/wheels: the tests cannot run"; bad=1; }
  log "disk: $(df -h "$ROOT" | tail -1 | awk '{print $4}') free; cores: $(nproc)"
  return $bad
}
log "pre-flight"
if ! preflight; then
  SUMMARY+=("| pre-flight | FAILED (see the log) | |")
  [[ "${1:-}" == "--preflight-only" ]] && exit 2
  log "pre-flight failed: stopping before the build"
  exit 2
fi
SUMMARY+=("| pre-flight | ok | |")
[[ "${1:-}" == "--preflight-only" ]] && exit 0

# ---- 2. wheels: only the distributions this machine lacks (never replace what it has)
if [[ -d bench/wheels ]]; then
  missing="$("$PY" - <<'EOF_PY'
import importlib.metadata as md, pathlib, re
have = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}
names = set()
for w in pathlib.Path("bench/wheels").glob("*.whl"):
    names.add(re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower())
print(" ".join(sorted(names - have)))
EOF_PY
)"
  if [[ -n "$missing" ]]; then
    log "installing from bench/wheels (no network), missing here: $missing"
    step "wheels" 60 "$PY" -m pip install --no-index --find-links bench/wheels --no-deps $missing
  else
    log "bench/wheels: everything already installed"
  fi
else
  log "no bench/wheels: x-transformers tests and the Liger/CCE anchors will be skipped"
fi

# ---- 3. build
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
# (`timeout` runs programs, not shell functions: each step is a program or a `bash -c`)
build_cmd='"$0" -m pip install --no-build-isolation --no-deps -v . -Ccmake.define.ARWRAP_WITH_CUDA=ON \
  -Ccmake.define.ARWRAP_CUDA_ARCHITECTURES=90 -Cbuild-dir=build/gpu > "$1/build.log" 2>&1'
rc=0
if want build; then
  step "build" 330 bash -c "$build_cmd" "$PY" "$OUT"
  rc=$?
  grep -oE '\[[0-9]+/[0-9]+\].*' "$OUT/build.log" | tail -3
fi
if (( rc != 0 )); then
  tail -60 "$OUT/build.log"
  log "BUILD FAILED (full log: $OUT/build.log)"
  exit 1
fi

# ---- 4. smoke test: one small call of each CUDA kernel, before the full suite
cat > "$OUT/smoke.py" <<'EOF_PY'
import torch, arwrap_cpp
assert arwrap_cpp.built_with_cuda(), "arwrap_cpp was built without its CUDA kernels"
z = torch.randn(8, 1001, device="cuda", requires_grad=True)
t = torch.randint(0, 1001, (8,), device="cuda")
loss = arwrap_cpp.cross_entropy(z, t)
loss.backward()
ref = torch.nn.functional.cross_entropy(z.detach().cpu(), t.cpu())
assert abs(loss.item() - ref.item()) < 1e-4, (loss.item(), ref.item())
h = torch.randn(8, 16, device="cuda", requires_grad=True)
W = torch.randn(1001, 16, device="cuda", requires_grad=True)
arwrap_cpp.linear_cross_entropy(h, W, t).backward()
inp, tgt, _ = arwrap_cpp.shift_tokens(torch.randint(0, 9, (2, 9), device="cuda"))
q, k, v = (torch.randn(2, 3, 37, 64, device="cuda", requires_grad=True) for _ in range(3))
o, lse = arwrap_cpp.attention(q, k, v, return_lse=True)
ref = torch.nn.functional.scaled_dot_product_attention(q.detach().cpu().double(), k.detach().cpu().double(),
                                                       v.detach().cpu().double(), is_causal=True)
err = ((o.detach().cpu().double() - ref).norm() / ref.norm()).item()
assert err < 1e-3, ("attention", err)
o.sum().backward()
torch.cuda.synchronize()
print("smoke: ok", torch.cuda.get_device_name(0))
EOF_PY
if want smoke && ! step "smoke" 90 "$PY" "$OUT/smoke.py"; then
  log "SMOKE TEST FAILED: skipping the full suite, running the benchmark anyway"
  SMOKE_FAILED=1
fi

# ---- 5. the CUDA tests, a time limit per test
if want tests && [[ -z "${SMOKE_FAILED:-}" ]]; then
  export ARWRAP_TEST_TIMEOUT_S="${ARWRAP_TEST_TIMEOUT_S:-90}"
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    TO=(--timeout="$ARWRAP_TEST_TIMEOUT_S")
  else
    TO=(-p pytest_deadline)
    export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # every test that needs a GPU carries the `cuda` marker (tests/conftest.py), beside its
  # operator (tests/ops) or module (tests/modules), whatever its name
  tests_cmd='"$0" -m pytest -v -rfE "${@:2}" --junitxml="$1/junit.xml" -m cuda tests/ops tests/modules \
    2>&1 | tee "$1/tests.log"; exit "${PIPESTATUS[0]}"'
  reserve=0; want bench && reserve=200  # leave the benchmark about 200 s
  step "tests" $(( $(left) - reserve )) bash -c "$tests_cmd" "$PY" "$OUT" "${TO[@]}"
fi

# ---- 6. benchmark: rows written as each contender finishes; compilers and autotuners last
want bench && step "benchmark" 240 "$PY" bench/bench_gpu.py --out "$OUT/gpu"
log "done"
