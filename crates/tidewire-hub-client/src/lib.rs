//! A `tidewire.v1` client (docs/protocol.md) for the Tidewire hub, which reconnects and
//! resumes by itself.
//!
//! Built on [`tidewire::reconnect::ReconnectingClient`]: after every new connection it sends
//! `connect` (with the token, a fresh one from [`HubClientBuilder::token_fn`] if given),
//! then subscribes again to every channel with `since` = the last position the application
//! was given. Each [`Subscription`] delivers the recovered publications first, then live
//! ones, skipping any offset already delivered; a jump in offsets (or an epoch that
//! changes under a live subscription) makes it resubscribe with `since` at once. When the
//! server cannot fill a gap (`recovered: false`: a new epoch after a server restart, or
//! history too short) the subscription says so with [`Item::Unrecoverable`] and carries
//! on with new publications: nothing is silently lost.
//!
//! ```no_run
//! # async fn run() -> Result<(), tidewire_hub_client::Error> {
//! use tidewire_hub_client::{HubClient, Item};
//!
//! let client = HubClient::builder("ws://127.0.0.1:8080/ws").connect();
//! let mut news = client.subscribe("news").await?;
//! client.publish("news", serde_json::json!({"text": "hi"})).await?;
//! while let Some(item) = news.next().await {
//!     match item {
//!         Item::Publication(p) => println!("{} {}", p.offset, p.data),
//!         Item::Unrecoverable { .. } => println!("some messages may be missing: reload"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Requests (`publish`, `history`, `presence`, `ping`) made between connections wait for
//! the next one; a request whose connection drops before its reply fails with
//! [`Error::is_disconnected`] (it may or may not have been carried out: a publish is not
//! resent). Each subscription buffers [`HubClientBuilder::subscription_buffer`] items; a
//! subscription whose reader falls further behind stops receiving, and resumes with
//! `since` once its reader has caught up (so a slow reader loses nothing either, as long
//! as the channel's history reaches back).
//!
//! The wire format is `tidewire-hub-proto`'s, and so is the close-code table the
//! reconnecting client applies ([`close_policy`]): after 4001 (token expired) it reconnects
//! only with a [`HubClientBuilder::token_fn`], after 4003, 4008 and 4500–4999 it stops.
//! This crate depends on `tidewire` and `tidewire-hub-proto` only, not on the server.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![warn(missing_docs)]

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tidewire::reconnect::{self, Backoff, ClosePolicy, Disconnect, GiveUp, ReconnectBuilder};
use tidewire::{ClientBuilder, CloseCode, CloseFrame, Message};
use tidewire_hub_proto::{
    self as proto, CloseAction, ConnectResult, ErrorCode, HistoryResult, PresenceResult, Request,
    RequestId, ServerMessage, SubscribeResult,
};
use tokio::sync::{mpsc, oneshot, Mutex};

pub use tidewire_hub_proto::{ClientInfo, StreamPosition, PROTOCOL};

/// The hub's close-code table (`tidewire_hub_proto::close_action`) as a
/// [`ClosePolicy`] for [`ReconnectBuilder::close_policy`]. [`HubClient::builder`] sets it;
/// a plain [`tidewire::ReconnectingClient`] talking to the hub can use it too.
pub fn close_policy(code: CloseCode) -> ClosePolicy {
    match proto::close_action(code.0) {
        CloseAction::Reconnect => ClosePolicy::Reconnect,
        CloseAction::ReconnectWithNewToken => ClosePolicy::ReconnectWithNewToken,
        CloseAction::Stop => ClosePolicy::Stop,
    }
}

/// An error of a [`HubClient`] request.
///
/// Opaque: use the predicates. `Display` is for people.
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    /// An error reply from the server.
    Server { code: u32, message: String },
    /// The connection dropped before the reply came.
    Disconnected,
    /// The client has stopped (closed, dropped or gave up).
    Closed,
    /// The server's answer does not follow docs/protocol.md.
    Protocol(String),
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Error { kind }
    }

    fn protocol(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol(what.into()))
    }

    /// The error code of an error reply (docs/protocol.md, "Error codes"): 103 unknown
    /// channel, 104 permission denied, 107 rate limited, ...
    pub fn code(&self) -> Option<u32> {
        match self.kind {
            ErrorKind::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The message of an error reply.
    pub fn message(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Server { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The connection dropped before the reply came: the request may or may not have been
    /// carried out.
    pub fn is_disconnected(&self) -> bool {
        matches!(self.kind, ErrorKind::Disconnected)
    }

    /// The client has stopped: closed, dropped, or gave up reconnecting.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, ErrorKind::Closed)
    }

    /// The server answered something docs/protocol.md does not allow.
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, ErrorKind::Protocol(_))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Server { code, message } => write!(f, "error {code}: {message}"),
            ErrorKind::Disconnected => f.write_str("disconnected before the reply"),
            ErrorKind::Closed => f.write_str("client closed"),
            ErrorKind::Protocol(what) => write!(f, "not tidewire.v1: {what}"),
        }
    }
}

impl std::error::Error for Error {}

/// A publication on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The channel.
    pub channel: String,
    /// Its offset (consecutive within an epoch).
    pub offset: u64,
    /// The epoch of the channel's history.
    pub epoch: String,
    /// The JSON value published.
    pub data: Value,
}

impl From<proto::Publication> for Publication {
    fn from(p: proto::Publication) -> Self {
        Publication {
            // Checked to be one JSON value when the message was read.
            data: serde_json::from_str(p.data.get()).unwrap_or(Value::Null),
            channel: p.channel,
            offset: p.offset,
            epoch: p.epoch,
        }
    }
}

