//! RFC 6455 §5.4, fragmentation: reassembly, control frames between fragments, and the
//! two ways a peer can get the order wrong (1002). Also the sending side's fragmenting.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Message, ProtocolError, UsageError};
use tidewire_test::{
    assert_failed, client, client_frame, receive_all, receive_chunked, sent_frames, server,
    server_frame, Pair,
};

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// §5.4: "a single fragmented message consisting of ... a frame with the FIN bit clear and
/// an opcode other than 0, followed by zero or more frames with the FIN bit clear and the
/// opcode set to 0, and terminated by a single frame with the FIN bit set and an opcode of 0".
#[test]
fn fragments_reassemble_into_one_message() {
    let bytes = concat(&[
        client_frame(Opcode::Text, false, b"Hel"),
        client_frame(Opcode::Continuation, false, b""),
        client_frame(Opcode::Continuation, false, b"lo, "),
        client_frame(Opcode::Continuation, true, b"world"),
    ]);
    for step in [1, 2, 5, 7, bytes.len()] {
        let mut s = server(Config::default());
        let r = receive_chunked(&mut s, &bytes, &[step]);
        assert_eq!(r.error, None);
        assert_eq!(
            r.messages,
            vec![Message::text("Hello, world")],
            "step {step}"
        );
    }

    let bytes = concat(&[
        server_frame(Opcode::Binary, false, &[1, 2]),
        server_frame(Opcode::Continuation, true, &[3]),
    ]);
    let mut c = client(Config::default());
    assert_eq!(
        receive_all(&mut c, &bytes).messages,
        vec![Message::binary(vec![1u8, 2, 3])]
    );
}

/// §5.4: "Control frames MAY be injected in the middle of a fragmented message." The ping
/// is delivered (and answered) at once; the message when its last fragment arrives.
#[test]
fn ping_between_fragments_is_delivered_and_answered_first() {
    let bytes = concat(&[
        client_frame(Opcode::Text, false, b"frag"),
        client_frame(Opcode::Ping, true, b"are you there"),
        client_frame(Opcode::Continuation, false, b"ment"),
        client_frame(Opcode::Pong, true, b""),
        client_frame(Opcode::Continuation, true, b"ed"),
    ]);
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes);
    assert_eq!(
        r.messages,
        vec![
            Message::Ping("are you there".into()),
            Message::Pong("".into()),
            Message::text("fragmented"),
        ]
    );
    let out = sent_frames(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header.opcode, Opcode::Pong);
    assert_eq!(out[0].payload, b"are you there");
}

/// §5.4: a continuation frame with no message open is a protocol error.
#[test]
fn continuation_without_a_start_fails() {
    for fin in [true, false] {
        let mut s = server(Config::default());
        let r = receive_all(&mut s, &client_frame(Opcode::Continuation, fin, b"x"));
        assert_failed(&mut s, &r, ProtocolError::UnexpectedContinuation);
    }
    // Also right after a finished fragmented message.
    let bytes = concat(&[
        server_frame(Opcode::Binary, false, b"a"),
        server_frame(Opcode::Continuation, true, b"b"),
        server_frame(Opcode::Continuation, true, b"c"),
    ]);
    let mut c = client(Config::default());
    let r = receive_all(&mut c, &bytes);
    assert_eq!(r.messages, vec![Message::binary(b"ab".to_vec())]);
    assert_failed(&mut c, &r, ProtocolError::UnexpectedContinuation);
}

/// §5.4: "The fragments of one message MUST NOT be interleaved between the fragments of
/// another message".
#[test]
fn new_message_during_fragmentation_fails() {
    for (first, second) in [
        (Opcode::Text, Opcode::Text),
        (Opcode::Text, Opcode::Binary),
        (Opcode::Binary, Opcode::Text),
        (Opcode::Binary, Opcode::Binary),
    ] {
        for fin in [true, false] {
            let bytes = concat(&[
                client_frame(first, false, b"a"),
                client_frame(second, fin, b"b"),
            ]);
            let mut s = server(Config::default());
            let r = receive_all(&mut s, &bytes);
            assert!(r.messages.is_empty());
            assert_failed(&mut s, &r, ProtocolError::ExpectedContinuation);
        }
    }
}

#[test]
fn outgoing_messages_are_fragmented_and_reassembled() {
    let config = Config::default().max_outgoing_frame_size(3);
    let mut pair = Pair::new(config, config);
    pair.client.send_text("abcdefgh").unwrap();
    pair.client.send_binary(vec![1u8, 2, 3]).unwrap();
    let bytes = tidewire_test::drain(&mut pair.client);
    let frames = tidewire_test::decode_frames(&bytes);
    let shape: Vec<_> = frames
        .iter()
        .map(|f| (f.header.opcode, f.header.fin, f.payload.len()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (Opcode::Text, false, 3),
            (Opcode::Continuation, false, 3),
            (Opcode::Continuation, true, 2),
            (Opcode::Binary, true, 3),
        ]
    );
    let mut s = server(Config::default());
    assert_eq!(
        receive_all(&mut s, &bytes).messages,
        vec![Message::text("abcdefgh"), Message::binary(vec![1u8, 2, 3])]
    );
}

#[test]
fn streamed_fragments_with_a_ping_between() {
    let mut pair = Pair::default();
    pair.server
        .send_fragment(Opcode::Text, "str", false)
        .unwrap();
    pair.server.send_ping("hb").unwrap();
    pair.server
        .send_fragment(Opcode::Continuation, "eam", true)
        .unwrap();
    let r = pair.pump_to_client();
    assert_eq!(
        r.messages,
        vec![Message::Ping("hb".into()), Message::text("stream")]
    );
    assert_eq!(
        pair.pump_to_server().messages,
        vec![Message::Pong("hb".into())]
    );
}

#[test]
fn sending_fragments_out_of_order_is_a_usage_error() {
    let mut c = client(Config::default());
    assert_eq!(
        c.send_fragment(Opcode::Continuation, "x", true),
        Err(UsageError::InvalidFragment)
    );
    assert_eq!(
        c.send_fragment(Opcode::Ping, "x", true),
        Err(UsageError::InvalidFragment)
    );
    c.send_fragment(Opcode::Binary, "a", false).unwrap();
    assert_eq!(c.send_text("b"), Err(UsageError::InvalidFragment));
    assert_eq!(
        c.send_fragment(Opcode::Text, "b", true),
        Err(UsageError::InvalidFragment)
    );
    c.send_fragment(Opcode::Continuation, "c", true).unwrap();
    c.send_text("d").unwrap();
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &tidewire_test::drain(&mut c));
    assert_eq!(
        r.messages,
        vec![Message::binary(b"ac".to_vec()), Message::text("d")]
    );
}
