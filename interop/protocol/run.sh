#!/usr/bin/env bash
# The tidewire.v1 channel protocol from Python, written from docs/protocol.md alone
# (interop/protocol/tidewire_v1.py + scenario.py, Python `websockets`), against `tidewire serve`.
#
#   interop/protocol/run.sh              build tidewire-cli (release), start `tidewire serve`
#                                        on a free port, run scenario.py against ws://.../ws
# Options: --no-build   use the existing target/release/tidewire
#          --strict     known deviations of the server from the document fail too
# Env:     PROTOCOL_SCENARIO_TIMEOUT (90 s), INTEROP_BUILD_TIMEOUT (1800 s),
#          INTEROP_SETUP_TIMEOUT (600 s), INTEROP_LOG_DIR (interop/.logs)
#
# Uses the same venv as interop/run.sh (interop/.venv, interop/requirements.txt).
# Prints the scenario's PASS/FAIL lines and exits with its status; the server is killed on exit.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INTEROP="$(cd "$HERE/.." && pwd)"
ROOT="$(cd "$INTEROP/.." && pwd)"
cd "$ROOT"

BUILD=1
SCENARIO_FLAGS=()
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --strict) SCENARIO_FLAGS+=(--strict) ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "protocol/run.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

SCENARIO_TIMEOUT="${PROTOCOL_SCENARIO_TIMEOUT:-90}"
SERVER_TIMEOUT="$((SCENARIO_TIMEOUT + 30))"   # the server never outlives the scenario by much
BUILD_TIMEOUT="${INTEROP_BUILD_TIMEOUT:-1800}"
SETUP_TIMEOUT="${INTEROP_SETUP_TIMEOUT:-600}"
START_TIMEOUT=15
LOG_DIR="${INTEROP_LOG_DIR:-$INTEROP/.logs}"
mkdir -p "$LOG_DIR"

TIDEWIRE_BIN="$ROOT/target/release/tidewire"
SERVER_LOG="$LOG_DIR/protocol-serve.log"

SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap cleanup EXIT
trap 'echo "protocol/run.sh: interrupted" >&2; exit 130' INT TERM

log() { echo "protocol/run.sh: $*"; }

# shellcheck source=../python-venv.sh
source "$INTEROP/python-venv.sh"

START=$(date +%s)
setup_python || { echo "protocol: FAIL (python setup)"; exit 1; }

if [ "$BUILD" -eq 1 ]; then
  blog="$LOG_DIR/build-cli.log"
  log "building tidewire-cli (release, log: $blog)"
  if ! timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire-cli >"$blog" 2>&1; then
    show_tail "$blog" 30
    echo "protocol: FAIL (cargo build --release -p tidewire-cli)"
    exit 1
  fi
fi
if [ ! -x "$TIDEWIRE_BIN" ]; then
  echo "protocol: FAIL ($TIDEWIRE_BIN missing)"
  exit 1
fi

# `tidewire serve --listen 127.0.0.1:0` prints
#   tidewire serve listening on http://127.0.0.1:PORT/ (...)
# Auth on with anonymous access (every check but `auth` runs without a token); no publish
# rate limit (the resume check publishes 3,000 times as fast as replies come back).
AUTH_SECRET="protocol-scenario-secret-$(date +%s)-0123456789abcdef"
timeout "$SERVER_TIMEOUT" "$TIDEWIRE_BIN" serve --listen 127.0.0.1:0 --publish-rate 0 \
  --auth-hmac-secret "$AUTH_SECRET" --auth-anonymous >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
PORT=""
for ((i = 0; i < START_TIMEOUT * 10; i++)); do
  PORT="$(sed -n 's#^tidewire serve listening on http://127\.0\.0\.1:\([0-9][0-9]*\)/.*#\1#p' "$SERVER_LOG" | head -n 1)"
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$PORT" ]; then
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "tidewire serve printed no listening address within ${START_TIMEOUT} s"
  else
    wait "$SERVER_PID" 2>/dev/null
    log "tidewire serve exited (status $?) before listening"
    SERVER_PID=""
  fi
  show_tail "$SERVER_LOG"
  echo "protocol: FAIL (server did not start)"
  exit 1
fi
URL="ws://127.0.0.1:$PORT/ws"
log "tidewire serve (pid $SERVER_PID) on 127.0.0.1:$PORT, log: $SERVER_LOG"

timeout "$SCENARIO_TIMEOUT" "$VPY" "$HERE/scenario.py" "$URL" --strict --auth-secret "$AUTH_SECRET" "${SCENARIO_FLAGS[@]}" </dev/null
RC=$?
if [ "$RC" -eq 124 ]; then
  echo "protocol: FAIL (scenario timed out after ${SCENARIO_TIMEOUT} s)"
fi
if [ "$RC" -ne 0 ]; then
  show_tail "$SERVER_LOG" 15
fi
cleanup
log "total $(( $(date +%s) - START )) s, exit $RC"
exit "$RC"