/// What a [`Subscription`] delivers.
#[derive(Debug)]
#[non_exhaustive]
pub enum Item {
    /// The next publication: offsets follow each other without gap or repeat, across
    /// reconnects, unless an [`Item::Unrecoverable`] comes between.
    Publication(Publication),
    /// A client joined the channel (namespaces with presence).
    Join(ClientInfo),
    /// A client left the channel.
    Leave(ClientInfo),
    /// The server could not deliver what was published since the last publication given
    /// (`recovered: false`): publications may be missing here. Reload the channel's state
    /// (for example with [`HubClient::history`]) and tell the user. Publications after
    /// `position` follow.
    Unrecoverable {
        /// True when the channel's epoch changed (its history was recreated, e.g. the server
        /// restarted); false when the history no longer reaches back far enough.
        epoch_changed: bool,
        /// The channel's position now: the next publication has `position.offset + 1`.
        position: StreamPosition,
    },
    /// Subscribing again after a reconnect failed (the namespace is gone, permission was
    /// withdrawn), or the server ended the subscription (its API's `unsubscribe`: error
    /// 105, "unsubscribed by the server"): the last item of this subscription. A
    /// resubscribe refused for a while (112, 100, 107) does not end it: it is tried again
    /// after a backoff, each refusal a [`HubEvent::Error`].
    Failed(Error),
}

/// The newest publications of a channel, from [`HubClient::history`].
#[derive(Debug, Clone)]
pub struct History {
    /// The channel's position (offset 0 and an empty epoch for a channel that does not
    /// exist).
    pub position: StreamPosition,
    /// Oldest first.
    pub publications: Vec<Publication>,
}

/// The life of a [`HubClient`]'s connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum HubEvent {
    /// A connection opened and `connect` was answered; every subscription has been sent
    /// again.
    Connected {
        /// The connection's number (1, 2, ...).
        connection: u64,
        /// This connection's client id (as in presence).
        client: String,
        /// The token's user, `None` when anonymous.
        user: Option<String>,
    },
    /// The connection ended; see [`tidewire::reconnect::Event::Disconnected`].
    Disconnected(Disconnect),
    /// A connection attempt failed.
    ConnectFailed {
        /// Failed attempts in a row.
        attempt: u32,
        /// Why.
        error: tidewire::Error,
    },
    /// The client sleeps `delay`, then reconnects.
    Reconnecting {
        /// The attempt's number since the last connection that stayed up.
        attempt: u32,
        /// The backoff delay.
        delay: Duration,
    },
    /// The server answered with an error that belongs to no request (`connect` refused, a
    /// message it could not read).
    Error(Error),
    /// The client stopped for good; no more events.
    GaveUp(GiveUp),
    /// The server subscribed this connection to `channel` (its API, for the backend):
    /// the connection receives its publications after `position` until the server ends
    /// the subscription. Not resubscribed after a reconnection: the backend does that.
    ServerSubscribed {
        /// The channel.
        channel: String,
        /// Where the subscription started.
        position: StreamPosition,
    },
    /// The server ended this connection's subscription to `channel`.
    ServerUnsubscribed {
        /// The channel.
        channel: String,
    },
}

type TokenFn = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

#[derive(Clone)]
enum Token {
    None,
    Static(String),
    Fn(TokenFn),
}

/// Builds a [`HubClient`].
pub struct HubClientBuilder {
    reconnect: ReconnectBuilder,
    token: Token,
    buffer: usize,
}

impl fmt::Debug for HubClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientBuilder")
            .field("reconnect", &self.reconnect)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl HubClientBuilder {
    /// Sends this token in `connect` on every connection.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Token::Static(token.into());
        self
    }

    /// Asks `f` for a token before every `connect` (a fresh one after 4001, token expired,
    /// which then reconnects instead of stopping). `None`: connect without a token.
    pub fn token_fn<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.token = Token::Fn(Arc::new(move || Box::pin(f())));
        self
    }

    /// Changes the reconnecting client underneath (heartbeat, headers, TLS, seed):
    /// `.reconnect(|r| r.heartbeat(interval, timeout))`.
    pub fn reconnect(mut self, f: impl FnOnce(ReconnectBuilder) -> ReconnectBuilder) -> Self {
        self.reconnect = f(self.reconnect);
        self
    }

    /// Sets the backoff between connections.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect = self.reconnect.backoff(backoff);
        self
    }

    /// Items a subscription buffers for its reader. Default 4096. A reader further behind
    /// stops receiving until it catches up, then the subscription resumes with `since`.
    pub fn subscription_buffer(mut self, items: usize) -> Self {
        self.buffer = items.max(1);
        self
    }

    /// Starts the client on the current tokio runtime; it connects in the background.
    pub fn connect(self) -> HubClient {
        let reconnect = self
            .reconnect
            .reconnect_with_new_token(matches!(self.token, Token::Fn(_)));
        let (plain, events_in) = reconnect.connect().split();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let (alive_tx, alive_rx) = oneshot::channel();
        let driver = Driver {
            plain,
            events_in,
            cmds: cmd_rx,
            alive: alive_rx,
            out: ev_tx,
            token: self.token,
            buffer: self.buffer,
            next_id: 1,
            conn: None,
            pending: HashMap::new(),
            waiting: VecDeque::new(),
            subs: HashMap::new(),
            retry_at: None,
        };
        tokio::spawn(driver.run());
        HubClient {
            cmds: cmd_tx,
            events: Mutex::new(ev_rx),
            _alive: alive_tx,
        }
    }
}

/// A `tidewire.v1` client that reconnects and resumes by itself. See the
/// [module documentation](self).
///
/// Dropping it closes the connection and ends every subscription.
#[derive(Debug)]
pub struct HubClient {
    cmds: mpsc::Sender<Cmd>,
    events: Mutex<mpsc::Receiver<HubEvent>>,
    _alive: oneshot::Sender<()>,
}

impl HubClient {
    /// A builder for `url` (`ws://HOST/ws` or `wss://`), offering the `tidewire.v1`
    /// subprotocol.
    pub fn builder(url: impl Into<String>) -> HubClientBuilder {
        let client = ClientBuilder::new(url).protocols([PROTOCOL]);
        HubClientBuilder {
            reconnect: ReconnectBuilder::new(client).close_policy(close_policy),
            token: Token::None,
            buffer: 4096,
        }
    }

