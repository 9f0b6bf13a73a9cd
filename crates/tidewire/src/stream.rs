//! [`WebSocketStream`]: a [`tidewire_proto::Connection`] driven over any
//! `AsyncRead + AsyncWrite`.
//!
//! Reading parses in place from one read buffer and hands out messages as `Bytes` split
//! off it. Writing queues frames in the core; they leave when the application flushes, or
//! at the latest when the stream is about to wait for input, so everything queued in one
//! turn goes out in one (vectored) write. Pongs, close replies and heartbeat pings ride
//! the same path.
//!
//! Teardown follows RFC 6455 §7.1.1: once the close handshake is done (or the connection
//! failed), the output is flushed, a server shuts its write side down first, a client waits
//! for the server to do so; then the remaining input is drained until end of stream or the
//! close timeout, so that unread bytes never turn the FIN into a reset that could eat the
//! close frame.

use crate::error::{Error, Kind, Result};
use bytes::BytesMut;
use futures_core::Stream;
use futures_sink::Sink;
use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tidewire_proto::{CloseCode, CloseFrame, Connection, Message, Role, State, UsageError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// Heartbeat settings: ping every `interval`, give up when nothing at all has arrived for
/// `timeout`. Only runs while the stream is being polled for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often to ping a connection that has been quiet for that long.
    pub interval: Duration,
    /// Silence after which the connection is closed (1011, "keepalive timeout") and the
    /// stream ends with a timeout error.
    pub timeout: Duration,
}

/// Runtime behaviour of a stream, on top of the core's [`tidewire_proto::Config`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Options {
    /// Protocol behaviour and limits.
    pub config: tidewire_proto::Config,
    /// Optional heartbeat. Default: none.
    pub heartbeat: Option<Heartbeat>,
    /// How long to wait for the peer during teardown (its close frame, its end of stream).
    /// Default 5 s.
    pub close_timeout: Duration,
    /// How long the opening handshake may take. Default 10 s. Exceeded: the handshake
    /// fails with a timeout error (a server answers nothing more; the peer was too slow).
    pub handshake_timeout: Duration,
    /// Queued outgoing bytes above which `poll_ready` (and `feed`) waits for the transport.
    /// Default 128 KiB.
    pub write_buffer_high: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: tidewire_proto::Config::default(),
            heartbeat: None,
            close_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            write_buffer_high: 128 * 1024,
        }
    }
}

impl Options {
    /// Sets the protocol configuration.
    pub fn config(mut self, config: tidewire_proto::Config) -> Self {
        self.config = config;
        self
    }
    /// Sets the limits inside the protocol configuration.
    pub fn limits(mut self, limits: tidewire_proto::Limits) -> Self {
        self.config.limits = limits;
        self
    }
    /// Turns on the heartbeat.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = Some(Heartbeat { interval, timeout });
        self
    }
    /// Sets [`Options::close_timeout`].
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.close_timeout = d;
        self
    }
    /// Sets [`Options::handshake_timeout`].
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Sets [`Options::write_buffer_high`].
    pub fn write_buffer_high(mut self, bytes: usize) -> Self {
        self.write_buffer_high = bytes;
        self
    }
}

struct HeartbeatState {
    settings: Heartbeat,
    timer: Pin<Box<Sleep>>,
    last_seen: Instant,
    seen_since_tick: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    Flush,
    Shutdown,
    Drain,
    Done,
}

/// Read buffer growth step: what one read asks for between frames. A 64 KiB message and its
/// header (at most 14 bytes) fit, so that such a message arrives in one read, not two.
const READ_CHUNK: usize = 64 * 1024 + 16;
/// Largest single reservation for the rest of a big frame.
const MAX_READ: usize = 4 << 20;

/// A WebSocket connection over `S`: a [`Stream`] of incoming [`Message`]s and a [`Sink`] of
/// outgoing ones. Split it into two halves for two tasks with [`WebSocketStream::split`].
pub struct WebSocketStream<S> {
    io: S,
    conn: Connection,
    read_buf: BytesMut,
    read_eof: bool,
    // An idle connection is mostly this struct, so what it carries is kept lean: the two
    // settings the stream reads, not the whole `Options`; rare state boxed.
    close_timeout: Duration,
    write_buffer_high: usize,
    heartbeat: Option<Box<HeartbeatState>>,
    teardown: Teardown,
    close_timer: Option<Pin<Box<Sleep>>>,
    pending_error: Option<Box<Error>>,
    ended: bool,
    skip_drain: bool,
}

