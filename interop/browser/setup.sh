#!/usr/bin/env bash
# Installs what the browser tests need, if missing: Debian's Chromium (apt-get) and
# playwright-core in interop/browser/node_modules (npm ci, pinned by package-lock.json).
# Used by interop/browser/run.sh and deploy/test.sh; never downloads a browser of its own.
#
# Env: BROWSER_CHROMIUM (/usr/bin/chromium), BROWSER_SETUP_TIMEOUT (600 s, apt / npm each),
#      BROWSER_LOG_DIR (interop/.logs/browser), BROWSER_LOG_PREFIX ("browser").
# Exits non-zero, with the end of the failing step's log, when something cannot be set up.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SETUP_TIMEOUT="${BROWSER_SETUP_TIMEOUT:-600}"
LOG_DIR="${BROWSER_LOG_DIR:-$ROOT/interop/.logs/browser}"
CHROMIUM="${BROWSER_CHROMIUM:-/usr/bin/chromium}"
PREFIX="${BROWSER_LOG_PREFIX:-browser}"
mkdir -p "$LOG_DIR"

log() { echo "$PREFIX: $*"; }
fail() { # message [log]
  log "SETUP FAILED: $1"
  if [ -n "${2:-}" ] && [ -s "$2" ]; then
    echo "    --- last lines of $2 ---"; tail -n 30 "$2" | sed 's/^/    | /'
  fi
  exit 1
}

SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo -n)

if [ -x "$CHROMIUM" ]; then
  log "chromium: $CHROMIUM present"
else
  logf="$LOG_DIR/setup-chromium.log"
  log "chromium: apt-get install -y chromium (log: $logf)"
  t0=$(date +%s)
  {
    export DEBIAN_FRONTEND=noninteractive
    timeout "$SETUP_TIMEOUT" "${SUDO[@]}" apt-get update </dev/null &&
      timeout "$SETUP_TIMEOUT" "${SUDO[@]}" apt-get install -y chromium </dev/null
  } >"$logf" 2>&1 || fail "apt-get install chromium failed" "$logf"
  [ -x "$CHROMIUM" ] || fail "$CHROMIUM missing after apt-get install chromium" "$logf"
  log "chromium: installed in $(( $(date +%s) - t0 )) s"
fi
log "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || fail "node/npm not found"
stamp="$HERE/node_modules/.browser-stamp"
want="$(sha256sum "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -c1-64)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -f "$HERE/node_modules/playwright-core/package.json" ]; then
  log "npm: node_modules up to date"
else
  logf="$LOG_DIR/setup-npm.log"
  log "npm: npm ci in $HERE (log: $logf)"
  t0=$(date +%s)
  (cd "$HERE" && timeout "$SETUP_TIMEOUT" npm ci --no-audit --no-fund </dev/null) >"$logf" 2>&1 \
    || fail "npm ci failed" "$logf"
  echo "$want" >"$stamp"
  log "npm: installed in $(( $(date +%s) - t0 )) s"
fi
log "npm: playwright-core $(node -p "require('$HERE/node_modules/playwright-core/package.json').version"), node $(node --version)"
