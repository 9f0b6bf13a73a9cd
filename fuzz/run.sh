#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) and fails if any of them crashes,
# leaks, times out or runs out of memory. Usage: fuzz/run.sh [SECONDS]
#
# Needs only a stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz uses
# (sanitizer, coverage instrumentation). Installs cargo-fuzz if it is missing. Seeds are
# written into fuzz/corpus/<target>/ (not committed); the corpus grows there between runs.
# A crashing input lands in fuzz/artifacts/<target>/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>
#
# The handshake targets run once `tidewire_proto::fuzzing::handshake_request` and
# `handshake_response` exist (FUZZ_HANDSHAKE=1 or 0 forces it either way).
set -euo pipefail

seconds=${1:-30}
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz_dir")
cd "$root"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(frame_header server_connection client_connection inflate server_connection_deflate hub_request hub_node http3_head)
build_args=(--fuzz-dir "$fuzz_dir")
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    build_args+=(--target-dir "$CARGO_TARGET_DIR/fuzz")
fi
handshake=${FUZZ_HANDSHAKE:-}
if [ -z "$handshake" ]; then
    handshake=0
    if grep -rqs 'fn handshake_request' crates/tidewire-proto/src/fuzzing* &&
        grep -rqs 'fn handshake_response' crates/tidewire-proto/src/fuzzing*; then
        handshake=1
    fi
fi
if [ "$handshake" = 1 ]; then
    targets+=(handshake_request handshake_response)
    build_args+=(--features handshake)
else
    echo "note: handshake targets skipped (no fuzzing::handshake_request/response yet)"
fi

# seed TARGET NAME BYTES: one seed input, BYTES in printf notation.
# shellcheck disable=SC2059 # the seed bytes are the printf format, on purpose
seed() {
    mkdir -p "$fuzz_dir/corpus/$1"
    printf "$3" >"$fuzz_dir/corpus/$1/seed-$2"
}
# Headers: short, 16-bit and 64-bit lengths, masked, control.
seed frame_header short '\x81\x05'
seed frame_header len16 '\x82\x7e\x01\x00'
seed frame_header len64 '\x02\xff\x00\x00\x00\x00\x00\x01\x00\x00\x01\x02\x03\x04'
seed frame_header ping '\x89\x80\x37\xfa\x21\x3d'
# Connections: the first byte is the piece size for the split run. A zero masking key
# leaves the payload readable.
seed server_connection hello '\x03\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58'
seed server_connection fragments '\x02\x01\x83\0\0\0\0Hel\x89\x81\0\0\0\0p\x80\x82\0\0\0\0lo\x88\x82\0\0\0\0\x03\xe8'
seed server_connection utf8 '\x05\x81\x88\0\0\0\0\xce\xba\xe2\x82\xac\xf0\x9d\x84'
seed client_connection hello '\x01\x81\x05Hello'
seed client_connection fragments '\x04\x02\x02ab\x8a\x00\x80\x01c\x88\x05\x0f\xa0bye'
seed client_connection big '\x07\x82\x7e\x00\x80AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
seed handshake_request rfc 'GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n'
seed handshake_response rfc 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n'

# tidewire.v1 requests (docs/protocol.md), and a few steps of the node's model (three bytes
# per step: client, channel, action).
seed hub_request subscribe '{"id":1,"op":"subscribe","channel":"chat:a","since":{"offset":3,"epoch":"00ff"}}'
seed hub_request publish '{"id":"x","op":"publish","channel":"news","data":{"text":"hi","n":[1,2.5e3,null]}}'
seed hub_request connect '{"id":12345678901234567890123,"op":"connect","token":"t","info":{"name":"Ann"}}'
seed hub_request history '{"op":"history","channel":"news","limit":10,"id":[1]}'
# HTTP/3 (first byte even: a request head; odd: a control stream): an extended CONNECT in
# QPACK (static :method CONNECT, :scheme https, :authority and :path by name reference,
# :protocol literal), and SETTINGS with ENABLE_CONNECT_PROTOCOL.
seed http3_head connect '\x00\x00\x00\xcf\xd7\x50\x09localhost\x51\x03/ws\x27\x02:protocol\x09websocket'
seed http3_head settings '\x01\x04\x06\x01\x00\x07\x00\x08\x01'
seed hub_node steps '\x00\x00\x00\x01\x01\x05\x00\x00\x07\x02\x02\x00\x03\x03\x04\x00\x01\x09\x01\x00\x08'

cargo fuzz build "${build_args[@]}"

failed=()
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    if ! cargo fuzz run "${build_args[@]}" "$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing passed: ${targets[*]} (${seconds}s each)"
