#!/usr/bin/env bash
# Interop tests: Tidewire against Python `websockets` and Node `ws` (see interop/README.md).
#
#   interop/run.sh               build tidewire (release), then run the 4 pairs:
#                                  python/node client -> `tidewire echo`,
#                                  tidewire interop_client -> python/node echo server
#                                and over HTTP/2 (RFC 8441 extended CONNECT, h2c):
#                                  node ws client -> `tidewire echo`,
#                                  tidewire interop_client --http2 only -> node ws server,
#                                  node:http2 by hand -> `tidewire echo` (h2c, TLS with a
#                                  test CA made by openssl) and `tidewire serve`
#                                and over HTTP/3 (RFC 9220, QUIC; Python aioquic for HTTP/3
#                                with websockets' Sans-I/O frames, interop/h3_peer.py):
#                                  aioquic client -> `tidewire echo --http3`,
#                                  tidewire interop_client --http3 -> aioquic echo server
#   interop/run.sh --self-test   no Tidewire at all: python client -> node server,
#                                  node client -> python server and node(h2) -> node(h2)
#                                  (proves the scenario code)
# Options: --no-build      use the existing target/release binaries
#          --compression   permessage-deflate on every side (peers, tidewire echo, interop_client);
#                          each client checks that it was negotiated
# Env:     INTEROP_CLIENT_TIMEOUT (120 s), INTEROP_BUILD_TIMEOUT (1800 s),
#          INTEROP_SETUP_TIMEOUT (600 s), INTEROP_LOG_DIR (interop/.logs)
#
# Prints `interop: <peer> <direction> PASS|FAIL` per pair, then `N passed, M failed`;
# exits non-zero if anything failed. Installs its own Python venv and node_modules.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

SELF_TEST=0
BUILD=1
PEER_FLAGS=()
for arg in "$@"; do
  case "$arg" in
    --self-test) SELF_TEST=1 ;;
    --no-build) BUILD=0 ;;
    --compression) PEER_FLAGS+=(--compression) ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

CLIENT_TIMEOUT="${INTEROP_CLIENT_TIMEOUT:-120}"
SERVER_TIMEOUT="$((CLIENT_TIMEOUT + 60))"   # a server never outlives its pair by much
BUILD_TIMEOUT="${INTEROP_BUILD_TIMEOUT:-1800}"
SETUP_TIMEOUT="${INTEROP_SETUP_TIMEOUT:-600}"
PORT_TIMEOUT=15
LOG_DIR="${INTEROP_LOG_DIR:-$HERE/.logs}"
mkdir -p "$LOG_DIR"

NODE_DIR="$HERE/node"
TIDEWIRE_BIN="$ROOT/target/release/tidewire"
INTEROP_CLIENT_BIN="$ROOT/target/release/examples/interop_client"

PASSED=0
FAILED=0
BG_PIDS=()
declare -A UNAVAILABLE=()   # component -> reason
TLS_DIR=""                  # the test CA and server certificate (make_test_ca)

cleanup() {
  local pid
  for pid in "${BG_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  BG_PIDS=()
  if [ -n "$TLS_DIR" ]; then rm -rf "$TLS_DIR"; TLS_DIR=""; fi
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

log() { echo "run.sh: $*"; }

# shellcheck source=python-venv.sh
source "$HERE/python-venv.sh"

setup_node() {
  local logf="$LOG_DIR/setup-node.log" stamp="$NODE_DIR/node_modules/.interop-stamp" want
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    UNAVAILABLE[node]="node/npm not found"; return 1
  fi
  want="$(hash_of "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json")"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -f "$NODE_DIR/node_modules/ws/package.json" ]; then
    log "node: node_modules up to date (node $(node --version))"
    return 0
  fi
  log "node: npm ci in $NODE_DIR (log: $logf)"
  if ! (cd "$NODE_DIR" && timeout "$SETUP_TIMEOUT" npm ci --no-audit --no-fund) >"$logf" 2>&1; then
    UNAVAILABLE[node]="npm ci failed (see $logf)"
    show_tail "$logf"
    return 1
  fi
  echo "$want" >"$stamp"
  log "node: ws $(node -p "require('$NODE_DIR/node_modules/ws/package.json').version") installed (node $(node --version))"
}

