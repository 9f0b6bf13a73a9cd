//! RFC 6455 §7.1, closing the connection: the handshake started from either side, the
//! state it moves through, the echoed code, and silence after the close frame.

use tidewire_proto::frame::Opcode;
use tidewire_proto::{CloseCode, CloseFrame, Config, Message, ProtocolError, State, UsageError};
use tidewire_test::{
    client_frame, decode_frames, drain, receive_all, sent_frames, server, Pair, Received,
};

fn bye(code: u16) -> Option<CloseFrame> {
    Some(CloseFrame::new(CloseCode(code), "bye"))
}

/// §7.1.2 and §5.5.1: "If an endpoint receives a Close frame and did not previously send a
/// Close frame, the endpoint MUST send a Close frame in response ... typically echoing the
/// status code it received." Checked from both sides.
#[test]
fn close_handshake_from_either_side() {
    for client_starts in [true, false] {
        let mut pair = Pair::default();
        let (a, b) = if client_starts {
            (&mut pair.client, &mut pair.server)
        } else {
            (&mut pair.server, &mut pair.client)
        };
        a.close(bye(4001)).unwrap();
        assert_eq!(a.state(), State::CloseSent);
        assert!(a.close_sent());

        let r = receive_all(b, &drain(a));
        assert_eq!(r.messages, vec![Message::Close(bye(4001))]);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.close_received(), Some(&bye(4001)));
        assert!(!b.is_terminated(), "the reply is still queued");

        let reply_bytes = drain(b);
        let reply = decode_frames(&reply_bytes);
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].header.opcode, Opcode::Close);
        assert_eq!(reply[0].header.mask.is_some(), !client_starts);
        assert_eq!(reply[0].close_code(), Some(CloseCode(4001)));
        assert!(b.is_terminated());

        let r = receive_all(a, &reply_bytes);
        assert_eq!(
            r.messages,
            vec![Message::Close(Some(CloseFrame::new(CloseCode(4001), "")))]
        );
        assert_eq!(a.state(), State::Closed);
        assert!(a.is_terminated(), "no second close frame");
        for side in [a, b] {
            assert_eq!(side.error(), None);
            assert_eq!(side.receive_eof(), Ok(()));
        }
    }
}

/// §7.1.3: both sides may start the close at once; each then has sent and received one.
#[test]
fn simultaneous_close() {
    let mut pair = Pair::default();
    pair.client.close(bye(1000)).unwrap();
    pair.server.close(bye(1001)).unwrap();
    let to_server = drain(&mut pair.client);
    let to_client = drain(&mut pair.server);
    let r = receive_all(&mut pair.server, &to_server);
    assert_eq!(r.messages, vec![Message::Close(bye(1000))]);
    let r = receive_all(&mut pair.client, &to_client);
    assert_eq!(r.messages, vec![Message::Close(bye(1001))]);
    for side in [&mut pair.client, &mut pair.server] {
        assert_eq!(side.state(), State::Closed);
        assert!(side.is_terminated(), "no reply to a close after ours");
    }
}

/// §7.1.2: after sending a close, messages from the peer still arrive until its close.
#[test]
fn messages_still_arrive_after_our_close() {
    let mut pair = Pair::default();
    pair.server.close(bye(1001)).unwrap();
    pair.client.send_text("in flight").unwrap();
    let r = pair.pump_to_server();
    assert_eq!(r.messages, vec![Message::text("in flight")]);
    assert_eq!(pair.server.state(), State::CloseSent);
}

/// §5.5.1: "After sending a Close frame, the endpoint MUST NOT send any further data."
#[test]
fn nothing_may_be_sent_after_close() {
    let mut pair = Pair::default();
    pair.client.close(None).unwrap();
    let before = pair.client.pending_transmit();
    assert_eq!(pair.client.send_text("x"), Err(UsageError::SendAfterClose));
    assert_eq!(
        pair.client.send_binary("x"),
        Err(UsageError::SendAfterClose)
    );
    assert_eq!(pair.client.send_ping("x"), Err(UsageError::SendAfterClose));
    assert_eq!(pair.client.send_pong("x"), Err(UsageError::SendAfterClose));
    assert_eq!(
        pair.client.send_fragment(Opcode::Text, "x", false),
        Err(UsageError::SendAfterClose)
    );
    assert_eq!(pair.client.close(None), Err(UsageError::SendAfterClose));
    assert_eq!(pair.client.pending_transmit(), before);

    // The side that received the close replied, so it may send nothing either.
    pair.pump_to_server();
    assert_eq!(pair.server.send_text("x"), Err(UsageError::SendAfterClose));
    assert_eq!(
        pair.server.close(bye(1000)),
        Err(UsageError::SendAfterClose)
    );
}

/// §5.5.1: the peer "MUST NOT send any further data" after its close; whatever follows is
/// ignored, not delivered and not answered.
#[test]
fn frames_after_the_peers_close_are_ignored() {
    let bytes = [
        client_frame(Opcode::Close, true, &[0x03, 0xe8]),
        client_frame(Opcode::Text, true, b"late"),
        client_frame(Opcode::Ping, true, b"late"),
        vec![0xff, 0xff, 0xff],
    ]
    .concat();
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &bytes);
    assert_eq!(
        r,
        Received {
            messages: vec![Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))],
            error: None,
        }
    );
    assert_eq!(sent_frames(&mut s).len(), 1);
    let more = receive_all(&mut s, &client_frame(Opcode::Text, true, b"later"));
    assert_eq!(more, Received::default());
    assert_eq!(s.pending_transmit(), 0);
}

/// §7.1.5: a transport closed before the handshake finished is code 1006, reported
/// locally and never sent.
#[test]
fn end_of_stream_before_close_is_abnormal() {
    let mut pair = Pair::default();
    assert_eq!(pair.server.receive_eof(), Err(ProtocolError::UnexpectedEof));
    assert_eq!(pair.server.state(), State::Closed);
    assert_eq!(pair.server.pending_transmit(), 0);
    assert_eq!(
        ProtocolError::UnexpectedEof.close_code(),
        CloseCode::ABNORMAL
    );

    pair.client.close(None).unwrap();
    drain(&mut pair.client);
    assert_eq!(pair.client.receive_eof(), Err(ProtocolError::UnexpectedEof));
}

/// §7.1.7: failing the connection sends one close frame, then nothing; later input is
/// ignored.
#[test]
fn a_failed_connection_sends_one_close_and_ignores_the_rest() {
    let mut s = server(Config::default());
    let r = receive_all(&mut s, &client_frame(Opcode::Continuation, true, b""));
    tidewire_test::assert_failed(&mut s, &r, ProtocolError::UnexpectedContinuation);
    let r = receive_all(&mut s, &client_frame(Opcode::Ping, true, b"x"));
    assert_eq!(r, Received::default());
    assert_eq!(s.pending_transmit(), 0);
    assert_eq!(s.send_text("x"), Err(UsageError::SendAfterClose));
}

/// A failure after our own close sends no second close frame.
#[test]
fn failure_after_our_close_sends_nothing_more() {
    let mut s = server(Config::default());
    s.close(bye(1000)).unwrap();
    drain(&mut s);
    let r = receive_all(&mut s, &[0x83, 0x80, 0, 0, 0, 0]);
    assert_eq!(r.error, Some(ProtocolError::ReservedOpcode));
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.pending_transmit(), 0);
}