    /// The next connection event; `None` once the client has stopped. Events the
    /// application does not read are kept up to 256, newer ones dropped.
    pub async fn next_event(&self) -> Option<HubEvent> {
        self.events.lock().await.recv().await
    }

    /// Subscribes to `channel`. Returns once the server has accepted the subscription
    /// (waiting for a connection if there is none); publications after that point follow
    /// on the [`Subscription`]. Fails with the server's error (103 unknown channel, 104
    /// private channel, 111 too many subscriptions), or 106 if this client already has a
    /// subscription to `channel`.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, Error> {
        let (done, rx) = oneshot::channel();
        self.command(Cmd::Subscribe {
            channel: channel.to_owned(),
            done,
        })
        .await?;
        let items = rx.await.map_err(|_| Error::new(ErrorKind::Closed))??;
        Ok(Subscription {
            channel: Some(channel.to_owned()),
            items,
            cmds: self.cmds.clone(),
        })
    }

    /// Publishes `data` on `channel`; returns its position (offset and epoch).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<StreamPosition, Error> {
        self.publish_once(channel, data, None).await
    }

    /// [`HubClient::publish`] with an idempotency key: a retry with the same key (after
    /// error 112, or a connection lost before the reply) publishes at most once and
    /// returns the first publication's position.
    pub async fn publish_once(
        &self,
        channel: &str,
        data: Value,
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition, Error> {
        let data = serde_json::value::to_raw_value(&data)
            .map_err(|e| Error::protocol(format!("data: {e}")))?;
        let request = Request::Publish {
            channel: channel.to_owned(),
            data,
            idempotency_key: idempotency_key.map(str::to_owned),
        };
        self.typed(request, "publish").await
    }

    /// Calls `method` of the application's backend through the hub (`op: rpc`, where the
    /// method's namespace has `rpc_proxy`): the backend's answer. A refusal is an error
    /// with the backend's code (1000 or more) or 104; 112 when the backend is down or slow.
    pub async fn rpc(&self, method: &str, data: Value) -> Result<Value, Error> {
        #[derive(serde::Deserialize)]
        struct RpcAnswer {
            #[serde(default)]
            data: Value,
        }
        let data = serde_json::value::to_raw_value(&data)
            .map_err(|e| Error::protocol(format!("data: {e}")))?;
        let request = Request::Rpc {
            method: method.to_owned(),
            data,
        };
        let r: RpcAnswer = self.typed(request, "rpc").await?;
        Ok(r.data)
    }

    /// The newest `limit` publications of `channel` (the server caps `limit` at 10,000).
    pub async fn history(&self, channel: &str, limit: u32) -> Result<History, Error> {
        let request = Request::History {
            channel: channel.to_owned(),
            limit: Some(limit.into()),
        };
        let r: HistoryResult = self.typed(request, "history").await?;
        Ok(History {
            position: StreamPosition {
                offset: r.offset,
                epoch: r.epoch,
            },
            publications: r.publications.into_iter().map(Publication::from).collect(),
        })
    }

    /// Who is subscribed to `channel` (error 110 where the namespace has no presence).
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, Error> {
        let request = Request::Presence {
            channel: channel.to_owned(),
        };
        let r: PresenceResult = self.typed(request, "presence").await?;
        Ok(r.clients)
    }

    /// The application-level heartbeat (`op: ping`): returns when the server answered.
    pub async fn ping(&self) -> Result<(), Error> {
        self.send_request(Outgoing::Typed(Request::Ping))
            .await
            .map(drop)
    }

    /// Sends any request (a JSON object with an `op`; the `id` is added) and returns the
    /// `result` of its reply.
    pub async fn request(&self, body: Value) -> Result<Value, Error> {
        let Value::Object(body) = body else {
            return Err(Error::protocol("a request is a JSON object"));
        };
        let raw = self.send_request(Outgoing::Object(body)).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::protocol(e.to_string()))
    }

    /// Sends `request` and reads its result as `T`.
    async fn typed<T: DeserializeOwned>(&self, request: Request, op: &str) -> Result<T, Error> {
        let raw = self.send_request(Outgoing::Typed(request)).await?;
        parse(&raw, op)
    }

    async fn send_request(&self, body: Outgoing) -> Result<Box<RawValue>, Error> {
        let (done, rx) = oneshot::channel();
        self.command(Cmd::Request { body, done }).await?;
        rx.await.map_err(|_| Error::new(ErrorKind::Closed))?
    }

    /// Closes the connection (1000) and stops the client; subscriptions end.
    pub async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Close { done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn command(&self, cmd: Cmd) -> Result<(), Error> {
        self.cmds
            .send(cmd)
            .await
            .map_err(|_| Error::new(ErrorKind::Closed))
    }
}

/// The items of one channel, from [`HubClient::subscribe`]. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    channel: Option<String>,
    items: mpsc::Receiver<Item>,
    cmds: mpsc::Sender<Cmd>,
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        self.channel.as_deref().unwrap_or("")
    }

    /// The next item; `None` once the subscription or the client has ended.
    pub async fn next(&mut self) -> Option<Item> {
        self.items.recv().await
    }

    /// Unsubscribes and waits for the server's answer (when connected).
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        let Some(channel) = self.channel.take() else {
            return Ok(());
        };
        let (done, rx) = oneshot::channel();
        let cmd = Cmd::Unsubscribe {
            channel,
            done: Some(done),
        };
        self.cmds
            .send(cmd)
            .await
            .map_err(|_| Error::new(ErrorKind::Closed))?;
        rx.await.map_err(|_| Error::new(ErrorKind::Closed))?
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            // Best effort; the driver also notices the closed item channel.
            let _ = self.cmds.try_send(Cmd::Unsubscribe {
                channel,
                done: None,
            });
        }
    }
}

impl futures_util::Stream for Subscription {
    type Item = Item;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.get_mut().items.poll_recv(cx)
    }
}

