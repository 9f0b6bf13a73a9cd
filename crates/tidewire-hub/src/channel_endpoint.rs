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
use crate::connection::{self, unbox, Io, Socket, Step};
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::log_text::peer;
use crate::metrics::HandshakeFailure;
use crate::node::{Event, Outbox, Stop, Subscription};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::upgrade::{WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{Message, Utf8Bytes};
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
    // A key the JWKS does not hold yet is fetched before the token is checked.
    if let (Some(auth), Some(token)) = (
        &hub.config.auth,
        crate::admission::query_param(query.as_deref(), "token"),
    ) {
        auth.refresh_for(&token).await;
    }
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
    // The headers the backend's connect call is given, kept until the `connect`.
    let handshake = hub
        .backend
        .as_ref()
        .filter(|b| b.connect && admitted.identity.is_none())
        .map(|b| Box::new(crate::backend::Handshake(b.forwarded(&headers))));
    let hub2 = hub.clone();
    let version = ws.http_version();
    let response = ws.server(hub.channel_server.clone()).on_upgrade(move |ws| {
        serve_connection(Box::new(Start {
            hub: hub2,
            admitted,
            handshake,
            ws: ws.map_io(Io::from_upgraded),
        }))
    });
    if response.status().is_success() || response.status() == StatusCode::SWITCHING_PROTOCOLS {
        hub.metrics.handshake(version);
    }
    response
}

/// Serves one `/ws` connection until it ends.
/// What a `/ws` connection's task starts from, boxed: an async fn keeps its arguments for
/// its whole life, and this task lives as long as the connection.
pub(crate) struct Start {
    pub(crate) hub: Arc<Hub>,
    pub(crate) admitted: Admitted,
    pub(crate) handshake: Option<Box<crate::backend::Handshake>>,
    pub(crate) ws: Socket,
}

/// Answers one request, holding the socket lock meanwhile so that the events it causes (a
/// subscribe's first publications, a publish to a channel this connection is in) leave
/// after its reply. False when the connection has ended (closed here if need be).
async fn answer(conn: &mut Conn, text: Utf8Bytes) -> bool {
    let Some(outbox) = conn.outbox.as_ref() else {
        return false;
    };
    let guard = outbox.lock().await;
    let (reply, close) = match conn.handle(&text).await {
        Reply::Send(r) => (r, None),
        Reply::SendAndClose(r, c) => (r, Some(c)),
    };
    drop(text);
    send_then(conn, guard, Some(reply), close).await
}

/// Carries out the server API's orders (`Order`), each under the socket lock as a request
/// is; false when the connection has ended.
async fn obey(conn: &mut Conn) -> bool {
    let Some(outbox) = conn.outbox.as_ref() else {
        return false;
    };
    outbox.orders_taken();
    for order in conn.take_orders() {
        let Some(outbox) = conn.outbox.as_ref() else {
            return false;
        };
        let guard = outbox.lock().await;
        let (push, close) = conn.obey(order).await;
        if !send_then(conn, guard, push, close).await {
            return false;
        }
    }
    true
}

