//! The output queue (bytes out): coalesced small frames, large payloads queued by
//! reference, and the two ways to drain them agreeing with each other under partial
//! writes.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Connection, Message};
use tidewire_test::{decode_frames, drain, receive_all, server};

fn queue_mixed(conn: &mut Connection) {
    conn.send_text("small").unwrap();
    conn.send_binary(vec![0xab; 40_000]).unwrap();
    conn.send_ping("p").unwrap();
    conn.send_binary(vec![0xcd; 20_000]).unwrap();
    conn.send_text("tail").unwrap();
}

/// Drains through `transmit_chunk`, writing at most `step` bytes at a time.
fn drain_by_chunks(conn: &mut Connection, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.pending_transmit() > 0 {
        let chunk = conn.transmit_chunk();
        let n = chunk.len().min(step);
        assert!(n > 0);
        out.extend_from_slice(&chunk[..n]);
        conn.advance_transmit(n);
    }
    out
}

#[test]
fn vectored_and_chunked_draining_agree_under_partial_writes() {
    let mut whole = server(Config::default());
    queue_mixed(&mut whole);
    let expected = drain(&mut whole);
    assert_eq!(whole.pending_transmit(), 0);
    for step in [1, 7, 1000, 16_384, 100_000] {
        let mut s = server(Config::default());
        queue_mixed(&mut s);
        assert_eq!(s.pending_transmit(), expected.len());
        assert_eq!(drain_by_chunks(&mut s, step), expected, "step {step}");
    }
    let frames = decode_frames(&expected);
    let ops: Vec<_> = frames.iter().map(|f| f.header.opcode).collect();
    assert_eq!(
        ops,
        [
            Opcode::Text,
            Opcode::Binary,
            Opcode::Ping,
            Opcode::Binary,
            Opcode::Text
        ]
    );
}

#[test]
fn frames_queued_during_a_partial_write_keep_their_order() {
    let mut s = server(Config::default());
    s.send_binary(vec![1u8; 30_000]).unwrap();
    let mut out = drain_by_chunks_partial(&mut s, 10);
    s.send_text("after").unwrap();
    s.send_binary(vec![2u8; 30_000]).unwrap();
    out.extend(drain(&mut s));
    let mut c = tidewire_test::client(Config::default());
    let r = receive_all(&mut c, &out);
    assert_eq!(
        r.messages,
        vec![
            Message::binary(vec![1u8; 30_000]),
            Message::text("after"),
            Message::binary(vec![2u8; 30_000]),
        ]
    );
}

/// Writes only the first `n` queued bytes, one contiguous chunk at a time.
fn drain_by_chunks_partial(conn: &mut Connection, mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n > 0 {
        let chunk = conn.transmit_chunk();
        let k = chunk.len().min(n);
        out.extend_from_slice(&chunk[..k]);
        conn.advance_transmit(k);
        n -= k;
    }
    out
}
