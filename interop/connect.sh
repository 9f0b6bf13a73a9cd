#!/usr/bin/env bash
# `tidewire connect` against a Python `websockets` echo server (interop/py_server.py).
#
#   interop/connect.sh    create/refresh the venv (interop/.venv, interop/requirements.txt,
#                         the same one interop/run.sh uses), then run the connect_cli test
#                         python_websockets_server with TIDEWIRE_REQUIRE_PYTHON=1, so that a
#                         missing venv fails instead of skipping
# Env:     INTEROP_SETUP_TIMEOUT (600 s), CONNECT_TEST_TIMEOUT (1800 s, includes a build),
#          INTEROP_LOG_DIR (interop/.logs)
#
# Exits with the test's status.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "connect.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SETUP_TIMEOUT="${INTEROP_SETUP_TIMEOUT:-600}"
TEST_TIMEOUT="${CONNECT_TEST_TIMEOUT:-1800}"
LOG_DIR="${INTEROP_LOG_DIR:-$HERE/.logs}"
mkdir -p "$LOG_DIR"

log() { echo "connect.sh: $*"; }

# shellcheck source=python-venv.sh
source "$HERE/python-venv.sh"

START=$(date +%s)
setup_python || { echo "connect: FAIL (python setup)"; exit 1; }
log "cargo test -p tidewire-cli --test connect_cli python_websockets_server"
TIDEWIRE_REQUIRE_PYTHON=1 timeout "$TEST_TIMEOUT" \
  cargo test -p tidewire-cli --test connect_cli -- --exact python_websockets_server </dev/null
RC=$?
[ "$RC" -eq 124 ] && echo "connect: FAIL (timed out after ${TEST_TIMEOUT} s)"
log "total $(( $(date +%s) - START )) s, exit $RC"
exit "$RC"
