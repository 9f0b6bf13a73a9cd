//! What both WebSocket endpoints (rooms and `/ws`) run each connection with: the socket in
//! the connection's [`Outbox`] (so that the deliverer can write to it directly), the step
//! that waits for the next message while moving queued deliveries into the socket, and the
//! closes: a slow consumer is closed with 4000 on both endpoints, within 2 s.

use crate::channels::close_frame;
use crate::http_phase::Prefixed;
use crate::hub::Hub;
use crate::limits::close_bounded;
use crate::log_text::peer;
use crate::node::{Event, Outbox, Slow, Stop, Transmit};
use futures_util::Stream;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tidewire::upgrade::Upgraded;
use tidewire::{CloseCode, CloseFrame, Message, PreparedMessage, WebSocketStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An upgraded connection.
pub(crate) type Socket = WebSocketStream<Io>;

/// What an upgraded connection runs over. hyper hands an upgrade over boxed (and with a
/// buffer for bytes read past the request); a plain TCP connection is taken back out of
/// that box (`from_upgraded`), so that an idle connection does not keep a box, and its
/// socket (in the outbox) stays within an allocator size class: 128 bytes less per
/// connection.
pub(crate) enum Io {
    /// A plain TCP connection, as most are.
    Tcp(TcpStream),
    /// Anything else: TLS, or a connection with bytes read past its handshake.
    Other(Box<dyn Transport>),
}

/// A transport of [`Io::Other`].
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

impl Io {
    /// The connection inside hyper's upgrade: the TCP stream itself when that is all there
    /// is to it, otherwise hyper's upgrade boxed (with the bytes read ahead, if any).
    pub(crate) fn from_upgraded(upgraded: Upgraded) -> Io {
        type Plain = hyper_util::rt::TokioIo<Prefixed<TcpStream>>;
        let upgraded = match upgraded.into_hyper() {
            Ok(hyper) => hyper,
            // A stream of an HTTP/3 connection.
            Err(other) => return Io::Other(Box::new(other)),
        };
        match upgraded.downcast::<Plain>() {
            Ok(parts) => {
                let (prefix, tcp) = parts.io.into_inner().into_parts();
                if parts.read_buf.is_empty() && prefix.is_empty() {
                    Io::Tcp(tcp)
                } else {
                    // Bytes after the request head (a client that did not wait for the
                    // 101): hyper's first, then those it had not read.
                    Io::Other(Box::new(Prefixed::new(
                        parts.read_buf,
                        Prefixed::new(prefix, tcp),
                    )))
                }
            }
            Err(upgraded) => Io::Other(Box::new(hyper_util::rt::TokioIo::new(upgraded))),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Io::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Io::Other(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Other(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_flush(cx),
            Io::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Io::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

impl Transmit for Socket {
    fn queue_prepared(&mut self, msg: &PreparedMessage) -> bool {
        WebSocketStream::queue_prepared(self, msg).is_ok()
    }

    fn write_now(&mut self) -> Option<usize> {
        // Polled once with a waker that does nothing: the bytes the socket cannot take
        // stay queued, and the outbox wakes the connection's task to write them (its own
        // poll registers for write readiness).
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let done = {
            let flush = std::pin::pin!(self.flush());
            flush.poll(&mut cx)
        };
        match done {
            Poll::Ready(Ok(())) => Some(0),
            Poll::Ready(Err(_)) => None,
            Poll::Pending => Some(self.connection().pending_transmit()),
        }
    }

    fn pending(&self) -> usize {
        self.connection().pending_transmit()
    }

    fn queue_ping(&mut self) -> bool {
        self.queue(Message::Ping(bytes::Bytes::from_static(b"tidewire")))
            .is_ok()
    }
}

/// The value out of its box, and the box freed now. `let T { .. } = *boxed;` in an async
/// fn frees the box only when `boxed` goes out of scope: at the end of the connection, so
/// every idle connection kept its start's box (448 bytes on `/ws`).
#[allow(clippy::boxed_local)] // The point: the box comes in, and goes here.
pub(crate) fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// What a connection's task waits for.
pub(crate) enum Step {
    /// The next message, as `WebSocketStream::recv` gives it.
    Message(Option<tidewire::Result<Message>>),
    /// The outbox stopped the wait: a slow consumer, the server shutting down, or a peer
    /// silent for `heartbeat.idle_timeout`. [`close_stopped`] closes the connection for it.
    Stop(Stop),
}

/// The next message from the peer. Meanwhile, whenever the task is woken, the deliveries
/// queued in `outbox` that `keep` accepts (subscription id, event) are moved into the
/// socket, and leave with its next write.
pub(crate) fn next<'a>(
    outbox: &'a Outbox,
    mut keep: impl FnMut(u64, &Event) -> bool + 'a,
) -> impl Future<Output = Step> + 'a {
    poll_fn(move |cx| {
        let polled =
            outbox.poll_socket::<Socket, _>(cx, &mut keep, |ws, cx| Pin::new(ws).poll_next(cx));
        polled.map(|r| match r {
            Ok(m) => {
                if m.is_some() {
                    outbox.seen();
                }
                Step::Message(m)
            }
            Err(stop) => Step::Stop(stop),
        })
    })
}

/// Closes the connection with `frame`, waiting at most 2 s for the handshake. The outbox
/// is closed from then on. Call it boxed: the socket is held across the wait.
pub(crate) async fn close(outbox: &Outbox, frame: CloseFrame) {
    let socket = outbox.lock().await.take::<Socket>();
    if let Some(mut ws) = socket {
        close_bounded(&mut ws, frame).await;
    }
}

/// Closes the connection for what stopped its wait, with the same code on both endpoints
/// (`who` names the connection in the log line of a slow consumer).
pub(crate) async fn close_stopped(hub: &Hub, outbox: &Outbox, stop: Stop, who: &str) {
    match stop {
        Stop::Slow(why) => close_slow(hub, outbox, why, who).await,
        Stop::Silent => close_silent(outbox).await,
        Stop::Shutdown => close_going_away(outbox).await,
        // Not an end: only `/ws` connections get orders, and carry them out themselves.
        Stop::Ordered => outbox.orders_taken(),
        Stop::Restart => {
            let frame = CloseFrame::new(
                CloseCode::SERVICE_RESTART,
                "service restart: reconnect and resume",
            );
            close(outbox, frame).await
        }
    }
}

/// Closes a connection whose peer has been silent for the heartbeat's timeout: 1011
/// "keepalive timeout", without waiting for an answer (the peer is presumed gone).
async fn close_silent(outbox: &Outbox) {
    let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "keepalive timeout");
    let socket = outbox.lock().await.take::<Socket>();
    if let Some(mut ws) = socket {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), ws.close(Some(frame)))
            .await;
    }
}

/// Closes a slow consumer with 4000, counted and logged (`who` says which connection).
pub(crate) async fn close_slow(hub: &Hub, outbox: &Outbox, why: Slow, who: &str) {
    hub.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        who = peer(who).to_string(),
        "slow consumer disconnected: {why}"
    );
    let frame = close_frame(
        tidewire_hub_proto::CloseCode::SLOW_CONSUMER,
        format!("slow consumer: {why}; resubscribe with since"),
    );
    close(outbox, frame).await;
}

