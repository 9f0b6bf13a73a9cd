//! The hub's engine: channels with offsets, history, recovery and presence, behind a trait.
//!
//! A publication on a channel gets an `offset` (strictly increasing per channel, from 1) and
//! the channel's `epoch` (the generation of its history: a new random string whenever an
//! engine creates the history afresh, so a restarted server never matches an old epoch).
//! A client that reconnects subscribes with the last [`StreamPosition`] it saw and gets
//! either exactly the publications it missed or "not recovered".
//!
//! Time comes in as `now: Instant` on every call that trims history, so the logic never
//! reads a clock and tests are deterministic. No sockets, no HTTP: the connection layer
//! turns [`Event`]s into frames (once per event, see [`Event::prepared`]) and decides what
//! a client may do from its channel's [`NamespaceOptions`].
//!
//! [`Engine`] is the seam for a networked engine (Redis, NATS); [`MemoryEngine`] keeps
//! everything in this process.

mod memory;
mod outbox;

pub use memory::MemoryEngine;
#[cfg(test)]
pub(crate) use outbox::outbox_size;
pub use outbox::{Deliverer, Outbox, OutboxGuard, OutboxSender, Slow, Stop, Transmit};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tidewire::{Message, PreparedMessage};

/// Longest channel name accepted, in bytes. Longer names fail with
/// [`Error::is_invalid_channel`].
pub const MAX_CHANNEL_LEN: usize = 255;

/// A place in a channel's stream: the offset of the last publication seen and the epoch of
/// the history it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the last publication (0 before the first one).
    pub offset: u64,
    /// Generation of the channel's history.
    pub epoch: String,
}

/// Who is present in a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Connection id, unique per connection; the presence map's key. `client` on the wire.
    #[serde(rename = "client")]
    pub client_id: String,
    /// Authenticated user, if any. `user` on the wire (`null` when anonymous).
    #[serde(rename = "user", default)]
    pub user_id: Option<String>,
    /// Application data attached to the connection (the token's `info` claim).
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

impl ClientInfo {
    /// An anonymous client without info.
    pub fn new(client_id: impl Into<String>) -> Self {
        ClientInfo {
            client_id: client_id.into(),
            user_id: None,
            info: None,
        }
    }
}

/// What happened on a channel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A publication. `data` is one JSON value (checked by [`Engine::publish`]).
    Publication {
        /// Its offset in the channel.
        offset: u64,
        /// The epoch of the channel's history.
        epoch: Arc<str>,
        /// The JSON value published, as UTF-8 bytes.
        data: Bytes,
    },
    /// A client joined the channel's presence.
    Join(ClientInfo),
    /// A client left the channel's presence.
    Leave(ClientInfo),
}

/// An event on a channel, shared by every subscriber as `Arc<Event>`.
///
/// Its wire form is serialized and framed at most once, on first use by any connection
/// ([`Event::prepared`]); history keeps the same `Arc`, so recovered publications reuse it.
pub struct Event {
    channel: Arc<str>,
    kind: EventKind,
    prepared: OnceLock<Option<PreparedMessage>>,
}

