#!/usr/bin/env bash
# The server API (docs/api.md) against its own OpenAPI document, with schemathesis
# (property-based: thousands of generated requests per method, valid and not): no 5xx, and
# every response (status, content type, headers, body) as the document says.
#
#   interop/api/run.sh            build tidewire-cli (release), start `tidewire serve` with an
#                                 API key and auth on a free port, run schemathesis against
#                                 http://127.0.0.1:PORT/api/openapi.json
# Options: --no-build   use the existing target/release/tidewire
# Env:     API_FUZZ_SECONDS (90: schemathesis's time budget), INTEROP_BUILD_TIMEOUT (1800 s),
#          INTEROP_SETUP_TIMEOUT (600 s), INTEROP_LOG_DIR (interop/.logs)
#
# schemathesis is pinned in interop/api/requirements.txt and installed into its own venv
# (interop/api/.venv), reinstalled only when that file changes. Exits with schemathesis's
# status; the server is killed on exit.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "api/run.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

FUZZ_SECONDS="${API_FUZZ_SECONDS:-90}"
RUN_TIMEOUT="$((FUZZ_SECONDS + 120))"
SERVER_TIMEOUT="$((RUN_TIMEOUT + 30))"
BUILD_TIMEOUT="${INTEROP_BUILD_TIMEOUT:-1800}"
SETUP_TIMEOUT="${INTEROP_SETUP_TIMEOUT:-600}"
START_TIMEOUT=15
LOG_DIR="${INTEROP_LOG_DIR:-$ROOT/interop/.logs}"
mkdir -p "$LOG_DIR"
TIDEWIRE_BIN="$ROOT/target/release/tidewire"
SERVER_LOG="$LOG_DIR/api-serve.log"
VENV="$HERE/.venv"
ST="$VENV/bin/schemathesis"

SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap cleanup EXIT
trap 'echo "api/run.sh: interrupted" >&2; exit 130' INT TERM

log() { echo "api/run.sh: $*"; }
show_tail() { [ -s "$1" ] && { echo "    --- last lines of $1 ---"; tail -n "${2:-25}" "$1" | sed 's/^/    | /'; }; return 0; }

START=$(date +%s)
want="$(sha256sum "$HERE/requirements.txt" | cut -c1-64)"
if [ ! -x "$ST" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
  slog="$LOG_DIR/setup-schemathesis.log"
  log "installing $(cat "$HERE/requirements.txt") into $VENV (log: $slog)"
  if ! { { [ -x "$VENV/bin/python" ] || timeout "$SETUP_TIMEOUT" python3 -m venv "$VENV"; } &&
         timeout "$SETUP_TIMEOUT" "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
           -r "$HERE/requirements.txt"; } >"$slog" 2>&1; then
    show_tail "$slog"
    echo "api: FAIL (schemathesis setup)"
    exit 1
  fi
  echo "$want" >"$VENV/.stamp"
fi
log "$("$ST" --version)"

if [ "$BUILD" -eq 1 ]; then
  blog="$LOG_DIR/build-cli.log"
  log "building tidewire-cli (release, log: $blog)"
  if ! timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire-cli >"$blog" 2>&1; then
    show_tail "$blog" 30
    echo "api: FAIL (cargo build --release -p tidewire-cli)"
    exit 1
  fi
fi
[ -x "$TIDEWIRE_BIN" ] || { echo "api: FAIL ($TIDEWIRE_BIN missing)"; exit 1; }

API_KEY="api-fuzz-key-$(date +%s)-0123456789"
AUTH_SECRET="api-fuzz-secret-$(date +%s)-0123456789abcdef"
timeout "$SERVER_TIMEOUT" "$TIDEWIRE_BIN" serve --listen 127.0.0.1:0 --no-demo \
  --api-key "$API_KEY" --auth-hmac-secret "$AUTH_SECRET" --auth-anonymous \
  --publish-rate 0 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
PORT=""
for ((i = 0; i < START_TIMEOUT * 10; i++)); do
  PORT="$(sed -n 's#^tidewire serve listening on http://127\.0\.0\.1:\([0-9][0-9]*\)/.*#\1#p' "$SERVER_LOG" | head -n 1)"
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$PORT" ]; then
  show_tail "$SERVER_LOG"
  echo "api: FAIL (server did not start)"
  exit 1
fi
log "tidewire serve (pid $SERVER_PID) on 127.0.0.1:$PORT, log: $SERVER_LOG"

# From the log directory: schemathesis keeps a cache (.schemathesis/) where it runs.
cd "$LOG_DIR"
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
timeout "$RUN_TIMEOUT" "$ST" run "http://127.0.0.1:$PORT/api/openapi.json" \
  -H "Authorization: apikey $API_KEY" --checks "$CHECKS" --max-time "$FUZZ_SECONDS" \
  --generation-database none --no-color </dev/null
RC=$?
[ "$RC" -eq 124 ] && echo "api: FAIL (schemathesis did not end within ${RUN_TIMEOUT} s)"
if kill -0 "$SERVER_PID" 2>/dev/null; then
  log "the server is still up after the run"
else
  echo "api: FAIL (the server died during the run)"
  show_tail "$SERVER_LOG"
  RC=1
fi
[ "$RC" -ne 0 ] && show_tail "$SERVER_LOG" 15
cleanup
log "total $(( $(date +%s) - START )) s, exit $RC"
[ "$RC" -eq 0 ] && echo "api: PASS" || echo "api: FAIL"
exit "$RC"
