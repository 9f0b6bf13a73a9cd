//! WebSocket over HTTP/3 (RFC 9220), client and server, on QUIC (`quinn`). Feature `http3`.
//!
//! RFC 9220 carries RFC 8441 over to HTTP/3: the client sends an extended CONNECT
//! (`:method CONNECT`, `:protocol websocket`, `:scheme https`, `:authority`, `:path`) on
//! a request stream, once the server's SETTINGS said `SETTINGS_ENABLE_CONNECT_PROTOCOL`;
//! the server answers `200` (no `Sec-WebSocket-Key`/`Accept`); the stream's DATA frames
//! then carry the same WebSocket frames as a TCP connection would, masking and
//! permessage-deflate included. Closing the WebSocket finishes the stream.
//!
//! The HTTP/3 layer here is Tidewire's own (RFC 9114 framing, and QPACK with the static
//! table and literals only: both sides announce a dynamic table of 0 bytes), because the
//! `h3` crate cannot carry a `:protocol` other than its own. It serves what a WebSocket
//! server needs: extended CONNECT, and plain requests (pages, the HTTP API) with bodies,
//! through any hyper service, so an axum `Router` serves the same routes over HTTP/3 as
//! over HTTP/1.1 and HTTP/2. It does not push, and ignores GOAWAY's stream limit
//! beyond not opening new streams on a connection that received it.
//!
//! - Client: [`ClientBuilder::http3`](crate::ClientBuilder::http3) for `wss://` URLs.
//!   WebSockets to the same host share one QUIC connection (one per TLS configuration);
//!   it closes once its last WebSocket has. No browser speaks RFC 9220 yet.
//! - Server: [`server_config`] turns a rustls server configuration into a QUIC one (ALPN
//!   `h3`), [`serve_connection`] serves one accepted connection with a hyper service;
//!   [`upgrade`](crate::upgrade::upgrade) and axum's
//!   [`WebSocketUpgrade`](crate::upgrade::WebSocketUpgrade) accept its extended CONNECTs.

pub(crate) mod qpack;

use crate::connect::WsUrl;
use crate::error::{Error, Kind, Result};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

pub use quinn;

/// The ALPN protocol of HTTP/3.
pub const ALPN: &[u8] = b"h3";

/// What one WebSocket stream may hold unread, and a whole connection (sixteen streams).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// The receive window of a whole QUIC connection.
pub const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// The largest field section (request or response head) accepted, as QPACK counts it.
const MAX_FIELD_SECTION: usize = 64 << 10;
/// The largest request body a plain request over HTTP/3 may carry here.
const MAX_REQUEST_BODY: usize = 4 << 20;
/// How long a request stream may take to send its head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

// Error codes, RFC 9114 §8.1 and RFC 9204 §6.
const H3_NO_ERROR: u32 = 0x100;
const H3_GENERAL_PROTOCOL_ERROR: u32 = 0x101;
const H3_STREAM_CREATION_ERROR: u32 = 0x103;
const H3_CLOSED_CRITICAL_STREAM: u32 = 0x104;
const H3_FRAME_UNEXPECTED: u32 = 0x105;
const H3_ID_ERROR: u32 = 0x108;
const H3_SETTINGS_ERROR: u32 = 0x109;
const H3_MISSING_SETTINGS: u32 = 0x10a;
const H3_REQUEST_CANCELLED: u32 = 0x10c;
const H3_MESSAGE_ERROR: u32 = 0x10e;
const QPACK_DECOMPRESSION_FAILED: u32 = 0x200;

// Frame types (RFC 9114 §7.2).
const DATA: u64 = 0x0;
const HEADERS: u64 = 0x1;
const CANCEL_PUSH: u64 = 0x3;
const SETTINGS: u64 = 0x4;
const PUSH_PROMISE: u64 = 0x5;
const GOAWAY: u64 = 0x7;
const MAX_PUSH_ID: u64 = 0xd;

// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
const CONTROL_STREAM: u64 = 0x0;
const PUSH_STREAM: u64 = 0x1;
const QPACK_ENCODER_STREAM: u64 = 0x2;
const QPACK_DECODER_STREAM: u64 = 0x3;

// Settings (RFC 9114 §7.2.4.1, RFC 9204 §5, RFC 8441 §3).
const SETTINGS_QPACK_MAX_TABLE_CAPACITY: u64 = 0x1;
const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x6;
const SETTINGS_QPACK_BLOCKED_STREAMS: u64 = 0x7;
const SETTINGS_ENABLE_CONNECT_PROTOCOL: u64 = 0x8;

/// HTTP/2's frame types that HTTP/3 reserves: receiving one is an error (§7.2.8).
fn reserved_http2_frame(kind: u64) -> bool {
    matches!(kind, 0x2 | 0x6 | 0x8 | 0x9)
}

fn code(c: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(c)
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/3: {}", what.into()),
    )
}

/// Appends a QUIC variable-length integer (RFC 9000 §16).
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes());
    } else {
        out.extend_from_slice(&(0xc000_0000_0000_0000 | v).to_be_bytes());
    }
}

/// A variable-length integer at the start of `buf` and its length, or `None` if `buf`
/// does not hold all of it yet.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    if buf.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for &b in &buf[1..len] {
        v = (v << 8) | u64::from(b);
    }
    Some((v, len))
}

/// A frame's type and length at the start of `buf`, and the header's size.
fn frame_header(buf: &[u8]) -> Option<(u64, u64, usize)> {
    let (kind, a) = varint(buf)?;
    let (len, b) = varint(&buf[a..])?;
    Some((kind, len, a + b))
}