impl<S> std::fmt::Debug for WebSocketStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketStream")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketStream<S> {
    /// Wraps a transport whose opening handshake is complete. `leftover` holds bytes read
    /// past the end of the handshake; they belong to the WebSocket stream.
    pub fn from_raw(io: S, role: Role, options: Options, leftover: BytesMut) -> Self {
        Self::from_raw_with_deflate(io, role, options, leftover, None)
    }

    /// As [`WebSocketStream::from_raw`], with the permessage-deflate parameters agreed in
    /// the handshake (the policy/offer is `options.config.compression`).
    pub fn from_raw_with_deflate(
        io: S,
        role: Role,
        options: Options,
        leftover: BytesMut,
        deflate: Option<tidewire_proto::DeflateParams>,
    ) -> Self {
        let mut conn = match role {
            Role::Server => Connection::server(options.config),
            Role::Client => Connection::client(options.config, Box::new(rand::random::<[u8; 4]>)),
        };
        if let Some(params) = deflate {
            let config = options.config.compression.unwrap_or_default();
            conn = conn.with_deflate(params, &config);
        }
        let heartbeat = options.heartbeat.map(|settings| {
            Box::new(HeartbeatState {
                settings,
                timer: Box::pin(tokio::time::sleep(settings.interval)),
                last_seen: Instant::now(),
                seen_since_tick: false,
            })
        });
        WebSocketStream {
            io,
            conn,
            read_buf: leftover,
            read_eof: false,
            close_timeout: options.close_timeout,
            write_buffer_high: options.write_buffer_high,
            heartbeat,
            teardown: Teardown::Flush,
            close_timer: None,
            pending_error: None,
            ended: false,
            skip_drain: false,
        }
    }

    /// The protocol state machine (close state, received close frame, pending output).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The transport, mutably. Reading or writing it directly corrupts the stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The same stream over the transport `f` makes of this one (the same connection under
    /// another type, e.g. a boxed transport unwrapped to the socket it holds). The protocol
    /// state, buffered bytes and settings carry over unchanged.
    pub fn map_io<T: AsyncRead + AsyncWrite + Unpin>(
        self,
        f: impl FnOnce(S) -> T,
    ) -> WebSocketStream<T> {
        WebSocketStream {
            io: f(self.io),
            conn: self.conn,
            read_buf: self.read_buf,
            read_eof: self.read_eof,
            close_timeout: self.close_timeout,
            write_buffer_high: self.write_buffer_high,
            heartbeat: self.heartbeat,
            teardown: self.teardown,
            close_timer: self.close_timer,
            pending_error: self.pending_error,
            ended: self.ended,
            skip_drain: self.skip_drain,
        }
    }

    /// Receives the next message; `None` once the connection has ended cleanly.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Sends a message and flushes it (and everything queued before it).
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        self.queue(msg.into())?;
        self.flush().await
    }

    /// Queues a message without writing it. Queued messages leave together on the next
    /// [`flush`](Self::flush), or when the stream waits for input: queue a burst, then
    /// flush once.
    pub fn queue(&mut self, msg: Message) -> Result<()> {
        if self.ended {
            return Err(Error::new(Kind::Closed));
        }
        self.conn.send(msg).map_err(usage)
    }

    /// Queues a message that is never compressed, even with permessage-deflate on.
    pub fn queue_uncompressed(&mut self, msg: Message) -> Result<()> {
        if self.ended {
            return Err(Error::new(Kind::Closed));
        }
        self.conn.send_uncompressed(msg).map_err(usage)
    }

    /// Queues a message prepared once for many connections (its frame, and its compressed
    /// frame where that can be shared, are encoded once). See
    /// [`tidewire_proto::PreparedMessage`].
    pub fn queue_prepared(&mut self, msg: &tidewire_proto::PreparedMessage) -> Result<()> {
        if self.ended {
            return Err(Error::new(Kind::Closed));
        }
        self.conn.send_prepared(msg).map_err(usage)
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn compression(&self) -> Option<&tidewire_proto::deflate::Deflate> {
        self.conn.deflate()
    }

    /// Queues a message, first waiting for the transport if the queue is over
    /// [`Options::write_buffer_high`].
    pub async fn feed(&mut self, msg: Message) -> Result<()> {
        self.ready().await?;
        self.queue(msg)
    }

    /// Waits until the outgoing queue is under [`Options::write_buffer_high`], writing to
    /// the transport meanwhile. `queue` then `ready` is `feed` without holding the message
    /// across the wait: a loop built on it keeps its task smaller for the connection's
    /// lifetime.
    pub async fn ready(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Runs the close handshake: sends a close frame (default 1000), waits for the peer's,
    /// discarding messages that arrive meanwhile, and closes the transport. Bounded by
    /// [`Options::close_timeout`].
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        if self.conn.state() == State::Open {
            let frame = frame.or_else(|| Some(CloseFrame::new(CloseCode::NORMAL, "")));
            self.conn.close(frame).map_err(usage)?;
        }
        let timeout = self.close_timeout;
        let wait = async {
            while let Some(r) = self.recv().await {
                r?;
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(Kind::Timeout("close handshake"))),
        }
    }

    /// Splits into a sink half and a stream half, usable from two tasks.
    #[allow(clippy::type_complexity)]
    pub fn split(
        self,
    ) -> (
        futures_util::stream::SplitSink<Self, Message>,
        futures_util::stream::SplitStream<Self>,
    ) {
        futures_util::StreamExt::split(self)
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.conn.pending_transmit() > 0 {
            // One contiguous piece (small frames are staged next to their header) goes
            // out with a plain write: send(2) costs the kernel less than writev(2).
            let n = if self.io.is_write_vectored()
                && self.conn.transmit_chunk().len() < self.conn.pending_transmit()
            {
                let mut slices = [IoSlice::new(&[]); 64];
                let k = self.conn.transmit_slices(&mut slices);
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?
            } else {
                ready!(Pin::new(&mut self.io).poll_write(cx, self.conn.transmit_chunk()))?
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.conn.advance_transmit(n);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_ready_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.ended {
            return Poll::Ready(Err(Error::new(Kind::Closed)));
        }
        if self.conn.pending_transmit() >= self.write_buffer_high {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Reads more bytes into the read buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        // Between frames read a chunk; inside a big frame make room for the rest of it, so
        // that a large payload arrives in few reads.
        if self.read_buf.capacity() == 0 {
            self.read_buf = pool::take();
        }
        let spare = self.read_buf.capacity() - self.read_buf.len();
        let remaining = self.conn.payload_remaining(self.read_buf.len());
        if remaining > 0 {
            // Inside a frame: room for the rest of it (bounded), and no more. Growing a
            // full buffer by a whole chunk for the last few bytes of a frame would copy it.
            if spare < remaining.min(MAX_READ) {
                self.read_buf.reserve(remaining.min(MAX_READ));
            }
        } else if spare < READ_CHUNK / 2 {
            self.read_buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }

    /// Heartbeat tick: ping a quiet peer, give up on a silent one.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) {
        let Some(hb) = self.heartbeat.as_mut() else {
            return;
        };
        while hb.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if hb.seen_since_tick {
                hb.last_seen = now;
                hb.seen_since_tick = false;
            }
            let quiet = now.duration_since(hb.last_seen);
            if quiet >= hb.settings.timeout {
                let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "keepalive timeout");
                let _ = self.conn.close(Some(frame));
                self.pending_error = Some(Box::new(Error::new(Kind::Timeout("keepalive"))));
                self.force_closed();
                return;
            }
            if quiet + Duration::from_millis(1) >= hb.settings.interval && !self.conn.close_sent() {
                let _ = self.conn.send_ping(bytes::Bytes::from_static(b"tidewire"));
            }
            let next = hb
                .settings
                .interval
                .min(hb.settings.timeout.saturating_sub(quiet));
            hb.timer
                .as_mut()
                .reset(now + next.max(Duration::from_millis(1)));
        }
    }

    /// Enters teardown without waiting for the peer's close frame, nor for its end of
    /// stream: the peer is presumed gone.
    fn force_closed(&mut self) {
        self.teardown = Teardown::Flush;
        self.skip_drain = true;
        self.conn.abandon();
    }

    fn close_timer(&mut self) -> &mut Pin<Box<Sleep>> {
        let timeout = self.close_timeout;
        self.close_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
    }

    /// Flush, shut down in RFC order, drain. Always finishes (errors end it early).
    fn poll_teardown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.teardown {
                Teardown::Flush => {
                    // Bound the flush too: a peer that does not read must not hold us.
                    match self.poll_flush_inner(cx) {
                        Poll::Ready(_) => self.teardown = Teardown::Shutdown,
                        Poll::Pending => {
                            ready!(self.close_timer().as_mut().poll(cx));
                            self.teardown = Teardown::Done;
                        }
                    }
                }
                Teardown::Shutdown => {
                    // §7.1.1: "the server SHOULD close the underlying TCP connection
                    // first"; the client waits for that (drain) and closes afterwards.
                    if self.conn.role() == Role::Server || self.read_eof {
                        match Pin::new(&mut self.io).poll_shutdown(cx) {
                            Poll::Ready(_) => {}
                            Poll::Pending => {
                                ready!(self.close_timer().as_mut().poll(cx));
                            }
                        }
                    }
                    self.teardown = Teardown::Drain;
                }
                Teardown::Drain => {
                    if self.read_eof || self.skip_drain {
                        if self.conn.role() == Role::Client {
                            let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                        }
                        self.teardown = Teardown::Done;
                        continue;
                    }
                    // What still arrives is discarded through a small buffer on the stack:
                    // a connection waiting for its peer's end of stream holds no read
                    // buffer, so thousands closing at once cost no memory spike. The timer
                    // is checked on every pass so that a peer that keeps sending cannot
                    // hold the task here.
                    if self.read_buf.capacity() > 0 {
                        pool::give(std::mem::take(&mut self.read_buf));
                    }
                    if self.close_timer().as_mut().poll(cx).is_ready() {
                        self.teardown = Teardown::Done;
                        continue;
                    }
                    let mut scratch = [0u8; 512];
                    let mut rb = tokio::io::ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {}
                        Poll::Ready(_) => self.read_eof = true,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Teardown::Done => {
                    self.read_buf = BytesMut::new();
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// Read buffers of idle connections go back to a small per-thread pool and are borrowed
/// again when bytes arrive, so that an idle connection holds no buffer and a busy one does
/// not allocate on every wakeup.
mod pool {
    use super::READ_CHUNK;
    use bytes::BytesMut;
    use std::cell::RefCell;

    /// Buffers kept per thread. A thread polls one connection at a time, and a drained
    /// buffer goes back before the next connection takes one, so a steady load rotates
    /// one or two; more only pile up after a burst in which many connections were woken
    /// mid-frame (64 KiB each, kept for nothing afterwards: up to 4 MiB per thread at 64;
    /// 131 bytes of every channel allocated in `tidewire bench channels` at 10,000, though
    /// only their touched pages were resident).
    const POOL_MAX: usize = 8;

    thread_local! {
        static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> BytesMut {
        POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default()
    }

    pub(super) fn give(mut buf: BytesMut) {
        // A buffer no message points into any more is reclaimed whole, so that the next
        // read has a full chunk; one still shared keeps what is left after the messages.
        // Only ordinary read buffers: one grown for a big frame is freed instead.
        buf.clear();
        let _ = buf.try_reclaim(READ_CHUNK);
        if buf.capacity() < READ_CHUNK / 2 || buf.capacity() > 2 * READ_CHUNK {
            return;
        }
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        });
    }
}

fn usage(e: UsageError) -> Error {
    match e {
        UsageError::SendAfterClose => Error::new(Kind::Closed),
        e => Error::from(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketStream<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if this.conn.state() == State::Closed {
                ready!(this.poll_teardown(cx));
                this.ended = true;
                return Poll::Ready(this.pending_error.take().map(|e| Err(*e)));
            }
            match this.conn.receive(&mut this.read_buf) {
                Ok(Some(msg)) => {
                    if let Some(hb) = this.heartbeat.as_mut() {
                        hb.seen_since_tick = true;
                    }
                    if this.conn.pending_transmit() > 0 {
                        // A pong or a close reply: send it now if the transport takes it.
                        let _ = this.poll_write_out(cx);
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
                Err(e) => {
                    // The core queued a close frame with the error's code; tear down,
                    // then report the error.
                    this.pending_error = Some(Box::new(e.into()));
                    continue;
                }
            }
            this.poll_heartbeat(cx);
            if this.conn.state() == State::Closed {
                continue;
            }
            // About to wait for input: everything queued so far leaves now, in one write.
            if this.conn.pending_transmit() > 0 {
                if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    this.read_eof = true;
                    if let Err(e) = this.conn.receive_eof() {
                        this.pending_error = Some(Box::new(e.into()));
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {
                    // Nothing buffered: an idle connection holds no read buffer.
                    if this.read_buf.is_empty() && this.read_buf.capacity() > 0 {
                        pool::give(std::mem::take(&mut this.read_buf));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocketStream<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().queue(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().poll_flush_inner(cx)
    }

    /// Sends a close frame (1000) if none was sent, and flushes. The peer's reply arrives
    /// on the stream side; [`WebSocketStream::close`] waits for it.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if this.conn.state() == State::Open {
            let _ = this
                .conn
                .close(Some(CloseFrame::new(CloseCode::NORMAL, "")));
        }
        this.poll_flush_inner(cx)
    }
}
