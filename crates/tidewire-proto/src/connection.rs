//! The connection state machine (RFC 6455 §5, §7): bytes in, messages out, bytes to send.
//!
//! Reading: [`Connection::receive`] takes the caller's read buffer, parses frames in place
//! (unmasking in place, no copy), validates them against the connection's state, and hands
//! out complete messages as `Bytes` split off that buffer. A frame's payload is unmasked and
//! (for text) UTF-8-checked as it arrives, so invalid text fails the connection at the first
//! bad byte, not at the end of the message. Partial input is never an error: whatever was
//! not consumed stays in the buffer for the next call.
//!
//! Writing: `send_*` and [`Connection::close`] append frames to an output queue. Small
//! frames are coalesced into one buffer, large unmasked payloads are queued as their own
//! `Bytes` (no copy), and the caller drains everything with one vectored write
//! ([`Connection::transmit_slices`], [`Connection::advance_transmit`]).
//!
//! Closing: receiving a close frame queues the reply (§5.5.1) and ends the connection.
//! A protocol error queues a close frame with the error's code and ends it too ("fail the
//! WebSocket connection", §7.1.7). Once [`Connection::state`] is [`State::Closed`] and the
//! output is drained, the caller closes the transport: a server at once, a client after
//! the server has closed (§7.1.1); see [`Connection::role`].

use crate::close::{CloseCode, CloseFrame};
use crate::config::Config;
use crate::deflate::{Deflate, DeflateParams};
use crate::error::{ProtocolError, UsageError};
use crate::frame::{FrameHeader, Opcode, MAX_HEADER_LEN};
use crate::mask::apply_mask;
use crate::message::{Message, Utf8Bytes};
use crate::utf8::Utf8Validator;
use crate::Role;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Payloads up to this size are copied next to their header into one buffer, so that many
/// small frames leave in one write. Larger unmasked payloads are queued by reference.
/// 16 KiB, not less: at 16 KiB a frame written as two slices (header, payload) cost the
/// receiving side more than the copy costs us (A/B echo runs: 149-158k vs 161-166k msgs/s,
/// the server's CPU per message 3-5% higher with the copy); at 64 KiB the copy costs 7%
/// more server CPU for 2% more messages, so large payloads stay zero-copy.
const COALESCE_MAX: usize = 16 * 1024;

/// Where the connection is in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// This side sent a close frame and waits for the peer's (§7.1.2). Incoming messages
    /// are still delivered; nothing but the close may be sent.
    CloseSent,
    /// The close handshake finished, or the connection failed. Drain the output, then close
    /// the transport.
    Closed,
}

/// Source of masking keys for a client (§5.3: "derived from a strong source of entropy").
/// The core never reads randomness itself; the caller provides it.
pub type MaskSource = Box<dyn FnMut() -> [u8; 4] + Send + Sync>;

struct Fragmented {
    opcode: Opcode,
    /// Whether the message is compressed (RSV1 on its first frame, RFC 7692 §6.1); then
    /// `buf` holds the compressed bytes until the last frame.
    compressed: bool,
    buf: BytesMut,
}

/// What a connection reads of its [`Config`] after the handshake: the handshake-only
/// limits and the compression policy are left out, so that every idle connection does not
/// carry them.
#[derive(Debug, Clone, Copy)]
struct Settings {
    auto_pong: bool,
    max_outgoing_frame_size: usize,
    max_frame_size: usize,
    max_message_size: usize,
}