fn put_frame(out: &mut Vec<u8>, kind: u64, payload: &[u8]) {
    put_varint(out, kind);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Our SETTINGS: no dynamic table, no blocked streams, our head limit, and (a server)
/// extended CONNECT.
fn settings_frame(server: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in [
        (SETTINGS_QPACK_MAX_TABLE_CAPACITY, 0),
        (SETTINGS_QPACK_BLOCKED_STREAMS, 0),
        (SETTINGS_MAX_FIELD_SECTION_SIZE, MAX_FIELD_SECTION as u64),
    ] {
        put_varint(&mut payload, id);
        put_varint(&mut payload, value);
    }
    if server {
        put_varint(&mut payload, SETTINGS_ENABLE_CONNECT_PROTOCOL);
        put_varint(&mut payload, 1);
    }
    let mut out = Vec::new();
    put_varint(&mut out, CONTROL_STREAM);
    put_frame(&mut out, SETTINGS, &payload);
    out
}

/// What the peer's SETTINGS said that matters here.
#[derive(Debug, Clone, Copy, Default)]
struct PeerSettings {
    connect_protocol: bool,
    max_field_section: Option<u64>,
}

fn parse_settings(mut payload: &[u8]) -> io::Result<PeerSettings> {
    let mut settings = PeerSettings::default();
    let mut seen = Vec::new();
    while !payload.is_empty() {
        let bad = || protocol_error("SETTINGS frame cut in the middle of a setting");
        let (id, a) = varint(payload).ok_or_else(bad)?;
        let (value, b) = varint(&payload[a..]).ok_or_else(bad)?;
        payload = &payload[a + b..];
        if seen.contains(&id) {
            return Err(protocol_error(format!("setting {id:#x} sent twice")));
        }
        seen.push(id);
        match id {
            // HTTP/2's settings have no meaning in HTTP/3 (§7.2.4.1).
            0x0 | 0x2 | 0x3 | 0x4 | 0x5 => {
                return Err(protocol_error(format!("HTTP/2 setting {id:#x} in HTTP/3")))
            }
            SETTINGS_ENABLE_CONNECT_PROTOCOL => match value {
                0 | 1 => settings.connect_protocol = value == 1,
                _ => return Err(protocol_error("SETTINGS_ENABLE_CONNECT_PROTOCOL above 1")),
            },
            SETTINGS_MAX_FIELD_SECTION_SIZE => settings.max_field_section = Some(value),
            _ => {}
        }
    }
    Ok(settings)
}

/// The receiving half of a stream, with the bytes read ahead of what was parsed.
struct Recv {
    stream: quinn::RecvStream,
    buf: BytesMut,
}

impl Recv {
    fn new(stream: quinn::RecvStream) -> Recv {
        Recv {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Reads more into `buf`: `false` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(16 << 10);
        }
        let spare = self.buf.spare_capacity_mut();
        let mut read = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        // SAFETY: `n` bytes of the spare capacity were just initialised by the read.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(n > 0))
    }

    async fn fill(&mut self) -> io::Result<bool> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// The next variable-length integer, `None` at the end of the stream before it.
    async fn varint(&mut self) -> io::Result<Option<u64>> {
        loop {
            if let Some((v, n)) = varint(&self.buf) {
                self.buf.advance(n);
                return Ok(Some(v));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(protocol_error("stream ends inside an integer"))
                };
            }
        }
    }

    /// The next whole frame (type and payload), `None` at the end of the stream between
    /// frames. A payload over `max` is an error unless the type is unknown, in which case
    /// it is skipped without being kept.
    async fn frame(&mut self, max: usize) -> io::Result<Option<(u64, Bytes)>> {
        loop {
            let Some((kind, len, head)) = frame_header(&self.buf) else {
                if !self.fill().await? {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(protocol_error("stream ends inside a frame header"))
                    };
                }
                continue;
            };
            let known = matches!(
                kind,
                DATA | HEADERS | CANCEL_PUSH | SETTINGS | PUSH_PROMISE | GOAWAY | MAX_PUSH_ID
            ) || reserved_http2_frame(kind);
            if known && len > max as u64 {
                return Err(protocol_error(format!(
                    "frame of type {kind:#x} with {len} bytes, more than {max}"
                )));
            }
            self.buf.advance(head);
            if !known {
                // Unknown types (and the reserved "grease" ones) are skipped (§9).
                let mut left = len;
                while left > 0 {
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(protocol_error("stream ends inside a frame"));
                    }
                    let n = (self.buf.len() as u64).min(left) as usize;
                    self.buf.advance(n);
                    left -= n as u64;
                }
                continue;
            }
            let len = len as usize;
            while self.buf.len() < len {
                if !self.fill().await? {
                    return Err(protocol_error("stream ends inside a frame"));
                }
            }
            return Ok(Some((kind, self.buf.split_to(len).freeze())));
        }
    }
}

/// One request stream of an HTTP/3 connection carrying a WebSocket: the transport inside
/// [`MaybeTlsStream::Http3`](crate::MaybeTlsStream) (client) and
/// [`Upgraded`](crate::upgrade::Upgraded) (server). Reads give the payload of its DATA
/// frames; each write is sent as (part of) a DATA frame.
pub struct H3Stream {
    send: quinn::SendStream,
    recv: Recv,
    /// Payload bytes of the DATA frame being read that are still to come.
    data_left: u64,
    /// Bytes of an ignored frame (unknown type, trailers) still to skip.
    skip_left: u64,
    /// The header of the DATA frame being written, not sent yet.
    head: Vec<u8>,
    head_sent: usize,
    /// Payload bytes of the DATA frame being written that are still owed.
    frame_left: usize,
    /// The client's hold on its pooled connection (the last stream out closes it).
    _connection: Option<Lease>,
    id: u64,
}

impl std::fmt::Debug for H3Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Stream")
            .field("stream", &self.send.id())
            .field("connection", &self.id)
            .finish()
    }
}

impl H3Stream {
    fn new(send: quinn::SendStream, recv: Recv, id: u64, connection: Option<Lease>) -> H3Stream {
        H3Stream {
            send,
            recv,
            data_left: 0,
            skip_left: 0,
            head: Vec::with_capacity(9),
            head_sent: 0,
            frame_left: 0,
            _connection: connection,
            id,
        }
    }

    /// Which QUIC connection this stream belongs to (a number unique in the process):
    /// WebSockets with the same number share one connection.
    pub fn connection_id(&self) -> u64 {
        self.id
    }
}

/// The largest DATA frame written at once.
const MAX_DATA_FRAME: usize = 1 << 20;

