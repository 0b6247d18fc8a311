#!/usr/bin/env bash
# Builds libarwrap (C++ only, CPU) and the pure C++ test programs with AddressSanitizer and
# UndefinedBehaviorSanitizer, and runs them; any sanitizer report fails the script.
#
#   scripts/sanitize.sh            # build dir: build/sanitize (incremental; ccache is used when present)
#
# Steps:
#  1. libarwrap from the repository with -DARWRAP_SANITIZE=ON (cmake/ArwrapSanitize.cmake, passed
#     as CMAKE_PROJECT_INCLUDE so it also works before CMakeLists.txt includes it), against the
#     LibTorch of the project's .venv, installed to build/sanitize/prefix;
#  2. tests/integration/cpp (consumer, wrapper_consumer, native_consumer, bad_input, dist_check,
#     ddp_example) and
#     the C++ trainer (examples/train: arwrap-train) built against
#     that prefix with the same flags: the programs link the ASan runtime themselves, so no
#     LD_PRELOAD is needed (a program built without the flags would need
#     LD_PRELOAD=$(g++ -print-file-name=libasan.so) to load the instrumented libarwrap);
#  3. their inputs (TorchScript files, tokens) written by the .venv's Python, then each program run
#     with ASan/UBSan set to stop at the first error.
# LibTorch is not instrumented: the run checks our code's memory accesses and undefined behaviour
# (and every heap block torch hands us), not torch's own kernels.
set -euo pipefail
ARWRAP_TAG=sanitize
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # ROOT, VPY, say
BUILD="${ARWRAP_SANITIZE_DIR:-$ROOT/build/sanitize}"
JOBS="${JOBS:-$(nproc)}"

[[ -x "$VPY" ]] || { say "no $VPY: run scripts/bootstrap.sh first"; exit 1; }
export PATH="$(dirname "$VPY"):$PATH"  # cmake and ninja from the venv
TORCH_PREFIX="$("$VPY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
LAUNCHER=()
command -v ccache >/dev/null 2>&1 && LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
start=$(date +%s)

say "1/3 libarwrap with ASan+UBSan -> $BUILD/prefix"
cmake -S "$ROOT" -B "$BUILD/lib" -G Ninja -Wno-dev "${LAUNCHER[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DCMAKE_INSTALL_PREFIX="$BUILD/prefix" \
  -DARWRAP_BUILD_PYTHON=OFF -DARWRAP_WITH_CUDA=OFF \
  -DARWRAP_SANITIZE=ON -DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/ArwrapSanitize.cmake" > "$BUILD.configure.log" 2>&1 \
  || { cat "$BUILD.configure.log" >&2; exit 1; }
cmake --build "$BUILD/lib" -j "$JOBS"
cmake --install "$BUILD/lib" > /dev/null
say "    built in $(( $(date +%s) - start )) s"

say "2/3 the C++ test programs, same flags"
for dir in tests/integration/cpp examples/train; do
  cmake -S "$ROOT/$dir" -B "$BUILD/$(basename "$dir")" -G Ninja -Wno-dev "${LAUNCHER[@]}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_PREFIX_PATH="$BUILD/prefix/share/cmake;$TORCH_PREFIX" \
    -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    > "$BUILD/$(basename "$dir").configure.log" 2>&1 || { cat "$BUILD/$(basename "$dir").configure.log" >&2; exit 1; }
  cmake --build "$BUILD/$(basename "$dir")" -j "$JOBS"
done
say "    built in $(( $(date +%s) - start )) s"

say "3/3 running them"
DATA="$BUILD/data"
mkdir -p "$DATA"
# Inputs from Python (uninstrumented, the installed arwrap_cpp): a scripted loss that calls the
# arwrap operator, and the scripted decoder of tests/scripted_net.py with a token file.
"$VPY" - "$DATA" "$ROOT/tests" <<'PY'
import sys, warnings
import torch
import arwrap_cpp  # noqa: F401  (registers torch.ops.arwrap for scripting)
data, tests = sys.argv[1], sys.argv[2]
sys.path[:0] = [tests, f"{tests}/integration"]
from test_cpp_package import ScriptedLoss
from scripted_net import scripted_decoder
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.jit.script(ScriptedLoss()).save(f"{data}/loss.pt")
    scripted_decoder().save(f"{data}/net.pt")
    net = arwrap_cpp.TransformerWrapper(
        num_tokens=61, max_seq_len=32, use_abs_pos_emb=False,
        attn_layers=arwrap_cpp.Decoder(dim=32, depth=2, heads=2, attn_dim_head=16, rotary_pos_emb=True))
    arwrap_cpp.AutoregressiveWrapper(net, add_attn_z_loss=True).to_torchscript(f"{data}/model.pt")