// The fields below are sized for the idle connection: what is rare (a fragmented message
// in progress, the peer's close frame, the deflate state) is boxed, so that a connection
// holding none of it costs a few hundred bytes.
/// One WebSocket connection, after the handshake.
pub struct Connection {
    role: Role,
    settings: Settings,
    state: State,
    // --- reading ---
    /// Header of the frame whose payload is being received (already removed from the buffer).
    header: Option<FrameHeader>,
    /// Payload bytes of the current frame already unmasked and validated in the buffer.
    processed: usize,
    /// Whether the current frame carries text that must be validated as it arrives.
    validating: bool,
    fragmented: Option<Box<Fragmented>>,
    utf8: Utf8Validator,
    close_received: Option<Box<Option<CloseFrame>>>,
    error: Option<ProtocolError>,
    // --- writing ---
    out: VecDeque<Bytes>,
    staging: BytesMut,
    out_len: usize,
    mask_source: Option<MaskSource>,
    close_sent: bool,
    sending_fragmented: bool,
    /// Boxed: 300 bytes that most connections never use would otherwise sit in every one.
    deflate: Option<Box<Deflate>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("pending_transmit", &self.out_len)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The server side of a connection whose handshake has completed.
    pub fn server(config: Config) -> Self {
        Self::new(Role::Server, config, None)
    }

    /// The client side. `mask_source` yields a fresh unpredictable key for every frame.
    pub fn client(config: Config, mask_source: MaskSource) -> Self {
        Self::new(Role::Client, config, Some(mask_source))
    }

    fn new(role: Role, config: Config, mask_source: Option<MaskSource>) -> Self {
        Connection {
            role,
            settings: Settings {
                auto_pong: config.auto_pong,
                max_outgoing_frame_size: config.max_outgoing_frame_size,
                max_frame_size: config.limits.max_frame_size,
                max_message_size: config.limits.max_message_size,
            },
            state: State::Open,
            header: None,
            processed: 0,
            validating: false,
            fragmented: None,
            utf8: Utf8Validator::new(),
            close_received: None,
            error: None,
            out: VecDeque::new(),
            staging: BytesMut::new(),
            out_len: 0,
            mask_source,
            close_sent: false,
            sending_fragmented: false,
            deflate: None,
        }
    }

    /// Turns on permessage-deflate with the parameters agreed in the handshake. Call it
    /// before any frame is exchanged.
    pub fn with_deflate(mut self, params: DeflateParams, config: &crate::DeflateConfig) -> Self {
        self.deflate = Some(Box::new(Deflate::new(self.role, params, config)));
        self
    }

    /// Whether permessage-deflate is on.
    pub fn deflate(&self) -> Option<&Deflate> {
        self.deflate.as_deref()
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the connection is in its lifecycle.
    pub fn state(&self) -> State {
        self.state
    }

    /// The close frame received from the peer: `None` if none yet, `Some(None)` if it had
    /// no status code (reported as 1005 by convention).
    pub fn close_received(&self) -> Option<&Option<CloseFrame>> {
        self.close_received.as_deref()
    }

    /// Whether this side has sent its close frame.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// The protocol error that failed the connection, if any.
    pub fn error(&self) -> Option<ProtocolError> {
        self.error
    }

    /// Payload bytes of the frame being received that are not in a buffer of `buffered`
    /// bytes yet: a hint for how much to read next (0 between frames).
    pub fn payload_remaining(&self, buffered: usize) -> usize {
        match self.header {
            Some(h) => (h.payload_len as usize).saturating_sub(buffered),
            None => 0,
        }
    }

    /// True when the connection is closed and everything queued has been transmitted:
    /// time to close the transport.
    pub fn is_terminated(&self) -> bool {
        self.state == State::Closed && self.out_len == 0
    }

    // ------------------------------------------------------------------ reading

    /// Parses frames from the front of `buf` until one yields a message or control frame,
    /// or the buffer runs out. Consumed bytes are removed from `buf`; an incomplete frame
    /// stays (its payload possibly already unmasked in place).
    ///
    /// On a protocol violation the connection queues a close frame with the error's code,
    /// moves to [`State::Closed`] and returns the error. After that, and after the close
    /// handshake, it returns `Ok(None)` and ignores input.
    pub fn receive(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.receive_inner(buf) {
            Ok(m) => Ok(m),
            Err(e) => {
                self.fail(e);
                Err(e)
            }
        }
    }

    /// The transport reached end of stream. Unless the close handshake finished, this is
    /// an abnormal closure (§7.1.5, code 1006).
    pub fn receive_eof(&mut self) -> Result<(), ProtocolError> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.state = State::Closed;
        self.error = Some(ProtocolError::UnexpectedEof);
        Err(ProtocolError::UnexpectedEof)
    }