impl AsyncRead for H3Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.skip_left > 0 {
                if this.recv.buf.is_empty() && !ready!(this.recv.poll_fill(cx))? {
                    return Poll::Ready(Err(protocol_error("stream ends inside a frame")));
                }
                let n = (this.recv.buf.len() as u64).min(this.skip_left) as usize;
                this.recv.buf.advance(n);
                this.skip_left -= n as u64;
                continue;
            }
            if this.data_left > 0 {
                let want = (this.data_left.min(out.remaining() as u64)) as usize;
                if want == 0 {
                    return Poll::Ready(Ok(()));
                }
                if !this.recv.buf.is_empty() {
                    let n = want.min(this.recv.buf.len());
                    out.put_slice(&this.recv.buf[..n]);
                    this.recv.buf.advance(n);
                    this.data_left -= n as u64;
                    return Poll::Ready(Ok(()));
                }
                // Nothing read ahead: straight into the caller's buffer.
                let dst = out.initialize_unfilled_to(want);
                let mut direct = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.recv.stream).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(protocol_error("stream ends inside a DATA frame")));
                }
                out.advance(n);
                this.data_left -= n as u64;
                return Poll::Ready(Ok(()));
            }
            let Some((kind, len, head)) = frame_header(&this.recv.buf) else {
                if !ready!(this.recv.poll_fill(cx))? {
                    if this.recv.buf.is_empty() {
                        return Poll::Ready(Ok(())); // the end of the stream
                    }
                    return Poll::Ready(Err(protocol_error("stream ends inside a frame header")));
                }
                continue;
            };
            this.recv.buf.advance(head);
            match kind {
                DATA => this.data_left = len,
                // Trailers: nothing of a WebSocket's; skipped.
                HEADERS => this.skip_left = len,
                CANCEL_PUSH | SETTINGS | GOAWAY | MAX_PUSH_ID | PUSH_PROMISE => {
                    return Poll::Ready(Err(protocol_error(format!(
                        "frame of type {kind:#x} on a request stream"
                    ))))
                }
                k if reserved_http2_frame(k) => {
                    return Poll::Ready(Err(protocol_error(format!(
                        "HTTP/2 frame type {k:#x} in HTTP/3"
                    ))))
                }
                _ => this.skip_left = len,
            }
        }
    }
}

impl AsyncWrite for H3Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.frame_left == 0 {
            // A new DATA frame for (up to 1 MiB of) these bytes. Whatever is written next
            // is the rest of its payload: a stream's bytes are the frame's, in order.
            this.frame_left = buf.len().min(MAX_DATA_FRAME);
            this.head.clear();
            put_varint(&mut this.head, DATA);
            put_varint(&mut this.head, this.frame_left as u64);
            this.head_sent = 0;
        }
        while this.head_sent < this.head.len() {
            let n = ready!(Pin::new(&mut this.send).poll_write(cx, &this.head[this.head_sent..]))?;
            this.head_sent += n;
        }
        let take = buf.len().min(this.frame_left);
        let n = ready!(Pin::new(&mut this.send).poll_write(cx, &buf[..take]))?;
        this.frame_left -= n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.frame_left > 0 {
            // A DATA frame announced and not filled cannot be ended cleanly.
            let _ = this.send.reset(code(H3_REQUEST_CANCELLED));
        } else {
            let _ = this.send.finish();
        }
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------
// Connections: the control streams, on both sides.

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Opens our control stream and sends SETTINGS. The stream must stay open for the
/// connection's life (closing it is an error), so the caller keeps it.
async fn open_control(conn: &quinn::Connection, server: bool) -> io::Result<quinn::SendStream> {
    let mut control = conn.open_uni().await.map_err(io::Error::other)?;
    control
        .write_all(&settings_frame(server))
        .await
        .map_err(io::Error::other)?;
    Ok(control)
}

/// Accepts the peer's unidirectional streams for the connection's life: the control
/// stream (its SETTINGS into `settings`, GOAWAY into `going_away`), QPACK's two streams
/// (read and dropped: with no dynamic table they carry nothing we need), and refuses the
/// rest. A broken rule closes the connection with its error code.
async fn run_peer_streams(
    conn: quinn::Connection,
    settings: watch::Sender<Option<PeerSettings>>,
    going_away: Arc<AtomicBool>,
    server: bool,
) {
    let mut control_seen = false;
    loop {
        let Ok(stream) = conn.accept_uni().await else {
            return;
        };
        let mut recv = Recv::new(stream);
        let kind = match tokio::time::timeout(HEAD_TIMEOUT, recv.varint()).await {
            Ok(Ok(Some(kind))) => kind,
            _ => continue,
        };
        match kind {
            CONTROL_STREAM => {
                if control_seen {
                    conn.close(code(H3_STREAM_CREATION_ERROR), b"second control stream");
                    return;
                }
                control_seen = true;
                let conn = conn.clone();
                let settings = settings.clone();
                let going_away = going_away.clone();
                tokio::spawn(async move {
                    if let Err((c, why)) = read_control(&mut recv, &settings, &going_away).await {
                        tracing::debug!("HTTP/3 control stream: {why}");
                        conn.close(code(c), why.as_bytes());
                    }
                });
            }
            QPACK_ENCODER_STREAM | QPACK_DECODER_STREAM => {
                tokio::spawn(async move {
                    // Our table capacity is 0: an encoder instruction that inserts is
                    // an error, but the stream itself may be opened; drain it.
                    while let Ok(true) = recv.fill().await {
                        recv.buf.clear();
                    }
                });
            }
            PUSH_STREAM if !server => {
                // We never sent MAX_PUSH_ID: a push is a protocol error (§4.6).
                conn.close(code(H3_ID_ERROR), b"push without MAX_PUSH_ID");
                return;
            }
            _ => {
                let _ = recv.stream.stop(code(H3_STREAM_CREATION_ERROR));
            }
        }
    }
}

async fn read_control(
    recv: &mut Recv,
    settings: &watch::Sender<Option<PeerSettings>>,
    going_away: &AtomicBool,
) -> std::result::Result<(), (u32, String)> {
    let fail = |c: u32| move |e: io::Error| (c, e.to_string());
    match recv
        .frame(16 << 10)
        .await
        .map_err(fail(H3_SETTINGS_ERROR))?
    {
        Some((SETTINGS, payload)) => {
            let parsed = parse_settings(&payload).map_err(fail(H3_SETTINGS_ERROR))?;
            settings.send_replace(Some(parsed));
        }
        Some(_) => {
            return Err((
                H3_MISSING_SETTINGS,
                "control stream without SETTINGS first".into(),
            ))
        }
        None => return Err((H3_CLOSED_CRITICAL_STREAM, "control stream closed".into())),
    }
    loop {
        match recv
            .frame(16 << 10)
            .await
            .map_err(fail(H3_GENERAL_PROTOCOL_ERROR))?
        {
            Some((GOAWAY, _)) => going_away.store(true, Ordering::Release),
            Some((SETTINGS, _)) => return Err((H3_FRAME_UNEXPECTED, "second SETTINGS".into())),
            Some((DATA | HEADERS | PUSH_PROMISE, _)) => {
                return Err((
                    H3_FRAME_UNEXPECTED,
                    "request frame on the control stream".into(),
                ))
            }
            Some((k, _)) if reserved_http2_frame(k) => {
                return Err((H3_FRAME_UNEXPECTED, format!("HTTP/2 frame type {k:#x}")))
            }
            Some(_) => {}
            None => return Err((H3_CLOSED_CRITICAL_STREAM, "control stream closed".into())),
        }
    }
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(256))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(8))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            30_000,
        ))));
    t
}

