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
VENV="$HERE/.venv"
VPY="$VENV/bin/python"

log() { echo "connect.sh: $*"; }

show_tail() { # file [lines]
  [ -s "$1" ] || return 0
  echo "    --- last lines of $1 ---"
  tail -n "${2:-25}" "$1" | sed 's/^/    | /'
}

hash_of() { sha256sum "$@" | sha256sum | cut -c1-64; }

# Same venv, stamp and pinning as interop/run.sh (setup_python there).
setup_python() {
  local logf="$LOG_DIR/setup-python.log" stamp="$VENV/.interop-stamp" want
  want="$(hash_of "$HERE/requirements.txt")"
  if [ -x "$VPY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
     && "$VPY" -c 'import websockets' 2>/dev/null; then
    log "python: venv up to date (websockets $("$VPY" -c 'import websockets; print(websockets.__version__)'))"
    return 0
  fi
  local py=""
  for cand in "${INTEROP_PYTHON:-}" python3.11 python3; do
    if [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
  if [ -z "$py" ]; then log "no python3 found"; return 1; fi
  log "python: installing websockets into $VENV (log: $logf)"
  {
    { [ -x "$VPY" ] || timeout "$SETUP_TIMEOUT" "$py" -m venv "$VENV"; } &&
      timeout "$SETUP_TIMEOUT" "$VPY" -m pip install --disable-pip-version-check -q \
        -r "$HERE/requirements.txt" &&
      "$VPY" -c 'import websockets'
  } >"$logf" 2>&1
  if [ $? -ne 0 ]; then
    log "python: venv setup failed (see $logf)"
    show_tail "$logf"
    return 1
  fi
  echo "$want" >"$stamp"
  log "python: websockets $("$VPY" -c 'import websockets; print(websockets.__version__)') installed"
}

START=$(date +%s)
setup_python || { echo "connect: FAIL (python setup)"; exit 1; }
log "cargo test -p tidewire-cli --test connect_cli python_websockets_server"
TIDEWIRE_REQUIRE_PYTHON=1 timeout "$TEST_TIMEOUT" \
  cargo test -p tidewire-cli --test connect_cli -- --exact python_websockets_server </dev/null
RC=$?
[ "$RC" -eq 124 ] && echo "connect: FAIL (timed out after ${TEST_TIMEOUT} s)"
log "total $(( $(date +%s) - START )) s, exit $RC"
exit "$RC"
