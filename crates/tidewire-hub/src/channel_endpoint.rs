//! The `/ws` endpoint: the upgrade, then one task per connection that reads requests
//! (answered by [`Conn`]) and writes the events of its subscriptions.
//!
//! The engine delivers the events into the connection's one [`Outbox`] (bounded by
//! `limits.send_queue` events, whatever the number of subscriptions; created at the first
//! subscribe, so an idle connection has none), and each event is written as a prepared
//! message (serialized and framed once per event, whatever the number of subscribers). A
//! connection whose outbox overflows, or whose socket has more than `send_buffer` bytes
//! waiting, is a slow consumer, closed with 4000 so that it reconnects and resumes with
//! `since`. It never holds up the other subscribers.

use crate::admission::{admit, refuse, subprotocol_refusal, upgrade_refused, Admitted, Endpoint};
use crate::channels::{close_frame, Conn, Reply, Timer};
use crate::hub::Hub;
use crate::limits::{close_bounded, TokenBucket};
use crate::metrics::HandshakeFailure;
use crate::node::{Event, Outbox, Subscription};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::upgrade::Upgraded;
use tidewire::upgrade::{WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{CloseCode, CloseFrame, Message, WebSocketStream};
use tidewire_hub_proto::CloseCode as HubCode;

/// How long a connection may take to send `connect` where a token is required.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events written per wake-up at most, so one busy connection cannot starve its replies.
const BATCH: usize = 64;

/// The next event of the connection's outbox; never without one.
async fn next_event(outbox: &Option<Outbox>) -> Result<(u64, Arc<Event>), crate::engine::Error> {
    match outbox {
        Some(o) => o.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn channel_upgrade(
    State(hub): State<Arc<Hub>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_refused(&hub, e, &headers),
    };
    let admitted = match admit(&hub, Endpoint::Channels, &headers, query.as_deref(), false) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    // After admission, as for rooms.
    if let Some(reason) =
        subprotocol_refusal(&hub.config, Endpoint::Channels, &ws.offered_protocols())
    {
        return *refuse(
            &hub,
            HandshakeFailure::Subprotocol,
            StatusCode::BAD_REQUEST,
            reason,
            &headers,
        );
    }
    let hub2 = hub.clone();
    ws.server(hub.channel_server.clone()).on_upgrade(move |ws| {
        serve_connection(Box::new(Start {
            hub: hub2,
            admitted,
            ws,
        }))
    })
}

/// Serves one `/ws` connection until it ends.
/// What a `/ws` connection's task starts from, boxed: an async fn keeps its arguments for
/// its whole life, and this task lives as long as the connection.
pub(crate) struct Start {
    pub(crate) hub: Arc<Hub>,
    pub(crate) admitted: Admitted,
    pub(crate) ws: WebSocketStream<Upgraded>,
}

/// Completes when the timer fires; never without one.
async fn fire(timer: &mut Option<Timer>) {
    match timer {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn serve_connection(start: Box<Start>) {
    let Start {
        hub,
        admitted: Admitted {
            slot: _slot,
            identity,
        },
        mut ws,
    } = *start;
    hub.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let required = hub.config.auth.as_ref().is_some_and(|a| !a.anonymous());
    let mut conn = Conn {
        client_id: hub.next_client_id(),
        authenticated: !required || identity.is_some(),
        own_info: None,
        identity_changed: false,
        identity,
        client: None,
        subs: HashMap::new(),
        outbox: None,
        bucket: TokenBucket::new(
            hub.config.publish_rate,
            hub.config.publish_burst,
            Instant::now(),
        ),
        hub: hub.clone(),
    };
    let mut shutdown = hub.shutdown.clone();
    let metrics = &hub.metrics;
    let send_buffer = hub.config.send_buffer;
    // Timers exist only while they can fire: an anonymous or authenticated connection
    // holds no connect deadline, one without an expiring token no expiry timer.
    let mut connect_deadline =
        (!conn.authenticated).then(|| Box::pin(tokio::time::sleep(CONNECT_TIMEOUT)));
    // When the token in force expires; replaced by a `connect` with a fresh one.
    let mut token_expiry = conn.expiry_timer();
    tracing::debug!(client = %conn.client_id, "connected");
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    metrics.received(text.len());
                    // Boxed: requests are rare next to deliveries, and the request handler's state
                    // would otherwise be part of every idle connection.
                    let reply = Box::pin(conn.handle(&text)).await;
                    let (reply, close) = match reply {
                        Reply::Send(r) => (r, None),
                        Reply::SendAndClose(r, c) => (r, Some(c)),
                    };
                    metrics.sent(1, reply.len() as u64);
                    if ws.queue(Message::text(reply)).is_err() {
                        break;
                    }
                    if conn.identity_changed {
                        conn.identity_changed = false;
                        token_expiry = conn.expiry_timer();
                    }
                    if conn.authenticated {
                        connect_deadline = None;
                    }
                    if let Some(frame) = close {
                        tracing::debug!(client = %conn.client_id, reason = %frame.reason, "closing");
                        Box::pin(close_bounded(&mut ws, frame)).await;
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let frame = close_frame(HubCode::UNSUPPORTED_DATA, "binary frames are not part of tidewire.v1");
                    Box::pin(close_bounded(&mut ws, frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(client = %conn.client_id, "connection ended: {e}");
                    break;
                }
                None => break,
            },
            first = next_event(&conn.outbox) => {
                let mut next = Some(first);
                let mut written = 0;
                let mut sent = 0;
                let mut bytes = 0;
                let mut slow = false;
                let mut failed = false;
                while let Some(item) = next.take() {
                    match item {
                        // Still queued after its subscription ended (an `unsubscribe`,
                        // maybe followed by a new subscribe): not for this client now.
                        Ok((id, event)) if conn.subs.get(event.channel()) != Some(&id) => {}
                        Ok((_, event)) => {
                            let queued = match event.prepared() {
                                Some(p) => {
                                    bytes += p.payload().len() as u64;
                                    ws.queue_prepared(p)
                                }
                                None => ws.queue(Message::text(event.to_json())),
                            };
                            if queued.is_err() {
                                failed = true;
                                break;
                            }
                            sent += 1;
                        }
                        Err(e) if e.is_lagged() => {
                            slow = true;
                            break;
                        }
                        Err(_) => {}
                    }
                    written += 1;
                    if written < BATCH {
                        // Whatever else is ready now leaves in the same write.
                        next = conn.outbox.as_ref().and_then(|o| o.try_recv().transpose());
                    }
                }
                // Shared counters are touched once per wake-up, not once per event: on a
                // fan-out every connection's task passes here.
                metrics.sent(sent, bytes);
                if failed {
                    break;
                }
                if slow || ws.connection().pending_transmit() > send_buffer {
                    metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    let why = if slow { "its event queue overflowed (limits.send_queue)" } else { "send buffer full" };
                    tracing::info!(client = %conn.client_id, "slow consumer disconnected: {why}");
                    let frame = close_frame(HubCode::SLOW_CONSUMER, "slow consumer: resubscribe with since");
                    Box::pin(close_bounded(&mut ws, frame)).await;
                    break;
                }
            },
            _ = fire(&mut token_expiry), if token_expiry.is_some() => {
                let frame = close_frame(HubCode::TOKEN_EXPIRED, "unauthorized: token expired");
                Box::pin(close_bounded(&mut ws, frame)).await;
                break;
            }
            _ = fire(&mut connect_deadline), if !conn.authenticated => {
                let frame = close_frame(HubCode::UNAUTHORIZED, "unauthorized: no connect with a token within 10 s");
                Box::pin(close_bounded(&mut ws, frame)).await;
                break;
            }
            _ = shutdown.changed() => {
                let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
                let _ = Box::pin(ws.close(Some(frame))).await;
                break;
            }
        }
    }
    // Nothing more is delivered; then each subscription ends in the engine.
    conn.outbox = None;
    let subs: Vec<Subscription> = conn
        .subs
        .drain()
        .map(|(channel, id)| Subscription::new(id, channel))
        .collect();
    for sub in subs {
        Box::pin(conn.end(sub)).await;
    }
    tracing::debug!(client = %conn.client_id, "disconnected");
}