/// Closes the connection with 1001 because the server is shutting down (the peer gets
/// the whole close timeout to answer).
async fn close_going_away(outbox: &Outbox) {
    let socket = outbox.lock().await.take::<Socket>();
    if let Some(mut ws) = socket {
        let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
        let _ = ws.close(Some(frame)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F: Future>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle connection holds, in bytes: its task's future (the task cell adds
    /// tokio's header and trailer, and is aligned to 128 bytes) and its outbox (which
    /// holds the socket; the `Arc` adds 16 bytes). Bounded so that they cannot grow back
    /// unnoticed (issue 14: /ws 1,072 and room member 512 at first; 736 and 328 before
    /// every wait but the read was boxed; an outbox of 448 before the socket held its TCP
    /// stream without hyper's box, which took it to jemalloc's next size class, 512).
    #[test]
    fn footprint() {
        let ws_task = future_size(crate::channel_endpoint::serve_connection);
        let room_task = future_size(crate::room_endpoint::room_member);
        let outbox = crate::node::outbox_size::<Socket>();
        let socket = std::mem::size_of::<Socket>();
        eprintln!("/ws task {ws_task}, room task {room_task}, outbox {outbox} (socket {socket})");
        assert!(ws_task <= 384, "/ws task {ws_task}");
        assert!(room_task <= 160, "room task {room_task}");
        // tokio's TcpStream is 32 bytes in a release build and 40 in a debug one: the bound
        // is the release build's (jemalloc's 448-byte class with the Arc's counts).
        let debug_extra = std::mem::size_of::<TcpStream>().saturating_sub(32);
        assert!(outbox - debug_extra + 16 <= 448, "outbox {outbox}");
        assert_eq!(std::mem::size_of::<Io>(), std::mem::size_of::<TcpStream>());
    }
}
