//! RFC 6455 §8.1, handling errors in UTF-8-encoded data: text must be valid UTF-8 across
//! the whole message; the connection fails (1007) at the first invalid byte, even in a
//! frame that has only partly arrived.

use bytes::BytesMut;
use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Connection, Message, ProtocolError};
use tidewire_test::{
    assert_failed, client, client_frame, receive_all, receive_chunked, receive_into, server,
    server_frame, Received,
};

/// Feeds `bytes` and checks that no message or error comes from the first `good` bytes and
/// that the very next byte fails the connection with 1007.
#[track_caller]
fn fails_exactly_at(conn: &mut Connection, bytes: &[u8], good: usize) {
    let mut buf = BytesMut::new();
    let mut r = Received::default();
    receive_into(conn, &mut buf, &bytes[..good], &mut r);
    assert_eq!(r.error, None, "failed before byte {good}");
    assert!(!r.messages.iter().any(Message::is_data));
    receive_into(conn, &mut buf, &bytes[good..good + 1], &mut r);
    assert_failed(conn, &r, ProtocolError::InvalidUtf8);
}

#[test]
fn valid_multibyte_text_in_one_frame() {
    let text = "κόσμε €𝄞 ascii";
    let mut s = server(Config::default());
    let r = receive_chunked(
        &mut s,
        &client_frame(Opcode::Text, true, text.as_bytes()),
        &[1],
    );
    assert_eq!(r.messages, vec![Message::text(text)]);
}

/// §8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
/// stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket
/// Connection_." We do it at the first bad byte, long before the frame is complete.
#[test]
fn invalid_byte_fails_fast_in_a_partial_frame() {
    let mut payload = b"hello ".to_vec();
    let bad = payload.len();
    payload.push(0xff);
    payload.extend(std::iter::repeat_n(b'a', 1000));

    let bytes = client_frame(Opcode::Text, true, &payload);
    let header = bytes.len() - payload.len();
    fails_exactly_at(&mut server(Config::default()), &bytes, header + bad);

    let bytes = server_frame(Opcode::Text, false, &payload);
    let header = bytes.len() - payload.len();
    fails_exactly_at(&mut client(Config::default()), &bytes, header + bad);
}

#[test]
fn invalid_sequence_fails_at_the_byte_that_breaks_it() {
    // Each: (valid prefix, the byte that makes it invalid).
    let cases: [(&[u8], u8); 5] = [
        (b"ok", 0x80),         // lone continuation byte
        (&[0xe2, 0x82], 0x41), // three-byte sequence cut short by ASCII
        (&[0xed], 0xa0),       // surrogate U+D800
        (&[0xf4], 0x90),       // above U+10FFFF
        (&[0xe0], 0x80),       // overlong
    ];
    for (prefix, bad) in cases {
        let mut payload = prefix.to_vec();
        payload.push(bad);
        payload.extend_from_slice(&[b'z'; 50]);
        let bytes = client_frame(Opcode::Text, true, &payload);
        let header = bytes.len() - payload.len();
        fails_exactly_at(
            &mut server(Config::default()),
            &bytes,
            header + prefix.len(),
        );
    }
}

#[test]
fn invalid_byte_in_a_continuation_fails_before_the_message_ends() {
    let first = client_frame(Opcode::Text, false, "déjà".as_bytes());
    let cont_payload = [b'x', b'y', 0xc0, 0xaf, b'z', b'z'];
    let cont = client_frame(Opcode::Continuation, false, &cont_payload);
    let bytes = [first.clone(), cont.clone()].concat();
    let header = cont.len() - cont_payload.len();
    fails_exactly_at(
        &mut server(Config::default()),
        &bytes,
        first.len() + header + 2,
    );
}

/// §5.6: "the whole message ... contains valid UTF-8"; a fragment boundary may fall inside
/// a code point.
#[test]
fn code_points_split_across_fragments_are_valid() {
    let text = "a€𝄞";
    let b = text.as_bytes(); // 61 | e2 82 ac | f0 9d 84 9e
    let bytes = [
        client_frame(Opcode::Text, false, &b[..2]),
        client_frame(Opcode::Continuation, false, &b[2..5]),
        client_frame(Opcode::Ping, true, b""),
        client_frame(Opcode::Continuation, false, &b[5..6]),
        client_frame(Opcode::Continuation, false, &[]),
        client_frame(Opcode::Continuation, true, &b[6..]),
    ]
    .concat();
    for step in [1, 3, bytes.len()] {
        let mut s = server(Config::default());
        let r = receive_chunked(&mut s, &bytes, &[step]);
        assert_eq!(r.error, None, "step {step}");
        assert_eq!(
            r.messages,
            vec![Message::Ping("".into()), Message::text(text)],
            "step {step}"
        );
    }
}

#[test]
fn invalid_sequence_split_across_fragments_fails_at_the_second() {
    let first = server_frame(Opcode::Text, false, &[b'a', 0xf0]);
    let second = server_frame(Opcode::Continuation, true, &[0x28, 0x8c, 0xbc]);
    let bytes = [first.clone(), second].concat();
    // The second frame's header is 2 bytes; its first payload byte is the bad one.
    fails_exactly_at(&mut client(Config::default()), &bytes, first.len() + 2);
}

#[test]
fn message_ending_inside_a_code_point_fails() {
    let mut s = server(Config::default());
    let r = receive_all(
        &mut s,
        &client_frame(Opcode::Text, true, &[b'a', 0xe2, 0x82]),
    );
    assert!(r.messages.is_empty());
    assert_failed(&mut s, &r, ProtocolError::InvalidUtf8);

    // Same with the message's last fragment empty.
    let bytes = [
        client_frame(Opcode::Text, false, &[0xe2, 0x82]),
        client_frame(Opcode::Continuation, true, &[]),
    ]
    .concat();
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes);
    assert_failed(&mut s, &r, ProtocolError::InvalidUtf8);
}

#[test]
fn binary_messages_are_not_checked() {
    let payload = [0xff, 0xfe, 0xc0, 0x80];
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &client_frame(Opcode::Binary, true, &payload));
    assert_eq!(r.messages, vec![Message::binary(payload.to_vec())]);
}

#[test]
fn state_resets_between_messages() {
    // A valid message followed by one that starts with a continuation byte.
    let bytes = [
        client_frame(Opcode::Text, true, "€".as_bytes()),
        client_frame(Opcode::Text, true, &[0x82]),
    ]
    .concat();
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes);
    assert_eq!(r.messages, vec![Message::text("€")]);
    assert_failed(&mut s, &r, ProtocolError::InvalidUtf8);
}