/// A request on its way out: typed, or any object from [`HubClient::request`].
#[derive(Clone)]
enum Outgoing {
    Typed(Request),
    Object(Map<String, Value>),
}

impl Outgoing {
    /// The text message, with `id` first.
    fn encode(self, id: u64) -> String {
        match self {
            Outgoing::Typed(r) => r.encode(&RequestId::from(id)),
            Outgoing::Object(mut body) => {
                body.insert("id".into(), id.into());
                Value::Object(body).to_string()
            }
        }
    }
}

/// `unsubscribe` from `channel`.
fn unsubscribe_request(channel: &str) -> Outgoing {
    Outgoing::Typed(Request::Unsubscribe {
        channel: channel.to_owned(),
    })
}

/// A raw `result` read as the `op`'s result type.
fn parse<T: DeserializeOwned>(raw: &RawValue, op: &str) -> Result<T, Error> {
    serde_json::from_str(raw.get()).map_err(|e| Error::protocol(format!("{op} result: {e}")))
}

/// Where a request's caller waits for its raw `result`.
type Reply = oneshot::Sender<Result<Box<RawValue>, Error>>;
/// Where `subscribe` waits for its subscription's items.
type Ready = oneshot::Sender<Result<mpsc::Receiver<Item>, Error>>;

enum Cmd {
    Request {
        body: Outgoing,
        done: Reply,
    },
    Subscribe {
        channel: String,
        done: Ready,
    },
    Unsubscribe {
        channel: String,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// What a request id is waiting for.
enum Pending {
    App(Reply),
    Connect,
    Subscribe {
        channel: String,
        since: Option<StreamPosition>,
    },
    Unsubscribe(Option<oneshot::Sender<Result<(), Error>>>),
}

/// A subscription as the driver keeps it.
struct Sub {
    tx: mpsc::Sender<Item>,
    /// Until the first subscribe succeeds: where the application waits, and the receiver
    /// it gets.
    ready: Option<(Ready, mpsc::Receiver<Item>)>,
    /// The last position given to the application (from the subscribe reply, then from
    /// each publication delivered).
    position: Option<StreamPosition>,
    /// A subscribe request is in flight: live publications are not trusted until its reply.
    subscribing: bool,
    /// The reader fell behind: publications are dropped until it has room, then the
    /// subscription resumes with `since`.
    lagging: bool,
    /// A resubscribe refused for a while (112, 100, 107): when to try again on this
    /// connection.
    retry: Option<tokio::time::Instant>,
    /// Resubscribes refused in a row (the backoff's attempt number).
    refusals: u32,
}

/// Resubscribes refused for a while are tried again after a delay from this backoff
/// (full jitter), on the same connection.
const RESUBSCRIBE_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// Whether a refused subscribe may succeed later without anything changing on the
/// client's side: the engine unavailable (112), the server failing (100), or over the
/// subscribe rate (107, as when many subscriptions come back at once).
fn temporary(e: &Error) -> bool {
    [
        ErrorCode::UNAVAILABLE,
        ErrorCode::INTERNAL,
        ErrorCode::RATE_LIMITED,
    ]
    .iter()
    .any(|c| e.code() == Some(c.0))
}

/// What to do with a subscription after a publication.
enum Next {
    Fine,
    Resync,
    Gone,
}

struct Driver {
    plain: reconnect::Sender,
    events_in: reconnect::Events,
    cmds: mpsc::Receiver<Cmd>,
    alive: oneshot::Receiver<()>,
    out: mpsc::Sender<HubEvent>,
    token: Token,
    buffer: usize,
    next_id: u64,
    /// The current connection, once `connect` and the subscriptions are sent on it.
    conn: Option<u64>,
    pending: HashMap<u64, Pending>,
    /// Requests made between connections.
    waiting: VecDeque<(Outgoing, Reply)>,
    subs: HashMap<String, Sub>,
    /// The earliest `retry` of the subscriptions (kept here, so that the loop does not
    /// look through every subscription for each message).
    retry_at: Option<tokio::time::Instant>,
}

impl Driver {
    async fn run(mut self) {
        let mut lag_tick = tokio::time::interval(Duration::from_millis(20));
        let mut cmds_open = true;
        loop {
            let lagging = self.subs.values().any(|s| s.lagging);
            let retry_at = self.retry_at;
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.events_in.next_event() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
                cmd = self.cmds.recv(), if cmds_open => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => cmds_open = false,
                },
                _ = &mut self.alive => {
                    // The HubClient was dropped.
                    self.plain.close(None).await;
                    break;
                }
                _ = lag_tick.tick(), if lagging => self.check_lagging().await,
                _ = retry => self.retry_subscribes().await,
            }
        }
        for (_, pending) in self.pending.drain() {
            if let Pending::App(done) = pending {
                let _ = done.send(Err(Error::new(ErrorKind::Closed)));
            }
        }
        for (_, done) in self.waiting.drain(..) {
            let _ = done.send(Err(Error::new(ErrorKind::Closed)));
        }
        for (_, sub) in self.subs.drain() {
            if let Some((done, _)) = sub.ready {
                let _ = done.send(Err(Error::new(ErrorKind::Closed)));
            }
        }
    }

    fn emit(&self, event: HubEvent) {
        let _ = self.out.try_send(event);
    }