    fn fail(&mut self, e: ProtocolError) {
        if self.state == State::Closed {
            return;
        }
        self.error = Some(e);
        // §7.1.7: "the endpoint ... MAY send a Close frame ... before closing the connection".
        if !self.close_sent {
            let frame = CloseFrame::new(e.close_code(), e.message());
            self.queue_close(Some(&frame));
        }
        self.state = State::Closed;
    }

    fn receive_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        loop {
            if self.state == State::Closed {
                buf.clear();
                return Ok(None);
            }
            let header = match self.header {
                Some(h) => h,
                None => match FrameHeader::parse(buf)? {
                    None => return Ok(None),
                    Some((h, len)) => {
                        self.check_header(&h)?;
                        buf.advance(len);
                        self.header = Some(h);
                        self.processed = 0;
                        // Compressed text is validated after inflating, not on the wire.
                        self.validating = match h.opcode {
                            Opcode::Text => !h.rsv1,
                            Opcode::Continuation => matches!(
                                &self.fragmented,
                                Some(f) if f.opcode == Opcode::Text && !f.compressed
                            ),
                            _ => false,
                        };
                        h
                    }
                },
            };
            // The length fits: check_header bounded it by max_frame_size.
            let len = header.payload_len as usize;
            let avail = buf.len().min(len);
            if avail > self.processed {
                let piece = &mut buf[self.processed..avail];
                if let Some(key) = header.mask {
                    apply_mask(piece, key, self.processed);
                }
                if self.validating {
                    let last = header.fin && avail == len;
                    self.utf8
                        .feed(piece, last)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                self.processed = avail;
            } else if len == 0 && self.validating && header.fin {
                // An empty final fragment still ends the message: no code point may be open.
                self.utf8
                    .feed(&[], true)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            if buf.len() < len {
                return Ok(None);
            }
            let payload = buf.split_to(len).freeze();
            self.header = None;
            if let Some(msg) = self.handle_frame(header, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Checks that need the connection's state (§5.1, §5.2, §5.4) and the limits.
    fn check_header(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        // §5.2: "MUST be 0 unless an extension is negotiated that defines meanings".
        // RFC 7692 §6: with permessage-deflate, RSV1 marks the first frame of a compressed
        // message; on continuation and control frames it stays an error.
        let rsv1_ok = self.deflate.is_some() && matches!(h.opcode, Opcode::Text | Opcode::Binary);
        if (h.rsv1 && !rsv1_ok) || h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBitsSet);
        }
        // §5.1: "a server MUST close the connection upon receiving a frame that is not
        // masked"; "a client MUST close a connection if it detects a masked frame".
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let limits = &self.settings;
        // Limits count data, not deflate overhead: a compressed frame may carry the
        // worst-case expansion of a limit-sized message (incompressible data grows a little).
        let compressed = match h.opcode {
            Opcode::Continuation => matches!(&self.fragmented, Some(f) if f.compressed),
            _ => h.rsv1,
        };
        let bound = |n: usize| {
            let n = n as u64;
            if compressed {
                crate::deflate::compressed_bound(n)
            } else {
                n
            }
        };
        if h.payload_len > bound(limits.max_frame_size) {
            return Err(ProtocolError::FrameTooLarge);
        }
        match h.opcode {
            Opcode::Continuation => match &self.fragmented {
                None => return Err(ProtocolError::UnexpectedContinuation),
                Some(f) => {
                    if f.buf.len() as u64 + h.payload_len > bound(limits.max_message_size) {
                        return Err(ProtocolError::MessageTooLarge);
                    }
                }
            },
            Opcode::Text | Opcode::Binary => {
                if self.fragmented.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if h.payload_len > bound(limits.max_message_size) {
                    return Err(ProtocolError::MessageTooLarge);
                }
            }
            Opcode::Close | Opcode::Ping | Opcode::Pong => {}
        }
        Ok(())
    }

    fn handle_frame(
        &mut self,
        h: FrameHeader,
        payload: Bytes,
    ) -> Result<Option<Message>, ProtocolError> {
        match h.opcode {
            Opcode::Text | Opcode::Binary => {
                if h.fin {
                    if h.rsv1 {
                        return self.inflate_message(h.opcode, &payload).map(Some);
                    }
                    return Ok(Some(self.finish_message(h.opcode, payload)));
                }
                let mut buf = BytesMut::with_capacity(payload.len().max(64) * 2);
                buf.extend_from_slice(&payload);
                self.fragmented = Some(Box::new(Fragmented {
                    opcode: h.opcode,
                    compressed: h.rsv1,
                    buf,
                }));
                Ok(None)
            }
            Opcode::Continuation => {
                // check_header guarantees a message is in progress.
                let Some(frag) = self.fragmented.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                frag.buf.extend_from_slice(&payload);
                if !h.fin {
                    return Ok(None);
                }
                let Some(frag) = self.fragmented.take() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if frag.compressed {
                    return self.inflate_message(frag.opcode, &frag.buf).map(Some);
                }
                Ok(Some(self.finish_message(frag.opcode, frag.buf.freeze())))
            }
            Opcode::Ping => {
                // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
                // response, unless it already received a Close frame." We also stop once our
                // own close is out: nothing may follow it.
                if self.settings.auto_pong && !self.close_sent {
                    self.queue_frame(Opcode::Pong, true, false, &payload);
                }
                Ok(Some(Message::Ping(payload)))
            }
            Opcode::Pong => Ok(Some(Message::Pong(payload))),
            Opcode::Close => {
                let frame = parse_close_payload(&payload)?;
                self.close_received = Some(Box::new(frame.clone()));
                if !self.close_sent {
                    // §5.5.1: "the endpoint MUST send a Close frame in response ... typically
                    // echoing the status code it received."
                    let reply = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                    self.queue_close(reply.as_ref());
                }
                self.state = State::Closed;
                Ok(Some(Message::Close(frame)))
            }
        }
    }

    /// Inflates a compressed message (RFC 7692 §6.2) within the message size limit, then
    /// validates text.
    fn inflate_message(
        &mut self,
        opcode: Opcode,
        compressed: &[u8],
    ) -> Result<Message, ProtocolError> {
        let limit = self.settings.max_message_size;
        let Some(deflate) = self.deflate.as_mut() else {
            return Err(ProtocolError::ReservedBitsSet);
        };
        let data = Bytes::from(deflate.decompress(compressed, limit)?);
        if opcode == Opcode::Text {
            let text = Utf8Bytes::try_from_bytes(data).map_err(|_| ProtocolError::InvalidUtf8)?;
            return Ok(Message::Text(text));
        }
        Ok(Message::Binary(data))
    }

    fn finish_message(&mut self, opcode: Opcode, payload: Bytes) -> Message {
        if opcode == Opcode::Text {
            self.utf8.reset();
            // SAFETY: every byte of a text message went through `self.utf8` with the final
            // piece marked `last`, which rejects invalid and incomplete sequences.
            Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(payload) })
        } else {
            Message::Binary(payload)
        }
    }

