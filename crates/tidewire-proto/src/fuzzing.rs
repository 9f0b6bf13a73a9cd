//! Entry points for the cargo-fuzz targets (`fuzz/`). Each target is one line calling a
//! function here, so the harness is type-checked with the crate.

use crate::{Config, Connection, FrameHeader, Message};
use bytes::BytesMut;

/// Frame header parsing: never panics; a parsed header re-encodes to the same bytes.
pub fn frame_header(data: &[u8]) {
    if let Ok(Some((h, len))) = FrameHeader::parse(data) {
        let mut buf = [0u8; crate::frame::MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        assert_eq!(&buf[..n], &data[..len]);
    }
}

/// The server-side connection fed arbitrary bytes, in arbitrary pieces: never panics, and
/// the messages it yields do not depend on how the input was split.
pub fn server_connection(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len().max(1);
    let input = &data[1..];
    let whole = run(input, input.len().max(1));
    let pieces = run(input, split.max(1));
    assert_eq!(whole, pieces);
}

fn run(input: &[u8], step: usize) -> (Vec<Message>, Option<crate::ProtocolError>) {
    let config = Config::default().limits(crate::Limits::default().max_message_size(1 << 16));
    let mut conn = Connection::server(config);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(step) {
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
}