    async fn on_event(&mut self, ev: reconnect::Event) {
        use reconnect::Event as E;
        match ev {
            E::Connected(c) => {
                if c.protocol() != Some(PROTOCOL) {
                    self.emit(HubEvent::Error(Error::protocol(
                        "the server did not select the tidewire.v1 subprotocol",
                    )));
                    let frame = CloseFrame::new(CloseCode::NORMAL, "tidewire.v1 expected");
                    self.plain.close(Some(frame)).await;
                    return;
                }
                self.on_connected(c.connection).await;
            }
            E::Message(Message::Text(text)) => match ServerMessage::parse(&text) {
                Ok(m) => self.on_message(m).await,
                Err(e) => self.emit(HubEvent::Error(Error::protocol(e.to_string()))),
            },
            E::Message(_) => {
                self.emit(HubEvent::Error(Error::protocol("a binary message")));
            }
            E::Disconnected(d) => {
                self.conn = None;
                for (_, pending) in self.pending.drain() {
                    match pending {
                        Pending::App(done) => {
                            let _ = done.send(Err(Error::new(ErrorKind::Disconnected)));
                        }
                        Pending::Unsubscribe(Some(done)) => {
                            let _ = done.send(Ok(()));
                        }
                        _ => {}
                    }
                }
                for sub in self.subs.values_mut() {
                    sub.subscribing = false;
                    // The next connection resubscribes them all anyway.
                    sub.retry = None;
                }
                self.retry_at = None;
                self.emit(HubEvent::Disconnected(d));
            }
            E::ConnectFailed { attempt, error } => {
                self.emit(HubEvent::ConnectFailed { attempt, error })
            }
            E::Reconnecting { attempt, delay } => {
                self.emit(HubEvent::Reconnecting { attempt, delay })
            }
            E::GaveUp(why) => self.emit(HubEvent::GaveUp(why)),
            _ => {}
        }
    }

    /// A new connection: `connect`, every subscription with `since`, then the requests
    /// that waited. Everything goes on this connection only (`send_on`), so nothing of the
    /// application's can overtake `connect`.
    async fn on_connected(&mut self, conn: u64) {
        let token = match &self.token {
            Token::None => None,
            Token::Static(t) => Some(t.clone()),
            Token::Fn(f) => f().await,
        };
        let body = Outgoing::Typed(Request::Connect { token, info: None });
        if !self.send(conn, body, Pending::Connect).await {
            return;
        }
        self.subs.retain(|_, s| !s.tx.is_closed());
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for ch in channels {
            if !self.subscribe(conn, &ch).await {
                return;
            }
        }
        self.conn = Some(conn);
        while let Some((body, done)) = self.waiting.pop_front() {
            if let Err(Pending::App(done)) =
                self.try_send(conn, body.clone(), Pending::App(done)).await
            {
                self.waiting.push_front((body, done));
                self.conn = None;
                return;
            }
        }
    }

    /// Sends a request on connection `conn`; false if that connection is gone.
    async fn send(&mut self, conn: u64, body: Outgoing, pending: Pending) -> bool {
        self.try_send(conn, body, pending).await.is_ok()
    }

    /// Sends a request; gives `pending` back if it could not be sent.
    async fn try_send(
        &mut self,
        conn: u64,
        body: Outgoing,
        pending: Pending,
    ) -> Result<(), Pending> {
        let id = self.next_id;
        self.next_id += 1;
        let text = body.encode(id);
        match self.plain.send_on(conn, Message::text(text)).await {
            Ok(()) => {
                self.pending.insert(id, pending);
                Ok(())
            }
            Err(_) => Err(pending),
        }
    }

    /// Sends `subscribe` for `channel`, with `since` when a position is known.
    async fn subscribe(&mut self, conn: u64, channel: &str) -> bool {
        let Some(sub) = self.subs.get_mut(channel) else {
            return true;
        };
        sub.subscribing = true;
        let since = sub.position.clone();
        let body = Outgoing::Typed(Request::Subscribe {
            channel: channel.to_owned(),
            since: since.clone(),
        });
        let pending = Pending::Subscribe {
            channel: channel.to_owned(),
            since,
        };
        self.send(conn, body, pending).await
    }

    /// Unsubscribes and subscribes again with `since` on the current connection: after a
    /// gap, or once a lagging reader has room again.
    async fn resync(&mut self, channel: &str) {
        let Some(conn) = self.conn else {
            // Resubscribed with `since` on the next connection anyway.
            return;
        };
        let body = unsubscribe_request(channel);
        if self.send(conn, body, Pending::Unsubscribe(None)).await {
            self.subscribe(conn, channel).await;
        }
    }