    // ------------------------------------------------------------------ writing

    /// Queues a message or control frame. `Message::Close` starts the close handshake.
    pub fn send(&mut self, msg: Message) -> Result<(), UsageError> {
        match msg {
            Message::Text(t) => self.send_text(t),
            Message::Binary(b) => self.send_binary(b),
            Message::Ping(p) => self.send_ping(p),
            Message::Pong(p) => self.send_pong(p),
            Message::Close(frame) => self.close(frame),
        }
    }

    /// Queues a message without compressing it, even where permessage-deflate is on
    /// (already-compressed data, or latency-sensitive small messages).
    pub fn send_uncompressed(&mut self, msg: Message) -> Result<(), UsageError> {
        match msg {
            Message::Text(t) => self.send_data_with(Opcode::Text, t.into_bytes(), false),
            Message::Binary(b) => self.send_data_with(Opcode::Binary, b, false),
            other => self.send(other),
        }
    }

    /// Queues a message prepared once for many connections (a broadcast): its frame bytes,
    /// and with permessage-deflate without server context takeover its compressed frame
    /// bytes, are encoded once and shared by every connection that sends it.
    pub fn send_prepared(&mut self, msg: &PreparedMessage) -> Result<(), UsageError> {
        if self.close_sent {
            return Err(UsageError::SendAfterClose);
        }
        if self.sending_fragmented {
            return Err(UsageError::InvalidFragment);
        }
        let fits = msg.payload.len() <= self.settings.max_outgoing_frame_size;
        if self.role == Role::Client || !fits {
            // Clients mask every frame: nothing to share.
            return self.send_data(msg.opcode, msg.payload.clone());
        }
        if let Some(d) = &self.deflate {
            if d.should_compress(msg.payload.len()) {
                match d.shared_window() {
                    Some(window) => {
                        let level = d.level();
                        let frame = msg.compressed_frame(window, level);
                        self.queue_encoded(frame);
                        return Ok(());
                    }
                    None => return self.send_data(msg.opcode, msg.payload.clone()),
                }
            }
        }
        let frame = msg.plain_frame();
        self.queue_encoded(frame);
        Ok(())
    }

