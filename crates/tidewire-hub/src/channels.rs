//! The `tidewire.v1` channel protocol at `/ws` (docs/protocol.md): one connection's state
//! ([`Conn`]) and its answer to each request, through the node. The connection's task (the
//! reading, the writing of events, the closes) is `channel_endpoint`.
//!
//! Every subscription ends with `Node::unsubscribe` (an `unsubscribe` request or the end of
//! the connection), so the node, and through it the broker, always learns that a
//! subscriber has gone.

use crate::auth::{AuthError, Identity};
use crate::backend::{Call, ChannelCall, ConnectAnswer, ConnectCall, DataResult, Failure, RpcCall};
use crate::engine::{ClientInfo, StreamPosition};
use crate::hub::Hub;
use crate::limits::TokenBucket;
use crate::metrics::{Metrics, Refusal};
use crate::node::{Event, Json, NamespaceOptions, Order, Outbox, Subscription};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tidewire::{CloseCode, CloseFrame};
use tidewire_hub_proto::{
    self as wire, ConnectResult, Empty, ErrorCode, PresenceResult, Request, RequestId,
};

/// Largest `info` a client may attach in `connect` (JSON bytes as sent).
const MAX_INFO: usize = 1024;

/// `history` without a `limit`, and the largest `limit` taken.
const HISTORY_DEFAULT: u64 = 100;
const HISTORY_MAX: u64 = 10_000;

/// A close frame with one of the hub's codes (the table is `tidewire_hub_proto`'s).
pub(crate) fn close_frame(code: wire::CloseCode, reason: impl Into<String>) -> CloseFrame {
    CloseFrame::new(CloseCode(code.0), reason)
}

fn reply_ok<R: serde::Serialize + ?Sized>(id: &RequestId, result: &R) -> String {
    wire::encode_ok(id, result)
}

fn reply_err(id: &RequestId, code: ErrorCode, message: &str) -> String {
    wire::encode_error(id, code, message)
}

fn engine_error(metrics: &Metrics, id: &RequestId, e: &crate::engine::Error) -> String {
    reply_err(id, engine_code(metrics, e), &e.to_string())
}

/// The error code of an engine error (counting a refusal for too many channels).
pub(crate) fn engine_code(metrics: &Metrics, e: &crate::engine::Error) -> ErrorCode {
    if e.is_too_many_channels() {
        metrics.refused(Refusal::MaxChannels);
    }
    if e.is_invalid_channel() || e.is_unknown_namespace() {
        ErrorCode::UNKNOWN_CHANNEL
    } else if e.is_invalid_data() {
        ErrorCode::BAD_REQUEST
    } else if e.is_not_available() {
        ErrorCode::NOT_AVAILABLE
    } else if e.is_too_many_channels() {
        ErrorCode::LIMIT_REACHED
    } else if e.is_temporary() {
        ErrorCode::UNAVAILABLE
    } else {
        ErrorCode::INTERNAL
    }
}

/// A publication's wire form as encoded once for every subscriber (its prepared message).
fn encoded(e: &Event) -> Cow<'_, str> {
    match e
        .prepared()
        .and_then(|p| std::str::from_utf8(p.payload()).ok())
    {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(e.to_json()),
    }
}

/// A result that carries publications: `history` (`recovered: None`) or `subscribe` with
/// `since`.
fn publications_reply(
    id: &RequestId,
    position: &StreamPosition,
    recovered: Option<bool>,
    events: &[Arc<Event>],
) -> String {
    let publications = events.iter().map(|e| encoded(e));
    wire::encode_publications_result(
        id,
        position.offset,
        &position.epoch,
        recovered,
        publications,
    )
}

