//! Entry points for the cargo-fuzz targets (`fuzz/`). Each target is one line calling a
//! function here, so the harness is type-checked with the crate.

use crate::connection::MaskSource;
use crate::{Config, Connection, FrameHeader, Message, Opcode, ProtocolError, Role};
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
