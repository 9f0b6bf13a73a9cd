//! The `tidewire.v1` channel protocol at `/ws` (docs/protocol.md) over the engine.
//!
//! One task per connection reads requests and answers each one. Every subscription gets a
//! small forwarding task that moves the engine's events into the connection's bounded
//! queue; the connection writes them as prepared messages (serialized and framed once per
//! event, whatever the number of subscribers). A connection whose queue is full, or whose
//! subscription lagged behind the engine, is a slow consumer: closed with 4000 so that it
//! reconnects and resumes with `since`.

use crate::engine::{ClientInfo, Engine, Event, MemoryEngine, Recovery, StreamPosition};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tidewire::upgrade::Upgraded;
use tidewire::{CloseCode, CloseFrame, Message, WebSocketStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Events a connection may have queued before it counts as a slow consumer.
const QUEUE: usize = 4096;

enum Out {
    Event(Arc<Event>),
    SlowConsumer,
}

struct Sub {
    stop: oneshot::Sender<()>,
}

/// Error codes of docs/protocol.md.
mod code {
    pub const BAD_REQUEST: u32 = 101;
    pub const UNKNOWN_OP: u32 = 102;
    pub const UNKNOWN_CHANNEL: u32 = 103;
    pub const PERMISSION_DENIED: u32 = 104;
    pub const NOT_SUBSCRIBED: u32 = 105;
    pub const ALREADY_SUBSCRIBED: u32 = 106;
    pub const INTERNAL: u32 = 100;
    pub const NOT_AVAILABLE: u32 = 110;
}

fn reply_ok(id: &Value, result: String) -> String {
    format!("{{\"id\":{id},\"ok\":true,\"result\":{result}}}")
}

fn reply_err(id: &Value, code: u32, message: &str) -> String {
    json!({"id": id, "error": {"code": code, "message": message}}).to_string()
}

fn engine_error(id: &Value, e: &crate::engine::Error) -> String {
    let code = if e.is_invalid_channel() || e.is_unknown_namespace() {
        code::UNKNOWN_CHANNEL
    } else if e.is_invalid_data() {
        code::BAD_REQUEST
    } else if e.is_not_available() {
        code::NOT_AVAILABLE
    } else {
        code::INTERNAL
    };
    reply_err(id, code, &e.to_string())
}

fn position_json(p: &StreamPosition) -> String {
    json!({"offset": p.offset, "epoch": p.epoch}).to_string()
}

fn publications_json(events: &[Arc<Event>]) -> String {
    let mut s = String::from("[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&e.to_json());
    }
    s.push(']');
    s
}

/// Serves one `/ws` connection until it ends.
pub(crate) async fn serve_connection(
    engine: Arc<MemoryEngine>,
    client_id: String,
    mut ws: WebSocketStream<Upgraded>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<Out>(QUEUE);
    let mut subs: HashMap<String, Sub> = HashMap::new();
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let reply = handle(&engine, &client_id, &text, &mut subs, &tx).await;
                    if ws.queue(Message::text(reply)).is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let frame = CloseFrame::new(CloseCode(4003), "binary frames are not part of tidewire.v1");
                    let _ = ws.close(Some(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            out = rx.recv() => match out {
                Some(Out::Event(event)) => {
                    let queued = match event.prepared() {
                        Some(p) => ws.queue_prepared(p),
                        None => ws.queue(Message::text(event.to_json())),
                    };
                    if queued.is_err() {
                        break;
                    }
                }
                Some(Out::SlowConsumer) => {
                    let frame = CloseFrame::new(CloseCode(4000), "slow consumer: resubscribe with since");
                    let _ = ws.close(Some(frame)).await;
                    break;
                }
                None => break,
            },
            _ = shutdown.changed() => {
                let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
                let _ = ws.close(Some(frame)).await;
                break;
            }
        }
    }
    for (_, sub) in subs.drain() {
        let _ = sub.stop.send(());
    }
}

async fn handle(
    engine: &Arc<MemoryEngine>,
    client_id: &str,
    text: &str,
    subs: &mut HashMap<String, Sub>,
    tx: &mpsc::Sender<Out>,
) -> String {
    let null = Value::Null;
    let req: Value = match serde_json::from_str(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => return reply_err(&null, code::BAD_REQUEST, "not a JSON object"),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(op) = req.get("op").and_then(Value::as_str) else {
        return reply_err(&id, code::BAD_REQUEST, "missing op");
    };
    let channel = req.get("channel").and_then(Value::as_str);
    let need_channel = || channel.ok_or(());
    let now = Instant::now();
    match op {
        "ping" => reply_ok(&id, "{}".into()),
        "connect" => reply_ok(
            &id,
            json!({"client": client_id, "version": "tidewire.v1"}).to_string(),
        ),
        "subscribe" => {
            let Ok(ch) = need_channel() else {
                return reply_err(&id, code::BAD_REQUEST, "missing channel");
            };
            if subs.contains_key(ch) {
                return reply_err(&id, code::ALREADY_SUBSCRIBED, "already subscribed");
            }
            let since = match req.get("since") {
                None | Some(Value::Null) => None,
                Some(v) => match serde_json::from_value::<StreamPosition>(v.clone()) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        return reply_err(&id, code::BAD_REQUEST, "since must be {offset, epoch}")
                    }
                },
            };
            let asked = since.is_some();
            let mut sub = match engine
                .subscribe(ch, ClientInfo::new(client_id), since, now)
                .await
            {
                Ok(s) => s,
                Err(e) => return engine_error(&id, &e),
            };
            let pos = sub.position().clone();
            let recovered = matches!(sub.recovery(), Recovery::Recovered(_));
            let publications = sub.take_recovered();
            let mut result = format!("{{\"offset\":{},\"epoch\":{}", pos.offset, json!(pos.epoch));
            if asked {
                result.push_str(&format!(
                    ",\"recovered\":{recovered},\"publications\":{}",
                    publications_json(&publications)
                ));
            }
            result.push('}');
            let (stop, mut stopped) = oneshot::channel();
            let tx = tx.clone();
            let engine = engine.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        ev = sub.recv() => match ev {
                            Ok(ev) => {
                                if tx.try_send(Out::Event(ev)).is_err() {
                                    let _ = tx.try_send(Out::SlowConsumer);
                                    break;
                                }
                            }
                            Err(e) if e.is_lagged() => {
                                let _ = tx.try_send(Out::SlowConsumer);
                                break;
                            }
                            Err(_) => break,
                        },
                    }
                }
                let _ = engine.unsubscribe(sub, Instant::now()).await;
            });
            subs.insert(ch.to_owned(), Sub { stop });
            reply_ok(&id, result)
        }
        "unsubscribe" => {
            let Ok(ch) = need_channel() else {
                return reply_err(&id, code::BAD_REQUEST, "missing channel");
            };
            match subs.remove(ch) {
                Some(sub) => {
                    let _ = sub.stop.send(());
                    reply_ok(&id, "{}".into())
                }
                None => reply_err(&id, code::NOT_SUBSCRIBED, "not subscribed"),
            }
        }
        "publish" => {
            let Ok(ch) = need_channel() else {
                return reply_err(&id, code::BAD_REQUEST, "missing channel");
            };
            match engine.namespaces().for_channel(ch) {
                None => return reply_err(&id, code::UNKNOWN_CHANNEL, "unknown namespace"),
                Some(ns) if !ns.publish => {
                    return reply_err(
                        &id,
                        code::PERMISSION_DENIED,
                        "publishing is not allowed in this namespace",
                    )
                }
                Some(_) => {}
            }
            let Some(data) = req.get("data") else {
                return reply_err(&id, code::BAD_REQUEST, "missing data");
            };
            let data = Bytes::from(data.to_string());
            match engine.publish(ch, data, now).await {
                Ok(p) => reply_ok(&id, position_json(&p)),
                Err(e) => engine_error(&id, &e),
            }
        }
        "history" => {
            let Ok(ch) = need_channel() else {
                return reply_err(&id, code::BAD_REQUEST, "missing channel");
            };
            let limit = req
                .get("limit")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .min(10_000) as usize;
            match engine.history(ch, limit, now).await {
                Ok(h) => reply_ok(
                    &id,
                    format!(
                        "{{\"offset\":{},\"epoch\":{},\"publications\":{}}}",
                        h.position.offset,
                        json!(h.position.epoch),
                        publications_json(&h.publications)
                    ),
                ),
                Err(e) => engine_error(&id, &e),
            }
        }
        "presence" => {
            let Ok(ch) = need_channel() else {
                return reply_err(&id, code::BAD_REQUEST, "missing channel");
            };
            match engine.presence(ch).await {
                Ok(clients) => {
                    let list: Vec<Value> = clients
                        .iter()
                        .map(|c| json!({"client": c.client_id, "user": c.user_id, "info": c.info}))
                        .collect();
                    reply_ok(&id, json!({"clients": list}).to_string())
                }
                Err(e) => engine_error(&id, &e),
            }
        }
        _ => reply_err(&id, code::UNKNOWN_OP, "unknown op"),
    }
}
