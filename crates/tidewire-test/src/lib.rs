//! Test helpers for Tidewire: raw frame builders, an in-memory client/server pair, and
//! small drivers for [`Connection`] (feed bytes in, drain bytes out, decode what went out).
//!
//! Frames are built bit by bit ([`RawFrame`]) so that tests can write what a correct
//! encoder never would: reserved bits and opcodes, non-minimal lengths, a length field that
//! promises more payload than follows. Everything is deterministic: the client's masking
//! keys come from a counter ([`counter_mask`]), not from randomness.

use bytes::BytesMut;
use std::io::IoSlice;
use tidewire_proto::frame::{FrameHeader, Opcode};
use tidewire_proto::mask::apply_mask_bytewise;
use tidewire_proto::{CloseCode, Config, Connection, Message, ProtocolError, Role, State};

/// The masking key [`client_frame`] uses.
pub const TEST_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// How the payload length is written in a [`RawFrame`] header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthEncoding {
    /// The shortest form, as a correct encoder writes it.
    Minimal,
    /// Always the 16-bit extended form (126 + 2 bytes), even for short payloads.
    Extended16,
    /// Always the 64-bit extended form (127 + 8 bytes).
    Extended64,
}

/// A frame described bit by bit. Build it with [`RawFrame::new`] and the setters, then
/// [`RawFrame::encode`].
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1, RSV2, RSV3.
    pub rsv: [bool; 3],
    /// The opcode nibble, reserved values included.
    pub opcode: u8,
    /// Masking key; the payload is masked with it when encoding.
    pub mask: Option<[u8; 4]>,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
    /// The length written in the header, when it should differ from the payload's.
    pub declared_len: Option<u64>,
    /// How the length is written.
    pub length: LengthEncoding,
}

impl RawFrame {
    /// A final, unmasked frame with no reserved bits and a minimal length.
    /// `opcode` is the raw nibble: `Opcode::Text as u8`, or a reserved value like `0x3`.
    pub fn new(opcode: u8, payload: impl AsRef<[u8]>) -> Self {
        RawFrame {
            fin: true,
            rsv: [false; 3],
            opcode,
            mask: None,
            payload: payload.as_ref().to_vec(),
            declared_len: None,
            length: LengthEncoding::Minimal,
        }
    }

    /// Sets FIN.
    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    /// Sets RSV1..RSV3.
    pub fn rsv(mut self, rsv1: bool, rsv2: bool, rsv3: bool) -> Self {
        self.rsv = [rsv1, rsv2, rsv3];
        self
    }

    /// Sets the masking key.
    pub fn mask(mut self, key: Option<[u8; 4]>) -> Self {
        self.mask = key;
        self
    }

    /// Writes `len` in the header instead of the payload's length.
    pub fn declared_len(mut self, len: u64) -> Self {
        self.declared_len = Some(len);
        self
    }

    /// Forces a length encoding.
    pub fn length(mut self, encoding: LengthEncoding) -> Self {
        self.length = encoding;
        self
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        let mut out = Vec::with_capacity(14 + self.payload.len());
        out.push(
            (self.fin as u8) << 7
                | (self.rsv[0] as u8) << 6
                | (self.rsv[1] as u8) << 5
                | (self.rsv[2] as u8) << 4
                | (self.opcode & 0x0f),
        );
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let encoding = match self.length {
            LengthEncoding::Minimal if len <= 125 => None,
            LengthEncoding::Minimal if len <= 0xffff => Some(LengthEncoding::Extended16),
            LengthEncoding::Minimal => Some(LengthEncoding::Extended64),
            forced => Some(forced),
        };
        match encoding {
            None => out.push(mask_bit | len as u8),
            Some(LengthEncoding::Extended16) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Some(_) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        let payload_start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(key) = self.mask {
            apply_mask_bytewise(&mut out[payload_start..], key, 0);
        }
        out
    }
}

/// One frame on the wire: `opcode`, FIN, payload, optional masking key. For anything
/// unusual (reserved bits, raw opcodes, odd lengths) use [`RawFrame`].
pub fn frame(opcode: Opcode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    RawFrame::new(opcode as u8, payload)
        .fin(fin)
        .mask(mask)
        .encode()
}

/// A frame as a client sends it: masked with [`TEST_MASK`].
pub fn client_frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    frame(opcode, fin, payload, Some(TEST_MASK))
}

/// A frame as a server sends it: unmasked.
pub fn server_frame(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
    frame(opcode, fin, payload, None)
}

/// The payload of a close frame: the code in network order, then the reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A mask source yielding distinct, predictable keys: 1, 2, 3, … as big-endian `u32`s.
pub fn counter_mask() -> tidewire_proto::connection::MaskSource {
    let mut n: u32 = 0;
    Box::new(move || {
        n = n.wrapping_add(1);
        n.to_be_bytes()
    })
}

/// A server connection with `config`.
pub fn server(config: Config) -> Connection {
    Connection::server(config)
}

/// A client connection with `config` and [`counter_mask`] keys.
pub fn client(config: Config) -> Connection {
    Connection::client(config, counter_mask())
}

/// What [`Connection::receive`] yielded for some input: every message, then the error
/// that stopped it, if one did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// Messages and control frames, in order.
    pub messages: Vec<Message>,
    /// The protocol error that failed the connection.
    pub error: Option<ProtocolError>,
}