    async fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { body, done } => match self.conn {
                Some(conn) => {
                    if let Err(Pending::App(done)) =
                        self.try_send(conn, body.clone(), Pending::App(done)).await
                    {
                        self.waiting.push_back((body, done));
                    }
                }
                None => self.waiting.push_back((body, done)),
            },
            Cmd::Subscribe { channel, done } => {
                if let Some(old) = self.subs.get(&channel) {
                    if !old.tx.is_closed() {
                        let e = Error::new(ErrorKind::Server {
                            code: ErrorCode::ALREADY_SUBSCRIBED.0,
                            message: "already subscribed (by this client)".into(),
                        });
                        let _ = done.send(Err(e));
                        return;
                    }
                    // A dropped subscription whose unsubscribe has not gone out yet.
                    self.unsubscribe(channel.clone(), None).await;
                }
                let (tx, rx) = mpsc::channel(self.buffer);
                let sub = Sub {
                    tx,
                    ready: Some((done, rx)),
                    position: None,
                    subscribing: false,
                    lagging: false,
                    retry: None,
                    refusals: 0,
                };
                self.subs.insert(channel.clone(), sub);
                if let Some(conn) = self.conn {
                    self.subscribe(conn, &channel).await;
                }
            }
            Cmd::Unsubscribe { channel, done } => self.unsubscribe(channel, done).await,
            Cmd::Close { done } => {
                self.plain.close(None).await;
                let _ = done.send(());
            }
        }
    }

    async fn unsubscribe(
        &mut self,
        channel: String,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        if self.subs.remove(&channel).is_none() {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        }
        let Some(conn) = self.conn else {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        };
        let body = unsubscribe_request(&channel);
        if let Err(Pending::Unsubscribe(Some(done))) =
            self.try_send(conn, body, Pending::Unsubscribe(done)).await
        {
            // Not connected any more: nothing to unsubscribe from.
            let _ = done.send(Ok(()));
        }
    }

    async fn on_message(&mut self, m: ServerMessage) {
        let push = match m {
            ServerMessage::Reply(reply) => {
                let pending = reply.id.as_u64().and_then(|id| self.pending.remove(&id));
                let result = reply.outcome.map_err(|e| {
                    Error::new(ErrorKind::Server {
                        code: e.code.0,
                        message: e.message,
                    })
                });
                match pending {
                    Some(p) => self.on_reply(p, result).await,
                    None => {
                        if let Err(e) = result {
                            self.emit(HubEvent::Error(e));
                        }
                    }
                }
                return;
            }
            ServerMessage::Push(push) => push,
        };
        let (channel, item) = match push {
            proto::Push::Publication(p) => {
                let live = match self.subs.get(&p.channel) {
                    Some(s) => !s.subscribing,
                    None => false,
                };
                // Until its subscribe is answered a subscription takes nothing live: what
                // was published meanwhile comes with the reply (or is older than its
                // position).
                if live {
                    let channel = p.channel.clone();
                    self.deliver(&channel, p.into()).await;
                }
                return;
            }
            proto::Push::Join { channel, client } => (channel, Item::Join(client)),
            proto::Push::Leave { channel, client } => (channel, Item::Leave(client)),
            proto::Push::Subscribed { channel, position } => {
                self.emit(HubEvent::ServerSubscribed { channel, position });
                return;
            }
            proto::Push::Unsubscribed { channel, .. } => {
                // The server ended this connection's subscription, whoever made it: the
                // client's own ends too (not subscribed again after a reconnect).
                if let Some(sub) = self.subs.remove(&channel) {
                    let e = Error::new(ErrorKind::Server {
                        code: ErrorCode::NOT_SUBSCRIBED.0,
                        message: "unsubscribed by the server".into(),
                    });
                    match sub.ready {
                        Some((done, _)) => {
                            let _ = done.send(Err(e));
                        }
                        None => {
                            let _ = sub.tx.try_send(Item::Failed(e));
                        }
                    }
                }
                self.emit(HubEvent::ServerUnsubscribed { channel });
                return;
            }
        };
        if let Some(sub) = self.subs.get(&channel) {
            if !sub.lagging {
                // Presence is not recoverable: a full buffer drops it.
                let _ = sub.tx.try_send(item);
            }
        }
    }

    /// Hands a publication to its subscription, in order, once.
    async fn deliver(&mut self, channel: &str, p: Publication) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if sub.subscribing {
            // A subscribe with `since` is on its way: its reply brings this one again.
            return;
        }
        let next = match &sub.position {
            Some(pos) if pos.epoch != p.epoch => Next::Resync,
            Some(pos) if p.offset <= pos.offset => Next::Fine, // already delivered
            Some(pos) if p.offset > pos.offset + 1 => Next::Resync,
            _ if sub.lagging => Next::Fine,
            _ => {
                let position = StreamPosition {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                };
                match sub.tx.try_send(Item::Publication(p)) {
                    Ok(()) => {
                        sub.position = Some(position);
                        Next::Fine
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.lagging = true;
                        Next::Fine
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Next::Gone,
                }
            }
        };
        match next {
            Next::Fine => {}
            Next::Resync => {
                sub.subscribing = true;
                self.resync(channel).await;
            }
            Next::Gone => self.unsubscribe(channel.to_owned(), None).await,
        }
    }

    async fn on_reply(&mut self, pending: Pending, result: Result<Box<RawValue>, Error>) {
        match pending {
            Pending::App(done) => {
                let _ = done.send(result);
            }
            Pending::Unsubscribe(done) => {
                if let Some(done) = done {
                    let _ = done.send(result.map(drop));
                }
            }
            Pending::Connect => match result.and_then(|r| parse::<ConnectResult>(&r, "connect")) {
                Ok(r) => {
                    self.emit(HubEvent::Connected {
                        connection: self.plain.connection().unwrap_or(0),
                        client: r.client,
                        user: r.user,
                    });
                }
                Err(e) => self.emit(HubEvent::Error(e)),
            },
            Pending::Subscribe { channel, since } => {
                self.on_subscribed(&channel, since, result).await
            }
        }
    }

    async fn on_subscribed(
        &mut self,
        channel: &str,
        since: Option<StreamPosition>,
        result: Result<Box<RawValue>, Error>,
    ) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        sub.subscribing = false;
        let r = match result.and_then(|r| parse::<SubscribeResult>(&r, "subscribe")) {
            Ok(r) => r,
            Err(e) if e.is_protocol() => {
                self.emit(HubEvent::Error(e));
                return;
            }
            // A resubscribe that met the server's own subscribe of the channel (the
            // backend subscribed this connection at once): once more, from where this
            // subscription stands, after an unsubscribe.
            Err(e) if since.is_some() && e.code() == Some(ErrorCode::ALREADY_SUBSCRIBED.0) => {
                self.resync(channel).await;
                return;
            }
            // A subscription the application holds, refused for a while (the engine
            // down, say): kept, and tried again from where it stands after a delay. A
            // first subscribe gives the error to its caller instead.
            Err(e) if sub.ready.is_none() && temporary(&e) => {
                sub.refusals = sub.refusals.saturating_add(1);
                let (initial, max) = RESUBSCRIBE_BACKOFF;
                let ceiling = Backoff::new(initial, max).ceiling(sub.refusals);
                let at = tokio::time::Instant::now() + ceiling.mul_f64(rand::random::<f64>());
                sub.retry = Some(at);
                self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
                // Nothing live is trusted until a subscribe succeeds.
                sub.subscribing = true;
                self.emit(HubEvent::Error(e));
                return;
            }
            Err(e) => {
                if let Some(sub) = self.subs.remove(channel) {
                    match sub.ready {
                        Some((done, _)) => {
                            let _ = done.send(Err(e));
                        }
                        None => {
                            let _ = sub.tx.try_send(Item::Failed(e));
                        }
                    }
                }
                return;
            }
        };
        sub.refusals = 0;
        let now = StreamPosition {
            offset: r.offset,
            epoch: r.epoch,
        };
        let Some(since) = since else {
            // A first subscription: publications after `now` follow live.
            sub.position = Some(now);
            if let Some((done, rx)) = sub.ready.take() {
                let _ = done.send(Ok(rx));
            }
            return;
        };
        if r.recovered == Some(true) {
            for p in r.publications.into_iter().flatten() {
                self.deliver(channel, p.into()).await;
            }
            return;
        }
        // recovered: false. Say so, then carry on from the channel's position now.
        let item = Item::Unrecoverable {
            epoch_changed: now.epoch != since.epoch,
            position: now.clone(),
        };
        match sub.tx.try_send(item) {
            Ok(()) => sub.position = Some(now),
            // Still behind: the next resync from the old position says it again.
            Err(mpsc::error::TrySendError::Full(_)) => sub.lagging = true,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.unsubscribe(channel.to_owned(), None).await
            }
        }
    }

    /// Subscribes again, on the current connection, the subscriptions whose retry is due.
    async fn retry_subscribes(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .subs
            .iter_mut()
            .filter(|(_, s)| s.retry.is_some_and(|at| at <= now))
            .map(|(ch, s)| {
                s.retry = None;
                ch.clone()
            })
            .collect();
        self.retry_at = self.subs.values().filter_map(|s| s.retry).min();
        let Some(conn) = self.conn else {
            return;
        };
        for ch in due {
            if self.subs.get(&ch).is_some_and(|s| s.tx.is_closed()) {
                self.unsubscribe(ch, None).await;
            } else if !self.subscribe(conn, &ch).await {
                return;
            }
        }
    }

    /// Resumes the lagging subscriptions whose readers have caught up (half the buffer free).
    async fn check_lagging(&mut self) {
        let half = self.buffer.div_ceil(2);
        let ready: Vec<String> = self
            .subs
            .iter_mut()
            .filter(|(_, s)| s.lagging && (s.tx.is_closed() || s.tx.capacity() >= half))
            .map(|(ch, s)| {
                s.lagging = false;
                ch.clone()
            })
            .collect();
        for ch in ready {
            let closed = self.subs.get(&ch).is_some_and(|s| s.tx.is_closed());
            if closed {
                self.unsubscribe(ch, None).await;
            } else if let Some(sub) = self.subs.get_mut(&ch) {
                if !sub.subscribing {
                    sub.subscribing = true;
                    self.resync(&ch).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidewire_hub_proto::{encode_ok, encode_publications_result, parse_request, Empty};

    #[test]
    fn publications_convert_from_the_wire_form() {
        let text = r#"{"channel":"c","offset":7,"epoch":"e1","data":{"n":1}}"#;
        let Ok(ServerMessage::Push(proto::Push::Publication(p))) = ServerMessage::parse(text)
        else {
            panic!("not a publication");
        };
        let p = Publication::from(p);
        assert_eq!(
            (p.channel.as_str(), p.offset, p.epoch.as_str()),
            ("c", 7, "e1")
        );
        assert_eq!(p.data, json!({"n": 1}));
    }

    #[test]
    fn the_hub_close_table_is_the_policy() {
        for (code, policy) in [
            (1000, ClosePolicy::Stop),
            (1001, ClosePolicy::Reconnect),
            (4000, ClosePolicy::Reconnect),
            (4001, ClosePolicy::ReconnectWithNewToken),
            (4003, ClosePolicy::Stop),
            (4008, ClosePolicy::Stop),
            (4029, ClosePolicy::Reconnect),
            (4499, ClosePolicy::Reconnect),
            (4500, ClosePolicy::Stop),
        ] {
            assert_eq!(close_policy(CloseCode(code)), policy, "{code}");
        }
    }

    use tidewire::WebSocketStream;
    use tokio::net::TcpStream;

    /// The next request a scripted server reads.
    async fn request(ws: &mut WebSocketStream<TcpStream>) -> (RequestId, Request) {
        loop {
            match ws.recv().await.unwrap().unwrap() {
                Message::Text(t) => return parse_request(&t).unwrap(),
                _ => continue,
            }
        }
    }

    async fn push(ws: &mut WebSocketStream<TcpStream>, text: String) {
        ws.send(Message::text(text)).await.unwrap();
    }

    /// A scripted server's side of a new connection, up to its `connect` answered.
    async fn accept(listener: &tokio::net::TcpListener) -> WebSocketStream<TcpStream> {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tidewire::ServerBuilder::new()
            .protocols([PROTOCOL])
            .accept(tcp)
            .await
            .unwrap();
        let (id, connect) = request(&mut ws).await;
        assert_eq!(connect.op(), "connect");
        let result = ConnectResult {
            client: "c-1".into(),
            user: None,
            version: PROTOCOL.into(),
        };
        push(&mut ws, encode_ok(&id, &result)).await;
        ws
    }

    /// A scripted tidewire.v1 server: the real hub never sends duplicates or gaps, so this
    /// one does, to check that the client skips the first and resubscribes on the second.
    #[tokio::test]
    async fn duplicates_skipped_gaps_and_epoch_changes_resubscribe() {
        use tokio::net::TcpListener;

        fn publication(offset: u64, epoch: &str) -> String {
            let mut out = String::new();
            proto::write_publication(&mut out, "c", offset, epoch, &offset.to_string());
            out
        }
        fn since(r: &Request) -> Option<(u64, &str)> {
            match r {
                Request::Subscribe { since, .. } => {
                    since.as_ref().map(|p| (p.offset, p.epoch.as_str()))
                }
                r => panic!("{r:?}"),
            }
        }
        fn position(offset: u64, epoch: &str) -> StreamPosition {
            StreamPosition {
                offset,
                epoch: epoch.into(),
            }
        }

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener).await;
            let (id, sub) = request(&mut ws).await;
            assert_eq!(since(&sub), None);
            push(&mut ws, encode_ok(&id, &position(0, "e"))).await;
            // 1, 2, then repeats, then a jump to 5.
            for offset in [1, 2, 2, 1, 5] {
                push(&mut ws, publication(offset, "e")).await;
            }
            let (id, unsub) = request(&mut ws).await;
            assert_eq!((unsub.op(), unsub.channel()), ("unsubscribe", Some("c")));
            push(&mut ws, encode_ok(&id, &Empty {})).await;
            let (id, resub) = request(&mut ws).await;
            assert_eq!(since(&resub), Some((2, "e")));
            let recovered: Vec<String> = (2..=5).map(|o| publication(o, "e")).collect();
            let reply = encode_publications_result(&id, 5, "e", Some(true), recovered);
            push(&mut ws, reply).await;
            push(&mut ws, publication(5, "e")).await;
            push(&mut ws, publication(6, "e")).await;
            // An epoch that changes under a live subscription: resubscribe, not recovered.
            push(&mut ws, publication(1, "f")).await;
            let (id, _) = request(&mut ws).await;
            push(&mut ws, encode_ok(&id, &Empty {})).await;
            let (id, resub) = request(&mut ws).await;
            assert_eq!(since(&resub), Some((6, "e")));
            let reply = encode_publications_result(&id, 10, "f", Some(false), Vec::<String>::new());
            push(&mut ws, reply).await;
            push(&mut ws, publication(11, "f")).await;
            let _ = ws.recv().await;
        });

        let client = HubClient::builder(format!("ws://{addr}/ws")).connect();
        let mut sub = client.subscribe("c").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 8 {
            let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("no item within 10 s")
                .expect("subscription ended");
            got.push(match item {
                Item::Publication(p) => format!("{}{}", p.epoch, p.offset),
                Item::Unrecoverable {
                    epoch_changed,
                    position,
                } => {
                    format!(
                        "lost(epoch changed {epoch_changed}, now {}{})",
                        position.epoch, position.offset
                    )
                }
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(
            got,
            [
                "e1",
                "e2",
                "e3",
                "e4",
                "e5",
                "e6",
                "lost(epoch changed true, now f10)",
                "f11"
            ]
        );
        client.close().await;
        server.await.unwrap();
    }

    /// A resubscribe refused for a while (the engine down: 112; over the subscribe rate:
    /// 107) keeps the subscription and is tried again with the same `since`, so nothing is
    /// lost; a first subscribe refused the same way fails for its caller.
    #[tokio::test]
    async fn resubscribes_refused_for_a_while_are_tried_again() {
        use tidewire_hub_proto::encode_error;
        use tokio::net::TcpListener;

        fn publication(offset: u64) -> String {
            let mut out = String::new();
            proto::write_publication(&mut out, "c", offset, "e", &offset.to_string());
            out
        }
        fn subscribe(r: &Request) -> (&str, Option<u64>) {
            match r {
                Request::Subscribe { channel, since } => {
                    (channel.as_str(), since.as_ref().map(|p| p.offset))
                }
                r => panic!("{r:?}"),
            }
        }

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener).await;
            let (id, sub) = request(&mut ws).await;
            assert_eq!(subscribe(&sub), ("c", None));
            let position = StreamPosition {
                offset: 0,
                epoch: "e".into(),
            };
            push(&mut ws, encode_ok(&id, &position)).await;
            push(&mut ws, publication(1)).await;
            // A first subscribe refused for a while: its caller is told.
            let (id, sub) = request(&mut ws).await;
            assert_eq!(subscribe(&sub), ("d", None));
            push(
                &mut ws,
                encode_error(&id, ErrorCode::UNAVAILABLE, "engine down"),
            )
            .await;
            drop(ws);
            // The next connection: the resubscribe is refused twice, then recovers.
            let mut ws = accept(&listener).await;
            let (id, sub) = request(&mut ws).await;
            assert_eq!(subscribe(&sub), ("c", Some(1)));
            push(
                &mut ws,
                encode_error(&id, ErrorCode::UNAVAILABLE, "engine down"),
            )
            .await;
            // Published meanwhile; not trusted (nor delivered) before a subscribe succeeds.
            push(&mut ws, publication(3)).await;
            let (id, sub) = request(&mut ws).await;
            assert_eq!(subscribe(&sub), ("c", Some(1)));
            push(
                &mut ws,
                encode_error(&id, ErrorCode::RATE_LIMITED, "slow down"),
            )
            .await;
            let (id, sub) = request(&mut ws).await;
            assert_eq!(subscribe(&sub), ("c", Some(1)));
            let recovered: Vec<String> = (2..=3).map(publication).collect();
            let reply = encode_publications_result(&id, 3, "e", Some(true), recovered);
            push(&mut ws, reply).await;
            push(&mut ws, publication(4)).await;
            let _ = ws.recv().await;
        });

        let client = HubClient::builder(format!("ws://{addr}/ws"))
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(10),
            ))
            .connect();
        let mut sub = client.subscribe("c").await.unwrap();
        let first = sub.next().await;
        assert!(
            matches!(&first, Some(Item::Publication(p)) if p.offset == 1),
            "{first:?}"
        );
        let refused = client.subscribe("d").await.unwrap_err();
        assert_eq!(refused.code(), Some(112));
        let mut got = Vec::new();
        while got.len() < 3 {
            let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("no item within 10 s")
                .expect("subscription ended");
            match item {
                Item::Publication(p) => got.push(p.offset),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, [2, 3, 4]);
        // The refusals were reported as they came.
        let mut codes = Vec::new();
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(100), client.next_event()).await
        {
            if let HubEvent::Error(e) = ev {
                codes.push(e.code());
            }
        }
        assert_eq!(codes, [Some(112), Some(107)]);
        client.close().await;
        server.await.unwrap();
    }

    #[test]
    fn errors_keep_the_server_code() {
        let e = Error::new(ErrorKind::Server {
            code: 103,
            message: "unknown namespace".into(),
        });
        assert_eq!(
            (e.code(), e.message()),
            (Some(103), Some("unknown namespace"))
        );
        assert_eq!(e.to_string(), "error 103: unknown namespace");
        assert!(Error::new(ErrorKind::Disconnected).is_disconnected());
    }
}
