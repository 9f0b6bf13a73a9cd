//! RFC 6455 §5.5.1 and §7.4, the close frame's body: which status codes may appear on the
//! wire, the one-byte body, and the UTF-8 reason.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{CloseCode, CloseFrame, Config, Message, ProtocolError, State, UsageError};
use tidewire_test::{
    assert_failed, client, client_frame, close_payload, receive_all, sent_frames, server,
    server_frame,
};

/// §7.4.1 and the IANA registry (1012–1014), plus §7.4.2's 3000–4999 for libraries and
/// applications.
const VALID: [u16; 16] = [
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999,
];

/// §7.4.1: 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control frame";
/// 0–999 are unused, 1004 reserved, 1016–2999 reserved for the protocol, 5000+ undefined.
const INVALID: [u16; 11] = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000];

#[test]
fn valid_codes_are_received_and_echoed() {
    for code in VALID {
        let mut s = server(Config::default());
        let r = receive_all(
            &mut s,
            &client_frame(Opcode::Close, true, &close_payload(code, b"why")),
        );
        assert_eq!(
            r.messages,
            vec![Message::Close(Some(CloseFrame::new(
                CloseCode(code),
                "why"
            )))]
        );
        assert_eq!(s.error(), None);
        assert_eq!(s.state(), State::Closed);
        let out = sent_frames(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header.opcode, Opcode::Close);
        assert_eq!(out[0].close_code(), Some(CloseCode(code)), "echo of {code}");
    }
}

#[test]
fn invalid_codes_fail_with_1002() {
    for code in INVALID.iter().copied().chain([1, 65535]) {
        let mut c = client(Config::default());
        let r = receive_all(
            &mut c,
            &server_frame(Opcode::Close, true, &close_payload(code, b"")),
        );
        assert!(r.messages.is_empty(), "code {code}");
        assert_failed(&mut c, &r, ProtocolError::InvalidCloseCode);
    }
}

/// §5.5.1: "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned
/// integer".
#[test]
fn one_byte_body_fails_with_1002() {
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &client_frame(Opcode::Close, true, &[0x03]));
    assert_failed(&mut s, &r, ProtocolError::CloseFrameTooShort);
}

/// §5.5.1: "the body MAY contain UTF-8-encoded data"; invalid UTF-8 there is §8.1's 1007.
#[test]
fn invalid_utf8_reason_fails_with_1007() {
    for reason in [&[0xff][..], &[b'o', b'k', 0xe2, 0x82], &[0xed, 0xa0, 0x80]] {
        let mut s = server(Config::default());
        let r = receive_all(
            &mut s,
            &client_frame(Opcode::Close, true, &close_payload(1000, reason)),
        );
        assert_failed(&mut s, &r, ProtocolError::InvalidCloseReason);
    }
}

#[test]
fn empty_body_is_a_close_without_status_and_the_reply_is_empty() {
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &client_frame(Opcode::Close, true, b""));
    assert_eq!(r.messages, vec![Message::Close(None)]);
    assert_eq!(s.close_received(), Some(&None));
    let out = sent_frames(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header.opcode, Opcode::Close);
    assert!(out[0].payload.is_empty());
}

#[test]
fn the_application_may_send_only_valid_codes() {
    for code in INVALID {
        let mut c = client(Config::default());
        assert_eq!(
            c.close(Some(CloseFrame::new(CloseCode(code), ""))),
            Err(UsageError::InvalidCloseCode),
            "code {code}"
        );
        assert_eq!(c.pending_transmit(), 0);
        assert_eq!(c.state(), State::Open);
    }
    for code in VALID {
        let mut c = client(Config::default());
        c.close(Some(CloseFrame::new(CloseCode(code), ""))).unwrap();
        assert_eq!(sent_frames(&mut c)[0].close_code(), Some(CloseCode(code)));
    }
}

#[test]
fn close_reason_is_at_most_123_bytes() {
    let mut c = client(Config::default());
    let long = CloseFrame {
        code: CloseCode::NORMAL,
        reason: "r".repeat(124),
    };
    assert_eq!(c.close(Some(long)), Err(UsageError::ControlPayloadTooLong));
    // `CloseFrame::new` trims to fit, at a character boundary.
    let trimmed = CloseFrame::new(CloseCode::NORMAL, "é".repeat(70));
    assert_eq!(trimmed.reason.len(), 122);
    c.close(Some(trimmed.clone())).unwrap();
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &tidewire_test::drain(&mut c));
    assert_eq!(r.messages, vec![Message::Close(Some(trimmed))]);
}