    fn queue_encoded(&mut self, frame: Bytes) {
        self.out_len += frame.len();
        if !self.staging.is_empty() {
            self.out.push_back(self.staging.split().freeze());
        }
        self.out.push_back(frame);
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), UsageError> {
        self.send_data(Opcode::Text, text.into().into_bytes())
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, data: impl Into<Bytes>) -> Result<(), UsageError> {
        self.send_data(Opcode::Binary, data.into())
    }

    /// Queues a ping (payload at most 125 bytes).
    pub fn send_ping(&mut self, payload: impl Into<Bytes>) -> Result<(), UsageError> {
        self.send_control(Opcode::Ping, payload.into())
    }

    /// Queues an unsolicited pong (payload at most 125 bytes), e.g. a heartbeat (§5.5.3).
    pub fn send_pong(&mut self, payload: impl Into<Bytes>) -> Result<(), UsageError> {
        self.send_control(Opcode::Pong, payload.into())
    }

    /// Sends one fragment of a message the application streams in pieces. The first call
    /// gives `Opcode::Text` or `Opcode::Binary`, later ones `Opcode::Continuation`; `fin`
    /// ends the message. Control frames may be sent in between (§5.4).
    pub fn send_fragment(
        &mut self,
        opcode: Opcode,
        payload: impl Into<Bytes>,
        fin: bool,
    ) -> Result<(), UsageError> {
        if self.close_sent {
            return Err(UsageError::SendAfterClose);
        }
        let ok = match opcode {
            Opcode::Text | Opcode::Binary => !self.sending_fragmented,
            Opcode::Continuation => self.sending_fragmented,
            _ => false,
        };
        if !ok {
            return Err(UsageError::InvalidFragment);
        }
        self.sending_fragmented = !fin;
        self.queue_frame(opcode, fin, false, &payload.into());
        Ok(())
    }