torch.manual_seed(9)
x = torch.randint(0, 40, (3, 21))
x[1, 5] = -100
open(f"{data}/tokens.txt", "w").write(f"{x.shape[0]} {x.shape[1]}\n" + " ".join(map(str, x.flatten().tolist())))
PY

# halt_on_error (and -fno-sanitize-recover for UBSan): the first report ends the program with a
# non-zero status. LeakSanitizer stays on (detect_leaks=1) and needs no suppressions with torch 2.13:
# the three programs exit without a leak report. (Should a future LibTorch leak at exit, add a
# narrow `leak:<torch function>` suppression; a broad `leak:libtorch_cpu.so` would also hide our
# leaks, since every tensor we allocate is allocated inside torch's libraries.)
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1${ASAN_OPTIONS_EXTRA:+:$ASAN_OPTIONS_EXTRA}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export OMP_NUM_THREADS=2
status=0
run() {
  local name="$1"; shift
  local t0=$(date +%s) log="$BUILD/$name.log"
  if "$@" > "$log" 2>&1 && ! grep -q "runtime error:\|ERROR: AddressSanitizer\|ERROR: LeakSanitizer" "$log"; then
    say "    ok   $name ($(( $(date +%s) - t0 )) s)"
  else
    say "    FAIL $name (log: $log)"
    grep -m 40 -A 30 "runtime error:\|ERROR: .*Sanitizer\|FAIL" "$log" >&2 || tail -40 "$log" >&2
    status=1
  fi
}
run consumer "$BUILD/cpp/consumer" "$DATA/loss.pt"
run wrapper_consumer "$BUILD/cpp/wrapper_consumer" "$DATA/net.pt" "$DATA/tokens.txt"
run bad_input "$BUILD/cpp/bad_input"
run native_consumer "$BUILD/cpp/native_consumer" "$DATA/model.pt" "$DATA/tokens.txt"
run dist_check "$BUILD/cpp/dist_check" check   # arwrap::distributed's library API, one process
run ddp_example "$BUILD/cpp/ddp_example"
# the C++ trainer: a short run with validation, sampling and checkpoints, a resume that
# recomputes its layers in the backward (checkpoint_layers: the attention's backward written over
# q, k, v, the feed-forward's backward from the layer input, the incoming gradient written over),
# the same in float32, and a corrupt checkpoint (which must end in a clean error, exit status 1)
CORPUS="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')/json"
TRAIN=(--data "$CORPUS" --seq-len 32 --dim 32 --depth 2 --heads 2 --dim-head 16 --batch 4 --threads 2
       --val-every 10 --val-windows 4 --sample-every 20 --sample-len 16 --save-every 10 --checkpoint "$DATA/train.pt")
run arwrap-train "$BUILD/train/arwrap-train" "${TRAIN[@]}" --steps 20
run arwrap-train-resume "$BUILD/train/arwrap-train" "${TRAIN[@]}" --steps 30 --resume --checkpoint-layers
run arwrap-train-fp32-recompute "$BUILD/train/arwrap-train" "${TRAIN[@]/train.pt/train_fp32.pt}" --steps 5 \
  --precision fp32 --checkpoint-layers
head -c 3000 "$DATA/train.pt" > "$DATA/corrupt.pt"
run arwrap-train-corrupt bash -c '"$0" --checkpoint "$1" --sample x 2>&1; test $? -eq 1' \
  "$BUILD/train/arwrap-train" "$DATA/corrupt.pt"
say "done in $(( $(date +%s) - start )) s: $([[ $status == 0 ]] && echo clean || echo 'sanitizer or test failures')"
exit $status
