#!/usr/bin/env bash
# The Python backend SDK (clients/python): install it into its own venv and run its pytest
# suite against a real `tidewire serve` (the tests start their own servers, and their own
# redis-server on spare ports for the Redis tests).
#
#   clients/python/run.sh              build tidewire-cli (release), then the venv and the tests
#   clients/python/run.sh --no-build   reuse the existing release binary
# Extra arguments after -- go to pytest (clients/python/run.sh --no-build -- -k resume).
# Env: TIDEWIRE_BIN (${CARGO_TARGET_DIR:-target}/release/tidewire), PYTHON (python3),
#      PY_TEST_TIMEOUT (300 s, the whole pytest run), PY_BUILD_TIMEOUT (1800 s, cargo),
#      PY_SETUP_TIMEOUT (600 s, venv and pip)
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

BUILD=1
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "clients/python/run.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

TEST_TIMEOUT="${PY_TEST_TIMEOUT:-300}"
BUILD_TIMEOUT="${PY_BUILD_TIMEOUT:-1800}"
SETUP_TIMEOUT="${PY_SETUP_TIMEOUT:-600}"
PYTHON="${PYTHON:-python3}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
export TIDEWIRE_BIN="${TIDEWIRE_BIN:-$TARGET_DIR/release/tidewire}"
VENV="$HERE/.venv"

log() { echo "clients/python: $*"; }
fail() { log "FAIL: $*"; exit 1; }
START=$(date +%s)

command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || fail "$PYTHON is older than 3.9"
command -v redis-server >/dev/null 2>&1 || fail "redis-server not found (apt-get install redis-server): the Redis tests need it"

# The venv is (re)installed when pyproject.toml changes; the package is installed
# editable, so the sources are always the checkout's.
stamp="$VENV/.clients-python-stamp"
want="$( { "$PYTHON" --version 2>&1; cat "$HERE/pyproject.toml"; } | sha256sum | cut -c1-64)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  log "venv up to date ($VENV)"
else
  t0=$(date +%s)
  log "venv: $VENV, pip install -e '.[test]'"
  rm -rf "$VENV"
  timeout "$SETUP_TIMEOUT" "$PYTHON" -m venv "$VENV" </dev/null || fail "python -m venv"
  (cd "$HERE" && timeout "$SETUP_TIMEOUT" "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[test]' </dev/null) \
    || fail "pip install -e '.[test]'"
  echo "$want" >"$stamp"
  log "venv: installed in $(( $(date +%s) - t0 )) s"
fi
log "$("$VENV/bin/python" --version), websockets $("$VENV/bin/python" -c 'import websockets; print(websockets.__version__)')"

if [ "$BUILD" -eq 1 ]; then
  t0=$(date +%s)
  log "building tidewire-cli (release)"
  timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire-cli </dev/null || fail "cargo build --release -p tidewire-cli"
  log "cargo build: $(( $(date +%s) - t0 )) s"
fi
[ -x "$TIDEWIRE_BIN" ] || fail "$TIDEWIRE_BIN missing$([ "$BUILD" -eq 0 ] && echo ' (--no-build: build it first, or set TIDEWIRE_BIN)')"
log "server under test: $TIDEWIRE_BIN"

t0=$(date +%s)
(cd "$HERE" && timeout -k 10 "$TEST_TIMEOUT" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}" </dev/null)
rc=$?
[ "$rc" -eq 124 ] && log "TIMEOUT: the tests took longer than ${TEST_TIMEOUT} s"
log "tests: $(( $(date +%s) - t0 )) s; total $(( $(date +%s) - START )) s"
[ "$rc" -eq 0 ] || fail "pytest (exit $rc; server logs in $HERE/.logs)"
log "PASS"