// ---------------------------------------------------------------------------------------
// The client.

/// One pooled client connection.
struct Conn {
    id: u64,
    quic: quinn::Connection,
    settings: watch::Receiver<Option<PeerSettings>>,
    going_away: Arc<AtomicBool>,
    streams: AtomicUsize,
    key: String,
    /// Our control stream, open as long as the connection.
    _control: Mutex<quinn::SendStream>,
    /// The socket the connection runs on.
    _endpoint: quinn::Endpoint,
    /// The TLS configuration whose address is part of the pool's key: kept alive so that
    /// the address cannot be reused by another configuration while this connection lives.
    _tls: Arc<rustls::ClientConfig>,
}

/// A WebSocket's hold on its pooled connection: the last one out closes it.
struct Lease(Arc<Conn>);

/// The pooled connections of each host (and TLS configuration): more than one once the
/// server's stream limit is reached on the first.
fn pool() -> &'static Mutex<HashMap<String, Vec<Arc<Conn>>>> {
    static POOL: OnceLock<Mutex<HashMap<String, Vec<Arc<Conn>>>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// Takes `conn` out of the pool.
fn unpool(pool: &mut HashMap<String, Vec<Arc<Conn>>>, conn: &Arc<Conn>) {
    if let Some(conns) = pool.get_mut(&conn.key) {
        conns.retain(|c| !Arc::ptr_eq(c, conn));
        if conns.is_empty() {
            pool.remove(&conn.key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = lock(pool());
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            unpool(&mut pool, &self.0);
            self.0.quic.close(code(H3_NO_ERROR), b"");
            let mut closing = lock(closing());
            // Endpoints whose connections are all gone need no waiting for.
            closing.retain(|e| e.open_connections() > 0);
            closing.push(self.0._endpoint.clone());
        }
    }
}

/// Endpoints whose connection was closed and whose close may not have left yet.
fn closing() -> &'static Mutex<Vec<quinn::Endpoint>> {
    static CLOSING: OnceLock<Mutex<Vec<quinn::Endpoint>>> = OnceLock::new();
    CLOSING.get_or_init(Default::default)
}

/// Waits (at most `max`) until the client connections closed so far have told their
/// servers so. A QUIC connection's close is a packet sent by a task of the runtime: a
/// program that ends right after its last WebSocket (a command-line tool) calls this
/// first, or the server only learns of it at its idle timeout.
pub async fn wait_closed(max: Duration) {
    let endpoints: Vec<quinn::Endpoint> = std::mem::take(&mut *lock(closing()));
    let all = futures_util::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
    let _ = tokio::time::timeout(max, all).await;
}

fn usable(conn: &Conn) -> bool {
    conn.quic.close_reason().is_none() && !conn.going_away.load(Ordering::Acquire)
}

/// A stream of a pooled connection for `key`, with its lease, if one of them can open a
/// stream now: below the server's stream limit (a connection at the limit is passed
/// over, and taken again once the server returns credit), not closed, not going away
/// (those leave the pool here).
fn take_pooled(key: &str) -> Option<(Lease, Streams)> {
    let mut pool = lock(pool());
    let conns = pool.get_mut(key)?;
    conns.retain(|c| usable(c));
    let mut found = None;
    for conn in conns.iter() {
        match futures_util::FutureExt::now_or_never(conn.quic.open_bi()) {
            Some(Ok(streams)) => {
                found = Some((conn.clone(), streams));
                break;
            }
            Some(Err(e)) => tracing::debug!("HTTP/3 pooled connection unusable: {e}"),
            None => {}
        }
    }
    if conns.is_empty() {
        pool.remove(key);
    }
    let (conn, streams) = found?;
    conn.streams.fetch_add(1, Ordering::AcqRel);
    Some((Lease(conn), streams))
}

type Streams = (quinn::SendStream, quinn::RecvStream);

/// The number of client QUIC connections pooled in this process (for tests and
/// diagnostics).
pub fn pooled_connections() -> usize {
    lock(pool()).values().map(Vec::len).sum()
}

/// One dial per key at a time, so that a burst of WebSockets to one host shares the
/// first connection instead of each opening its own.
fn dial_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static DIALS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut dials = lock(DIALS.get_or_init(Default::default));
    dials.retain(|_, m| Arc::strong_count(m) > 1);
    dials.entry(key.to_owned()).or_default().clone()
}

fn failed(url: &WsUrl, why: impl std::fmt::Display) -> Error {
    Error::new(Kind::Http3(format!("{}: {why}", url.authority())))
}

/// The request a WebSocket over HTTP/3 is opened with (RFC 9220 §3).
pub(crate) use crate::connect::ExtendedConnect as Request;

/// Opens a WebSocket over HTTP/3 to `req.url` (`wss://` only): on a pooled connection to
/// that host when there is one, otherwise on a new one. Returns the stream and the
/// server's 2xx response; a refusal is `Kind::Refused` with the status and the first
/// line of the body, as over HTTP/1.1.
pub(crate) async fn open(
    req: &Request<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: &crate::proxy::Proxy,
) -> Result<(Box<H3Stream>, http::Response<()>)> {
    let url = req.url;
    if !url.tls {
        return Err(failed(
            url,
            "HTTP/3 runs over QUIC, which is always encrypted: use a wss:// URL",
        ));
    }
    if proxy.applies_to(url)? {
        return Err(failed(
            url,
            "HTTP/3 runs over UDP and cannot pass an HTTP or SOCKS5 proxy (turn the proxy off for this host, or HTTP/3 off)",
        ));
    }
    let tls = tls.unwrap_or_else(crate::transport::default_client_config);
    let key = format!("{}:{}|{:p}", url.host, url.port, Arc::as_ptr(&tls));
    if let Some((lease, streams)) = take_pooled(&key) {
        return request(req, lease, streams).await;
    }
    let dial = dial_lock(&key);
    let dialing = dial.lock().await;
    if let Some((lease, streams)) = take_pooled(&key) {
        drop(dialing);
        return request(req, lease, streams).await;
    }
    let conn = dial_new(url, &tls, key.clone()).await?;
    conn.streams.fetch_add(1, Ordering::AcqRel);
    let lease = Lease(conn.clone());
    // A new connection has the server's whole stream limit.
    let streams = conn.quic.open_bi().await.map_err(|e| failed(url, e))?;
    lock(pool()).entry(key).or_default().push(conn);
    drop(dialing);
    request(req, lease, streams).await
}

