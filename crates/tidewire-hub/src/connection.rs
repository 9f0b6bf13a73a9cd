//! What both WebSocket endpoints (rooms and `/ws`) run each connection with: the socket in
//! the connection's [`Outbox`] (so that the deliverer can write to it directly), the step
//! that waits for the next message while moving queued deliveries into the socket, and the
//! closes: a slow consumer is closed with 4000 on both endpoints, within 2 s.

use crate::channels::close_frame;
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

/// An upgraded connection.
pub(crate) type Socket = WebSocketStream<Upgraded>;

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

/// What a connection's task waits for.
pub(crate) enum Step {
    /// The next message, as `WebSocketStream::recv` gives it.
    Message(Option<tidewire::Result<Message>>),
    /// The connection cannot keep up with its deliveries.
    Slow(Slow),
    /// The server is shutting down.
    Shutdown,
    /// Nothing arrived from the peer for `heartbeat.idle_timeout`.
    Silent,
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
            Err(Stop::Slow(slow)) => Step::Slow(slow),
            Err(Stop::Shutdown) => Step::Shutdown,
            Err(Stop::Silent) => Step::Silent,
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

/// Closes a connection whose peer has been silent for the heartbeat's timeout: 1011
/// "keepalive timeout", without waiting for an answer (the peer is presumed gone).
pub(crate) async fn close_silent(outbox: &Outbox) {
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
pub(crate) async fn close_going_away(outbox: &Outbox) {
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
    /// tokio's header) and its outbox (which holds the socket). Bounded so that they cannot
    /// grow back unnoticed (issue 14: /ws 1,072 and room member 512 before the request
    /// state was boxed and shutdown moved to the deliverers).
    #[test]
    fn footprint() {
        let ws_task = future_size(crate::channel_endpoint::serve_connection);
        let room_task = future_size(crate::room_endpoint::room_member);
        let outbox = crate::node::outbox_size::<Socket>();
        let socket = std::mem::size_of::<Socket>();
        eprintln!("/ws task {ws_task}, room task {room_task}, outbox {outbox} (socket {socket})");
        assert!(ws_task <= 768, "/ws task {ws_task}");
        assert!(room_task <= 384, "room task {room_task}");
        assert!(outbox <= socket + 128, "outbox {outbox}");
    }
}
