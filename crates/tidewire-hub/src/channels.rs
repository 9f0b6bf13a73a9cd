//! The `tidewire.v1` channel protocol at `/ws` (docs/protocol.md): one connection's state
//! ([`Conn`]) and its answer to each request, through the node. The connection's task (the
//! reading, the writing of events, the closes) is `channel_endpoint`.
//!
//! Every subscription ends with `Node::unsubscribe` (an `unsubscribe` request or the end of
//! the connection), so the node, and through it the broker, always learns that a
//! subscriber has gone.

use crate::auth::{AuthError, Identity};
use crate::engine::{ClientInfo, StreamPosition};
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::node::{Event, Json, NamespaceOptions, Outbox, Subscription};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tidewire::{CloseCode, CloseFrame};

/// Largest `info` a client may attach in `connect` (serialized JSON bytes).
const MAX_INFO: usize = 1024;

/// Error codes of docs/protocol.md.
mod code {
    pub const INTERNAL: u32 = 100;
    pub const BAD_REQUEST: u32 = 101;
    pub const UNKNOWN_OP: u32 = 102;
    pub const UNKNOWN_CHANNEL: u32 = 103;
    pub const PERMISSION_DENIED: u32 = 104;
    pub const NOT_SUBSCRIBED: u32 = 105;
    pub const ALREADY_SUBSCRIBED: u32 = 106;
    pub const RATE_LIMITED: u32 = 107;
    pub const UNAUTHORIZED: u32 = 109;
    pub const NOT_AVAILABLE: u32 = 110;
    pub const LIMIT_REACHED: u32 = 111;
}

/// Close codes of docs/protocol.md.
pub(crate) mod close {
    pub const SLOW_CONSUMER: u16 = 4000;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const UNSUPPORTED_DATA: u16 = 4003;
    pub const UNAUTHORIZED: u16 = 4008;
}

