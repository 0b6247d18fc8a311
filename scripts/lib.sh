# Sourced by the scripts here: the repository root, the project's virtual environment, a logger.
#   ROOT   the repository root          VENV  $ARWRAP_VENV, default $ROOT/.venv     VPY  its python
#   say    logs to stderr as [$ARWRAP_TAG] (default [arwrap])
#   make_venv DIR   creates a virtual environment at DIR with $PYTHON (default python3) unless one is there
#   pip_q ARGS...   a quiet pip install into $VPY
#   cmake_project SRC BUILD NAME   configures and builds the CMake project SRC (examples/train,
#                   examples/deploy) in BUILD against the installed arwrap and torch packages
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARWRAP_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
say() { printf '[%s] %s\n' "${ARWRAP_TAG:-arwrap}" "$*" >&2; }
make_venv() {
  if [[ ! -x "$1/bin/python" ]]; then
    say "creating virtual environment $1"
    "${PYTHON:-python3}" -m venv "$1"
  fi
}
pip_q() { "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
cmake_project() {
  local src="$1" build="$2" name="$3" start prefix gen=()
  start=$(date +%s)
  prefix="$("$VPY" -c 'import arwrap_cpp, torch
print(arwrap_cpp.cmake_prefix_path + ";" + torch.utils.cmake_prefix_path)')"
  say "building $name in ${build#$ROOT/} (about a minute the first time)"
  mkdir -p "$build"
  if [[ ! -f "$build/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
    gen=(-G Ninja)
  fi
  if ! cmake -S "$src" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
       -DCMAKE_PREFIX_PATH="$prefix" > "$build/.configure.log" 2>&1; then
    tail -30 "$build/.configure.log" >&2
    say "configuring ${src#$ROOT/} failed (log: ${build#$ROOT/}/.configure.log)"
    exit 1
  fi
  if ! cmake --build "$build" > "$build/.build.log" 2>&1; then
    tail -40 "$build/.build.log" >&2
    say "building $name failed (log: ${build#$ROOT/}/.build.log)"
    exit 1
  fi
  say "$name built in $(( $(date +%s) - start )) s"
}
