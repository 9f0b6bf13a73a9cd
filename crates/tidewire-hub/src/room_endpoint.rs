//! Raw rooms at `ws://HOST/rooms/{room}`: every text or binary message a member sends goes
//! to the other members (the tutorial's chat), subprotocols by server preference, a text
//! heartbeat answered to its sender alone, the publish rate limit and the slow-consumer
//! policy (close 4000, as on `/ws`: `connection`). The room registry itself is `rooms`.

use crate::admission::{admit, refuse, subprotocol_refusal, upgrade_refused, Endpoint, Slot};
use crate::channels::close_frame;
use crate::connection::{self, unbox, Io, Socket, Step};
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::log_text::peer;
use crate::metrics::HandshakeFailure;
use crate::node::{Outbox, Stop};
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
    // A key the JWKS does not hold yet is fetched before the token is checked.
    if let (Some(auth), Some(token)) = (
        &hub.config.auth,
        crate::admission::query_param(query.as_deref(), "token"),
    ) {
        auth.refresh_for(&token).await;
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
    let version = ws.http_version();
    let response = ws.server(hub.room_server.clone()).on_upgrade(move |ws| {
        room_member(Box::new(RoomMember {
            membership,
            outbox,
            ws: ws.map_io(Io::from_upgraded),
        }))
    });
    if response.status().is_success() || response.status() == StatusCode::SWITCHING_PROTOCOLS {
        hub.metrics.handshake(version);
    }
    response
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
    membership: Membership,
    outbox: Outbox,
    ws: Socket,
}

/// A room member for the life of its connection. Its task's future holds this and little
/// else (every wait but the read is boxed), so an idle member costs this, its outbox and
/// the socket's registration.
struct Member {
    /// Dropped first: out of the room before the socket goes with the outbox.
    membership: Membership,
    outbox: Outbox,
    bucket: TokenBucket,
}

/// What a member's task does after a step, decided without waiting.
enum Next {
    /// Read on.
    Read,
    /// Answer the sender's heartbeat.
    Heartbeat,
    /// The connection has ended (closed by the peer, or broken).
    Ended,
    /// Close it, as [`Member::close`] says.
    Close(Closing),
}

enum Closing {
    RateLimited,
    Stopped(Stop),
}

pub(crate) async fn room_member(start: Box<RoomMember>) {
    let mut member = Member::start(unbox(start));
    loop {
        let step = connection::next(&member.outbox, |_, _| true).await;
        match member.on_step(step) {
            Next::Read => {}
            Next::Heartbeat => {
                if !Box::pin(member.answer_heartbeat()).await {
                    break;
                }
            }
            Next::Ended => break,
            Next::Close(why) => {
                Box::pin(member.close(why)).await;
                break;
            }
        }
    }
}

impl Member {
    fn start(start: RoomMember) -> Member {
        let RoomMember {
            membership,
            outbox,
            ws,
        } = start;
        outbox.attach(ws);
        let hub = &membership.hub;
        hub.metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        Member {
            bucket: TokenBucket::new(
                hub.config.publish_rate,
                hub.config.publish_burst,
                Instant::now(),
            ),
            membership,
            outbox,
        }
    }

    fn hub(&self) -> &Hub {
        &self.membership.hub
    }

    /// Broadcasts a data message (unless it is a heartbeat or over the rate limit).
    fn on_step(&mut self, step: Step) -> Next {
        let hub = &*self.membership.hub;
        let metrics = &hub.metrics;
        match step {
            Step::Message(Some(Ok(m))) => {
                if !m.is_data() {
                    return Next::Read;
                }
                metrics.received(m.as_payload().len());
                if is_heartbeat(&hub.config.room_heartbeat, &m) {
                    // The sender's own keepalive: answered here, never broadcast.
                    return if hub.config.room_heartbeat_reply.is_empty() {
                        Next::Read
                    } else {
                        Next::Heartbeat
                    };
                }
                if !self.bucket.take(Instant::now()) {
                    metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return Next::Close(Closing::RateLimited);
                }
                if let Some(prepared) = PreparedMessage::new(m) {
                    let echo = hub.config.echo_to_sender;
                    let m = &self.membership;
                    m.joined.send(m.id, echo, &Arc::new(prepared));
                }
                Next::Read
            }
            Step::Message(Some(Err(e))) => {
                tracing::debug!(
                    id = self.membership.id,
                    room = peer(&self.membership.room).to_string(),
                    "connection ended: {}",
                    peer(&e)
                );
                Next::Ended
            }
            Step::Message(None) => Next::Ended,
            // Room members are not listed for the server API: nothing to carry out.
            Step::Stop(Stop::Ordered) => {
                self.outbox.orders_taken();
                Next::Read
            }
            Step::Stop(stop) => Next::Close(Closing::Stopped(stop)),
        }
    }

    /// Queues the heartbeat's reply; false if the socket is gone.
    async fn answer_heartbeat(&self) -> bool {
        let reply = &self.hub().config.room_heartbeat_reply;
        let mut guard = self.outbox.lock().await;
        let queued = guard
            .socket::<Socket>()
            .map(|ws| ws.queue(Message::text(reply.as_str())));
        if !matches!(queued, Some(Ok(()))) {
            return false;
        }
        self.hub().metrics.sent(1, reply.len() as u64);
        true
    }

    async fn close(&self, why: Closing) {
        let hub = self.hub();
        match why {
            Closing::RateLimited => {
                let reason = format!(
                    "rate limit: at most {} messages per second",
                    hub.config.publish_rate
                );
                let frame = close_frame(HubCode::MESSAGE_RATE_LIMITED, reason);
                connection::close(&self.outbox, frame).await;
            }
            Closing::Stopped(stop) => {
                connection::close_stopped(hub, &self.outbox, stop, &self.membership.room).await
            }
        }
    }
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
