//! RFC 6455 §5.2, base framing protocol: the header as the connection sees it. Reserved
//! bits and opcodes, the three length encodings, and partial headers.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Message, ProtocolError};
use tidewire_test::{
    assert_failed, client, client_frame, receive_all, receive_chunked, server, server_frame,
    LengthEncoding, RawFrame, TEST_MASK,
};

/// §5.2: "RSV1, RSV2, RSV3: 1 bit each. MUST be 0 unless an extension is negotiated".
#[test]
fn each_reserved_bit_fails_with_1002_on_both_sides() {
    for rsv in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let masked = RawFrame::new(Opcode::Text as u8, "hi")
            .rsv(rsv.0, rsv.1, rsv.2)
            .mask(Some(TEST_MASK))
            .encode();
        let mut s = server(Config::default());
        let r = receive_all(&mut s, &masked);
        assert!(r.messages.is_empty());
        assert_failed(&mut s, &r, ProtocolError::ReservedBitsSet);

        let unmasked = RawFrame::new(Opcode::Ping as u8, "")
            .rsv(rsv.0, rsv.1, rsv.2)
            .encode();
        let mut c = client(Config::default());
        let r = receive_all(&mut c, &unmasked);
        assert_failed(&mut c, &r, ProtocolError::ReservedBitsSet);
    }
}

#[test]
fn reserved_bits_fail_from_the_header_alone() {
    let bytes = RawFrame::new(Opcode::Binary as u8, vec![0u8; 1000])
        .rsv(true, false, false)
        .mask(Some(TEST_MASK))
        .encode();
    let mut s = server(Config::default());
    // Header: 2 bytes + 2 bytes of length + 4 bytes of mask; no payload yet.
    let r = receive_all(&mut s, &bytes[..8]);
    assert_failed(&mut s, &r, ProtocolError::ReservedBitsSet);
}

/// §5.2: "%x3-7 are reserved for further non-control frames", "%xB-F are reserved for
/// further control frames".
#[test]
fn reserved_opcodes_fail_with_1002_on_both_sides() {
    for op in [0x3, 0x4, 0x5, 0x6, 0x7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        let mut s = server(Config::default());
        let bytes = RawFrame::new(op, "x").mask(Some(TEST_MASK)).encode();
        let r = receive_all(&mut s, &bytes);
        assert_failed(&mut s, &r, ProtocolError::ReservedOpcode);

        let mut c = client(Config::default());
        let r = receive_all(&mut c, &RawFrame::new(op, "").encode());
        assert_failed(&mut c, &r, ProtocolError::ReservedOpcode);
    }
}

#[test]
fn reserved_opcode_after_a_valid_message_keeps_the_message() {
    let mut bytes = client_frame(Opcode::Text, true, b"first");
    bytes.extend(RawFrame::new(0x5, "").mask(Some(TEST_MASK)).encode());
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes);
    assert_eq!(r.messages, vec![Message::text("first")]);
    assert_failed(&mut s, &r, ProtocolError::ReservedOpcode);
}

/// §5.2: "in all cases, the minimal number of bytes MUST be used to encode the length".
#[test]
fn non_minimal_lengths_fail_with_1002() {
    let cases = [
        (5usize, LengthEncoding::Extended16),
        (125, LengthEncoding::Extended16),
        (5, LengthEncoding::Extended64),
        (126, LengthEncoding::Extended64),
        (0xffff, LengthEncoding::Extended64),
    ];
    for (len, encoding) in cases {
        let bytes = RawFrame::new(Opcode::Binary as u8, vec![7u8; len])
            .length(encoding)
            .encode();
        let mut c = client(Config::default());
        let r = receive_all(&mut c, &bytes);
        assert_failed(&mut c, &r, ProtocolError::NonMinimalLength);
    }
}

/// §5.2: "the most significant bit MUST be 0" in the 64-bit length.
#[test]
fn sixty_four_bit_length_with_top_bit_set_fails() {
    let bytes = RawFrame::new(Opcode::Binary as u8, "")
        .declared_len(1 << 63)
        .encode();
    let mut c = client(Config::default());
    let r = receive_all(&mut c, &bytes);
    assert_failed(&mut c, &r, ProtocolError::NonMinimalLength);
}

#[test]
fn every_length_encoding_is_accepted() {
    for len in [0usize, 1, 125, 126, 127, 0xffff, 0x10000, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut s = server(Config::default());
        let r = receive_all(&mut s, &client_frame(Opcode::Binary, true, &payload));
        assert_eq!(r.error, None, "len {len}");
        assert_eq!(r.messages, vec![Message::binary(payload.clone())]);

        let mut c = client(Config::default());
        let r = receive_all(&mut c, &server_frame(Opcode::Binary, true, &payload));
        assert_eq!(r.messages, vec![Message::binary(payload)]);
    }
}

/// Partial input is not an error: a frame fed one byte at a time gives the same message,
/// and nothing before its last byte.
#[test]
fn frames_fed_byte_by_byte() {
    for len in [0usize, 3, 125, 126, 300] {
        let payload = vec![b'a'; len];
        let bytes = client_frame(Opcode::Text, true, &payload);
        let mut s = server(Config::default());
        let prefix = receive_chunked(&mut s, &bytes[..bytes.len() - 1], &[1]);
        assert_eq!(prefix, Default::default(), "len {len}");
        let mut s = server(Config::default());
        let r = receive_chunked(&mut s, &bytes, &[1]);
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].as_payload(), &payload[..]);
        assert_eq!(s.pending_transmit(), 0);
    }
}

#[test]
fn several_frames_in_one_read() {
    let mut bytes = Vec::new();
    for word in ["one", "two", "three"] {
        bytes.extend(client_frame(Opcode::Text, true, word.as_bytes()));
    }
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes);
    assert_eq!(
        r.messages,
        vec![
            Message::text("one"),
            Message::text("two"),
            Message::text("three")
        ]
    );
}