impl Event {
    /// A new event on `channel`.
    pub fn new(channel: Arc<str>, kind: EventKind) -> Self {
        Event {
            channel,
            kind,
            prepared: OnceLock::new(),
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// What happened.
    pub fn kind(&self) -> &EventKind {
        &self.kind
    }

    /// The offset, for a publication.
    pub fn offset(&self) -> Option<u64> {
        match &self.kind {
            EventKind::Publication { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The wire form: `{"channel":C,"offset":O,"epoch":E,"data":ANY}`,
    /// `{"channel":C,"join":{CLIENT}}` or `{"channel":C,"leave":{CLIENT}}`, where CLIENT is
    /// `{"client":..,"user":..,"info":..}` (`null` for an absent user or info).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(64 + self.channel.len());
        s.push_str("{\"channel\":");
        s.push_str(&json(&*self.channel));
        match &self.kind {
            EventKind::Publication {
                offset,
                epoch,
                data,
            } => {
                s.reserve(data.len());
                s.push_str(",\"offset\":");
                s.push_str(&offset.to_string());
                s.push_str(",\"epoch\":");
                s.push_str(&json(&**epoch));
                s.push_str(",\"data\":");
                // Checked to be one JSON value in UTF-8 when it was published.
                s.push_str(std::str::from_utf8(data).unwrap_or("null"));
            }
            EventKind::Join(client) => {
                s.push_str(",\"join\":");
                s.push_str(&json(client));
            }
            EventKind::Leave(client) => {
                s.push_str(",\"leave\":");
                s.push_str(&json(client));
            }
        }
        s.push('}');
        s
    }

    /// [`Event::to_json`] as a text message framed (and compressed) once for every
    /// connection: pass it to `send_prepared`. Built on first call; always `Some` (the
    /// `Option` is [`PreparedMessage::new`]'s, which refuses control messages only).
    pub fn prepared(&self) -> Option<&PreparedMessage> {
        self.prepared
            .get_or_init(|| PreparedMessage::new(Message::text(self.to_json())))
            .as_ref()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> String {
    // Strings, maps with string keys and `serde_json::Value` always serialize.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// Checks that `data` is one JSON value in UTF-8, so that it can be spliced into
/// [`Event::to_json`] as is.
pub(crate) fn check_json(data: &[u8]) -> Result<(), Error> {
    if std::str::from_utf8(data).is_err()
        || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err()
    {
        return Err(Error::new(ErrorKind::InvalidData));
    }
    Ok(())
}

/// Whether a subscription asked for recovery and got it.
#[derive(Debug, Clone)]
pub enum Recovery {
    /// Subscribed without a position.
    NotRequested,
    /// Exactly the publications after the position given, oldest first (maybe none).
    Recovered(Vec<Arc<Event>>),
    /// The epoch differs, or history no longer reaches back far enough: the client has to
    /// load the channel's state some other way.
    Failed,
}

/// A subscription to a channel, as the engine knows it: end it with
/// [`Engine::unsubscribe`], which is how the engine learns that it has one subscriber less.
/// Its live events go to the subscriber's [`Outbox`], tagged with [`Subscription::id`].
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    channel: Arc<str>,
}

impl Subscription {
    /// Used by engines: `id` tells the engine's subscriptions apart (see
    /// [`Subscription::next_id`]).
    pub fn new(id: u64, channel: Arc<str>) -> Self {
        Subscription { id, channel }
    }

    /// A fresh subscription id, unique in this process.
    pub fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The id the engine knows this subscription by; its events come with it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The channel's name, shared.
    pub fn channel_name(&self) -> &Arc<str> {
        &self.channel
    }
}

/// What [`Engine::subscribe`] returns: the subscription, where live delivery starts, and
/// what was recovered.
///
/// The recovered publications and the live events neither overlap nor leave a gap: every
/// live publication has an offset above `position`.
#[derive(Debug)]
pub struct Subscribed {
    /// The subscription, to end with [`Engine::unsubscribe`].
    pub subscription: Subscription,
    /// The channel's position when the subscription started: the last offset that is not
    /// delivered live.
    pub position: StreamPosition,
    /// The recovery outcome.
    pub recovery: Recovery,
}

impl Subscribed {
    /// True when recovery was asked for and succeeded.
    pub fn recovered(&self) -> bool {
        matches!(self.recovery, Recovery::Recovered(_))
    }

    /// Takes the recovered publications (oldest first), leaving none.
    pub fn take_recovered(&mut self) -> Vec<Arc<Event>> {
        match &mut self.recovery {
            Recovery::Recovered(v) => std::mem::take(v),
            _ => Vec::new(),
        }
    }
}

/// The newest publications of a channel.
#[derive(Debug, Clone)]
pub struct History {
    /// Oldest first.
    pub publications: Vec<Arc<Event>>,
    /// The channel's current position; offset 0 and an empty epoch when the channel does
    /// not exist (nothing published, or dropped since).
    pub position: StreamPosition,
}

/// Behaviour of the channels of one namespace.
///
/// `Default` gives the default namespace's values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceOptions {
    /// Publications kept per channel. Default 1,000; 0 keeps none (no recovery beyond the
    /// current position). The oldest go first.
    pub history_size: usize,
    /// How long a publication stays in history. Default 10 minutes. Trimmed lazily, when
    /// the channel is next used or swept.
    pub history_ttl: Duration,
    /// Track who is subscribed and send join/leave events. Default false (every
    /// subscribe and unsubscribe would be an event for all subscribers).
    pub presence: bool,
    /// Clients may publish (the server always may). Default true. Checked by the
    /// connection layer, not by the engine.
    pub publish: bool,
    /// Subscribing needs a channel token. Default false. Checked by the connection layer.
    pub private: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            presence: false,
            publish: true,
            private: false,
        }
    }
}

impl NamespaceOptions {
    /// See [`NamespaceOptions::history_size`].
    pub fn history_size(mut self, n: usize) -> Self {
        self.history_size = n;
        self
    }

    /// See [`NamespaceOptions::history_ttl`].
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.history_ttl = ttl;
        self
    }

    /// See [`NamespaceOptions::presence`].
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }

    /// See [`NamespaceOptions::publish`].
    pub fn publish(mut self, on: bool) -> Self {
        self.publish = on;
        self
    }

    /// See [`NamespaceOptions::private`].
    pub fn private(mut self, on: bool) -> Self {
        self.private = on;
        self
    }
}

/// The namespaces of a hub: a channel `ns:rest` belongs to namespace `ns`, a channel
/// without a colon to the default namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceConfig {
    default: NamespaceOptions,
    namespaces: BTreeMap<String, NamespaceOptions>,
}

