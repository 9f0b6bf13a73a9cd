//! Entry points for the cargo-fuzz targets (`fuzz/`). Each target is one line calling a
//! function here, so the harness is type-checked with the crate.

use crate::connection::MaskSource;
use crate::handshake::{
    format_extensions, parse_extensions, parse_request, parse_response, write_response,
};
use crate::{Config, Connection, FrameHeader, Limits, Message, Opcode, ProtocolError, Role};
use bytes::BytesMut;

/// Frame header parsing: never panics; a parsed header re-encodes to the same bytes.
pub fn frame_header(data: &[u8]) {
    if let Ok(Some((h, len))) = FrameHeader::parse(data) {
        let mut buf = [0u8; crate::frame::MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        assert_eq!(&buf[..n], &data[..len]);
    }
}

/// The server-side connection fed arbitrary bytes, in arbitrary pieces: never panics, the
/// messages, error and output do not depend on how the input was split, and the output is
/// well-formed unmasked frames.
pub fn server_connection(data: &[u8]) {
    connection(Role::Server, data);
}

/// The server's handshake parser on arbitrary bytes: never panics; a shorter prefix of an
/// accepted head is "need more"; the extensions it parsed format and parse back the same;
/// and the 101 written for the request passes the client's checks.
pub fn handshake_request(data: &[u8]) {
    let limits = Limits::default();
    let Ok(Some((req, len))) = parse_request(data, &limits) else {
        return;
    };
    assert!(len <= data.len());
    let cut = data.first().map_or(0, |&b| b as usize % len);
    assert!(matches!(parse_request(&data[..cut], &limits), Ok(None)));

    let text = format_extensions(&req.extensions);
    assert_eq!(
        parse_extensions(std::iter::once(text.as_bytes())).as_ref(),
        Ok(&req.extensions)
    );

    let protocol = req.protocols.first().map(String::as_str);
    let mut answer = Vec::new();
    write_response(
        &req.key,
        protocol,
        Some(&text),
        &http::HeaderMap::new(),
        &mut answer,
    );
    match parse_response(&answer, &req.key, &req.protocols, &limits) {
        Ok(Some((resp, n))) => {
            assert_eq!(n, answer.len());
            assert_eq!(resp.protocol.as_deref(), protocol);
            assert_eq!(resp.extensions, req.extensions);
        }
        other => panic!("our own 101 was refused: {other:?}"),
    }
}

/// The client's handshake parser on arbitrary bytes: never panics, and a subprotocol it
/// accepts is one that was offered.
pub fn handshake_response(data: &[u8]) {
    let offered = ["chat".to_string(), "superchat".to_string()];
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    if let Ok(Some((resp, len))) = parse_response(data, key, &offered, &Limits::default()) {
        assert!(len <= data.len());
        assert!(resp.protocol.map_or(true, |p| offered.contains(&p)));
    }
}

/// As [`server_connection`], for the client side (output masked).
pub fn client_connection(data: &[u8]) {
    connection(Role::Client, data);
}

/// The first byte picks the piece size; the rest is the input.
fn connection(role: Role, data: &[u8]) {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let whole = run(role, input, input.len().max(1));
    let pieces = run(role, input, (first as usize).max(1));
    assert_eq!(whole, pieces);
    check_output(role, &whole.2, whole.1);
}

type Outcome = (Vec<Message>, Option<ProtocolError>, Vec<u8>);

fn run(role: Role, input: &[u8], step: usize) -> Outcome {
    let config = Config::default().limits(crate::Limits::default().max_message_size(1 << 16));
    let mut conn = match role {
        Role::Server => Connection::server(config),
        Role::Client => Connection::client(config, fixed_mask()),
    };
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut error = None;
    'feed: for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match conn.receive(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    let mut sent = Vec::new();
    while conn.pending_transmit() > 0 {
        let chunk = conn.transmit_chunk();
        sent.extend_from_slice(chunk);
        let n = chunk.len();
        conn.advance_transmit(n);
    }
    (out, error, sent)
}

fn fixed_mask() -> MaskSource {
    let mut n = 0u32;
    Box::new(move || {
        n = n.wrapping_add(1);
        n.to_be_bytes()
    })
}

/// Everything a connection sends is whole frames, masked by role, ending with a close
/// frame carrying the error's code if the peer broke the protocol.
fn check_output(role: Role, mut out: &[u8], error: Option<ProtocolError>) {
    let mut last = None;
    while !out.is_empty() {
        let (h, len) = match FrameHeader::parse(out) {
            Ok(Some(parsed)) => parsed,
            other => panic!("malformed output frame: {other:?}"),
        };
        assert_eq!(h.mask.is_some(), role == Role::Client);
        let end = len + h.payload_len as usize;
        assert!(out.len() >= end, "truncated output frame");
        let mut payload = out[len..end].to_vec();
        if let Some(key) = h.mask {
            crate::mask::apply_mask(&mut payload, key, 0);
        }
        last = Some((h.opcode, payload));
        out = &out[end..];
    }
    if let Some(e) = error {
        let Some((Opcode::Close, payload)) = last else {
            panic!("{e:?} without a close frame");
        };
        assert_eq!(payload[..2], e.close_code().0.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_targets_on_seeds() {
        let request = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
            Sec-WebSocket-Extensions: a; b=\"1\"; c, d\r\n\r\nrest";
        let response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Protocol: chat\r\n\r\n";
        for input in [&request[..], response] {
            for end in 0..=input.len() {
                handshake_request(&input[..end]);
                handshake_response(&input[..end]);
            }
        }
    }
}

/// The inflate path: arbitrary bytes as a compressed message, under a small limit, with
/// and without context takeover: never panics, never produces more than the limit. Then
/// a round trip: the same bytes compressed and inflated come back unchanged.
pub fn inflate(data: &[u8]) {
    use crate::deflate::{Deflate, DeflateConfig, DeflateParams};
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let params = DeflateParams {
        server_no_context_takeover: first & 1 == 1,
        client_no_context_takeover: first & 2 == 2,
        server_max_window_bits: 8 + (first >> 2 & 7),
        client_max_window_bits: 8 + (first >> 5 & 7),
    };
    let config = DeflateConfig::default().threshold(0);
    let limit = 1 << 16;
    let mut server = Deflate::new(Role::Server, params, &config);
    if let Ok(out) = server.decompress(input, limit) {
        assert!(out.len() <= limit);
    }
    let mut client = Deflate::new(Role::Client, params, &config);
    let mut server = Deflate::new(Role::Server, params, &config);
    if client.should_compress(input.len()) {
        for _ in 0..2 {
            let z = client.compress(input);
            let back = server
                .decompress(&z, input.len())
                .expect("own output inflates");
            assert_eq!(back, input);
        }
    }
}

/// A server connection with permessage-deflate negotiated, fed arbitrary bytes: never
/// panics, and splitting the input does not change the outcome.
pub fn server_connection_deflate(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let run = |step: usize| {
        let params = crate::DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: first & 1 == 1,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        let config = Config::default().limits(Limits::default().max_message_size(1 << 16));
        let mut conn =
            Connection::server(config).with_deflate(params, &crate::DeflateConfig::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match conn.receive(&mut buf) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    };
    assert_eq!(run(input.len()), run((first >> 1) as usize));
}
