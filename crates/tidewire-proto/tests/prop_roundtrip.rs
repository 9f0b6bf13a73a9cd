//! Round-trip properties: header encode/parse, messages through a client and a server
//! connection under any split of the byte stream, and masking in pieces.

use proptest::prelude::*;
use tidewire_proto::frame::{FrameHeader, Opcode, MAX_HEADER_LEN};
use tidewire_proto::mask::{apply_mask, apply_mask_bytewise};
use tidewire_proto::{CloseCode, CloseFrame, Config, Connection, Message};
use tidewire_test::{client, drain, receive_chunked, server};

fn opcode() -> impl Strategy<Value = Opcode> {
    prop_oneof![
        Just(Opcode::Continuation),
        Just(Opcode::Text),
        Just(Opcode::Binary),
        Just(Opcode::Close),
        Just(Opcode::Ping),
        Just(Opcode::Pong),
    ]
}

/// Any header `FrameHeader::parse` accepts: control frames final and at most 125 bytes,
/// lengths below 2^63.
fn header() -> impl Strategy<Value = FrameHeader> {
    let len = prop_oneof![0u64..=125, 126u64..=0xffff, 0x10000u64..(1 << 63)];
    (any::<[bool; 4]>(), opcode(), any::<Option<[u8; 4]>>(), len).prop_map(
        |([fin, rsv1, rsv2, rsv3], opcode, mask, len)| {
            let control = opcode.is_control();
            FrameHeader {
                fin: fin || control,
                rsv1,
                rsv2,
                rsv3,
                opcode,
                mask,
                payload_len: if control { len % 126 } else { len },
            }
        },
    )
}

/// Messages an application can send; at most one close, at the end.
fn messages() -> impl Strategy<Value = Vec<Message>> {
    let data = prop_oneof![
        ".{0,40}".prop_map(Message::text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Message::binary),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|p| Message::Ping(p.into())),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|p| Message::Pong(p.into())),
    ];
    let close = prop_oneof![
        Just(None),
        Just(Some(Message::Close(None))),
        (1000u16..=1003, ".{0,20}").prop_map(|(code, reason)| Some(Message::Close(Some(
            CloseFrame::new(CloseCode(code), reason)
        )))),
    ];
    (proptest::collection::vec(data, 0..12), close).prop_map(|(mut msgs, close)| {
        msgs.extend(close);
        msgs
    })
}

/// Sends `msgs` from `from`, feeds its output to `to` cut into `pieces`, and checks that
/// `to` yields exactly `msgs`.
fn roundtrip(
    mut from: Connection,
    mut to: Connection,
    msgs: &[Message],
    pieces: &[usize],
) -> Result<(), TestCaseError> {
    for m in msgs {
        from.send(m.clone())
            .map_err(|e| TestCaseError::fail(format!("send {m:?}: {e}")))?;
    }
    let bytes = drain(&mut from);
    let r = receive_chunked(&mut to, &bytes, pieces);
    prop_assert_eq!(r.error, None);
    prop_assert_eq!(&r.messages, msgs);
    Ok(())
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..200, 1..20)
}

proptest! {
    #[test]
    fn header_encode_then_parse_is_identity(h in header()) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        prop_assert_eq!(n, h.encoded_len());
        prop_assert_eq!(FrameHeader::parse(&buf[..n]), Ok(Some((h, n))));
        // Extra bytes after the header are not part of it.
        let mut longer = buf.to_vec();
        longer.truncate(n);
        longer.extend_from_slice(&[0xff; 20]);
        prop_assert_eq!(FrameHeader::parse(&longer), Ok(Some((h, n))));
        for cut in 0..n {
            prop_assert_eq!(FrameHeader::parse(&buf[..cut]), Ok(None));
        }
    }

    #[test]
    fn client_to_server_in_any_split(
        msgs in messages(),
        pieces in pieces(),
        frame_size in prop_oneof![Just(usize::MAX), 1usize..64],
    ) {
        let config = Config::default().max_outgoing_frame_size(frame_size);
        roundtrip(client(config), server(Config::default()), &msgs, &pieces)?;
    }

    #[test]
    fn server_to_client_in_any_split(
        msgs in messages(),
        pieces in pieces(),
        frame_size in prop_oneof![Just(usize::MAX), 1usize..64],
    ) {
        let config = Config::default().max_outgoing_frame_size(frame_size);
        roundtrip(server(config), client(Config::default()), &msgs, &pieces)?;
    }

    #[test]
    fn mask_piecewise_equals_whole(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        key in any::<[u8; 4]>(),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
    ) {
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut reference = data.clone();
        apply_mask_bytewise(&mut reference, key, 0);
        prop_assert_eq!(&whole, &reference);

        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        let mut pieces = data.clone();
        for w in cuts.windows(2) {
            apply_mask(&mut pieces[w[0]..w[1]], key, w[0]);
        }
        prop_assert_eq!(&pieces, &whole);
        // Masking twice restores the data.
        apply_mask(&mut pieces, key, 0);
        prop_assert_eq!(pieces, data);
    }
}
