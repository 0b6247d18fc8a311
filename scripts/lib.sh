# Sourced by the scripts here: the repository root, the project's virtual environment, a logger.
#   ROOT   the repository root          VENV  $ARWRAP_VENV, default $ROOT/.venv     VPY  its python
#   say    logs to stderr as [$ARWRAP_TAG] (default [arwrap])
#   make_venv DIR   creates a virtual environment at DIR with $PYTHON (default python3) unless one is there
#   pip_q ARGS...   a quiet pip install into $VPY
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