async fn dial_new(url: &WsUrl, tls: &Arc<rustls::ClientConfig>, key: String) -> Result<Arc<Conn>> {
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await?
        .next()
        .ok_or_else(|| failed(url, "the host name has no address"))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind)?;
    let mut rustls_config = (**tls).clone();
    rustls_config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| failed(url, format!("TLS configuration unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    let connecting = endpoint
        .connect_with(config, addr, &url.host)
        .map_err(|e| failed(url, e))?;
    let quic = connecting.await.map_err(|e| match e {
        quinn::ConnectionError::TransportError(t) => {
            match crate::transport::bad_certificate_text(&t.reason, &url.host) {
                Some(why) => failed(url, format!("TLS: {why}")),
                None => failed(url, format!("TLS: {}", t.reason)),
            }
        }
        quinn::ConnectionError::TimedOut => failed(
            url,
            format!(
                "no QUIC answer from udp/{addr} (is HTTP/3 served there? tidewire serve --http3)"
            ),
        ),
        e => failed(url, e),
    })?;
    let control = open_control(&quic, false).await?;
    let (settings_tx, mut settings) = watch::channel(None);
    let going_away = Arc::new(AtomicBool::new(false));
    tokio::spawn(run_peer_streams(
        quic.clone(),
        settings_tx,
        going_away.clone(),
        false,
    ));
    // RFC 9220 §3: no extended CONNECT before the server's SETTINGS allowed it.
    let peer = tokio::select! {
        s = settings.wait_for(Option::is_some) => s.ok().and_then(|s| *s),
        e = quic.closed() => return Err(failed(url, format!("connection closed before the server's SETTINGS: {e}"))),
    };
    let Some(peer) = peer else {
        return Err(failed(
            url,
            "connection closed before the server's SETTINGS",
        ));
    };
    if !peer.connect_protocol {
        quic.close(code(H3_NO_ERROR), b"");
        return Err(failed(
            url,
            "the server's HTTP/3 does not allow extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL): it does not serve WebSockets over HTTP/3",
        ));
    }
    Ok(Arc::new(Conn {
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        quic,
        settings,
        going_away,
        streams: AtomicUsize::new(0),
        key,
        _control: Mutex::new(control),
        _endpoint: endpoint,
        _tls: tls.clone(),
    }))
}

async fn request(
    req: &Request<'_>,
    lease: Lease,
    (mut send, recv): Streams,
) -> Result<(Box<H3Stream>, http::Response<()>)> {
    let url = req.url;
    let conn = lease.0.clone();
    let limit = conn
        .settings
        .borrow()
        .and_then(|s| s.max_field_section)
        .unwrap_or(u64::MAX);
    let path = url.path_and_query.as_str();
    let authority = url.host_header();
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), b"CONNECT".to_vec()),
        (b":protocol".to_vec(), b"websocket".to_vec()),
        (b":scheme".to_vec(), b"https".to_vec()),
        (b":authority".to_vec(), authority.into_bytes()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
        (b"sec-websocket-version".to_vec(), b"13".to_vec()),
    ];
    if !req.protocols.is_empty() {
        fields.push((
            b"sec-websocket-protocol".to_vec(),
            req.protocols.join(", ").into_bytes(),
        ));
    }
    if let Some(ext) = req.extensions {
        fields.push((
            b"sec-websocket-extensions".to_vec(),
            ext.as_bytes().to_vec(),
        ));
    }
    if let Some(origin) = req.origin {
        fields.push((b"origin".to_vec(), origin.as_bytes().to_vec()));
    }
    for (name, value) in req.headers {
        if is_connection_specific(name) || name == http::header::HOST {
            continue;
        }
        fields.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    if size as u64 > limit {
        return Err(failed(
            url,
            format!("request head of {size} bytes is over the server's limit of {limit}"),
        ));
    }
    let mut block = Vec::new();
    qpack::encode(
        fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        &mut block,
    );
    let mut head = Vec::with_capacity(block.len() + 8);
    put_frame(&mut head, HEADERS, &block);
    send.write_all(&head).await.map_err(|e| failed(url, e))?;
    let mut recv = Recv::new(recv);
    let (status, headers) = loop {
        let (kind, payload) = recv
            .frame(MAX_FIELD_SECTION)
            .await
            .map_err(|e| failed(url, e))?
            .ok_or_else(|| failed(url, "the server ended the stream without a response"))?;
        if kind != HEADERS {
            return Err(failed(
                url,
                format!("frame of type {kind:#x} before the response's HEADERS"),
            ));
        }
        let (status, headers) = response_head(&payload).map_err(|e| failed(url, e))?;
        if !status.is_informational() {
            break (status, headers);
        }
    };
    if !status.is_success() {
        let body = refusal_body(&mut recv).await;
        return Err(crate::connect::refused(status, &headers, body));
    }
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = http::Version::HTTP_3;
    *response.headers_mut() = headers;
    let id = conn.id;
    Ok((
        Box::new(H3Stream::new(send, recv, id, Some(lease))),
        response,
    ))
}

fn response_head(block: &[u8]) -> io::Result<(http::StatusCode, http::HeaderMap)> {
    let fields =
        qpack::decode(block, MAX_FIELD_SECTION).map_err(|e| protocol_error(e.to_string()))?;
    let mut status = None;
    let mut headers = http::HeaderMap::new();
    for (name, value) in fields {
        if name == b":status" {
            status = http::StatusCode::from_bytes(&value).ok();
        } else if name.first() == Some(&b':') {
            return Err(protocol_error("unknown pseudo-header in a response"));
        } else {
            let name = http::HeaderName::from_bytes(&name)
                .map_err(|_| protocol_error("bad header name"))?;
            let value = http::HeaderValue::from_bytes(&value)
                .map_err(|_| protocol_error("bad header value"))?;
            headers.append(name, value);
        }
    }
    let status = status.ok_or_else(|| protocol_error("response without :status"))?;
    Ok((status, headers))
}