/// Appends `bytes` to `buf` and calls `receive` until it needs more input or fails.
/// Input after an error is not fed (the connection ignores it anyway).
pub fn receive_into(conn: &mut Connection, buf: &mut BytesMut, bytes: &[u8], out: &mut Received) {
    if out.error.is_some() {
        return;
    }
    buf.extend_from_slice(bytes);
    loop {
        match conn.receive(buf) {
            Ok(Some(m)) => out.messages.push(m),
            Ok(None) => return,
            Err(e) => {
                out.error = Some(e);
                return;
            }
        }
    }
}

/// Feeds `bytes` to `conn` in one piece.
pub fn receive_all(conn: &mut Connection, bytes: &[u8]) -> Received {
    receive_chunked(conn, bytes, &[bytes.len()])
}

/// Feeds `bytes` to `conn` cut at the given piece lengths (cycled; a zero length is
/// treated as one), as a transport might deliver them.
pub fn receive_chunked(conn: &mut Connection, bytes: &[u8], pieces: &[usize]) -> Received {
    let mut buf = BytesMut::new();
    let mut out = Received::default();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = pieces.get(i % pieces.len().max(1)).copied().unwrap_or(1);
        let n = n.clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        receive_into(conn, &mut buf, piece, &mut out);
        rest = tail;
        i += 1;
    }
    out
}

/// Takes everything `conn` has queued for the transport, through the vectored interface
/// ([`Connection::transmit_slices`] and [`Connection::advance_transmit`]).
pub fn drain(conn: &mut Connection) -> Vec<u8> {
    let mut out = Vec::with_capacity(conn.pending_transmit());
    while conn.pending_transmit() > 0 {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = conn.transmit_slices(&mut slices);
        let before = out.len();
        for s in &slices[..n] {
            out.extend_from_slice(s);
        }
        let written = out.len() - before;
        assert!(written > 0, "pending output but no slices");
        conn.advance_transmit(written);
    }
    out
}

/// A frame decoded from output bytes, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFrame {
    /// The header as parsed.
    pub header: FrameHeader,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl DecodedFrame {
    /// For a close frame, its code (`None` when the payload is empty).
    pub fn close_code(&self) -> Option<CloseCode> {
        (self.payload.len() >= 2)
            .then(|| CloseCode(u16::from_be_bytes([self.payload[0], self.payload[1]])))
    }
}

/// Splits output bytes into frames. Panics on anything malformed or truncated: output
/// from a [`Connection`] must always be whole, valid frames.
pub fn decode_frames(mut bytes: &[u8]) -> Vec<DecodedFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (header, hlen) = FrameHeader::parse(bytes)
            .expect("valid header")
            .expect("whole header");
        let end = hlen + header.payload_len as usize;
        assert!(bytes.len() >= end, "truncated frame in output");
        let mut payload = bytes[hlen..end].to_vec();
        if let Some(key) = header.mask {
            apply_mask_bytewise(&mut payload, key, 0);
        }
        frames.push(DecodedFrame { header, payload });
        bytes = &bytes[end..];
    }
    frames
}

/// Drains `conn` and decodes what it sent.
pub fn sent_frames(conn: &mut Connection) -> Vec<DecodedFrame> {
    decode_frames(&drain(conn))
}

/// Asserts that `conn` failed the connection with `error` (§7.1.7): `received` ended with
/// it, the connection is closed, and its output ends with a close frame carrying the
/// error's code, masked if and only if `conn` is a client. Returns every frame it sent.
#[track_caller]
pub fn assert_failed(
    conn: &mut Connection,
    received: &Received,
    error: ProtocolError,
) -> Vec<DecodedFrame> {
    assert_eq!(
        received.error,
        Some(error),
        "received {:?}",
        received.messages
    );
    assert_eq!(conn.error(), Some(error));
    assert_eq!(conn.state(), State::Closed);
    let frames = sent_frames(conn);
    let last = frames.last().expect("a close frame in the output");
    assert_eq!(last.header.opcode, Opcode::Close);
    assert_eq!(last.close_code(), Some(error.close_code()));
    assert_eq!(last.header.mask.is_some(), conn.role() == Role::Client);
    frames
}

/// A client and a server connected in memory. Nothing moves until a `pump_*` call, so
/// tests decide exactly when each side sees the other's bytes.
#[derive(Debug)]
pub struct Pair {
    /// The client end.
    pub client: Connection,
    /// The server end.
    pub server: Connection,
    client_buf: BytesMut,
    server_buf: BytesMut,
}

impl Default for Pair {
    fn default() -> Self {
        Self::new(Config::default(), Config::default())
    }
}

impl Pair {
    /// A pair with the given configurations.
    pub fn new(client_config: Config, server_config: Config) -> Self {
        Pair {
            client: client(client_config),
            server: server(server_config),
            client_buf: BytesMut::new(),
            server_buf: BytesMut::new(),
        }
    }

    /// Moves everything the client queued to the server; returns what the server received.
    pub fn pump_to_server(&mut self) -> Received {
        let bytes = drain(&mut self.client);
        let mut out = Received::default();
        receive_into(&mut self.server, &mut self.server_buf, &bytes, &mut out);
        out
    }

    /// Moves everything the server queued to the client; returns what the client received.
    pub fn pump_to_client(&mut self) -> Received {
        let bytes = drain(&mut self.server);
        let mut out = Received::default();
        receive_into(&mut self.client, &mut self.client_buf, &bytes, &mut out);
        out
    }
}
