#!/usr/bin/env bash
# Autobahn fuzzingserver: tests the Tidewire CLIENT (examples/autobahn_client).
# wstest listens on ws://127.0.0.1:9002; the testee is run as `CLIENT ws://127.0.0.1:9002 AGENT`.
# Report: conformance/reports/client/index.html (+ index.json). Exit code: summarize.py's.
#
# Options:
#   --testee-cmd CMD   run CMD (via bash, with the URL and agent appended as two arguments)
#                      instead of building and running target/release/examples/autobahn_client
#   --no-build         don't run cargo build (use the existing binary)
#   --write-expected   regenerate conformance/expected-client.json from this run
# Environment: AUTOBAHN_CASES / AUTOBAHN_EXCLUDE (comma-separated case patterns overriding
#   fuzzingserver.json), AUTOBAHN_AGENT (default tidewire), AUTOBAHN_TIMEOUT (seconds, default 3000),
#   AUTOBAHN_SKIP_INSTALL=1, CARGO_TARGET_DIR.
set -euo pipefail
LOG_TAG=client
source "$(dirname "$0")/lib.sh"

PORT=9002
URL="ws://127.0.0.1:$PORT"
TESTEE_CMD="" BUILD=1 SUMMARY_ARGS=()
while (($#)); do
  case $1 in
    --testee-cmd) TESTEE_CMD=${2:?--testee-cmd needs a command}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --write-expected) SUMMARY_ARGS+=(--write-expected); shift ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) die "unknown option: $1 (see --help)" ;;
  esac
done

ensure_installed

OUT="$CONF_DIR/reports/client"
rm -rf "$OUT" && mkdir -p "$OUT"

if [[ -z $TESTEE_CMD ]]; then
  BIN="$(target_dir)/release/examples/autobahn_client"
  if ((BUILD)); then
    log "cargo build --release -p tidewire --example autobahn_client"
    (cd "$ROOT" && cargo build --release -p tidewire --example autobahn_client) \
      || die "cargo build --release -p tidewire --example autobahn_client failed: the testee could not be built"
  fi
  [[ -x $BIN ]] || die "testee binary $BIN not found; build it with: cargo build --release -p tidewire --example autobahn_client"
  TESTEE=("$BIN" "$URL" "$AGENT")
else
  TESTEE=(bash -c "exec $TESTEE_CMD \"\$@\"" testee "$URL" "$AGENT")
fi

require_port_free "$PORT"
make_spec "$CONF_DIR/fuzzingserver.json" "$OUT/spec.json" "$OUT"
log "starting wstest -m fuzzingserver on $URL (log: $OUT/wstest.log)"
start_bg "$OUT/wstest.log" bash -c 'cd "$1" && exec "$2" -m fuzzingserver --webport 0 -s "$1/spec.json"' wstest "$OUT" "$WSTEST"
WSTEST_PID=$BG_PID
wait_port "$PORT" 60 "$WSTEST_PID" "$OUT/wstest.log" "wstest -m fuzzingserver"

log "running the testee: ${TESTEE[*]} (log: $OUT/testee.log)"
start=$SECONDS
rc=0
run_fg "$OUT/testee.log" timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-3000}" "${TESTEE[@]}" || rc=$?
log "testee finished in $((SECONDS - start))s (exit $rc)"
if ((rc == 124)); then
  log "the testee timed out after ${AUTOBAHN_TIMEOUT:-3000}s (raise AUTOBAHN_TIMEOUT?)"
elif ((rc != 0)); then
  log "the testee failed; last lines of its log:"; tail -n 20 "$OUT/testee.log" >&2 || true
fi

# The testee's /updateReports makes wstest write index.json; give it a moment to land.
deadline=$((SECONDS + 30))
while [[ ! -s $OUT/index.json ]] && ((SECONDS < deadline)) && kill -0 "$WSTEST_PID" 2>/dev/null; do
  sleep 0.2
done
cleanup

src=0
python3 "$CONF_DIR/summarize.py" "$OUT" --agent "$AGENT" --title "client (fuzzingserver)" \
  --expected "$CONF_DIR/expected-client.json" "${SUMMARY_ARGS[@]}" || src=$?
log "HTML report: $OUT/index.html"
if ((src == 0 && rc != 0)); then src=2; fi
exit "$src"