impl NamespaceConfig {
    /// Only the default namespace, with default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the default namespace's options.
    pub fn default_namespace(mut self, options: NamespaceOptions) -> Self {
        self.default = options;
        self
    }

    /// Adds (or replaces) namespace `name`.
    pub fn namespace(mut self, name: impl Into<String>, options: NamespaceOptions) -> Self {
        self.namespaces.insert(name.into(), options);
        self
    }

    /// The options of `channel`'s namespace; `None` when the namespace is not configured
    /// (such channels do not exist).
    pub fn for_channel(&self, channel: &str) -> Option<&NamespaceOptions> {
        match namespace_of(channel) {
            None => Some(&self.default),
            Some(ns) => self.namespaces.get(ns),
        }
    }

    /// The options of namespace `name` (not the default one), if configured.
    pub fn namespace_options(&self, name: &str) -> Option<&NamespaceOptions> {
        self.namespaces.get(name)
    }

    /// Checks the channel name and finds its options.
    pub(crate) fn check(&self, channel: &str) -> Result<&NamespaceOptions, Error> {
        if channel.is_empty() || channel.len() > MAX_CHANNEL_LEN {
            return Err(Error::new(ErrorKind::InvalidChannel));
        }
        self.for_channel(channel)
            .ok_or(Error::new(ErrorKind::UnknownNamespace))
    }
}

/// The namespace of `channel`: the part before the first colon, `None` without one.
pub fn namespace_of(channel: &str) -> Option<&str> {
    channel.split_once(':').map(|(ns, _)| ns)
}

