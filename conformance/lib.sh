# Shared helpers for conformance/run-server.sh and conformance/run-client.sh (sourced, not run).

CONF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$CONF_DIR/.." && pwd)"
WSTEST="$CONF_DIR/wstest"
AGENT="${AUTOBAHN_AGENT:-tidewire}"
BG_PIDS=()

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 2; }

# Start a command in its own process group so cleanup can stop it and all its children.
# Usage: start_bg LOGFILE CMD...   (sets BG_PID)
start_bg() {
  local logfile=$1; shift
  setsid "$@" >"$logfile" 2>&1 < /dev/null &
  BG_PID=$!
  BG_PIDS+=("$BG_PID")
}

# Run a command like start_bg but wait for it (interruptibly, so INT/TERM stop it at once).
# Usage: run_fg LOGFILE CMD...   Returns the command's exit status.
run_fg() {
  local rc=0
  start_bg "$@"
  wait "$BG_PID" || rc=$?
  return "$rc"
}

cleanup() {
  local pid i
  for pid in "${BG_PIDS[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BG_PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  BG_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT TIMEOUT_S PID LOGFILE WHAT: poll until PORT accepts connections; fail early if PID dies.
wait_port() {
  local port=$1 timeout=$2 pid=$3 logfile=$4 what=$5
  local deadline=$((SECONDS + timeout))
  until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$what exited before listening on 127.0.0.1:$port; its output:"
      tail -n 30 "$logfile" >&2 || true
      exit 2
    fi
    if ((SECONDS >= deadline)); then
      log "$what did not listen on 127.0.0.1:$port within ${timeout}s; its output:"
      tail -n 30 "$logfile" >&2 || true
      exit 2
    fi
    sleep 0.1
  done
}

require_port_free() {
  if port_open "$1"; then
    die "something is already listening on 127.0.0.1:$1 (a leftover testee or wstest?); stop it first"
  fi
}

# make_spec TEMPLATE OUT OUTDIR: copy the committed spec, applying AUTOBAHN_CASES / AUTOBAHN_EXCLUDE
# (comma-separated patterns, e.g. AUTOBAHN_CASES='1.*,2.*' or AUTOBAHN_EXCLUDE='' to run 12/13 too),
# the agent name and an absolute outdir.
make_spec() {
  python3 - "$@" <<'PY'
import json, os, sys
template, out, outdir = sys.argv[1:4]
spec = json.load(open(template))
def patterns(var):
    v = os.environ.get(var)
    if v is None:
        return None
    return [p.strip() for p in v.split(",") if p.strip()]
cases, exclude = patterns("AUTOBAHN_CASES"), patterns("AUTOBAHN_EXCLUDE")
if cases is not None:
    spec["cases"] = cases or ["*"]
if exclude is not None:
    spec["exclude-cases"] = exclude
spec["outdir"] = outdir
for s in spec.get("servers", []):
    s["agent"] = os.environ.get("AUTOBAHN_AGENT", s.get("agent", "tidewire"))
json.dump(spec, open(out, "w"), indent=2)
print("cases %s, excluding %s" % (spec["cases"], spec.get("exclude-cases", [])), file=sys.stderr)
PY
}

# Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config build.target-dir).
target_dir() {
  local dir
  dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) || dir=""
  echo "${dir:-${CARGO_TARGET_DIR:-$ROOT/target}}"
}

ensure_installed() {
  if [[ ${AUTOBAHN_SKIP_INSTALL:-0} != 1 ]]; then
    bash "$CONF_DIR/install.sh" || die "conformance/install.sh failed"
  fi
  "$WSTEST" --help >/dev/null 2>&1 || die "wstest does not run; run conformance/install.sh"
}
