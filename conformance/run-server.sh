#!/usr/bin/env bash
# Autobahn fuzzingclient: tests the Tidewire SERVER (`tidewire echo --listen 127.0.0.1:9001 --compression`).
# Report: conformance/reports/server/index.html (+ index.json). Exit code: summarize.py's.
#
# Options:
#   --testee-cmd CMD   run CMD (via bash) instead of building and starting `tidewire echo`;
#                      it must serve a WebSocket echo on 127.0.0.1:9001
#   --no-build         don't run cargo build (use the existing target/release/tidewire)
#   --write-expected   regenerate conformance/expected-server.json from this run
# Environment: AUTOBAHN_CASES / AUTOBAHN_EXCLUDE (comma-separated case patterns overriding
#   fuzzingclient.json), AUTOBAHN_AGENT (default tidewire), AUTOBAHN_TIMEOUT (seconds, default 3000),
#   AUTOBAHN_SKIP_INSTALL=1, CARGO_TARGET_DIR.
set -euo pipefail
LOG_TAG=server
source "$(dirname "$0")/lib.sh"

PORT=9001
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

OUT="$CONF_DIR/reports/server"
rm -rf "$OUT" && mkdir -p "$OUT"

if [[ -z $TESTEE_CMD ]]; then
  BIN="$(target_dir)/release/tidewire"
  if ((BUILD)); then
    log "cargo build --release -p tidewire-cli"
    (cd "$ROOT" && cargo build --release -p tidewire-cli) \
      || die "cargo build --release -p tidewire-cli failed: the testee (tidewire echo) could not be built"
  fi
  [[ -x $BIN ]] || die "testee binary $BIN not found; build it with: cargo build --release -p tidewire-cli"
  # permessage-deflate on, as the 12.* and 13.* cases need; cases 1-10 run without it.
  TESTEE=("$BIN" echo --listen "127.0.0.1:$PORT" --compression)
else
  TESTEE=(bash -c "exec $TESTEE_CMD")
fi

require_port_free "$PORT"
log "starting testee: ${TESTEE[*]}"
start_bg "$OUT/testee.log" "${TESTEE[@]}"
TESTEE_PID=$BG_PID
wait_port "$PORT" 30 "$TESTEE_PID" "$OUT/testee.log" "the testee (${TESTEE[*]})"

make_spec "$CONF_DIR/fuzzingclient.json" "$OUT/spec.json" "$OUT"
log "running wstest -m fuzzingclient against ws://127.0.0.1:$PORT (log: $OUT/wstest.log)"
start=$SECONDS
rc=0
cd "$OUT"
run_fg "$OUT/wstest.log" timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-3000}" \
  "$WSTEST" -m fuzzingclient -s "$OUT/spec.json" || rc=$?
cd "$ROOT"
log "wstest finished in $((SECONDS - start))s (exit $rc)"
if ((rc == 124)); then
  log "wstest timed out after ${AUTOBAHN_TIMEOUT:-3000}s (raise AUTOBAHN_TIMEOUT?)"
elif ((rc != 0)); then
  log "wstest failed; last lines of its log:"; tail -n 20 "$OUT/wstest.log" >&2 || true
fi
if ! kill -0 "$TESTEE_PID" 2>/dev/null; then
  log "WARNING: the testee exited during the run; last lines of $OUT/testee.log:"
  tail -n 20 "$OUT/testee.log" >&2 || true
fi
cleanup

src=0
python3 "$CONF_DIR/summarize.py" "$OUT" --agent "$AGENT" --title "server (fuzzingclient)" \
  --expected "$CONF_DIR/expected-server.json" "${SUMMARY_ARGS[@]}" || src=$?
log "HTML report: $OUT/index.html"
if ((src == 0 && rc != 0)); then src=2; fi
exit "$src"
