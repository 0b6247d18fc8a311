#!/usr/bin/env bash
# The whole test suite from a fresh clone: bootstraps .venv, builds, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k cross_entropy -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VPY" -m pytest -ra "$@"
