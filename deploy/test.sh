#!/usr/bin/env bash
# The deployment of deploy/, run for real on this machine and driven from a browser:
#   - a throwaway CA and a server certificate for 127.0.0.1/localhost (openssl);
#   - its own redis-server on a spare port (never the shared one on 6379);
#   - three `tidewire serve` nodes on that Redis (--engine, --node-name, --drain, --api-key);
#   - its own nginx (Debian's) with deploy/nginx/tidewire.conf, only ports, addresses and
#     paths substituted (every substitution must match, so the test follows the real file);
#   - headless Chromium opens https:// through nginx, subscribes over wss:// with the hub's JS
#     client (web/lib) while a numbered stream is published through nginx's /api/; the node
#     holding the page's WebSocket is SIGKILLed mid-stream, the page must resume through
#     nginx on another node with every publication exactly once, in order (deploy/test.mjs).
#     Then the node it moved to is drained (SIGTERM, as systemd stops it): the same again.
#
#   deploy/test.sh              build tidewire-cli (release) first
#   deploy/test.sh --no-build   use ${CARGO_TARGET_DIR:-target}/release/tidewire as it is
# Env: TIDEWIRE_BIN (the binary), DEPLOY_RUN_TIMEOUT (150 s, the browser test),
#      DEPLOY_LOG_DIR (interop/.logs/deploy), DEPLOY_KEEP=1 (keep the temp dir).
# Ends with `deploy: N passed, M failed`; exits non-zero on any failure. Screenshots:
# screenshots/deploy-nginx-kill.png, deploy-nginx-resume.png.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
cd "$ROOT"

BUILD=1
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/test.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
RUN_TIMEOUT="${DEPLOY_RUN_TIMEOUT:-150}"
LOG_DIR="${DEPLOY_LOG_DIR:-$ROOT/interop/.logs/deploy}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="${TIDEWIRE_BIN:-$TARGET_DIR/release/tidewire}"
CONF_SRC="$HERE/nginx/tidewire.conf"
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.log "$LOG_DIR"/*.tap

log() { echo "deploy: $*"; }
fail() { # message [log file...]
  log "FAILED: $1"
  shift
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "    --- last lines of $f ---"; tail -n 25 "$f" | sed 's/^/    | /'
  done
  echo "deploy: 0 passed, 1 failed"
  exit 1
}

# ---------------------------------------------------------------- cleanup

TMP="$(mktemp -d "${TMPDIR:-/tmp}/tidewire-deploy.XXXXXX")"
chmod 711 "$TMP"   # nginx's workers (nobody) reach their temp dirs below it
PIDS=()            # redis, nodes, nginx: ours only, killed by pid
NODE_PID=""
BROWSER_PID_DIR="$TMP/browsers"; mkdir -p "$BROWSER_PID_DIR"; export BROWSER_PID_DIR

cleanup() {
  local pid f
  if [ -n "$NODE_PID" ]; then kill "$NODE_PID" 2>/dev/null; fi
  for f in "$BROWSER_PID_DIR"/chromium.*; do
    [ -e "$f" ] || continue
    pid="$(cat "$f")"
    kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null
  done
  # nginx first (TERM: it stops its workers), then the nodes (they drain 2 s), Redis.
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 30); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  # nginx's workers, should the master have died without them.
  [ -f "$TMP/nginx/nginx.pid" ] && pkill -9 -P "$(cat "$TMP/nginx/nginx.pid" 2>/dev/null)" 2>/dev/null
  if [ "${DEPLOY_KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'echo "deploy/test.sh: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------- setup

command -v nginx >/dev/null || fail "nginx not found (Debian: apt-get install -y nginx)"
command -v redis-server >/dev/null || fail "redis-server not found (Debian: apt-get install -y redis-server)"
command -v openssl >/dev/null || fail "openssl not found"
command -v curl >/dev/null || fail "curl not found"
log "$(nginx -v 2>&1), $(redis-server --version | cut -d' ' -f1-3), $(openssl version)"

BROWSER_LOG_PREFIX=deploy bash "$ROOT/interop/browser/setup.sh" \
  || { echo "deploy: 0 passed, 1 failed"; exit 1; }

if [ "$BUILD" -eq 1 ]; then
  logf="$LOG_DIR/build.log"
  log "building tidewire-cli (release, log: $logf)"
  timeout 1800 cargo build --release -p tidewire-cli </dev/null >"$logf" 2>&1 \
    || fail "cargo build --release -p tidewire-cli failed" "$logf"
fi
[ -x "$BIN" ] || fail "$BIN missing$([ "$BUILD" -eq 0 ] && echo ' (--no-build: build it first)')"

# A port nothing listens on now (the kernel's pick, released at once).
spare_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close();});'
}
# Waits up to $2 tenths of a second for command $1 (a string) to succeed.
wait_until() {
  local i
  for i in $(seq 1 "$2"); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# ---------------------------------------------------------------- certificates

log "certificates: a test CA and a server certificate for 127.0.0.1 and localhost"
PKI="$TMP/pki"; mkdir -p "$PKI"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=Tidewire deploy test CA" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$PKI/server.key" -out "$PKI/server.csr" &&
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$PKI/server.ext" &&
  openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -extfile "$PKI/server.ext" -out "$PKI/server.pem"
} >"$LOG_DIR/openssl.log" 2>&1 || fail "openssl could not make the certificates" "$LOG_DIR/openssl.log"
chmod 600 "$PKI"/*.key

# ---------------------------------------------------------------- redis

REDIS_PORT="$(spare_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --logfile "" >"$LOG_DIR/redis.log" 2>&1 &
PIDS+=($!)
wait_until "[ \"\$(redis-cli -p $REDIS_PORT ping)\" = PONG ]" 50 \
  || fail "redis-server on 127.0.0.1:$REDIS_PORT did not answer within 5 s" "$LOG_DIR/redis.log"
log "redis-server on 127.0.0.1:$REDIS_PORT (pid ${PIDS[-1]})"

# ---------------------------------------------------------------- three nodes

API_KEY="deploy-test-$(openssl rand -hex 12)"
NODES_JSON="["
NODE_PORTS=()
for i in 1 2 3; do
  name="tw-$i"
  logf="$LOG_DIR/node-$i.log"
  # Port 0: the node picks a free port and prints it (no race with other processes).
  "$BIN" serve --listen 127.0.0.1:0 --engine "redis://127.0.0.1:$REDIS_PORT" --node-name "$name" \
    --drain 2s --api-key "$API_KEY" </dev/null >"$logf" 2>&1 &
  pid=$!
  disown "$pid"   # killed on purpose by the test: no job report
  PIDS+=("$pid")
  wait_until "grep -q 'listening on http://127.0.0.1:[0-9]*/' '$logf'" 100 \
    || fail "node $name did not start listening within 10 s" "$logf"
  port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$logf" | head -n1)"
  wait_until "curl -sf http://127.0.0.1:$port/readyz" 100 \
    || fail "node $name: /readyz not 200 within 10 s" "$logf"
  NODE_PORTS+=("$port")
  NODES_JSON+="$([ "$i" -gt 1 ] && echo ,){\"name\":\"$name\",\"port\":$port,\"pid\":$pid,\"log\":\"$logf\"}"
  log "node $name on 127.0.0.1:$port (pid $pid)"
