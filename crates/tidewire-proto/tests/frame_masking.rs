//! RFC 6455 §5.1 and §5.3: a client masks every frame it sends, a server never masks, and
//! each side fails the connection (1002) on a frame masked the wrong way.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Message, ProtocolError};
use tidewire_test::{
    assert_failed, client, frame, receive_all, sent_frames, server, Pair, TEST_MASK,
};

/// §5.1: "a server MUST close the connection upon receiving a frame that is not masked
/// ... with a status code of 1002".
#[test]
fn server_rejects_unmasked_frames() {
    for op in [
        Opcode::Text,
        Opcode::Binary,
        Opcode::Ping,
        Opcode::Pong,
        Opcode::Close,
    ] {
        let mut s = server(Config::default());
        let r = receive_all(&mut s, &frame(op, true, b"", None));
        assert!(r.messages.is_empty(), "{op:?}");
        assert_failed(&mut s, &r, ProtocolError::UnmaskedFrame);
    }
}

/// §5.1: "A client MUST close a connection if it detects a masked frame ... 1002".
#[test]
fn client_rejects_masked_frames() {
    for op in [
        Opcode::Text,
        Opcode::Binary,
        Opcode::Ping,
        Opcode::Pong,
        Opcode::Close,
    ] {
        let mut c = client(Config::default());
        let r = receive_all(&mut c, &frame(op, true, b"", Some(TEST_MASK)));
        assert!(r.messages.is_empty(), "{op:?}");
        assert_failed(&mut c, &r, ProtocolError::MaskedFrame);
    }
}

#[test]
fn unmasked_frame_fails_before_its_payload_arrives() {
    let bytes = frame(Opcode::Binary, true, &[0u8; 200], None);
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes[..4]);
    assert_failed(&mut s, &r, ProtocolError::UnmaskedFrame);
}

/// §5.7: "A single-frame masked text message: 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d
/// 0x51 0x58 (contains "Hello")".
#[test]
fn rfc_masked_hello() {
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut s = server(Config::default());
    assert_eq!(
        receive_all(&mut s, &bytes).messages,
        vec![Message::text("Hello")]
    );
}

/// §5.7: "A single-frame unmasked text message: 0x81 0x05 0x48 0x65 0x6c 0x6c 0x6f".
#[test]
fn rfc_unmasked_hello() {
    let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let mut c = client(Config::default());
    assert_eq!(
        receive_all(&mut c, &bytes).messages,
        vec![Message::text("Hello")]
    );
}

/// §5.3: the client masks every frame with a fresh key; the server masks none.
#[test]
fn output_is_masked_by_role() {
    let mut pair = Pair::default();
    pair.client.send_text("a").unwrap();
    pair.client.send_binary(vec![1u8; 20_000]).unwrap();
    pair.client.send_ping("p").unwrap();
    pair.client.send_pong("q").unwrap();
    pair.client.close(None).unwrap();
    let frames = sent_frames(&mut pair.client);
    assert_eq!(frames.len(), 5);
    let keys: Vec<_> = frames
        .iter()
        .map(|f| f.header.mask.expect("masked"))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        assert!(!keys[..i].contains(k), "key reused: {keys:?}");
    }
    assert_eq!(frames[1].payload, vec![1u8; 20_000]);

    pair.server.send_text("a").unwrap();
    pair.server.send_binary(vec![2u8; 20_000]).unwrap();
    pair.server.send_ping("p").unwrap();
    pair.server.close(None).unwrap();
    let frames = sent_frames(&mut pair.server);
    assert_eq!(frames.len(), 4);
    assert!(frames.iter().all(|f| f.header.mask.is_none()));
    assert_eq!(frames[1].payload, vec![2u8; 20_000]);
}

#[test]
fn masked_payload_split_at_every_byte_unmasks_correctly() {
    let payload: Vec<u8> = (0..=255u8).collect();
    let bytes = frame(Opcode::Binary, true, &payload, Some([9, 8, 7, 6]));
    for step in 1..=9 {
        let mut s = server(Config::default());
        let r = tidewire_test::receive_chunked(&mut s, &bytes, &[step]);
        assert_eq!(
            r.messages,
            vec![Message::binary(payload.clone())],
            "step {step}"
        );
    }
}