/// The first line of a refusal's body (at most 1 KiB, for at most 1 s).
async fn refusal_body(recv: &mut Recv) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < 1024 {
            match recv.frame(64 << 10).await {
                Ok(Some((DATA, data))) => body.extend_from_slice(&data),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    crate::connect::first_line(&body[..body.len().min(1024)])
}

fn is_connection_specific(name: &http::HeaderName) -> bool {
    name == http::header::CONNECTION
        || name == http::header::TRANSFER_ENCODING
        || name == http::header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

// ---------------------------------------------------------------------------------------
// The server.

/// A QUIC server configuration for HTTP/3 from a rustls one (its certificates): ALPN
/// `h3` (other ALPN values are dropped), TLS 1.3 (QUIC has no other), and the stream and
/// connection windows of [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`].
pub fn server_config(tls: &rustls::ServerConfig) -> Result<quinn::ServerConfig> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
        Error::new(Kind::Http3(format!(
            "TLS configuration unusable for QUIC: {e}"
        )))
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The request body of a plain request over HTTP/3, read whole before the service runs
/// (at most 4 MiB; more is answered 413).
pub type Body = http_body_util::Full<Bytes>;

/// What an extended CONNECT's request carries for [`upgrade`](crate::upgrade::upgrade) to
/// take: the stream, handed over once the 2xx response is sent.
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<H3Stream>>>>);

impl std::fmt::Debug for OnUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("http3::OnUpgrade")
    }
}

impl OnUpgrade {
    pub(crate) async fn wait(self) -> Result<H3Stream> {
        let rx = lock(&self.0).take();
        match rx {
            Some(rx) => rx.await.map_err(|_| {
                Error::from(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "HTTP/3 stream gone before the upgrade",
                ))
            }),
            None => Err(Error::from(io::Error::other("HTTP/3 upgrade taken twice"))),
        }
    }
}

/// Serves one incoming QUIC connection as HTTP/3 until it ends: each request stream goes
/// to `service` in a task of its own, extended CONNECTs included (the service accepts
/// them with [`upgrade`](crate::upgrade::upgrade) or axum's `WebSocketUpgrade`, which find
/// an [`OnUpgrade`] in the request's extensions). Requests arrive with version `HTTP_3`,
/// a `Host` header made from `:authority` when they have none, hyper's
/// [`Protocol`](hyper::ext::Protocol) extension for `:protocol websocket`, and the peer's
/// address as a [`SocketAddr`] extension.
pub async fn serve_connection<S, B>(incoming: quinn::Incoming, service: S) -> Result<()>
where
    S: hyper::service::Service<http::Request<Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    let quic = incoming.await.map_err(io::Error::other)?;
    let peer = quic.remote_address();
    let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let _control = open_control(&quic, true).await?;
    let (settings_tx, _settings) = watch::channel(None);
    tokio::spawn(run_peer_streams(
        quic.clone(),
        settings_tx,
        Arc::new(AtomicBool::new(false)),
        true,
    ));
    // A connection that sends no request at all is closed, as over HTTP/1.1 and HTTP/2.
    let mut first = true;
    loop {
        let accepted = if first {
            first = false;
            match tokio::time::timeout(HEAD_TIMEOUT, quic.accept_bi()).await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tracing::debug!(%peer, "HTTP/3: no request within {} s", HEAD_TIMEOUT.as_secs());
                    quic.close(code(H3_NO_ERROR), b"no request");
                    return Ok(());
                }
            }
        } else {
            quic.accept_bi().await
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(
                quinn::ConnectionError::ApplicationClosed(_)
                | quinn::ConnectionError::LocallyClosed,
            ) => return Ok(()),
            Err(e) => {
                tracing::debug!(%peer, "HTTP/3 connection ended: {e}");
                return Ok(());
            }
        };
        let service = service.clone();
        let quic = quic.clone();
        tokio::spawn(async move {
            if let Err((c, why)) = serve_request(send, Recv::new(recv), service, peer, id).await {
                tracing::debug!(%peer, "HTTP/3 request failed: {why}");
                if c == QPACK_DECOMPRESSION_FAILED {
                    quic.close(code(c), why.as_bytes());
                }
            }
        });
    }
}

/// Serves one incoming QUIC connection whose requests are all WebSockets (as
/// [`serve_http2`](crate::upgrade::serve_http2) does for HTTP/2): each extended CONNECT
/// that `server` accepts is answered 200 and handed to `on_socket` in a task of its own;
/// any other request gets the refusal's status and reason.
pub async fn serve_websockets<F, Fut>(
    incoming: quinn::Incoming,
    server: crate::ServerBuilder,
    on_socket: F,
) -> Result<()>
where
    F: Fn(crate::WebSocketStream<crate::upgrade::Upgraded>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: http::Request<Body>| {
        std::future::ready(Ok::<_, std::convert::Infallible>(
            crate::upgrade::answer_websocket(&mut req, &server, &on_socket),
        ))
    });
    serve_connection(incoming, service).await
}

/// A request's head as HTTP/3 sends it, made into an `http::Request` (RFC 9114 §4.3.1,
/// RFC 9220 §3); the error is the reason a 400 gives.
fn request_head(
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    peer: SocketAddr,
) -> std::result::Result<http::Request<()>, String> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    let mut headers = http::HeaderMap::new();
    let mut regular = false;
    for (name, value) in fields {
        let text =
            || String::from_utf8(value.clone()).map_err(|_| "pseudo-header not UTF-8".to_string());
        let slot = match name.as_slice() {
            b":method" => &mut method,
            b":scheme" => &mut scheme,
            b":authority" => &mut authority,
            b":path" => &mut path,
            b":protocol" => &mut protocol,
            n if n.first() == Some(&b':') => {
                return Err(format!(
                    "unknown pseudo-header {}",
                    String::from_utf8_lossy(n)
                ))
            }
            n => {
                regular = true;
                if n.iter().any(u8::is_ascii_uppercase) {
                    return Err("upper-case header name".into());
                }
                let name = http::HeaderName::from_bytes(n)
                    .map_err(|_| "invalid header name".to_string())?;
                if is_connection_specific(&name) {
                    return Err(format!("connection-specific header {name} in HTTP/3"));
                }
                let value = http::HeaderValue::from_bytes(&value)
                    .map_err(|_| "invalid header value".to_string())?;
                headers.append(name, value);
                continue;
            }
        };
        if regular {
            return Err("pseudo-header after a regular header".into());
        }
        if slot.is_some() {
            return Err(format!("{} twice", String::from_utf8_lossy(&name)));
        }
        *slot = Some(text()?);
    }
    let method = method.ok_or("request without :method")?;
    let method =
        http::Method::from_bytes(method.as_bytes()).map_err(|_| "invalid :method".to_string())?;
    if method == http::Method::CONNECT && protocol.is_none() {
        // A plain CONNECT (a tunnel) has only :authority; this is not a proxy.
        return Err("CONNECT without :protocol: this server is not a proxy (a WebSocket over HTTP/3 is a CONNECT with :protocol websocket, RFC 9220)".into());
    }
    if protocol.is_some() && method != http::Method::CONNECT {
        return Err(":protocol on a request that is not a CONNECT".into());
    }
    let scheme = scheme.ok_or("request without :scheme")?;
    let path = path
        .filter(|p| !p.is_empty())
        .ok_or("request without :path")?;
    let mut uri = http::Uri::builder()
        .scheme(scheme.as_str())
        .path_and_query(path.as_str());
    if let Some(a) = &authority {
        uri = uri.authority(a.as_str());
    } else if let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        uri = uri.authority(host);
    } else {
        return Err("request without :authority or Host".into());
    }
    let uri = uri
        .build()
        .map_err(|e| format!("invalid request target: {e}"))?;
    if !headers.contains_key(http::header::HOST) {
        if let Some(value) = authority.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
            headers.insert(http::header::HOST, value);
        }
    }
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_3;
    *request.headers_mut() = headers;
    request.extensions_mut().insert(peer);
    if protocol.as_deref() == Some("websocket") {
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
    } else if let Some(p) = protocol {
        return Err(format!(":protocol {p:?}: only websocket is served here"));
    }
    Ok(request)
}