build_tidewire() {
  local logf
  logf="$LOG_DIR/build-cli.log"
  log "building tidewire-cli (release, log: $logf)"
  if ! timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire-cli >"$logf" 2>&1; then
    UNAVAILABLE[tidewire-server]="cargo build --release -p tidewire-cli failed"
    show_tail "$logf" 30
  elif [ ! -x "$TIDEWIRE_BIN" ]; then
    UNAVAILABLE[tidewire-server]="$TIDEWIRE_BIN missing after build"
  fi
  logf="$LOG_DIR/build-interop-client.log"
  log "building interop_client example (release, log: $logf)"
  if ! timeout "$BUILD_TIMEOUT" cargo build --release -p tidewire --example interop_client --features http3 >"$logf" 2>&1; then
    UNAVAILABLE[tidewire-client]="cargo build --release -p tidewire --example interop_client --features http3 failed"
    show_tail "$logf" 30
  elif [ ! -x "$INTEROP_CLIENT_BIN" ]; then
    UNAVAILABLE[tidewire-client]="$INTEROP_CLIENT_BIN missing after build"
  fi
}

check_prebuilt() {
  [ -x "$TIDEWIRE_BIN" ] || UNAVAILABLE[tidewire-server]="$TIDEWIRE_BIN missing (--no-build)"
  [ -x "$INTEROP_CLIENT_BIN" ] || UNAVAILABLE[tidewire-client]="$INTEROP_CLIENT_BIN missing (--no-build)"
}

# A CA made for this run, and a certificate it signed for localhost and 127.0.0.1, for
# `tidewire echo --tls-cert/--tls-key` (the Node client trusts the CA with --ca).
make_test_ca() {
  local logf="$LOG_DIR/setup-tls.log"
  if ! command -v openssl >/dev/null 2>&1; then
    UNAVAILABLE[tls]="openssl not found"; return 1
  fi
  TLS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tidewire-interop-tls.XXXXXX")" || { UNAVAILABLE[tls]="mktemp failed"; return 1; }
  if ! (
    set -e
    cd "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj "/CN=Tidewire interop test CA" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=localhost" -keyout server.key -out server.csr
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.pem
  ) >"$logf" 2>&1; then
    UNAVAILABLE[tls]="openssl could not make the test CA (see $logf)"
    show_tail "$logf"
    return 1
  fi
  log "tls: test CA and a certificate for localhost in $TLS_DIR"
}

# ---------------------------------------------------------------- helpers