/// The storage and fan-out behind a hub: in memory ([`MemoryEngine`]) or, later, a broker
/// shared by several hub processes.
///
/// Methods are async so that a networked engine can talk to its broker; hubs are generic
/// over the engine (`Hub<E: Engine>`), hence no `dyn`. Every future is `Send`.
pub trait Engine: Send + Sync + 'static {
    /// The namespaces this engine applies.
    fn namespaces(&self) -> &NamespaceConfig;

    /// Publishes `data` (one JSON value, UTF-8) on `channel`: stores it in history and
    /// delivers it to the subscribers. Returns its position. Fails for an invalid channel
    /// name, an unknown namespace or data that is not JSON.
    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        now: Instant,
    ) -> impl Future<Output = Result<StreamPosition, Error>> + Send;

    /// Subscribes `client` to `channel`, delivering its live events into `outbox` (the
    /// client's connection's queue), and, when the namespace has presence, adds it to the
    /// channel's presence (a join event, which the new subscriber receives too). `client`
    /// is shared: a connection passes the same one for all its subscriptions.
    ///
    /// With `since`, recovers the publications after it: the snapshot and the start of the
    /// live delivery are taken atomically, so none is missed or delivered twice.
    fn subscribe(
        &self,
        channel: &str,
        client: Arc<ClientInfo>,
        since: Option<StreamPosition>,
        outbox: OutboxSender,
        now: Instant,
    ) -> impl Future<Output = Result<Subscribed, Error>> + Send;

    /// Ends `subscription`: leaves presence (a leave event) and forgets the channel if
    /// nothing is left in it.
    fn unsubscribe(
        &self,
        subscription: Subscription,
        now: Instant,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The newest `limit` publications of `channel`, oldest first, and its position.
    fn history(
        &self,
        channel: &str,
        limit: usize,
        now: Instant,
    ) -> impl Future<Output = Result<History, Error>> + Send;

    /// Who is present in `channel`, by client id. Fails with [`Error::is_not_available`]
    /// when the namespace has no presence.
    fn presence(
        &self,
        channel: &str,
    ) -> impl Future<Output = Result<Vec<ClientInfo>, Error>> + Send;

    /// Adds `client` to `channel`'s presence (a join event unless it was there already).
    fn join(
        &self,
        channel: &str,
        client: ClientInfo,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes `client_id` from `channel`'s presence (a leave event if it was there).
    fn leave(
        &self,
        channel: &str,
        client_id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// An engine error. `Display` is not a stable API; use the predicates.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    InvalidChannel,
    UnknownNamespace,
    InvalidData,
    NotAvailable,
    Lagged(u64),
    Closed,
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Error { kind }
    }

    /// For networked engines: a failure of the broker or of the link to it.
    pub fn backend(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::new(ErrorKind::Backend(source.into()))
    }

    /// Empty channel name, or longer than [`MAX_CHANNEL_LEN`].
    pub fn is_invalid_channel(&self) -> bool {
        matches!(self.kind, ErrorKind::InvalidChannel)
    }

    /// The channel's namespace is not configured.
    pub fn is_unknown_namespace(&self) -> bool {
        matches!(self.kind, ErrorKind::UnknownNamespace)
    }

    /// Published data is not one JSON value in UTF-8.
    pub fn is_invalid_data(&self) -> bool {
        matches!(self.kind, ErrorKind::InvalidData)
    }

    /// The feature (presence) is off for the channel's namespace.
    pub fn is_not_available(&self) -> bool {
        matches!(self.kind, ErrorKind::NotAvailable)
    }

    /// A slow consumer: the subscriber fell behind and this many events were dropped for
    /// it. Close the connection and let the client resume from history.
    pub fn is_lagged(&self) -> bool {
        matches!(self.kind, ErrorKind::Lagged(_))
    }

    /// How many events a lagging subscriber missed.
    pub fn lagged_by(&self) -> Option<u64> {
        match self.kind {
            ErrorKind::Lagged(n) => Some(n),
            _ => None,
        }
    }

    /// The engine has shut down.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, ErrorKind::Closed)
    }

    /// A networked engine's broker failed.
    pub fn is_backend(&self) -> bool {
        matches!(self.kind, ErrorKind::Backend(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::InvalidChannel => f.write_str("invalid channel name"),
            ErrorKind::UnknownNamespace => f.write_str("unknown namespace"),
            ErrorKind::InvalidData => f.write_str("data is not JSON"),
            ErrorKind::NotAvailable => f.write_str("not available in this namespace"),
            ErrorKind::Lagged(n) => write!(f, "slow consumer: {n} events dropped"),
            ErrorKind::Closed => f.write_str("engine closed"),
            ErrorKind::Backend(e) => write!(f, "engine backend: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_lookup() {
        let chat = NamespaceOptions::default().presence(true).history_size(50);
        let config = NamespaceConfig::new().namespace("chat", chat.clone());
        assert_eq!(namespace_of("news"), None);
        assert_eq!(namespace_of("chat:room:1"), Some("chat"));
        assert_eq!(
            config.for_channel("news"),
            Some(&NamespaceOptions::default())
        );
        assert_eq!(config.for_channel("chat:lobby"), Some(&chat));
        assert_eq!(config.for_channel("other:lobby"), None);
        assert!(config.check("").unwrap_err().is_invalid_channel());
        assert!(config
            .check(&"x".repeat(MAX_CHANNEL_LEN + 1))
            .unwrap_err()
            .is_invalid_channel());
        assert!(config.check("other:x").unwrap_err().is_unknown_namespace());
    }

    #[test]
    fn default_namespace_values() {
        let d = NamespaceOptions::default();
        assert_eq!(d.history_size, 1000);
        assert_eq!(d.history_ttl, Duration::from_secs(600));
        assert!(d.publish && !d.presence && !d.private);
    }

    #[test]
    fn event_json_forms() {
        let ch: Arc<str> = Arc::from("chat:\"a\"");
        let publication = Event::new(
            ch.clone(),
            EventKind::Publication {
                offset: 7,
                epoch: Arc::from("e1"),
                data: Bytes::from_static(br#"{"text":"hi"}"#),
            },
        );
        assert_eq!(
            publication.to_json(),
            r#"{"channel":"chat:\"a\"","offset":7,"epoch":"e1","data":{"text":"hi"}}"#
        );
        let prepared = publication.prepared().map(|p| p.payload().clone());
        assert_eq!(prepared.as_deref(), Some(publication.to_json().as_bytes()));

        let mut client = ClientInfo::new("c1");
        client.user_id = Some("u1".into());
        let join = Event::new(ch.clone(), EventKind::Join(client.clone()));
        assert_eq!(
            join.to_json(),
            r#"{"channel":"chat:\"a\"","join":{"client":"c1","user":"u1","info":null}}"#
        );
        client.info = Some(serde_json::json!({"name": "Ann"}));
        let leave = Event::new(ch, EventKind::Leave(client));
        assert_eq!(
            leave.to_json(),
            r#"{"channel":"chat:\"a\"","leave":{"client":"c1","user":"u1","info":{"name":"Ann"}}}"#
        );
        for ev in [&publication, &join, &leave] {
            assert!(serde_json::from_str::<serde_json::Value>(&ev.to_json()).is_ok());
        }
    }

    #[test]
    fn data_must_be_json() {
        assert!(check_json(br#"{"a":[1,2]}"#).is_ok());
        assert!(check_json(b"\"text\"").is_ok());
        assert!(check_json(b"12").is_ok());
        for bad in [&b""[..], b"{", b"1 2", b"\"\xff\"", b"nope"] {
            assert!(check_json(bad).unwrap_err().is_invalid_data());
        }
    }
}
