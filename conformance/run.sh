#!/usr/bin/env bash
# Full Autobahn TestSuite run: install (if needed), then server mode and client mode.
# Both modes always run; exits non-zero if either fails (1: failed/unimplemented cases or a
# regression, 2: setup error: build, install, no report).
#
# Options: --no-build, --write-expected (passed to both modes);
#   --server-testee-cmd CMD / --client-testee-cmd CMD (passed as --testee-cmd to one mode).
# Environment: see run-server.sh / run-client.sh (AUTOBAHN_CASES, AUTOBAHN_EXCLUDE, ...).
set -uo pipefail
CONF_DIR="$(cd "$(dirname "$0")" && pwd)"

common=() server_args=() client_args=()
while (($#)); do
  case $1 in
    --no-build|--write-expected) common+=("$1"); shift ;;
    --server-testee-cmd) server_args+=(--testee-cmd "${2:?}"); shift 2 ;;
    --client-testee-cmd) client_args+=(--testee-cmd "${2:?}"); shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "[conformance] ERROR: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash "$CONF_DIR/install.sh" || { echo "[conformance] ERROR: install.sh failed" >&2; exit 2; }
export AUTOBAHN_SKIP_INSTALL=1

start=$SECONDS
server=0 client=0
# The two modes use different ports and report directories, and each wstest is one Python
# process that spends much of its time in the cases' own waits: running them side by side
# takes the longer of the two instead of their sum. The server mode's output is held back
# and printed after the client mode's.
server_out=$(mktemp)
trap 'rm -f "$server_out"' EXIT
bash "$CONF_DIR/run-server.sh" "${common[@]}" "${server_args[@]}" >"$server_out" 2>&1 &
server_pid=$!
bash "$CONF_DIR/run-client.sh" "${common[@]}" "${client_args[@]}" || client=$?
echo
wait "$server_pid" || server=$?
cat "$server_out"
echo
echo "[conformance] server mode: $([[ $server == 0 ]] && echo PASS || echo "FAIL (exit $server)")," \
  "client mode: $([[ $client == 0 ]] && echo PASS || echo "FAIL (exit $client)"), $((SECONDS - start))s"
echo "[conformance] reports: $CONF_DIR/reports/server/index.html $CONF_DIR/reports/client/index.html"
if ((server != 0 || client != 0)); then
  exit $((server > client ? server : client))
fi
