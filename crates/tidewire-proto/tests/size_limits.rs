//! Limits on what a peer can make us hold (`Limits`): frame and message size, failing with
//! 1009 (§7.4.1: "a message that is too big for it to process") from the frame header
//! alone, before any of the payload is buffered.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{Config, Limits, Message, ProtocolError};
use tidewire_test::{
    assert_failed, client, client_frame, receive_all, server, server_frame, RawFrame, TEST_MASK,
};

fn limited(frame: usize, message: usize) -> Config {
    Config::default().limits(
        Limits::default()
            .max_frame_size(frame)
            .max_message_size(message),
    )
}

/// Only the header of a frame that promises `len` bytes.
fn header_only(opcode: Opcode, fin: bool, len: u64) -> Vec<u8> {
    RawFrame::new(opcode as u8, "")
        .fin(fin)
        .mask(Some(TEST_MASK))
        .declared_len(len)
        .encode()
}

#[test]
fn frame_over_the_limit_fails_from_its_header() {
    let mut s = server(limited(100, 1000));
    let r = receive_all(&mut s, &header_only(Opcode::Binary, true, 101));
    assert_failed(&mut s, &r, ProtocolError::FrameTooLarge);
}

#[test]
fn frame_at_the_limit_is_accepted() {
    let mut s = server(limited(100, 1000));
    let r = receive_all(&mut s, &client_frame(Opcode::Binary, true, &[1; 100]));
    assert_eq!(r.messages, vec![Message::binary(vec![1u8; 100])]);
}

#[test]
fn huge_declared_length_fails_with_default_limits() {
    for len in [(16 << 20) + 1, 1u64 << 40, (1 << 63) - 1] {
        let mut s = server(Config::default());
        let r = receive_all(&mut s, &header_only(Opcode::Text, true, len));
        assert_failed(&mut s, &r, ProtocolError::FrameTooLarge);
    }
}

#[test]
fn message_over_the_limit_in_one_frame_fails_from_its_header() {
    let mut c = client(limited(1000, 100));
    let bytes = RawFrame::new(Opcode::Text as u8, "")
        .declared_len(101)
        .encode();
    let r = receive_all(&mut c, &bytes);
    assert_failed(&mut c, &r, ProtocolError::MessageTooLarge);
}

#[test]
fn fragmented_message_over_the_limit_fails_at_the_fragment_header_that_exceeds_it() {
    let mut s = server(limited(1000, 100));
    let mut bytes = client_frame(Opcode::Binary, false, &[0; 60]);
    bytes.extend(client_frame(Opcode::Continuation, false, &[0; 40]));
    // 100 bytes so far: at the limit, accepted. One more byte is announced next.
    bytes.extend(header_only(Opcode::Continuation, true, 1));
    let r = receive_all(&mut s, &bytes);
    assert!(r.messages.is_empty());
    assert_failed(&mut s, &r, ProtocolError::MessageTooLarge);
}

#[test]
fn fragmented_message_at_the_limit_is_accepted() {
    let mut c = client(limited(1000, 100));
    let bytes = [
        server_frame(Opcode::Text, false, &[b'a'; 60]),
        server_frame(Opcode::Ping, true, b""),
        server_frame(Opcode::Continuation, true, &[b'b'; 40]),
    ]
    .concat();
    let r = receive_all(&mut c, &bytes);
    assert_eq!(r.error, None);
    assert_eq!(r.messages.len(), 2);
    assert_eq!(r.messages[1].len(), 100);
}

/// Control frames are bounded by §5.5 (125 bytes), not by the message limit.
#[test]
fn control_frames_do_not_count_toward_the_message_size() {
    let mut s = server(limited(1000, 10));
    let bytes = [
        client_frame(Opcode::Binary, false, &[0; 10]),
        client_frame(Opcode::Ping, true, &[0; 100]),
        client_frame(Opcode::Continuation, true, &[]),
    ]
    .concat();
    let r = receive_all(&mut s, &bytes);
    assert_eq!(r.error, None);
    assert_eq!(r.messages.len(), 2);
}

#[test]
fn limit_errors_map_to_1009() {
    assert_eq!(ProtocolError::FrameTooLarge.close_code().0, 1009);
    assert_eq!(ProtocolError::MessageTooLarge.close_code().0, 1009);
}