fn reply_ok(id: &Value, result: &str) -> String {
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

/// What to do after a request.
pub(crate) enum Reply {
    Send(String),
    /// Send the reply, then close the connection.
    SendAndClose(String, CloseFrame),
}

impl From<String> for Reply {
    fn from(s: String) -> Self {
        Reply::Send(s)
    }
}

fn auth_close(e: &AuthError) -> CloseFrame {
    let code = if *e == AuthError::Expired {
        close::TOKEN_EXPIRED
    } else {
        close::UNAUTHORIZED
    };
    CloseFrame::new(CloseCode(code), format!("unauthorized: {e}"))
}

/// One `/ws` connection's state.
pub(crate) struct Conn {
    pub(crate) hub: Arc<Hub>,
    pub(crate) client_id: String,
    pub(crate) identity: Option<Identity>,
    pub(crate) authenticated: bool,
    /// `info` given in `connect`, shown in presence unless the token has one.
    pub(crate) own_info: Option<Value>,
    /// A `connect` brought a new token: its expiry must be armed.
    pub(crate) identity_changed: bool,
    /// Who this connection is in presence, once asked for (see `client_info`).
    pub(crate) client: Option<Arc<ClientInfo>>,
    /// Subscribed channels and the node's id of each subscription (the key shares the
    /// node's copy of the name: a subscription costs one map entry here).
    pub(crate) subs: HashMap<Arc<str>, u64>,
    /// Where the node delivers the events of every subscription; made at the first.
    pub(crate) outbox: Option<Outbox>,
    pub(crate) bucket: TokenBucket,
}

/// A timer that fires once.
pub(crate) type Timer = std::pin::Pin<Box<tokio::time::Sleep>>;

impl Conn {
    /// A timer for the token's expiry; none when no expiring token is in force.
    pub(crate) fn expiry_timer(&self) -> Option<Timer> {
        let left = self.identity.as_ref().and_then(|i| i.time_left())?;
        Some(Box::pin(tokio::time::sleep(left)))
    }

    /// Ends `sub` in the node: no more deliveries, and a leave event where the namespace
    /// has presence.
    pub(crate) async fn end(&self, sub: Subscription) {
        self.hub.subscribers.fetch_sub(1, Ordering::Relaxed);
        let client = match &self.client {
            Some(c) => c.clone(),
            None => Arc::new(ClientInfo::new(self.client_id.clone())),
        };
        self.hub.node.unsubscribe(sub, &client).await;
    }

    /// Who this connection is, for presence: one value shared by all its subscriptions
    /// (made again after a `connect` changes the identity or the info).
    fn client_info(&mut self) -> Arc<ClientInfo> {
        if let Some(info) = &self.client {
            return info.clone();
        }
        let mut info = ClientInfo::new(self.client_id.clone());
        if let Some(id) = &self.identity {
            info.user_id = Some(id.user.clone());
            info.info = id.info.clone();
        }
        // The token's `info` claim, when there is one, wins over what the client says.
        if info.info.is_none() {
            info.info = self.own_info.clone();
        }
        self.client.insert(Arc::new(info)).clone()
    }

    /// Checks the channel's namespace and, for a private one, the token's `channels`.
    fn namespace(&self, id: &Value, ch: &str) -> Result<NamespaceOptions, String> {
        let Some(ns) = self.hub.node.namespaces().for_channel(ch) else {
            return Err(reply_err(id, code::UNKNOWN_CHANNEL, "unknown namespace"));
        };
        if ns.private && !self.identity.as_ref().is_some_and(|i| i.may_use(ch)) {
            return Err(reply_err(
                id,
                code::PERMISSION_DENIED,
                "private channel: the token's channels claim does not allow it",
            ));
        }
        Ok(ns.clone())
    }

    pub(crate) async fn handle(&mut self, text: &str) -> Reply {
        let null = Value::Null;
        let req: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return reply_err(&null, code::BAD_REQUEST, "not a JSON object").into(),
            Err(e) => return reply_err(&null, code::BAD_REQUEST, &format!("not JSON: {e}")).into(),
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let Some(op) = req.get("op").and_then(Value::as_str) else {
            return reply_err(&id, code::BAD_REQUEST, "missing op").into();
        };
        if op == "connect" {
            return self.connect(&id, &req);
        }
        if op == "ping" {
            return reply_ok(&id, "{}").into();
        }
        if !self.authenticated {
            let e = AuthError::Missing;
            let reply = reply_err(&id, code::UNAUTHORIZED, "connect with a token first");
            return Reply::SendAndClose(reply, auth_close(&e));
        }
        let channel = match req.get("channel") {
            None => None,
            Some(Value::String(c)) => Some(c.as_str()),
            Some(_) => return reply_err(&id, code::BAD_REQUEST, "channel must be a string").into(),
        };
        let need = matches!(
            op,
            "subscribe" | "unsubscribe" | "publish" | "history" | "presence"
        );
        let ch = match (channel, need) {
            (Some(c), true) => c,
            (None, true) => return reply_err(&id, code::BAD_REQUEST, "missing channel").into(),
            _ => return reply_err(&id, code::UNKNOWN_OP, &format!("unknown op {op:?}")).into(),
        };
        let now = Instant::now();
        let node = &self.hub.node;
        let reply = match op {
            "subscribe" => self.subscribe(&id, ch, &req).await,
            "unsubscribe" => match self.subs.remove_entry(ch) {
                Some((channel, sub_id)) => {
                    self.end(Subscription::new(sub_id, channel)).await;
                    reply_ok(&id, "{}")
                }
                None => reply_err(&id, code::NOT_SUBSCRIBED, "not subscribed"),
            },
            "publish" => {
                let ns = match self.namespace(&id, ch) {
                    Ok(ns) => ns,
                    Err(r) => return r.into(),
                };
                if !ns.publish {
                    return reply_err(
                        &id,
                        code::PERMISSION_DENIED,
                        "publishing is not allowed in this namespace",
                    )
                    .into();
                }
                let Some(data) = req.get("data") else {
                    return reply_err(&id, code::BAD_REQUEST, "missing data").into();
                };
                if !self.bucket.take(now) {
                    self.hub
                        .metrics
                        .rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                    let msg = format!(
                        "rate limited: at most {} publications per second (limits.publish_rate)",
                        self.hub.config.publish_rate
                    );
                    return reply_err(&id, code::RATE_LIMITED, &msg).into();
                }
                match node.publish(ch, Json::from(data)).await {
                    Ok(p) => {
                        self.hub.metrics.publish_latency(now.elapsed());
                        self.hub
                            .metrics
                            .publications
                            .fetch_add(1, Ordering::Relaxed);
                        reply_ok(
                            &id,
                            &json!({"offset": p.offset, "epoch": p.epoch}).to_string(),
                        )
                    }
                    Err(e) => engine_error(&id, &e),
                }
            }
            "history" => {
                if let Err(r) = self.namespace(&id, ch) {
                    return r.into();
                }
                let limit = match req.get("limit") {
                    None => 100,
                    Some(v) => match v.as_u64() {
                        Some(n) => n.min(10_000) as usize,
                        None => {
                            return reply_err(
                                &id,
                                code::BAD_REQUEST,
                                "limit must be a non-negative integer",
                            )
                            .into()
                        }
                    },
                };
                match node.history(ch, limit).await {
                    Ok(h) => reply_ok(
                        &id,
                        &format!(
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
                if let Err(r) = self.namespace(&id, ch) {
                    return r.into();
                }
                match node.presence(ch).await {
                    Ok(clients) => reply_ok(&id, &json!({"clients": clients}).to_string()),
                    Err(e) => engine_error(&id, &e),
                }
            }
            _ => unreachable!("ops needing a channel are listed above"),
        };
        reply.into()
    }

    fn connect(&mut self, id: &Value, req: &Value) -> Reply {
        let token = match req.get("token") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(_) => return reply_err(id, code::BAD_REQUEST, "token must be a string").into(),
        };
        let info = match req.get("info") {
            None | Some(Value::Null) => None,
            Some(v) if v.to_string().len() <= MAX_INFO => Some(v.clone()),
            Some(_) => {
                let msg = format!("info is larger than {MAX_INFO} bytes");
                return reply_err(id, code::BAD_REQUEST, &msg).into();
            }
        };
        match (&self.hub.config.auth, token) {
            (Some(auth), Some(token)) => match auth.verify(token) {
                Ok(identity) => {
                    self.identity = Some(identity);
                    self.client = None;
                    self.authenticated = true;
                    self.identity_changed = true;
                }
                Err(e) => {
                    self.hub
                        .metrics
                        .auth_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let reply = reply_err(id, code::UNAUTHORIZED, &format!("unauthorized: {e}"));
                    return Reply::SendAndClose(reply, auth_close(&e));
                }
            },
            (Some(_), None) if !self.authenticated => {
                self.hub
                    .metrics
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                let e = AuthError::Missing;
                let reply = reply_err(id, code::UNAUTHORIZED, &format!("unauthorized: {e}"));
                return Reply::SendAndClose(reply, auth_close(&e));
            }
            _ => {}
        }
        if info.is_some() {
            self.own_info = info;
            self.client = None;
        }
        let user = self.identity.as_ref().map(|i| i.user.as_str());
        let result = json!({"client": self.client_id, "user": user, "version": "tidewire.v1"});
        reply_ok(id, &result.to_string()).into()
    }

    async fn subscribe(&mut self, id: &Value, ch: &str, req: &Value) -> String {
        if let Err(r) = self.namespace(id, ch) {
            return r;
        }
        if self.subs.contains_key(ch) {
            return reply_err(id, code::ALREADY_SUBSCRIBED, "already subscribed");
        }
        if self.subs.len() >= self.hub.config.max_subscriptions {
            let msg = format!(
                "too many subscriptions: at most {} per connection (limits.max_subscriptions)",
                self.hub.config.max_subscriptions
            );
            return reply_err(id, code::LIMIT_REACHED, &msg);
        }
        let since = match req.get("since") {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<StreamPosition>(v.clone()) {
                Ok(p) => Some(p),
                Err(_) => return reply_err(id, code::BAD_REQUEST, "since must be {offset, epoch}"),
            },
        };
        let asked = since.is_some();
        let hub = self.hub.clone();
        let capacity = self.hub.config.send_queue;
        let outbox = self
            .outbox
            .get_or_insert_with(|| Outbox::new(capacity))
            .sender();
        let client = self.client_info();
        let mut sub = match hub.node.subscribe(ch, client, since, outbox).await {
            Ok(s) => s,
            Err(e) => return engine_error(id, &e),
        };
        let pos = &sub.position;
        let mut result = format!("{{\"offset\":{},\"epoch\":{}", pos.offset, json!(pos.epoch));
        let recovered = sub.recovered();
        let publications = sub.take_recovered();
        if asked {
            result.push_str(&format!(
                ",\"recovered\":{recovered},\"publications\":{}",
                publications_json(&publications)
            ));
        }
        result.push('}');
        self.hub.subscribers.fetch_add(1, Ordering::Relaxed);
        let key = sub.subscription.channel_name().clone();
        self.subs.insert(key, sub.subscription.id());
        reply_ok(id, &result)
    }
}