done
NODES_JSON+="]"

# ---------------------------------------------------------------- nginx

HTTPS_PORT="$(spare_port)"
HTTP_PORT="$(spare_port)"
NG="$TMP/nginx"; mkdir -p "$NG/tmp"
SITE="$NG/tidewire.conf"
cp "$CONF_SRC" "$SITE"
# Replaces every line matching $1 (a fixed string) with $2's substitution; the real file must
# contain it, so that a change there is noticed here instead of silently tested around.
subst() { # from to [expected count]
  local n
  n="$(grep -cF -- "$1" "$SITE")"
  [ "$n" -eq "${3:-1}" ] || fail "deploy/nginx/tidewire.conf: expected ${3:-1} occurrence(s) of '$1', found $n (update deploy/test.sh)"
  FROM="$1" TO="$2" perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/g' "$SITE"
}
subst "server 10.0.0.11:8080 " "server 127.0.0.1:${NODE_PORTS[0]} "
subst "server 10.0.0.12:8080 " "server 127.0.0.1:${NODE_PORTS[1]} "
subst "server 10.0.0.13:8080 " "server 127.0.0.1:${NODE_PORTS[2]} "
subst "listen 443 ssl http2;" "listen 127.0.0.1:$HTTPS_PORT ssl http2;"
subst "listen 80;" "listen 127.0.0.1:$HTTP_PORT;"
# No IPv6 listeners (this machine may have no ::1); the IPv4 ones above stand for them.
subst "listen [::]:443 ssl http2;" "# (IPv6 listener removed by deploy/test.sh)"
subst "listen [::]:80;" "# (IPv6 listener removed by deploy/test.sh)"
# The redirect names the test's port (443 is implied in production).
subst 'return 301 https://$host$request_uri;' "return 301 https://\$host:$HTTPS_PORT\$request_uri;"
subst "/etc/ssl/tidewire/fullchain.pem" "$PKI/server.pem"
subst "/etc/ssl/tidewire/privkey.pem" "$PKI/server.key"
subst "/var/log/nginx/tidewire.access.log" "$NG/access.log"
subst "/var/log/nginx/tidewire.error.log" "$NG/error.log"
if grep -nE '10\.0\.0\.1[123]:|/etc/ssl/|/var/log/|listen (80|443)|\[::\]' "$SITE" | grep -v '^\s*[0-9]*:\s*#' >"$NG/leftover" ; then
  fail "the generated config still has production addresses or paths: $(cat "$NG/leftover")"