/// Sends `text` (a reply or a push) while holding the socket lock `guard`, then the events
/// it let through, then closes with `close` if given. False when the connection has
/// ended.
async fn send_then(
    conn: &Conn,
    mut guard: crate::node::OutboxGuard,
    text: Option<String>,
    close: Option<tidewire::CloseFrame>,
) -> bool {
    if let Some(text) = text {
        conn.hub.metrics.sent(1, text.len() as u64);
        let queued = guard
            .socket::<Socket>()
            .map(|ws| ws.queue(Message::text(text)));
        if !matches!(queued, Some(Ok(()))) {
            return false;
        }
    }
    let subs = &conn.subs;
    let drained = guard.drain::<Socket>(|id, event| subs.get(event.channel()) == Some(id));
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
        conn.hook_close(&frame);
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

/// What a connection's task does after a step, decided without waiting: the task's future
/// holds its [`Conn`] and its timers, and every wait but the read is boxed, so that an
/// idle connection costs little more than those (issue 14: 1.5 KB per idle `/ws`
/// connection with its outbox, socket and registration).
enum Next {
    /// Read on.
    Read,
    /// A request to answer.
    Request(Utf8Bytes),
    /// The connection has ended (closed by the peer, or broken).
    Ended,
    /// Close it, as [`close`] says.
    Close(Closing),
    /// The server API has orders for it.
    Orders,
}

enum Closing {
    Binary,
    Stopped(Stop),
    TokenExpired,
    NoConnect,
}

fn on_step(conn: &Conn, step: Step) -> Next {
    match step {
        Step::Message(Some(Ok(Message::Text(text)))) => {
            conn.hub.metrics.received(text.len());
            Next::Request(text)
        }
        Step::Message(Some(Ok(Message::Binary(_)))) => Next::Close(Closing::Binary),
        Step::Message(Some(Ok(_))) => Next::Read,
        Step::Message(Some(Err(e))) => {
            tracing::debug!(client = %conn.client_id, "connection ended: {}", peer(&e));
            Next::Ended
        }
        Step::Message(None) => Next::Ended,
        Step::Stop(Stop::Ordered) => Next::Orders,
        Step::Stop(stop) => Next::Close(Closing::Stopped(stop)),
    }
}

async fn close(conn: &Conn, why: Closing) {
    let Some(outbox) = conn.outbox.as_ref() else {
        return;
    };
    let frame = match why {
        Closing::Stopped(stop) => {
            let told = match &stop {
                Stop::Slow(_) => Some((HubCode::SLOW_CONSUMER.0, "slow consumer")),
                Stop::Silent => Some((1011, "keepalive timeout")),
                Stop::Shutdown => Some((1001, "going away")),
                Stop::Restart => Some((1012, "service restart")),
                Stop::Ordered => None,
            };
            if let Some((code, reason)) = told {
                conn.hook_close(&tidewire::CloseFrame::new(
                    tidewire::CloseCode(code),
                    reason,
                ));
            }
            return connection::close_stopped(&conn.hub, outbox, stop, &conn.client_id).await;
        }
        Closing::Binary => close_frame(
            HubCode::UNSUPPORTED_DATA,
            "binary frames are not part of tidewire.v1",
        ),
        Closing::TokenExpired => close_frame(HubCode::TOKEN_EXPIRED, "unauthorized: token expired"),
        Closing::NoConnect => close_frame(
            HubCode::UNAUTHORIZED,
            "unauthorized: no connect within 10 s",
        ),
    };
    conn.hook_close(&frame);
    connection::close(outbox, frame).await;
}

/// The connection's state from its start: the socket goes into the outbox, where the
/// deliverer writes events straight into it.
fn start(start: Start) -> Conn {
    let Start {
        hub,
        admitted: Admitted { slot, identity },
        handshake,
        ws,
    } = start;
    let n = hub
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    // With the backend's connect call on, a connection is someone once the backend says
    // so (or its URL token did).
    let required = hub.config.auth.as_ref().is_some_and(|a| !a.anonymous())
        || hub.backend.as_ref().is_some_and(|b| b.connect);
    let outbox = Outbox::for_socket::<Socket>(
        hub.config.send_queue,
        hub.config.send_buffer,
        Some(hub.deliverer(n)),
    );
    outbox.attach(ws);
    Conn {
        client_id: hub.next_client_id(),
        authenticated: !required || identity.is_some(),
        own_info: None,
        identity_changed: false,
        identity: identity.map(Box::new),
        client: None,
        subs: Default::default(),
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
        _slot: slot,
        listed: false,
        handshake,
        hooked: false,
        hub,
    }
}

/// Serves one `/ws` connection until it ends.
pub(crate) async fn serve_connection(start_: Box<Start>) {
    let mut conn = start(unbox(start_));
    conn.enlist();
    conn.hook_connect();
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
        let current = move |id, event: &Event| subs.get(event.channel()) == Some(id);
        let next = tokio::select! {
            step = connection::next(outbox, current) => on_step(&conn, step),
            _ = fire(&mut token_expiry), if token_expiry.is_some() => {
                Next::Close(Closing::TokenExpired)
            }
            _ = fire(&mut connect_deadline), if !conn.authenticated => {
                Next::Close(Closing::NoConnect)
            }
        };
        match next {
            Next::Read => {}
            Next::Request(text) => {
                // Boxed: requests are rare next to deliveries, and their state would
                // otherwise be part of every idle connection.
                if !Box::pin(answer(&mut conn, text)).await {
                    break;
                }
                if conn.identity_changed {
                    conn.identity_changed = false;
                    token_expiry = conn.expiry_timer();
                }
                if conn.authenticated {
                    connect_deadline = None;
                    conn.hook_connect();
                }
            }
            Next::Orders => {
                if !Box::pin(obey(&mut conn)).await {
                    break;
                }
                if conn.identity_changed {
                    conn.identity_changed = false;
                    token_expiry = conn.expiry_timer();
                }
            }
            Next::Ended => break,
            Next::Close(why) => {
                Box::pin(close(&conn, why)).await;
                break;
            }
        }
    }
    Box::pin(end(conn)).await;
}

/// Nothing more is delivered (the socket goes with the outbox); then each subscription
/// ends in the engine.
async fn end(mut conn: Conn) {
    conn.unlist();
    conn.outbox = None;
    for (channel, id) in conn.subs.take_all() {
        conn.end(Subscription::new(id, channel)).await;
    }
    if let Some(hooks) = &conn.hub.hooks {
        hooks.disconnected(&conn.client_id);
    }
    tracing::debug!(client = %conn.client_id, "disconnected");
}
