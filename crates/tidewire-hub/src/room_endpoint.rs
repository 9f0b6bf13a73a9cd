//! Raw rooms at `ws://HOST/rooms/{room}`: every text or binary message a member sends goes
//! to the other members (the tutorial's chat), subprotocols by server preference, a text
//! heartbeat answered to its sender alone, the publish rate limit and the slow-consumer
//! policy. The room registry itself is `rooms`.

use crate::admission::{admit, refuse, subprotocol_refusal, upgrade_refused, Endpoint, Slot};
use crate::channels::close_frame;
use crate::hub::Hub;
use crate::limits::{close_bounded, TokenBucket};
use crate::metrics::HandshakeFailure;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tidewire::upgrade::{WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{CloseCode, CloseFrame, Message, PreparedMessage};
use tidewire_hub_proto::CloseCode as HubCode;
use tokio::sync::broadcast;

pub(crate) async fn room_upgrade(
    State(hub): State<Arc<Hub>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_refused(&hub, e, &headers),
    };
    if room.is_empty() || room.len() > 200 {
        return *refuse(
            &hub,
            HandshakeFailure::BadRequest,
            StatusCode::BAD_REQUEST,
            "room name must be 1 to 200 bytes".into(),
            &headers,
        );
    }
    let admitted = match admit(&hub, Endpoint::Rooms, &headers, query.as_deref(), true) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    // After admission: whether a client may connect at all is the first answer it needs.
    if let Some(reason) = subprotocol_refusal(&hub.config, Endpoint::Rooms, &ws.offered_protocols())
    {
        return *refuse(
            &hub,
            HandshakeFailure::Subprotocol,
            StatusCode::BAD_REQUEST,
            reason,
            &headers,
        );
    }
    // Join before the 101 goes out: a message sent to the room right after the client's
    // handshake completes must reach it. The membership leaves the room when dropped,
    // whether or not the upgrade completes.
    let (tx, rx) = hub.rooms.join(&room);
    let membership = Membership {
        hub: hub.clone(),
        room,
        rx: Some(rx),
        _slot: admitted.slot,
    };
    let hub2 = hub.clone();
    ws.server(hub.room_server.clone()).on_upgrade(move |ws| {
        room_member(Box::new(RoomMember {
            hub: hub2,
            membership,
            tx,
            ws,
        }))
    })
}

/// A room member's receiver; leaves the room when dropped.
struct Membership {
    hub: Arc<Hub>,
    room: String,
    rx: Option<broadcast::Receiver<crate::rooms::RoomMessage>>,
    _slot: Slot,
}

impl Drop for Membership {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.rooms.leave(&self.room);
    }
}

/// What a room member's task starts from, boxed: an async fn keeps its arguments for its
/// whole life, and this task lives as long as the connection.
struct RoomMember {
    hub: Arc<Hub>,
    membership: Membership,
    tx: broadcast::Sender<crate::rooms::RoomMessage>,
    ws: tidewire::WebSocketStream<tidewire::upgrade::Upgraded>,
}

async fn room_member(start: Box<RoomMember>) {
    let RoomMember {
        hub,
        mut membership,
        tx,
        mut ws,
    } = *start;
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    hub.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let room = membership.room.clone();
    let Some(mut rx) = membership.rx.take() else {
        return;
    };
    let mut shutdown = hub.shutdown.clone();
    let echo = hub.config.echo_to_sender;
    let mut bucket = TokenBucket::new(
        hub.config.publish_rate,
        hub.config.publish_burst,
        Instant::now(),
    );
    let send_buffer = hub.config.send_buffer;
    let metrics = &hub.metrics;
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(m)) => {
                    if !m.is_data() {
                        continue;
                    }
                    metrics.received(m.as_payload().len());
                    if is_heartbeat(&hub.config.room_heartbeat, &m) {
                        // The sender's own keepalive: answered here, never broadcast.
                        let reply = &hub.config.room_heartbeat_reply;
                        if !reply.is_empty() && ws.queue(Message::text(reply.as_str())).is_err() {
                            break;
                        }
                        continue;
                    }
                    if !bucket.take(Instant::now()) {
                        metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                        let reason = format!("rate limit: at most {} messages per second", hub.config.publish_rate);
                        Box::pin(close_bounded(&mut ws, close_frame(HubCode::MESSAGE_RATE_LIMITED, reason))).await;
                        break;
                    }
                    if let Some(prepared) = PreparedMessage::new(m) {
                        // No receivers besides ourselves is fine: the room may be empty.
                        let _ = tx.send((id, Arc::new(prepared)));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(id, ?room, "connection ended: {e}");
                    break;
                }
                None => break,
            },
            got = rx.recv() => match got {
                Ok((from, m)) => {
                    if from != id || echo {
                        if ws.queue_prepared(&m).is_err() {
                            break;
                        }
                        metrics.sent(1, m.payload().len() as u64);
                        if ws.connection().pending_transmit() > send_buffer {
                            metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(id, ?room, "slow consumer disconnected: send buffer full");
                            let frame = CloseFrame::new(CloseCode::POLICY_VIOLATION, "slow consumer: send buffer full");
                            Box::pin(close_bounded(&mut ws, frame)).await;
                            break;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(id, ?room, "slow consumer disconnected: {n} messages behind");
                    let reason = format!("slow consumer: {n} messages dropped");
                    Box::pin(close_bounded(&mut ws, CloseFrame::new(CloseCode::POLICY_VIOLATION, reason))).await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = shutdown.changed() => {
                let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
                let _ = Box::pin(ws.close(Some(frame))).await;
                break;
            }
        }
    }
    drop(rx);
    drop(membership);
}

/// Whether `m` is one of the room heartbeats: a text message equal to one of `texts`,
/// ignoring ASCII case and surrounding whitespace.
fn is_heartbeat(texts: &[String], m: &Message) -> bool {
    match m {
        Message::Text(t) => {
            let t = t.as_str().trim();
            // Short-circuit on length: chat lines are rarely heartbeat-sized.
            t.len() <= 64 && texts.iter().any(|h| h.trim().eq_ignore_ascii_case(t))
        }
        _ => false,
    }
}