fi
# The main context Debian's /etc/nginx/nginx.conf provides in production (user, pid, logs,
# mime types, temp paths), here under the temp dir; the site file is included as it is there.
cat >"$NG/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $NG/nginx.pid;
error_log $NG/error.log notice;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $NG/access-default.log;
    client_body_temp_path $NG/tmp/body;
    proxy_temp_path $NG/tmp/proxy;
    fastcgi_temp_path $NG/tmp/fastcgi;
    uwsgi_temp_path $NG/tmp/uwsgi;
    scgi_temp_path $NG/tmp/scgi;
    include $SITE;
}
EOF
nginx -t -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" >"$LOG_DIR/nginx-t.log" 2>&1 \
  || fail "nginx -t refused the generated config ($SITE)" "$LOG_DIR/nginx-t.log"
nginx -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" >"$LOG_DIR/nginx.log" 2>&1 &
PIDS=("$!" "${PIDS[@]}")   # stopped first
BASE="https://127.0.0.1:$HTTPS_PORT"
wait_until "curl -sf --cacert '$PKI/ca.pem' $BASE/healthz" 100 \
  || fail "nginx: $BASE/healthz not 200 within 10 s" "$LOG_DIR/nginx.log" "$NG/error.log"
log "nginx on $BASE and http://127.0.0.1:$HTTP_PORT (pid ${PIDS[0]}, config $SITE)"

# ---------------------------------------------------------------- HTTP checks (curl)

checks_failed=0
check() { # what, actual, expected (a grep -E pattern)
  if printf '%s' "$2" | grep -qE -- "$3"; then log "ok: $1"
  else log "NOT OK: $1: got '$2', expected /$3/"; checks_failed=1; fi
}
# The certificate verifies against the test CA, for both names, over TLS 1.2+ and HTTP/2.
check "https://localhost/healthz verifies with the test CA" \
  "$(curl -s --cacert "$PKI/ca.pem" "https://localhost:$HTTPS_PORT/healthz")" '^ok$'
check "/readyz through nginx" "$(curl -s --cacert "$PKI/ca.pem" "$BASE/readyz")" '^ok$'
check "HTTP/2 negotiated for pages" \
  "$(curl -s -o /dev/null --http2 -w '%{http_version}' --cacert "$PKI/ca.pem" "$BASE/")" '^2$'
check "TLS 1.1 refused" \
  "$(curl -s -o /dev/null -w '%{http_code}' --tlsv1.1 --tls-max 1.1 --cacert "$PKI/ca.pem" "$BASE/healthz" || true)" '^000$'
check "HSTS header" "$(curl -sI --cacert "$PKI/ca.pem" "$BASE/" | tr -d '\r' | grep -i '^strict-transport-security')" 'max-age=31536000'
check "http:// redirects to https://" \
  "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$HTTP_PORT/chat?room=x")" \
  "^301 https://127\.0\.0\.1:$HTTPS_PORT/chat\?room=x\$"
check "the demo's JS client through nginx" \
  "$(curl -s -o /dev/null -w '%{http_code} %{content_type}' --cacert "$PKI/ca.pem" "$BASE/lib/index.js")" '^200 .*javascript'
[ "$checks_failed" -eq 0 ] || fail "HTTP checks through nginx" "$NG/error.log"

# ---------------------------------------------------------------- the browser

log "browser test (bounded by ${RUN_TIMEOUT} s)"
rm -f "$ROOT/screenshots/deploy-"*.png
out="$LOG_DIR/test.tap"
DEPLOY_BASE="$BASE" DEPLOY_CA="$PKI/ca.pem" DEPLOY_API_KEY="$API_KEY" DEPLOY_NODES="$NODES_JSON" \
DEPLOY_ACCESS_LOG="$NG/access.log" DEPLOY_NGINX_ERROR_LOG="$NG/error.log" \
  timeout -k 10 "$RUN_TIMEOUT" node --test --test-reporter=tap --test-concurrency=1 "$HERE/test.mjs" \
  </dev/null > >(tee "$out") 2>&1 &
NODE_PID=$!
wait "$NODE_PID"
rc=$?
NODE_PID=""
sleep 0.2   # let tee flush
[ "$rc" -eq 124 ] && log "TIMEOUT: the browser test took longer than ${RUN_TIMEOUT} s"
cp "$NG/access.log" "$LOG_DIR/nginx-access.log" 2>/dev/null
cp "$NG/error.log" "$LOG_DIR/nginx-error.log" 2>/dev/null

count() { sed -n "s/^# $1 \([0-9][0-9]*\)\$/\1/p" "$out" | tail -n1; }
pass="$(count pass)"; failed="$(count fail)"; cancelled="$(count cancelled)"
pass="${pass:-0}"; failed="$(( ${failed:-0} + ${cancelled:-0} ))"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ "$pass" -eq 0 ] && [ "$failed" -eq 0 ]; then failed=1; log "no test ran"; fi
ls "$ROOT"/screenshots/deploy-*.png 2>/dev/null | sed 's/^/deploy: screenshot /'
log "logs in $LOG_DIR; total $(( $(date +%s) - START )) s"
echo "deploy: $pass passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