free_port() {
  local py="$VPY"
  [ -x "$py" ] || py=python3
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port pid: 0 once something accepts on 127.0.0.1:port, 1 on timeout, 2 if pid exited
  local port="$1" pid="$2" i
  for ((i = 0; i < PORT_TIMEOUT * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 2
    sleep 0.1
  done
  return 1
}

wait_listening() { # log pid: 0 once the server wrote "listening" (a UDP-only server), 1 on timeout, 2 if pid exited
  local logf="$1" pid="$2" i
  for ((i = 0; i < PORT_TIMEOUT * 10; i++)); do
    grep -q listening "$logf" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 2
    sleep 0.1
  done
  return 1
}

# server_cmd KIND PORT / client_cmd KIND URL fill CMD with the command line.
# Kinds ending in -h2 speak HTTP/2 (h2c with prior knowledge: `tidewire echo` answers both).
server_cmd() {
  case "$1" in
    tidewire) CMD=("$TIDEWIRE_BIN" echo --listen "127.0.0.1:$2" "${PEER_FLAGS[@]}") ;;
    # For the by-hand client: subprotocols to select, and TLS (ALPN h2) with the test CA's certificate.
    tidewire-chat) CMD=("$TIDEWIRE_BIN" echo --listen "127.0.0.1:$2" --protocols chat,superchat "${PEER_FLAGS[@]}") ;;
    tidewire-tls) CMD=("$TIDEWIRE_BIN" echo --listen "127.0.0.1:$2" --protocols chat,superchat
                       --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key" "${PEER_FLAGS[@]}") ;;
    # The hub: permessage-deflate is on unless --no-compression.
    tidewire-serve)
      CMD=("$TIDEWIRE_BIN" serve --listen "127.0.0.1:$2")
      [ "${#PEER_FLAGS[@]}" -eq 0 ] && CMD+=(--no-compression) ;;
    python) CMD=("$VPY" "$HERE/py_server.py" --port "$2" "${PEER_FLAGS[@]}") ;;
    node) CMD=(node "$NODE_DIR/server.mjs" --port "$2" "${PEER_FLAGS[@]}") ;;
    node-h2) CMD=(node "$NODE_DIR/server.mjs" --port "$2" --http2 "${PEER_FLAGS[@]}") ;;
    # HTTP/3: QUIC on the UDP port (the echo also listens on TCP, which wait_port sees).
    tidewire-h3) CMD=("$TIDEWIRE_BIN" echo --listen "127.0.0.1:$2" --protocols chat,superchat --http3
                      --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key" "${PEER_FLAGS[@]}") ;;
    aioquic-h3) CMD=("$VPY" "$HERE/h3_peer.py" server --port "$2"
                     --cert "$TLS_DIR/server.pem" --key "$TLS_DIR/server.key" "${PEER_FLAGS[@]}") ;;
  esac
}
client_cmd() {
  case "$1" in
    tidewire) CMD=("$INTEROP_CLIENT_BIN" "$2" "${PEER_FLAGS[@]}") ;;
    tidewire-h2) CMD=("$INTEROP_CLIENT_BIN" "$2" --http2 only "${PEER_FLAGS[@]}") ;;
    python) CMD=("$VPY" "$HERE/py_client.py" "$2" "${PEER_FLAGS[@]}") ;;
    node) CMD=(node "$NODE_DIR/client.mjs" "$2" "${PEER_FLAGS[@]}") ;;
    node-h2) CMD=(node "$NODE_DIR/client.mjs" "$2" --http2 "${PEER_FLAGS[@]}") ;;
    node-h2-echo) CMD=(node "$NODE_DIR/h2_connect.mjs" "$2" --target echo "${PEER_FLAGS[@]}") ;;
    node-h2-echo-tls) CMD=(node "$NODE_DIR/h2_connect.mjs" "$2" --target echo --ca "$TLS_DIR/ca.pem" "${PEER_FLAGS[@]}") ;;
    node-h2-serve) CMD=(node "$NODE_DIR/h2_connect.mjs" "$2" --target serve "${PEER_FLAGS[@]}") ;;
    aioquic-h3) CMD=("$VPY" "$HERE/h3_peer.py" client "$2" --ca "$TLS_DIR/ca.pem" "${PEER_FLAGS[@]}") ;;
    # The library trusts the platform's store, which SSL_CERT_FILE replaces.
    tidewire-h3) CMD=(env "SSL_CERT_FILE=$TLS_DIR/ca.pem" "$INTEROP_CLIENT_BIN" "$2" --http3 "${PEER_FLAGS[@]}") ;;
  esac
}

# The component a kind of program needs (UNAVAILABLE's keys).
component_of() { # KIND client|server
  case "$1" in
    tidewire*) if [ "$2" = client ]; then echo tidewire-client; else echo tidewire-server; fi ;;
    node*) echo node ;;
    aioquic*) echo python ;;
    *) echo "$1" ;;
  esac
}

