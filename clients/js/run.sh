#!/usr/bin/env bash
# The browser library (clients/js): build it with tsc and run its vitest suite against a
# real `tidewire serve` (each test file starts its own servers).
#
#   clients/js/run.sh              npm ci if node_modules is missing or stale, build
#                                  tidewire-cli (release), npm run build, npm test
#   clients/js/run.sh --no-build   reuse the existing release binary
# Env: TIDEWIRE_BIN          binary under test (${CARGO_TARGET_DIR:-target}/release/tidewire)
#      JS_TEST_TIMEOUT (180 s, the whole vitest run), JS_BUILD_TIMEOUT (1800 s, cargo),
#      JS_SETUP_TIMEOUT (600 s, npm ci)
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "clients/js/run.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

TEST_TIMEOUT="${JS_TEST_TIMEOUT:-180}"
BUILD_TIMEOUT="${JS_BUILD_TIMEOUT:-1800}"
SETUP_TIMEOUT="${JS_SETUP_TIMEOUT:-600}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export TIDEWIRE_BIN="${TIDEWIRE_BIN:-$TARGET_DIR/release/tidewire}"

log() { echo "clients/js: $*"; }
fail() { log "FAIL: $*"; exit 1; }
START=$(date +%s)

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || fail "node/npm not found"
log "node $(node --version), npm $(npm --version 2>/dev/null)"

stamp="$HERE/node_modules/.clients-js-stamp"
want="$(sha256sum "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -c1-64)"
if [ -d "$HERE/node_modules" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "npm: node_modules up to date"
else
  t0=$(date +%s)
  log "npm: npm ci"
  (cd "$HERE" && timeout "$SETUP_TIMEOUT" npm ci --no-audit --no-fund </dev/null) || fail "npm ci"
  echo "$want" >"$stamp"
  log "npm: installed in $(( $(date +%s) - t0 )) s"
fi

if [ "$BUILD" -eq 1 ]; then
  t0=$(date +%s)
  log "building tidewire-cli (release)"
  timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire-cli </dev/null || fail "cargo build --release -p tidewire-cli"
  log "cargo build: $(( $(date +%s) - t0 )) s"
fi
[ -x "$TIDEWIRE_BIN" ] || fail "$TIDEWIRE_BIN missing$([ "$BUILD" -eq 0 ] && echo ' (--no-build: build it first, or set TIDEWIRE_BIN)')"
log "server under test: $TIDEWIRE_BIN"

t0=$(date +%s)
(cd "$HERE" && npm run --silent build </dev/null) || fail "npm run build (tsc)"
log "tsc: dist/ built in $(( $(date +%s) - t0 )) s"
(cd "$HERE" && node sync-web.mjs --check) || fail "web/lib differs from the built library"

t0=$(date +%s)
(cd "$HERE" && timeout -k 10 "$TEST_TIMEOUT" npm test --silent </dev/null)
rc=$?
[ "$rc" -eq 124 ] && log "TIMEOUT: the tests took longer than ${TEST_TIMEOUT} s"
log "tests: $(( $(date +%s) - t0 )) s; total $(( $(date +%s) - START )) s"
[ "$rc" -eq 0 ] || fail "npm test (exit $rc)"
log "PASS"