/// Whether `identity` (none: anonymous) may use channel `ch`: its namespace's options, or
/// the error code and why not (an unknown namespace; `NAME#ann,bob` used by another user;
/// a private channel the token's `channels` claim does not list).
pub(crate) fn channel_access(
    hub: &Hub,
    identity: Option<&Identity>,
    ch: &str,
) -> Result<NamespaceOptions, (ErrorCode, &'static str)> {
    let Some(ns) = hub.node.namespaces().for_channel(ch) else {
        return Err((ErrorCode::UNKNOWN_CHANNEL, "unknown namespace"));
    };
    // `NAME#ann,bob`: only the users listed after the last `#`.
    if let Some((_, users)) = ch.rsplit_once('#') {
        let me = identity.map(|i| i.user.as_str());
        if !me.is_some_and(|me| users.split(',').any(|u| u == me)) {
            return Err((
                ErrorCode::PERMISSION_DENIED,
                "only the users listed after # in the channel's name may use it",
            ));
        }
    }
    if ns.private && !identity.is_some_and(|i| i.may_use(ch)) {
        return Err((
            ErrorCode::PERMISSION_DENIED,
            "private channel: the token's channels claim does not allow it",
        ));
    }
    Ok(ns.clone())
}

/// Takes a token of a connection's publish rate limit `bucket` (publications and `rpc`
/// calls share it); the error reply, counted, when there is none.
fn take_publish_token(
    bucket: &mut TokenBucket,
    hub: &Hub,
    id: &RequestId,
    now: Instant,
    what: &str,
) -> Result<(), String> {
    if bucket.take(now) {
        return Ok(());
    }
    hub.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
    let msg = format!(
        "rate limited: at most {} {what} per second (limits.publish_rate)",
        hub.config.publish_rate
    );
    Err(reply_err(id, ErrorCode::RATE_LIMITED, &msg))
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
        wire::CloseCode::TOKEN_EXPIRED
    } else {
        wire::CloseCode::UNAUTHORIZED
    };
    close_frame(code, format!("unauthorized: {e}"))
}

/// The answer to any op but `connect` and `ping` before a successful `connect`: 109, then
/// close 4008.
fn unauthenticated(id: &RequestId) -> Reply {
    let e = AuthError::Missing;
    let reply = reply_err(id, ErrorCode::UNAUTHORIZED, "connect with a token first");
    Reply::SendAndClose(reply, auth_close(&e))
}

/// One `/ws` connection's state.
pub(crate) struct Conn {
    pub(crate) hub: Arc<Hub>,
    pub(crate) client_id: String,
    /// Boxed: most connections have none, and every connection holds this field.
    pub(crate) identity: Option<Box<Identity>>,
    pub(crate) authenticated: bool,
    /// `info` given in `connect`, shown in presence unless the token has one.
    pub(crate) own_info: Option<Box<Value>>,
    /// A `connect` brought a new token: its expiry must be armed.
    pub(crate) identity_changed: bool,
    /// Who this connection is in presence, once asked for (see `client_info`).
    pub(crate) client: Option<Arc<ClientInfo>>,
    /// Subscribed channels and the node's id of each subscription (sharing the node's
    /// copy of the name).
    pub(crate) subs: Subscriptions,
    /// Where the node delivers the events of every subscription; made at the first.
    pub(crate) outbox: Option<Outbox>,
    pub(crate) bucket: TokenBucket,
    /// The subscribe rate limit (`limits.subscribe_rate`).
    pub(crate) sub_bucket: TokenBucket,
    /// Counted against `limits.max_connections` while it lives.
    pub(crate) _slot: crate::admission::Slot,
    /// Listed under its identity's user for the server API (`Hub::sessions`).
    pub(crate) listed: bool,
    /// The handshake's headers for the backend's connect call, until the `connect`.
    pub(crate) handshake: Option<Box<crate::backend::Handshake>>,
    /// Its connect event was recorded (`hooks`).
    pub(crate) hooked: bool,
}

/// A connection's subscriptions: channel name (the node's copy) and the node's id of the
/// subscription, in a vector sorted by name. 24 bytes a subscription, where a hash map cost
/// about 50 at its load factor and left its outgrown tables behind as it grew (a connection
/// with hundreds of per-user channels: issue 14's memory per channel). A lookup, made per
/// event that waited in the outbox (not per event the deliverer writes), is a binary search
/// over at most `limits.max_subscriptions` names.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions(Vec<(Arc<str>, u64)>);