result() { # peer direction PASS|FAIL
  echo "interop: $1 $2 $3"
  if [ "$3" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

# run_pair PEER DIRECTION CLIENT_KIND SERVER_KIND
run_pair() {
  local peer="$1" dir="$2" ck="$3" sk="$4"
  local tag="${peer//[^a-z0-9]/-}_${dir//[^a-z]/-}"
  local needs=("$(component_of "$sk" server)" "$(component_of "$ck" client)")
  case "$sk" in tidewire-tls | *-h3) needs+=(tls) ;; esac
  local need
  for need in "${needs[@]}"; do
    if [ -n "${UNAVAILABLE[$need]:-}" ]; then
      echo "--- $peer $dir: skipped, $need unavailable: ${UNAVAILABLE[$need]}"
      result "$peer" "$dir" FAIL
      return
    fi
  done

  local port slog="$LOG_DIR/$tag.server.log" clog="$LOG_DIR/$tag.client.log"
  port="$(free_port)"
  server_cmd "$sk" "$port"
  echo "--- $peer $dir: server: ${CMD[*]}"
  timeout "$SERVER_TIMEOUT" "${CMD[@]}" >"$slog" 2>&1 &
  local spid=$!
  BG_PIDS+=("$spid")
  local wrc=0
  if [ "$sk" = aioquic-h3 ]; then
    wait_listening "$slog" "$spid" || wrc=$?
  else
    wait_port "$port" "$spid" || wrc=$?
  fi
  if [ "$wrc" -ne 0 ]; then
    if [ "$wrc" -eq 2 ]; then
      wait "$spid" 2>/dev/null
      echo "    server exited (status $?) before accepting on 127.0.0.1:$port"
      BG_PIDS=()
    else
      echo "    server did not accept on 127.0.0.1:$port within ${PORT_TIMEOUT} s"
      kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
      BG_PIDS=()
    fi
    show_tail "$slog"
    result "$peer" "$dir" FAIL
    return
  fi

  local url="ws://127.0.0.1:$port"
  case "$sk" in tidewire-tls | *-h3) url="wss://localhost:$port" ;; esac
  client_cmd "$ck" "$url"
  echo "--- $peer $dir: client: ${CMD[*]}"
  local t0 t1 rc
  t0=$(date +%s%N)
  timeout "$CLIENT_TIMEOUT" "${CMD[@]}" </dev/null >"$clog" 2>&1
  rc=$?
  t1=$(date +%s%N)
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  BG_PIDS=()   # one server at a time; forget it so the trap never kills a reused pid
  local ms=$(((t1 - t0) / 1000000))
  printf '    client exit %s after %d.%02d s\n' "$rc" "$((ms / 1000))" "$((ms % 1000 / 10))"
  if [ "$rc" -eq 0 ]; then
    result "$peer" "$dir" PASS
  else
    [ "$rc" -eq 124 ] && echo "    client timed out after ${CLIENT_TIMEOUT} s"
    show_tail "$clog" 40
    show_tail "$slog" 15
    result "$peer" "$dir" FAIL
  fi
}

# ---------------------------------------------------------------- main

START=$(date +%s)
setup_python || UNAVAILABLE[python]="$PYTHON_SETUP_ERROR"
setup_node

if [ "$SELF_TEST" -eq 1 ]; then
  log "self-test: the Python and Node peers against each other (no Tidewire)"
  run_pair python "client->node" python node
  run_pair node "client->python" node python
  run_pair "node(h2)" "client->node" node-h2 node-h2
else
  if [ "$BUILD" -eq 1 ]; then build_tidewire; else check_prebuilt; fi
  make_test_ca
  run_pair python "client->tidewire" python tidewire
  run_pair node "client->tidewire" node tidewire
  run_pair python "tidewire->server" tidewire python
  run_pair node "tidewire->server" tidewire node
  # WebSocket over HTTP/2 (RFC 8441): the SCENARIO with Node `ws` over extended CONNECT
  # streams, both directions, then extended CONNECT and frames by hand (node:http2).
  run_pair "node(h2)" "client->tidewire" node-h2 tidewire
  run_pair "node(h2)" "tidewire->server" tidewire-h2 node-h2
  run_pair "node(h2c,by-hand)" "client->tidewire-echo" node-h2-echo tidewire-chat
  run_pair "node(h2-tls,by-hand)" "client->tidewire-echo" node-h2-echo-tls tidewire-tls
  run_pair "node(h2c,by-hand)" "client->tidewire-serve" node-h2-serve tidewire-serve
  # WebSocket over HTTP/3 (RFC 9220): the SCENARIO over QUIC, both directions, with aioquic
  # (HTTP/3, QPACK) and websockets' Sans-I/O frames as the peer.
  run_pair "python(aioquic,h3)" "client->tidewire" aioquic-h3 tidewire-h3
  run_pair "python(aioquic,h3)" "tidewire->server" tidewire-h3 aioquic-h3
fi

log "logs in $LOG_DIR; total $(( $(date +%s) - START )) s"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