    /// Starts the close handshake (§7.1.2): queues a close frame, after which nothing but
    /// incoming messages flow until the peer's close arrives. `None` sends no status code.
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), UsageError> {
        if self.close_sent || self.state == State::Closed {
            return Err(UsageError::SendAfterClose);
        }
        if let Some(f) = &frame {
            if !f.code.is_sendable() {
                return Err(UsageError::InvalidCloseCode);
            }
            if f.reason.len() > 123 {
                return Err(UsageError::ControlPayloadTooLong);
            }
        }
        self.queue_close(frame.as_ref());
        self.state = State::CloseSent;
        Ok(())
    }

    fn send_data(&mut self, opcode: Opcode, payload: Bytes) -> Result<(), UsageError> {
        self.send_data_with(opcode, payload, true)
    }

    fn send_data_with(
        &mut self,
        opcode: Opcode,
        payload: Bytes,
        compress: bool,
    ) -> Result<(), UsageError> {
        if self.close_sent {
            return Err(UsageError::SendAfterClose);
        }
        if self.sending_fragmented {
            return Err(UsageError::InvalidFragment);
        }
        let (payload, rsv1) = match self.deflate.as_mut() {
            Some(d) if compress && d.should_compress(payload.len()) => {
                (Bytes::from(d.compress(&payload)), true)
            }
            _ => (payload, false),
        };
        let max = self.settings.max_outgoing_frame_size;
        if payload.len() <= max {
            self.queue_frame(opcode, true, rsv1, &payload);
            return Ok(());
        }
        // RFC 7692 §6.1: RSV1 on the first frame of a compressed message only.
        let mut rest = payload;
        let mut op = opcode;
        let mut first_rsv1 = rsv1;
        while rest.len() > max {
            let piece = rest.split_to(max);
            self.queue_frame(op, false, first_rsv1, &piece);
            op = Opcode::Continuation;
            first_rsv1 = false;
        }
        self.queue_frame(op, true, first_rsv1, &rest);
        Ok(())
    }

    fn send_control(&mut self, opcode: Opcode, payload: Bytes) -> Result<(), UsageError> {
        if self.close_sent {
            return Err(UsageError::SendAfterClose);
        }
        if payload.len() > 125 {
            return Err(UsageError::ControlPayloadTooLong);
        }
        self.queue_frame(opcode, true, false, &payload);
        Ok(())
    }

    fn queue_close(&mut self, frame: Option<&CloseFrame>) {
        let payload = frame.map(CloseFrame::encode).unwrap_or_default();
        self.queue_frame(Opcode::Close, true, false, &payload);
        self.close_sent = true;
    }

    fn queue_frame(&mut self, opcode: Opcode, fin: bool, rsv1: bool, payload: &Bytes) {
        let mask = self.mask_source.as_mut().map(|f| f());
        let header = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        self.out_len += hlen + payload.len();
        match mask {
            Some(key) => {
                // §5.3: the client masks every frame; that needs a copy of the payload.
                self.staging.reserve(hlen + payload.len());
                self.staging.put_slice(&hbuf[..hlen]);
                let start = self.staging.len();
                self.staging.put_slice(payload);
                apply_mask(&mut self.staging[start..], key, 0);
            }
            None if payload.len() <= COALESCE_MAX => {
                self.staging.reserve(hlen + payload.len());
                self.staging.put_slice(&hbuf[..hlen]);
                self.staging.put_slice(payload);
            }
            None => {
                self.staging.put_slice(&hbuf[..hlen]);
                self.out.push_back(self.staging.split().freeze());
                self.out.push_back(payload.clone());
            }
        }
    }

    /// Bytes queued for the transport and not yet transmitted.
    pub fn pending_transmit(&self) -> usize {
        self.out_len
    }

    /// Fills `dst` with the queued output, oldest first, and returns how many slices were
    /// filled. Write them (vectored), then report the bytes written to
    /// [`Connection::advance_transmit`].
    pub fn transmit_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in &self.out {
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(chunk);
            n += 1;
        }
        if n < dst.len() && !self.staging.is_empty() {
            dst[n] = IoSlice::new(&self.staging);
            n += 1;
        }
        n
    }

    /// The oldest contiguous piece of queued output (empty when nothing is queued).
    pub fn transmit_chunk(&self) -> &[u8] {
        match self.out.front() {
            Some(c) => c,
            None => &self.staging,
        }
    }

    /// Marks `n` bytes of the queued output as transmitted.
    pub fn advance_transmit(&mut self, mut n: usize) {
        debug_assert!(n <= self.out_len);
        n = n.min(self.out_len);
        self.out_len -= n;
        while n > 0 {
            match self.out.front_mut() {
                Some(chunk) => {
                    if n >= chunk.len() {
                        n -= chunk.len();
                        self.out.pop_front();
                    } else {
                        chunk.advance(n);
                        n = 0;
                    }
                }
                None => {
                    self.staging.advance(n);
                    n = 0;
                }
            }
        }
        if self.out_len == 0 {
            // Keep the allocation for the next burst unless it grew large.
            if self.staging.capacity() > 64 * 1024 {
                self.staging = BytesMut::new();
            } else {
                self.staging.clear();
            }
        }
    }

    /// Gives up on the close handshake (a timer expired, the application is shutting down):
    /// the connection becomes [`State::Closed`] at once. A close frame already queued is
    /// still transmitted; nothing is received any more.
    pub fn abandon(&mut self) {
        self.state = State::Closed;
    }

    /// Drops the output buffer's allocation if nothing is queued, so that an idle
    /// connection holds no buffer.
    pub fn shrink_idle(&mut self) {
        if self.out_len == 0 {
            self.staging = BytesMut::new();
            self.out = VecDeque::new();
        }
    }
}