type Failure = (u32, String);

async fn serve_request<S, B>(
    mut send: quinn::SendStream,
    mut recv: Recv,
    service: S,
    peer: SocketAddr,
    id: u64,
) -> std::result::Result<(), Failure>
where
    S: hyper::service::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Display,
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let head = match tokio::time::timeout(HEAD_TIMEOUT, recv.frame(MAX_FIELD_SECTION)).await {
        Ok(Ok(Some((HEADERS, payload)))) => payload,
        Ok(Ok(Some((kind, _)))) => {
            let _ = send.reset(code(H3_FRAME_UNEXPECTED));
            return Err((
                H3_FRAME_UNEXPECTED,
                format!("frame of type {kind:#x} before HEADERS"),
            ));
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let _ = send.reset(code(H3_MESSAGE_ERROR));
            return Err((H3_MESSAGE_ERROR, e.to_string()));
        }
        Err(_) => {
            let _ = send.reset(code(H3_REQUEST_CANCELLED));
            return Err((H3_REQUEST_CANCELLED, "no request head within 10 s".into()));
        }
    };
    let fields = match qpack::decode(&head, MAX_FIELD_SECTION) {
        Ok(fields) => fields,
        Err(e) => return Err((QPACK_DECOMPRESSION_FAILED, e.to_string())),
    };
    let head = match request_head(fields, peer) {
        Ok(head) => head,
        Err(why) => {
            tracing::debug!(%peer, "HTTP/3 request refused: {why}");
            let _ = respond_text(&mut send, http::StatusCode::BAD_REQUEST, &why).await;
            return Ok(());
        }
    };
    let connect = head.extensions().get::<hyper::ext::Protocol>().is_some();
    let (parts, ()) = head.into_parts();
    let (request, handover) = if connect {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut request = http::Request::from_parts(parts, Body::default());
        request
            .extensions_mut()
            .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
        (request, Some(tx))
    } else {
        let mut body = Vec::new();
        loop {
            match recv.frame(MAX_REQUEST_BODY).await {
                Ok(Some((DATA, data))) => {
                    if body.len() + data.len() > MAX_REQUEST_BODY {
                        let _ = respond_text(
                            &mut send,
                            http::StatusCode::PAYLOAD_TOO_LARGE,
                            "request body over 4 MiB",
                        )
                        .await;
                        return Ok(());
                    }
                    body.extend_from_slice(&data);
                }
                Ok(Some((HEADERS, _))) => {} // trailers
                Ok(Some((kind, _))) => {
                    let _ = send.reset(code(H3_FRAME_UNEXPECTED));
                    return Err((
                        H3_FRAME_UNEXPECTED,
                        format!("frame of type {kind:#x} in a request body"),
                    ));
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = send.reset(code(H3_MESSAGE_ERROR));
                    return Err((H3_MESSAGE_ERROR, e.to_string()));
                }
            }
        }
        (
            http::Request::from_parts(parts, Body::new(Bytes::from(body))),
            None,
        )
    };
    let response = match service.call(request).await {
        Ok(r) => r,
        Err(e) => {
            let _ = respond_text(
                &mut send,
                http::StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            )
            .await;
            return Ok(());
        }
    };
    let (parts, body) = response.into_parts();
    let upgraded = handover.is_some() && parts.status.is_success();
    send_head(&mut send, parts.status, &parts.headers).await?;
    if upgraded {
        if let Some(tx) = handover {
            // The service took the stream (it awaits it now); if it did not, the
            // response ends here.
            if let Err(mut stream) = tx.send(H3Stream::new(send, recv, id, None)) {
                let _ = stream.send.finish();
            }
        }
        return Ok(());
    }
    send_body(&mut send, body).await;
    let _ = send.finish();
    Ok(())
}

async fn send_head(
    send: &mut quinn::SendStream,
    status: http::StatusCode,
    headers: &http::HeaderMap,
) -> std::result::Result<(), Failure> {
    let status_text = status.as_str().as_bytes().to_vec();
    let fields = std::iter::once((&b":status"[..], status_text.as_slice())).chain(
        headers
            .iter()
            .filter(|(n, _)| !is_connection_specific(n))
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    let mut block = Vec::new();
    qpack::encode(fields, &mut block);
    let mut frame = Vec::with_capacity(block.len() + 8);
    put_frame(&mut frame, HEADERS, &block);
    send.write_all(&frame)
        .await
        .map_err(|e| (H3_REQUEST_CANCELLED, e.to_string()))
}

async fn send_body<B>(send: &mut quinn::SendStream, body: B)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let mut head = Vec::with_capacity(9);
        put_varint(&mut head, DATA);
        put_varint(&mut head, data.len() as u64);
        let mut chunks = [Bytes::from(head), data.split_off(0)];
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
    }
}

