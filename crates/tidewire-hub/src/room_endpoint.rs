//! Raw rooms at `ws://HOST/rooms/{room}`: every text or binary message a member sends goes
//! to the other members (the tutorial's chat), subprotocols by server preference, a text
//! heartbeat answered to its sender alone, the publish rate limit and the slow-consumer
//! policy (close 4000, as on `/ws`: `connection`). The room registry itself is `rooms`.

use crate::admission::{admit, refuse, subprotocol_refusal, upgrade_refused, Endpoint, Slot};
use crate::channels::close_frame;
use crate::connection::{self, Socket, Step};
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::log_text::peer;
use crate::metrics::HandshakeFailure;
use crate::node::Outbox;
use crate::rooms::Room;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tidewire::upgrade::{WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{Message, PreparedMessage};
use tidewire_hub_proto::CloseCode as HubCode;

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
    // handshake completes must reach it (it waits in the outbox until the socket is
    // attached). The membership leaves the room when dropped, whether or not the upgrade
    // completes.
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let outbox = Outbox::for_socket::<Socket>(
        hub.rooms.capacity(),
        hub.config.send_buffer,
        Some(hub.deliverer(id)),
    );
    let joined = hub.rooms.join(&room, id, outbox.sender());
    let membership = Membership {
        hub: hub.clone(),
        room,
        id,
        joined,
        _slot: admitted.slot,
    };
    let hub2 = hub.clone();
    ws.server(hub.room_server.clone()).on_upgrade(move |ws| {
        room_member(Box::new(RoomMember {
            hub: hub2,
            membership,
            outbox,
            ws,
        }))
    })
}

/// A room member; leaves the room when dropped.
struct Membership {
    hub: Arc<Hub>,
    room: String,
    id: u64,
    joined: Arc<Room>,
    _slot: Slot,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.rooms.leave(&self.room, self.id);
    }
}

/// What a room member's task starts from, boxed: an async fn keeps its arguments for its
/// whole life, and this task lives as long as the connection.
pub(crate) struct RoomMember {
    hub: Arc<Hub>,
    membership: Membership,
    outbox: Outbox,
    ws: Socket,
}

pub(crate) async fn room_member(start: Box<RoomMember>) {
    let RoomMember {
        hub,
        membership,
        outbox,
        ws,
    } = *start;
    outbox.attach(ws);
    let id = membership.id;
    hub.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let echo = hub.config.echo_to_sender;
    let mut bucket = TokenBucket::new(
        hub.config.publish_rate,
        hub.config.publish_burst,
        Instant::now(),
    );
    let metrics = &hub.metrics;
    loop {
        match connection::next(&outbox, |_, _| true).await {
            Step::Message(Some(Ok(m))) => {
                if !m.is_data() {
                    continue;
                }
                metrics.received(m.as_payload().len());
                if is_heartbeat(&hub.config.room_heartbeat, &m) {
                    // The sender's own keepalive: answered here, never broadcast.
                    let reply = &hub.config.room_heartbeat_reply;
                    if !reply.is_empty() {
                        let mut guard = outbox.lock().await;
                        let queued = guard
                            .socket::<Socket>()
                            .map(|ws| ws.queue(Message::text(reply.as_str())));
                        if !matches!(queued, Some(Ok(()))) {
                            break;
                        }
                        metrics.sent(1, reply.len() as u64);
                    }
                    continue;
                }
                if !bucket.take(Instant::now()) {
                    metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let reason = format!(
                        "rate limit: at most {} messages per second",
                        hub.config.publish_rate
                    );
                    Box::pin(connection::close(
                        &outbox,
                        close_frame(HubCode::MESSAGE_RATE_LIMITED, reason),
                    ))
                    .await;
                    break;
                }
                if let Some(prepared) = PreparedMessage::new(m) {
                    membership.joined.send(id, echo, &Arc::new(prepared));
                }
            }
            Step::Message(Some(Err(e))) => {
                tracing::debug!(
                    id,
                    room = peer(&membership.room).to_string(),
                    "connection ended: {}",
                    peer(&e)
                );
                break;
            }
            Step::Message(None) => break,
            Step::Slow(why) => {
                Box::pin(connection::close_slow(&hub, &outbox, why, &membership.room)).await;
                break;
            }
            Step::Silent => {
                Box::pin(connection::close_silent(&outbox)).await;
                break;
            }
            Step::Shutdown => {
                Box::pin(connection::close_going_away(&outbox)).await;
                break;
            }
        }
    }
    // Out of the room first, then the socket goes with the outbox.
    drop(membership);
    drop(outbox);
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