/// Parses a close frame's payload (§5.5.1, §7.4).
fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::CloseFrameTooShort),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode);
            }
            let reason = simdutf8::basic::from_utf8(&payload[2..])
                .map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// A text or binary message encoded once for many connections (see
/// [`Connection::send_prepared`]): the server frame, and compressed server frames per window
/// size, are built on first use and shared as `Bytes`.
#[derive(Debug)]
pub struct PreparedMessage {
    opcode: Opcode,
    payload: Bytes,
    plain: std::sync::OnceLock<Bytes>,
    /// Compressed frames for windows 9..=15.
    compressed: [std::sync::OnceLock<Bytes>; 7],
}

impl PreparedMessage {
    /// Prepares a text or binary message; control messages are not broadcast.
    pub fn new(msg: Message) -> Option<Self> {
        let (opcode, payload) = match msg {
            Message::Text(t) => (Opcode::Text, t.into_bytes()),
            Message::Binary(b) => (Opcode::Binary, b),
            _ => return None,
        };
        Some(PreparedMessage {
            opcode,
            payload,
            plain: std::sync::OnceLock::new(),
            compressed: Default::default(),
        })
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn plain_frame(&self) -> Bytes {
        self.plain
            .get_or_init(|| encode_server_frame(self.opcode, false, &self.payload))
            .clone()
    }

    fn compressed_frame(&self, window: u8, level: u32) -> Bytes {
        let slot = &self.compressed[(window.clamp(9, 15) - 9) as usize];
        slot.get_or_init(|| {
            let c = crate::deflate::compress_fresh(&self.payload, window, level);
            encode_server_frame(self.opcode, true, &c)
        })
        .clone()
    }
}

fn encode_server_frame(opcode: Opcode, rsv1: bool, payload: &[u8]) -> Bytes {
    let mut h = FrameHeader::new(opcode, payload.len() as u64, None);
    h.rsv1 = rsv1;
    let mut hb = [0u8; MAX_HEADER_LEN];
    let n = h.encode(&mut hb);
    let mut buf = BytesMut::with_capacity(n + payload.len());
    buf.put_slice(&hb[..n]);
    buf.put_slice(payload);
    buf.freeze()
}