impl Subscriptions {
    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(name, _)| (**name).cmp(channel))
    }

    /// The id of the subscription to `channel`, if any.
    pub(crate) fn get(&self, channel: &str) -> Option<u64> {
        self.find(channel).ok().map(|i| self.0[i].1)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds (or replaces) the subscription to `channel`.
    pub(crate) fn insert(&mut self, channel: Arc<str>, id: u64) {
        match self.find(&channel) {
            Ok(i) => self.0[i].1 = id,
            Err(i) => self.0.insert(i, (channel, id)),
        }
    }

    /// Takes the subscription to `channel` out; the vector shrinks when mostly empty.
    pub(crate) fn remove(&mut self, channel: &str) -> Option<(Arc<str>, u64)> {
        let i = self.find(channel).ok()?;
        let entry = self.0.remove(i);
        if self.0.len() < self.0.capacity() / 4 {
            self.0.shrink_to(self.0.len() * 2);
        }
        Some(entry)
    }

    /// Takes every subscription out.
    pub(crate) fn take_all(&mut self) -> Vec<(Arc<str>, u64)> {
        std::mem::take(&mut self.0)
    }
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
        if let Some(hooks) = &self.hub.hooks {
            hooks.unsubscribed(&self.client_id, sub.channel_name());
        }
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
            info.info = self.own_info.as_deref().cloned();
        }
        self.client.insert(Arc::new(info)).clone()
    }

    /// Checks the channel's namespace and, for a private one, the token's `channels`.
    fn namespace(&self, id: &RequestId, ch: &str) -> Result<NamespaceOptions, String> {
        channel_access(&self.hub, self.identity.as_deref(), ch)
            .map_err(|(code, why)| reply_err(id, code, why))
    }

    pub(crate) async fn handle(&mut self, text: &str) -> Reply {
        let (id, req) = match wire::parse_request(text) {
            Ok(r) => r,
            Err(e) => {
                // Before a successful `connect`, an op other than `connect` and `ping` is
                // refused as unauthorized, whatever its members.
                let op = e.op();
                if !self.authenticated && op.is_some_and(|op| op != "connect" && op != "ping") {
                    return unauthenticated(e.id());
                }
                return e.reply().into();
            }
        };
        if !self.authenticated && !matches!(req, Request::Connect { .. } | Request::Ping) {
            return unauthenticated(&id);
        }
        let now = Instant::now();
        let node = &self.hub.node;
        let reply = match req {
            Request::Connect { token, info } => {
                if let (Some(auth), Some(t)) = (&self.hub.config.auth, token.as_deref()) {
                    auth.refresh_for(t).await;
                }
                return self.connect(&id, token.as_deref(), info).await;
            }
            Request::Rpc { method, data } => return self.rpc(&id, &method, &data).await.into(),
            Request::Ping => reply_ok(&id, &Empty {}),
            Request::Subscribe { channel, since } => self.subscribe(&id, &channel, since).await,
            Request::Unsubscribe { channel } => match self.subs.remove(channel.as_str()) {
                Some((channel, sub_id)) => {
                    self.end(Subscription::new(sub_id, channel)).await;
                    reply_ok(&id, &Empty {})
                }
                None => reply_err(&id, ErrorCode::NOT_SUBSCRIBED, "not subscribed"),
            },
            Request::Publish {
                channel,
                data,
                idempotency_key,
            } => {
                let ch = channel.as_str();
                let ns = match self.namespace(&id, ch) {
                    Ok(ns) => ns,
                    Err(r) => return r.into(),
                };
                if !ns.publish {
                    return reply_err(
                        &id,
                        ErrorCode::PERMISSION_DENIED,
                        "publishing is not allowed in this namespace",
                    )
                    .into();
                }
                if let Err(r) =
                    take_publish_token(&mut self.bucket, &self.hub, &id, now, "publications")
                {
                    return r.into();
                }
                // The raw JSON as the request carried it (checked when it was read), or
                // what the backend made of it.
                let data = if ns.publish_proxy {
                    match self.ask_channel(Call::Publish, ch, Some(&data)).await {
                        Ok(DataResult { data: Some(new) }) => new,
                        Ok(DataResult { data: None }) => data,
                        Err(f) => return self.refused(&id, &f).into(),
                    }
                } else {
                    data
                };
                let key = idempotency_key.as_deref();
                match node.publish_once(ch, Json::from(data), key).await {
                    Ok(p) => {
                        self.hub.metrics.publish_latency(now.elapsed());
                        self.hub
                            .metrics
                            .publications
                            .fetch_add(1, Ordering::Relaxed);
                        reply_ok(&id, &p)
                    }
                    Err(e) => engine_error(&self.hub.metrics, &id, &e),
                }
            }
            Request::History { channel, limit } => {
                let ch = channel.as_str();
                if let Err(r) = self.namespace(&id, ch) {
                    return r.into();
                }
                let limit = limit.unwrap_or(HISTORY_DEFAULT).min(HISTORY_MAX) as usize;
                match node.history(ch, limit).await {
                    Ok(h) => publications_reply(&id, &h.position, None, &h.publications),
                    Err(e) => engine_error(&self.hub.metrics, &id, &e),
                }
            }
            Request::Presence { channel } => {
                let ch = channel.as_str();
                if let Err(r) = self.namespace(&id, ch) {
                    return r.into();
                }
                match node.presence(ch).await {
                    Ok(clients) => reply_ok(&id, &PresenceResult { clients }),
                    Err(e) => engine_error(&self.hub.metrics, &id, &e),
                }
            }
        };
        reply.into()
    }

    /// The error reply for a call the backend refused or could not answer.
    fn refused(&self, id: &RequestId, f: &Failure) -> String {
        let (code, message) = f.error();
        reply_err(id, code, &message)
    }

    /// Asks the backend about `channel` (subscribe or publish).
    async fn ask_channel(
        &self,
        call: Call,
        channel: &str,
        data: Option<&RawValue>,
    ) -> Result<DataResult, Failure> {
        let Some(backend) = &self.hub.backend else {
            return Ok(DataResult::default());
        };
        let body = ChannelCall {
            client: &self.client_id,
            user: self.identity.as_ref().map(|i| i.user.as_str()),
            channel,
            data,
        };
        backend.ask(call, &body).await
    }

    /// `rpc`: forwarded to the backend where the method's namespace has `rpc_proxy`.
    async fn rpc(&mut self, id: &RequestId, method: &str, data: &RawValue) -> String {
        let Some(ns) = self.hub.node.namespaces().for_channel(method) else {
            return reply_err(id, ErrorCode::UNKNOWN_CHANNEL, "unknown namespace");
        };
        let Some(backend) = self.hub.backend.as_ref().filter(|_| ns.rpc_proxy) else {
            return reply_err(
                id,
                ErrorCode::PERMISSION_DENIED,
                "rpc is not enabled in this namespace (rpc_proxy)",
            );
        };
        if let Err(r) = take_publish_token(
            &mut self.bucket,
            &self.hub,
            id,
            Instant::now(),
            "publications and calls",
        ) {
            return r;
        }
        let body = RpcCall {
            client: &self.client_id,
            user: self.identity.as_ref().map(|i| i.user.as_str()),
            method,
            data,
        };
        match backend.ask::<DataResult>(Call::Rpc, &body).await {
            Ok(r) => {
                let null = RawValue::NULL;
                let data: &RawValue = r.data.as_deref().unwrap_or(null);
                reply_ok(id, &wire::RpcResult { data })
            }
            Err(f) => self.refused(id, &f),
        }
    }

    /// The backend's connect call: who this connection is, from its handshake's cookies
    /// and headers. `Err` is the reply (and close) to send.
    async fn connect_by_backend(
        &mut self,
        id: &RequestId,
        info: Option<&Value>,
    ) -> Result<(), Reply> {
        let Some(backend) = &self.hub.backend else {
            return Ok(());
        };
        let headers = self.handshake.take().map(|h| h.0).unwrap_or_default();
        let call = ConnectCall {
            client: &self.client_id,
            transport: "websocket",
            protocol: wire::PROTOCOL,
            headers: crate::backend::Backend::header_map(&headers),
            info,
        };
        match backend.ask::<ConnectAnswer>(Call::Connect, &call).await {
            Ok(r) => {
                let user_ok = !r.user.is_empty() && r.user.len() <= 256;
                if !user_ok {
                    let msg =
                        "backend unavailable: the connect call's user must be 1 to 256 characters";
                    let reply = reply_err(id, ErrorCode::UNAVAILABLE, msg);
                    return Err(Reply::SendAndClose(
                        reply,
                        CloseFrame::new(CloseCode::TRY_AGAIN_LATER, "backend unavailable"),
                    ));
                }
                if let Some(why) = self.hub.control.refusal(&r.user, None) {
                    self.hub
                        .metrics
                        .auth_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let msg = format!("unauthorized: {why}");
                    let reply = reply_err(id, ErrorCode::UNAUTHORIZED, &msg);
                    let frame = close_frame(wire::CloseCode::BLOCKED, msg);
                    return Err(Reply::SendAndClose(reply, frame));
                }
                self.unlist();
                self.identity = Some(Box::new(Identity {
                    user: r.user,
                    channels: r.allow,
                    info: r.info,
                    expires: r.expire_at,
                    issued: None,
                }));
                self.client = None;
                self.authenticated = true;
                self.identity_changed = true;
                self.enlist();
                // Subscribed after the reply, as the server API's subscribe is.
                if let Some(user) = self.identity.as_ref().map(|i| i.user.clone()) {
                    for channel in r.channels {
                        let order = Order::Subscribe(Arc::from(channel.as_str()));
                        self.hub
                            .sessions
                            .order(&user, Some(&self.client_id), &order);
                    }
                }
                Ok(())
            }
            Err(f @ Failure::Denied { .. }) => {
                self.hub
                    .metrics
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                let (_, message) = f.error();
                let msg = format!("unauthorized: {message}");
                let reply = reply_err(id, ErrorCode::UNAUTHORIZED, &msg);
                Err(Reply::SendAndClose(
                    reply,
                    close_frame(wire::CloseCode::UNAUTHORIZED, msg),
                ))
            }
            Err(f) => {
                let (code, message) = f.error();
                let reply = reply_err(id, code, &message);
                // 1013: try again later (the client reconnects with backoff).
                Err(Reply::SendAndClose(
                    reply,
                    CloseFrame::new(CloseCode::TRY_AGAIN_LATER, "backend unavailable"),
                ))
            }
        }
    }

    async fn connect(
        &mut self,
        id: &RequestId,
        token: Option<&str>,
        info: Option<Box<RawValue>>,
    ) -> Reply {
        let info = match info {
            None => None,
            Some(raw) if raw.get().len() > MAX_INFO => {
                let msg = format!("info is larger than {MAX_INFO} bytes");
                return reply_err(id, ErrorCode::BAD_REQUEST, &msg).into();
            }
            // At most MAX_INFO bytes of checked JSON: presence shows it as a value. One
            // nested deeper than serde_json reads (128) is refused, not dropped unseen.
            Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
                Ok(v) => Some(v),
                Err(_) => {
                    let msg = "info is nested more than 128 deep";
                    return reply_err(id, ErrorCode::BAD_REQUEST, msg).into();
                }
            },
        };
        let by_backend = self.identity.is_none()
            && self.hub.backend.as_ref().is_some_and(|b| b.connect)
            && (token.is_none() || self.hub.config.auth.is_none());
        if by_backend {
            if let Err(reply) = self.connect_by_backend(id, info.as_ref()).await {
                return reply;
            }
        }
        match (&self.hub.config.auth, token) {
            _ if by_backend => {}
            (Some(auth), Some(token)) => match auth.verify(token) {
                Ok(identity) => {
                    if let Some(why) = self.hub.control.refusal(&identity.user, identity.issued) {
                        self.hub
                            .metrics
                            .auth_failures
                            .fetch_add(1, Ordering::Relaxed);
                        let msg = format!("unauthorized: {why}");
                        let reply = reply_err(id, ErrorCode::UNAUTHORIZED, &msg);
                        let code = if why == "blocked" {
                            wire::CloseCode::BLOCKED
                        } else {
                            wire::CloseCode::TOKEN_EXPIRED
                        };
                        return Reply::SendAndClose(reply, close_frame(code, msg));
                    }
                    self.unlist();
                    self.identity = Some(Box::new(identity));
                    self.client = None;
                    self.authenticated = true;
                    self.identity_changed = true;
                }
                Err(e) => {
                    self.hub
                        .metrics
                        .auth_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let msg = format!("unauthorized: {e}");
                    let reply = reply_err(id, ErrorCode::UNAUTHORIZED, &msg);
                    return Reply::SendAndClose(reply, auth_close(&e));
                }
            },
            (Some(_), None) if !self.authenticated => {
                self.hub
                    .metrics
                    .auth_failures
                    .fetch_add(1, Ordering::Relaxed);
                let e = AuthError::Missing;
                let msg = format!("unauthorized: {e}");
                let reply = reply_err(id, ErrorCode::UNAUTHORIZED, &msg);
                return Reply::SendAndClose(reply, auth_close(&e));
            }
            _ => {}
        }
        if info.is_some() {
            self.own_info = info.map(Box::new);
            self.client = None;
        }
        self.enlist();
        let result = ConnectResult {
            client: self.client_id.clone(),
            user: self.identity.as_ref().map(|i| i.user.clone()),
            version: wire::PROTOCOL.to_owned(),
        };
        reply_ok(id, &result).into()
    }

    async fn subscribe(
        &mut self,
        id: &RequestId,
        ch: &str,
        since: Option<StreamPosition>,
    ) -> String {
        let ns = match self.namespace(id, ch) {
            Ok(ns) => ns,
            Err(r) => return r,
        };
        if self.subs.get(ch).is_some() {
            return reply_err(id, ErrorCode::ALREADY_SUBSCRIBED, "already subscribed");
        }
        if self.subs.len() >= self.hub.config.max_subscriptions {
            let msg = format!(
                "too many subscriptions: at most {} per connection (limits.max_subscriptions)",
                self.hub.config.max_subscriptions
            );
            return reply_err(id, ErrorCode::LIMIT_REACHED, &msg);
        }
        if !self.sub_bucket.take(Instant::now()) {
            self.hub.metrics.refused(Refusal::SubscribeRate);
            let msg = format!(
                "rate limited: at most {} subscribes per second (limits.subscribe_rate)",
                self.hub.config.subscribe_rate
            );
            return reply_err(id, ErrorCode::RATE_LIMITED, &msg);
        }
        if ns.subscribe_proxy {
            if let Err(f) = self.ask_channel(Call::Subscribe, ch, None).await {
                return self.refused(id, &f);
            }
        }
        let asked = since.is_some();
        let mut sub = match self.join(ch, since).await {
            Ok(s) => s,
            Err(e) => return engine_error(&self.hub.metrics, id, &e),
        };
        if asked {
            let recovered = sub.recovered();
            let publications = sub.take_recovered();
            publications_reply(id, &sub.position, Some(recovered), &publications)
        } else {
            reply_ok(id, &sub.position)
        }
    }

    /// Subscribes to `ch` in the node (checks done) and keeps the subscription.
    async fn join(
        &mut self,
        ch: &str,
        since: Option<StreamPosition>,
    ) -> Result<crate::node::Subscribed, crate::engine::Error> {
        let hub = self.hub.clone();
        let capacity = self.hub.config.send_queue;
        let outbox = self
            .outbox
            .get_or_insert_with(|| Outbox::new(capacity))
            .sender();
        let client = self.client_info();
        let sub = hub.node.subscribe(ch, client, since, outbox).await?;
        self.hub.subscribers.fetch_add(1, Ordering::Relaxed);
        let key = sub.subscription.channel_name().clone();
        if let Some(hooks) = &self.hub.hooks {
            hooks.subscribed(&self.client_id, &key);
        }
        self.subs.insert(key, sub.subscription.id());
        Ok(sub)
    }

    /// Records the session's connect event once it is someone (authenticated, or
    /// anonymous where that is allowed).
    pub(crate) fn hook_connect(&mut self) {
        if self.hooked || !self.authenticated {
            return;
        }
        if let Some(hooks) = &self.hub.hooks {
            self.hooked = true;
            let user = self.identity.as_ref().map(|i| i.user.as_str());
            hooks.connected(&self.client_id, user);
        }
    }

    /// Records the close the server sends, for the disconnect event.
    pub(crate) fn hook_close(&self, frame: &CloseFrame) {
        if let Some(hooks) = &self.hub.hooks {
            hooks.closing(&self.client_id, frame.code.0, &frame.reason);
        }
    }

    /// Lists the connection under its identity's user for the server API (call
    /// [`Conn::unlist`] before the identity changes).
    pub(crate) fn enlist(&mut self) {
        if self.listed {
            return;
        }
        let (Some(identity), Some(outbox)) = (self.identity.as_ref(), self.outbox.as_ref()) else {
            return;
        };
        self.hub
            .sessions
            .add(&identity.user, &self.client_id, outbox.sender());
        self.listed = true;
    }

    /// Takes the connection off the server API's list.
    pub(crate) fn unlist(&mut self) {
        if std::mem::take(&mut self.listed) {
            if let Some(identity) = &self.identity {
                self.hub.sessions.remove(&identity.user, &self.client_id);
            }
        }
    }

    /// The server API's orders for this connection, taken.
    pub(crate) fn take_orders(&self) -> Vec<Order> {
        match (&self.identity, self.listed) {
            (Some(identity), true) => self.hub.sessions.take(&identity.user, &self.client_id),
            _ => Vec::new(),
        }
    }

    /// Carries out an order of the server API: the push to send about it, and the close
    /// to send after it, if any.
    pub(crate) async fn obey(&mut self, order: Order) -> (Option<String>, Option<CloseFrame>) {
        match order {
            Order::Disconnect { code, reason } => {
                (None, Some(CloseFrame::new(CloseCode::from(code), reason)))
            }
            Order::Revoke(before) => {
                let issued = self.identity.as_ref().and_then(|i| i.issued);
                if issued.is_some_and(|iat| iat >= before) {
                    return (None, None);
                }
                let frame = close_frame(wire::CloseCode::TOKEN_EXPIRED, "token revoked");
                (None, Some(frame))
            }
            Order::Refresh(expire_at) => {
                if let Some(identity) = self.identity.as_mut() {
                    identity.expires = expire_at;
                    self.identity_changed = true;
                }
                (None, None)
            }
            Order::Subscribe(channel) => {
                if self.subs.get(&channel).is_some() {
                    return (None, None);
                }
                if self.subs.len() >= self.hub.config.max_subscriptions {
                    tracing::info!(
                        client = %self.client_id,
                        "server API: not subscribed to {}: limits.max_subscriptions reached",
                        crate::log_text::peer(&channel)
                    );
                    return (None, None);
                }
                match self.join(&channel, None).await {
                    Ok(sub) => {
                        let push = wire::Push::Subscribed {
                            channel: channel.to_string(),
                            position: sub.position.clone(),
                        };
                        (Some(push.to_json()), None)
                    }
                    Err(e) => {
                        tracing::info!(
                            client = %self.client_id,
                            "server API: not subscribed to {}: {e}",
                            crate::log_text::peer(&channel)
                        );
                        (None, None)
                    }
                }
            }
            Order::Unsubscribe(channel) => match self.subs.remove(&channel) {
                Some((name, sub_id)) => {
                    self.end(Subscription::new(sub_id, name)).await;
                    let push = wire::Push::Unsubscribed {
                        channel: channel.to_string(),
                        empty: Empty {},
                    };
                    (Some(push.to_json()), None)
                }
                None => (None, None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Subscriptions;
    use std::sync::Arc;

    #[test]
    fn subscriptions_find_replace_and_remove_by_name() {
        let mut subs = Subscriptions::default();
        let names = ["m", "a", "z", "chat:b", "chat:a", "b"];
        for (i, n) in names.iter().enumerate() {
            subs.insert(Arc::from(*n), i as u64);
        }
        assert_eq!(subs.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(subs.get(n), Some(i as u64), "{n}");
        }
        assert_eq!(subs.get("chat:c"), None);
        subs.insert(Arc::from("z"), 99);
        assert_eq!((subs.get("z"), subs.len()), (Some(99), names.len()));
        let (name, id) = subs.remove("chat:a").unwrap();
        assert_eq!((&*name, id), ("chat:a", 4));
        assert_eq!(subs.remove("chat:a"), None);
        assert_eq!(subs.get("chat:b"), Some(3));
        // Emptied, it gives its memory back as it goes.
        for i in 0..1000 {
            subs.insert(Arc::from(format!("u{i}").as_str()), 0);
        }
        for i in 0..1000 {
            subs.remove(&format!("u{i}"));
        }
        assert!(subs.0.capacity() < 64, "capacity {}", subs.0.capacity());
        let all: Vec<_> = subs.take_all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            all.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "b", "chat:b", "m", "z"]
        );
    }
}
