#!/usr/bin/env bash
# Browser tests: `tidewire echo` driven from headless Chromium (see interop/browser/README.md).
#
#   interop/browser/run.sh              install Chromium + node_modules if missing, build
#                                       tidewire-cli (release), run echo.test.mjs, hub.test.mjs,
#                                       hub-api.test.mjs, admin.test.mjs, http2.test.mjs and sse.test.mjs
#   interop/browser/run.sh --no-build   reuse the existing release binary
# Env: BROWSER_DEFLATE=1|0   force / skip the permessage-deflate test (default: run it iff
#                            `tidewire echo --help` mentions --compression)
#      TIDEWIRE_BIN          binary under test (${CARGO_TARGET_DIR:-target}/release/tidewire)
#      BROWSER_RUN_TIMEOUT (300 s, the whole test run), BROWSER_TIMEOUT_MS (30000, one page
#      step), BROWSER_BUILD_TIMEOUT (1800 s), BROWSER_SETUP_TIMEOUT (600 s, apt / npm each)
#      BROWSER_LOG_DIR (interop/.logs/browser)
#
# Ends with `N passed, M failed, K skipped`; exits non-zero if anything failed or could not
# be set up. Screenshots go to screenshots/ at the repo root.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

RUN_TIMEOUT="${BROWSER_RUN_TIMEOUT:-300}"
BUILD_TIMEOUT="${BROWSER_BUILD_TIMEOUT:-1800}"
SETUP_TIMEOUT="${BROWSER_SETUP_TIMEOUT:-600}"
LOG_DIR="${BROWSER_LOG_DIR:-$ROOT/interop/.logs/browser}"
CHROMIUM="${BROWSER_CHROMIUM:-/usr/bin/chromium}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export TIDEWIRE_BIN="${TIDEWIRE_BIN:-$TARGET_DIR/release/tidewire}"
export BROWSER_CHROMIUM="$CHROMIUM"
mkdir -p "$LOG_DIR"
PID_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tidewire-browser.XXXXXX")"
export BROWSER_PID_DIR="$PID_DIR"

log() { echo "browser: $*"; }
START=$(date +%s)
NODE_PID=""

cleanup() {
  # The test run (and its tidewire servers) first, then any Chromium it left behind.
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill "$NODE_PID" 2>/dev/null; sleep 1; kill -9 "$NODE_PID" 2>/dev/null
  fi
  local f pid
  for f in "$PID_DIR"/chromium.*; do
    [ -e "$f" ] || continue
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null
    fi
  done
  rm -rf "$PID_DIR"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

fail_setup() { # message [log]
  log "SETUP FAILED: $1"
  if [ -n "${2:-}" ] && [ -s "$2" ]; then
    echo "    --- last lines of $2 ---"; tail -n 30 "$2" | sed 's/^/    | /'
  fi
  echo "browser: 0 passed, 1 failed"
  exit 1
}

# Chromium and node_modules (shared with deploy/test.sh).
BROWSER_SETUP_TIMEOUT="$SETUP_TIMEOUT" BROWSER_LOG_DIR="$LOG_DIR" bash "$HERE/setup.sh" \
  || { echo "browser: 0 passed, 1 failed"; exit 1; }

if [ "$BUILD" -eq 1 ]; then
  logf="$LOG_DIR/build-cli.log"
  log "building tidewire-cli (release, log: $logf)"
  t0=$(date +%s)
  timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire-cli </dev/null >"$logf" 2>&1 \
    || fail_setup "cargo build --release -p tidewire-cli failed" "$logf"
  log "build: $(( $(date +%s) - t0 )) s"
fi
[ -x "$TIDEWIRE_BIN" ] || fail_setup "$TIDEWIRE_BIN missing$([ "$BUILD" -eq 0 ] && echo ' (--no-build)')"

# ---------------------------------------------------------------- tests

log "testing $TIDEWIRE_BIN (whole run bounded by ${RUN_TIMEOUT} s)"
rm -f "$ROOT"/screenshots/browser-echo*.png "$ROOT"/screenshots/hub-*.png "$ROOT"/screenshots/admin-*.png "$ROOT"/screenshots/http2-*.png   # only this run's screenshots are listed below
out="$LOG_DIR/echo.test.tap"
# TAP reporter (the default without a TTY, pinned here so the counts below can be read).
timeout -k 10 "$RUN_TIMEOUT" node --test --test-reporter=tap --test-concurrency=1 \
  "$HERE/echo.test.mjs" "$HERE/hub.test.mjs" "$HERE/hub-api.test.mjs" "$HERE/admin.test.mjs" \
  "$HERE/http2.test.mjs" "$HERE/sse.test.mjs" </dev/null > >(tee "$out") 2>&1 &
NODE_PID=$!
wait "$NODE_PID"
rc=$?
NODE_PID=""
sleep 0.2   # let tee flush
[ "$rc" -eq 124 ] && log "TIMEOUT: the test run took longer than ${RUN_TIMEOUT} s"

count() { sed -n "s/^# $1 \([0-9][0-9]*\)\$/\1/p" "$out" | tail -n1; }
pass="$(count pass)"; fail="$(count fail)"; skip="$(count skipped)"; cancelled="$(count cancelled)"
pass="${pass:-0}"; fail="$(( ${fail:-0} + ${cancelled:-0} ))"; skip="${skip:-0}"
if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi   # crashed / timed out before counting
if [ "$pass" -eq 0 ] && [ "$fail" -eq 0 ]; then fail=1; log "no test ran"; fi
sed -n 's/^# \(skipped: .*\)$/browser: \1/p' "$out"
ls "$ROOT"/screenshots/browser-echo*.png "$ROOT"/screenshots/hub-*.png "$ROOT"/screenshots/admin-*.png "$ROOT"/screenshots/http2-*.png 2>/dev/null | sed 's/^/browser: screenshot /'
log "logs in $LOG_DIR; total $(( $(date +%s) - START )) s"
echo "browser: $pass passed, $fail failed, $skip skipped"
[ "$rc" -eq 0 ] && [ "$fail" -eq 0 ]
