//! The `/ws` endpoint: the upgrade, then one task per connection that reads requests
//! (answered by [`Conn`]) and writes the events of its subscriptions.
//!
//! The engine delivers the events into the connection's one [`Outbox`] (bounded by
//! `limits.send_queue` events and `send_buffer` bytes, whatever the number of
//! subscriptions), which holds the socket: the hub's deliverer writes each event, a
//! prepared message (serialized and framed once per event, whatever the number of
//! subscribers), straight into it, and this task only takes over what the socket could not
//! take at once (`connection`). A connection whose outbox overflows, or whose socket has
//! more than `send_buffer` bytes waiting, is a slow consumer, closed with 4000 so that it
//! reconnects and resumes with `since`. It never holds up the other subscribers.

use crate::admission::{admit, refuse, subprotocol_refusal, upgrade_refused, Admitted, Endpoint};
use crate::channels::{close_frame, Conn, Reply, Timer};
use crate::connection::{self, Socket, Step};
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::log_text::peer;
use crate::metrics::HandshakeFailure;
use crate::node::{Event, Outbox, Subscription};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::upgrade::{Upgraded, WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{Message, WebSocketStream};
use tidewire_hub_proto::CloseCode as HubCode;

/// How long a connection may take to send `connect` where a token is required.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Answers one request, holding the socket lock meanwhile so that the events it causes (a
/// subscribe's first publications, a publish to a channel this connection is in) leave
/// after its reply. False when the connection has ended (closed here if need be).
async fn answer(conn: &mut Conn, text: &str) -> bool {
    let Some(outbox) = conn.outbox.as_ref() else {
        return false;
    };
    let mut guard = outbox.lock().await;
    let (reply, close) = match conn.handle(text).await {
        Reply::Send(r) => (r, None),
        Reply::SendAndClose(r, c) => (r, Some(c)),
    };
    conn.hub.metrics.sent(1, reply.len() as u64);
    let queued = guard
        .socket::<Socket>()
        .map(|ws| ws.queue(Message::text(reply)));
    if !matches!(queued, Some(Ok(()))) {
        return false;
    }
    let subs = &conn.subs;
    let drained = guard.drain::<Socket>(|id, event| subs.get(event.channel()) == Some(&id));
    drop(guard);
    let Some(outbox) = conn.outbox.as_ref() else {
        return false;
    };
    if let Err(why) = drained {
        connection::close_slow(&conn.hub, outbox, why, &conn.client_id).await;
        return false;
    }
    if let Some(frame) = close {
        tracing::debug!(client = %conn.client_id, reason = peer(&frame.reason).to_string(), "closing");
        connection::close(outbox, frame).await;
        return false;
    }
    true
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
        ws,
    } = *start;
    let n = hub
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let required = hub.config.auth.as_ref().is_some_and(|a| !a.anonymous());
    // The socket lives in the outbox, where the deliverer writes events straight into it.
    let outbox = Outbox::for_socket::<Socket>(
        hub.config.send_queue,
        hub.config.send_buffer,
        Some(hub.deliverer(n)),
    );
    outbox.attach(ws);
    let mut conn = Conn {
        client_id: hub.next_client_id(),
        authenticated: !required || identity.is_some(),
        own_info: None,
        identity_changed: false,
        identity,
        client: None,
        subs: HashMap::new(),
        outbox: Some(outbox),
        bucket: TokenBucket::new(
            hub.config.publish_rate,
            hub.config.publish_burst,
            Instant::now(),
        ),
        sub_bucket: TokenBucket::new(
            hub.config.subscribe_rate,
            hub.config.subscribe_burst,
            Instant::now(),
        ),
        hub: hub.clone(),
    };
    let metrics = &hub.metrics;
    // Timers exist only while they can fire: an anonymous or authenticated connection
    // holds no connect deadline, one without an expiring token no expiry timer.
    let mut connect_deadline =
        (!conn.authenticated).then(|| Box::pin(tokio::time::sleep(CONNECT_TIMEOUT)));
    // When the token in force expires; replaced by a `connect` with a fresh one.
    let mut token_expiry = conn.expiry_timer();
    tracing::debug!(client = %conn.client_id, "connected");
    while let Some(outbox) = conn.outbox.as_ref() {
        let subs = &conn.subs;
        // Still queued after its subscription ended (an `unsubscribe`, maybe followed by a
        // new subscribe): not for this client now.
        let current = move |id, event: &Event| subs.get(event.channel()) == Some(&id);
        tokio::select! {
            step = connection::next(outbox, current) => match step {
                Step::Message(Some(Ok(Message::Text(text)))) => {
                    metrics.received(text.len());
                    // Boxed: requests are rare next to deliveries, and their state would
                    // otherwise be part of every idle connection.
                    if !Box::pin(answer(&mut conn, &text)).await {
                        break;
                    }
                    if conn.identity_changed {
                        conn.identity_changed = false;
                        token_expiry = conn.expiry_timer();
                    }
                    if conn.authenticated {
                        connect_deadline = None;
                    }
                }
                Step::Message(Some(Ok(Message::Binary(_)))) => {
                    let frame = close_frame(HubCode::UNSUPPORTED_DATA, "binary frames are not part of tidewire.v1");
                    Box::pin(connection::close(outbox, frame)).await;
                    break;
                }
                Step::Message(Some(Ok(_))) => {}
                Step::Message(Some(Err(e))) => {
                    tracing::debug!(client = %conn.client_id, "connection ended: {}", peer(&e));
                    break;
                }
                Step::Message(None) => break,
                Step::Slow(why) => {
                    Box::pin(connection::close_slow(&hub, outbox, why, &conn.client_id)).await;
                    break;
                }
                Step::Silent => {
                    Box::pin(connection::close_silent(outbox)).await;
                    break;
                }
                Step::Shutdown => {
                    Box::pin(connection::close_going_away(outbox)).await;
                    break;
                }
            },
            _ = fire(&mut token_expiry), if token_expiry.is_some() => {
                let frame = close_frame(HubCode::TOKEN_EXPIRED, "unauthorized: token expired");
                Box::pin(connection::close(outbox, frame)).await;
                break;
            }
            _ = fire(&mut connect_deadline), if !conn.authenticated => {
                let frame = close_frame(HubCode::UNAUTHORIZED, "unauthorized: no connect with a token within 10 s");
                Box::pin(connection::close(outbox, frame)).await;
                break;
            }
        }
    }
    // Nothing more is delivered (the socket goes with the outbox); then each subscription
    // ends in the engine.
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
