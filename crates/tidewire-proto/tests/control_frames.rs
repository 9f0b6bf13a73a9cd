//! RFC 6455 §5.5, control frames: at most 125 bytes, never fragmented (1002), and pings
//! answered with pongs (§5.5.2, §5.5.3).

use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Message, ProtocolError, UsageError};
use tidewire_test::{
    assert_failed, client, client_frame, receive_all, sent_frames, server, server_frame,
    LengthEncoding, Pair, RawFrame, TEST_MASK,
};

const CONTROL: [Opcode; 3] = [Opcode::Close, Opcode::Ping, Opcode::Pong];

/// §5.5: "All control frames MUST have a payload length of 125 bytes or less".
#[test]
fn control_frame_over_125_bytes_fails() {
    for op in CONTROL {
        for len in [126usize, 200, 0x10000] {
            let encoding = if len > 0xffff {
                LengthEncoding::Extended64
            } else {
                LengthEncoding::Extended16
            };
            let bytes = RawFrame::new(op as u8, vec![0u8; len])
                .length(encoding)
                .mask(Some(TEST_MASK))
                .encode();
            let mut s = server(Config::default());
            // The first two bytes already say it: no length, mask or payload needed.
            let r = receive_all(&mut s, &bytes[..2]);
            assert_failed(&mut s, &r, ProtocolError::ControlFrameTooLong);
        }
    }
}

#[test]
fn control_frame_of_125_bytes_is_accepted() {
    let payload = [b'p'; 125];
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &client_frame(Opcode::Ping, true, &payload));
    assert_eq!(r.messages, vec![Message::Ping(payload.to_vec().into())]);
    let out = sent_frames(&mut s);
    assert_eq!(out[0].payload, payload);
}

/// §5.5: "All control frames ... MUST NOT be fragmented."
#[test]
fn fragmented_control_frame_fails() {
    for op in CONTROL {
        let mut c = client(Config::default());
        let r = receive_all(&mut c, &server_frame(op, false, b""));
        assert_failed(&mut c, &r, ProtocolError::FragmentedControlFrame);
    }
}

/// §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in response"
/// and §5.5.3: "A Pong frame sent in response to a Ping frame must have identical
/// Application data".
#[test]
fn auto_pong_echoes_the_payload_on_both_sides() {
    let mut pair = Pair::default();
    pair.client.send_ping("from client").unwrap();
    assert_eq!(
        pair.pump_to_server().messages,
        vec![Message::Ping("from client".into())]
    );
    assert_eq!(
        pair.pump_to_client().messages,
        vec![Message::Pong("from client".into())]
    );

    pair.server.send_ping(vec![0u8, 255, 1]).unwrap();
    assert_eq!(
        pair.pump_to_client().messages,
        vec![Message::Ping(vec![0u8, 255, 1].into())]
    );
    let pong = sent_frames(&mut pair.client);
    assert_eq!(pong.len(), 1);
    assert_eq!(pong[0].header.opcode, Opcode::Pong);
    assert!(pong[0].header.mask.is_some(), "a client's pong is masked");
    assert_eq!(pong[0].payload, [0, 255, 1]);
}

#[test]
fn each_ping_gets_its_own_pong() {
    let bytes = [
        client_frame(Opcode::Ping, true, b"1"),
        client_frame(Opcode::Ping, true, b"2"),
    ]
    .concat();
    let mut s = server(Config::default());
    receive_all(&mut s, &bytes);
    let out = sent_frames(&mut s);
    let payloads: Vec<_> = out.iter().map(|f| f.payload.clone()).collect();
    assert_eq!(payloads, vec![b"1".to_vec(), b"2".to_vec()]);
}

#[test]
fn without_auto_pong_the_application_answers() {
    let mut s = server(Config::default().auto_pong(false));
    let r = receive_all(&mut s, &client_frame(Opcode::Ping, true, b"x"));
    assert_eq!(r.messages, vec![Message::Ping("x".into())]);
    assert_eq!(s.pending_transmit(), 0);
}

/// §5.5.3: "A Pong frame MAY be sent unsolicited. ... A response to an unsolicited Pong
/// frame is not expected."
#[test]
fn pong_is_delivered_and_not_answered() {
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &client_frame(Opcode::Pong, true, b"hb"));
    assert_eq!(r.messages, vec![Message::Pong("hb".into())]);
    assert_eq!(s.pending_transmit(), 0);
}

/// Nothing may follow our close frame (§5.5.1), not even a pong.
#[test]
fn no_pong_after_our_close() {
    let mut s = server(Config::default());
    s.close(None).unwrap();
    sent_frames(&mut s);
    let r = receive_all(&mut s, &client_frame(Opcode::Ping, true, b"late"));
    assert_eq!(r.messages, vec![Message::Ping("late".into())]);
    assert_eq!(s.pending_transmit(), 0);
}

#[test]
fn sending_a_control_payload_over_125_bytes_is_a_usage_error() {
    let mut c = client(Config::default());
    assert_eq!(
        c.send_ping(vec![0u8; 126]),
        Err(UsageError::ControlPayloadTooLong)
    );
    assert_eq!(
        c.send_pong(vec![0u8; 126]),
        Err(UsageError::ControlPayloadTooLong)
    );
    assert_eq!(c.pending_transmit(), 0);
    c.send_ping(vec![0u8; 125]).unwrap();
}