async fn respond_text(
    send: &mut quinn::SendStream,
    status: http::StatusCode,
    why: &str,
) -> std::result::Result<(), Failure> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    send_head(send, status, &headers).await?;
    send_body(send, Body::new(Bytes::from(format!("{why}\n")))).await;
    let _ = send.finish();
    Ok(())
}

/// What the fuzz targets run: the parsers of what a peer sends, on any bytes.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A request head as a server receives it: QPACK decoding, then the checks of
    /// RFC 9114 §4.3. Never panics; a decoded section encodes back to the same fields.
    pub fn request_head(block: &[u8]) {
        let Ok(fields) = qpack::decode(block, MAX_FIELD_SECTION) else {
            return;
        };
        let mut again = Vec::new();
        qpack::encode(
            fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
            &mut again,
        );
        assert_eq!(qpack::decode(&again, usize::MAX).as_ref(), Ok(&fields));
        let _ = super::request_head(fields, SocketAddr::from(([127, 0, 0, 1], 1)));
        let _ = response_head(block);
    }

    /// A control stream's bytes: frame headers, then SETTINGS payloads. Never panics.
    pub fn control(mut data: &[u8]) {
        while let Some((kind, len, head)) = frame_header(data) {
            let end = (head as u64).saturating_add(len).min(data.len() as u64) as usize;
            if kind == SETTINGS {
                let _ = parse_settings(&data[head..end]);
            }
            data = &data[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_heads_and_control_streams_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9220);
        let mut valid = Vec::new();
        qpack::encode(
            [
                (&b":method"[..], &b"CONNECT"[..]),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":authority", b"example.com"),
                (b":path", b"/ws"),
                (b"sec-websocket-version", b"13"),
            ],
            &mut valid,
        );
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for round in 0..200_000 {
            let block: Vec<u8> = if round % 2 == 0 {
                let len = rng.gen_range(0..64);
                (0..len).map(|_| rng.gen()).collect()
            } else {
                let mut b = valid.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..b.len());
                    b[i] = rng.gen();
                }
                b.truncate(rng.gen_range(0..=b.len()));
                b
            };
            if let Ok(fields) = qpack::decode(&block, MAX_FIELD_SECTION) {
                let mut again = Vec::new();
                qpack::encode(
                    fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                    &mut again,
                );
                assert_eq!(qpack::decode(&again, usize::MAX).unwrap(), fields);
                let _ = request_head(fields, peer);
            }
            let _ = response_head(&block);
            let mut data = &block[..];
            while let Some((kind, len, head)) = frame_header(data) {
                let end = (head as u64).saturating_add(len).min(data.len() as u64) as usize;
                if kind == SETTINGS {
                    let _ = parse_settings(&data[head..end]);
                }
                data = &data[end..];
            }
        }
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [
            0u64,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint(&out), Some((v, out.len())), "{v}");
            assert_eq!(varint(&out[..out.len() - 1]), None);
        }
        // RFC 9000 §A.1's examples.
        assert_eq!(
            varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(varint(&[0x25]), Some((37, 1)));
    }

    #[test]
    fn settings_are_read_and_http2_ones_refused() {
        let ours = settings_frame(true);
        // Stream type, then the frame.
        assert_eq!(ours[0], CONTROL_STREAM as u8);
        let (kind, len, head) = frame_header(&ours[1..]).unwrap();
        assert_eq!(kind, SETTINGS);
        let s = parse_settings(&ours[1 + head..1 + head + len as usize]).unwrap();
        assert!(s.connect_protocol);
        assert_eq!(s.max_field_section, Some(MAX_FIELD_SECTION as u64));
        assert!(
            !parse_settings(&settings_frame(false)[3..])
                .unwrap()
                .connect_protocol
        );
        assert!(
            parse_settings(&[0x02, 0x00]).is_err(),
            "SETTINGS_ENABLE_PUSH is HTTP/2's"
        );
        assert!(
            parse_settings(&[0x08, 0x02]).is_err(),
            "ENABLE_CONNECT_PROTOCOL 2"
        );
        assert!(parse_settings(&[0x08, 0x01, 0x08, 0x01]).is_err(), "twice");
        assert!(parse_settings(&[0x08]).is_err(), "cut");
        // Unknown (grease) settings are ignored.
        assert!(
            parse_settings(&[0x40, 0x21, 0x05, 0x08, 0x01])
                .unwrap()
                .connect_protocol
        );
    }

    #[test]
    fn request_heads_are_checked_as_rfc_9114_and_9220_say() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let f = |pairs: &[(&str, &str)]| -> Vec<qpack::Field> {
            pairs
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()
        };
        let ok = request_head(
            f(&[
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":authority", "h:4"),
                (":path", "/ws"),
                ("sec-websocket-version", "13"),
            ]),
            peer,
        )
        .unwrap();
        assert_eq!(ok.version(), http::Version::HTTP_3);
        assert_eq!(ok.headers()["host"], "h:4");
        assert_eq!(
            ok.extensions()
                .get::<hyper::ext::Protocol>()
                .unwrap()
                .as_str(),
            "websocket"
        );
        for (bad, why) in [
            (
                f(&[(":method", "CONNECT"), (":authority", "h:4")]),
                "not a proxy",
            ),
            (
                f(&[
                    (":method", "CONNECT"),
                    (":protocol", "webtransport"),
                    (":scheme", "https"),
                    (":authority", "h"),
                    (":path", "/"),
                ]),
                "only websocket",
            ),
            (
                f(&[
                    (":method", "GET"),
                    (":protocol", "websocket"),
                    (":scheme", "https"),
                    (":authority", "h"),
                    (":path", "/"),
                ]),
                "not a CONNECT",
            ),
            (
                f(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", "h"),
                ]),
                ":path",
            ),
            (
                f(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/"),
                    (":authority", "h"),
                    (":path", "/"),
                ]),
                "twice",
            ),
            (
                f(&[
                    (":method", "GET"),
                    ("x", "1"),
                    (":scheme", "https"),
                    (":path", "/"),
                    (":authority", "h"),
                ]),
                "after a regular",
            ),
            (
                f(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/"),
                    (":authority", "h"),
                    ("Upper", "1"),
                ]),
                "upper-case",
            ),
            (
                f(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/"),
                    (":authority", "h"),
                    ("connection", "close"),
                ]),
                "connection-specific",
            ),
            (
                f(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/"),
                    (":authority", "h"),
                    (":foo", "1"),
                ]),
                "unknown pseudo",
            ),
        ] {
            let e = request_head(bad, peer).unwrap_err();
            assert!(e.contains(why), "{e} should say {why}");
        }
    }
}
