//! The engine behind a hub: a [`Broker`] (channel streams with offsets and history, and
//! the delivery of their publications to every node) and a [`PresenceStore`] (who is in a
//! channel). Both are traits, chosen at run time: in memory here ([`MemoryBroker`],
//! [`MemoryPresence`]), a networked engine (Redis, NATS) later, shared by several nodes.
//!
//! The engine knows channels and nodes, never connections: the node (`crate::node`)
//! keeps the local subscribers of each channel, asks the broker to subscribe when a channel
//! gets its first one and to unsubscribe when it loses its last, and fans each publication
//! out to its local subscribers. No WebSocket types here, and no `now` parameters: the
//! memory implementations read an injected [`Clock`], so tests drive time themselves.
//!
//! A publication on a channel gets an `offset` (strictly increasing per channel, from 1)
//! and the channel's `epoch` (the generation of its history: a new random string whenever
//! the broker creates the stream afresh, so a restarted server never matches an old
//! epoch).

mod clock;
mod hook_log;
mod memory_broker;
mod memory_presence;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
mod redis;

pub use clock::{Clock, ManualClock, SystemClock};
pub(crate) use hook_log::now_ms;
pub use hook_log::{HookEntry, HookLog, HookOp, MemoryHookLog, ReapEvents, MEMORY_HOOK_CAPACITY};
pub use memory_broker::{MemoryBroker, DEFAULT_MAX_HISTORY_BYTES, DEFAULT_MAX_STREAMS};
pub use memory_presence::MemoryPresence;
#[cfg(feature = "nats")]
pub use nats::{NatsEngine, NatsOptions};
#[cfg(feature = "redis")]
pub use redis::{RedisEngine, RedisHookLog, RedisOptions};

use bytes::Bytes;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Longest channel name accepted, in bytes. Longer names fail with
/// [`Error::is_invalid_channel`].
pub const MAX_CHANNEL_LEN: usize = 255;

/// The future every engine method returns: boxed, so that the traits are usable as
/// `dyn Broker` and `dyn PresenceStore`, chosen at run time.
pub type EngineFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A place in a channel's stream, and who is present in a channel: the wire's types
/// (`tidewire-hub-proto`), which the engine keeps as they are sent.
pub use tidewire_hub_proto::{ClientInfo, StreamPosition};

/// One publication of a channel's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// Its offset in the channel.
    pub offset: u64,
    /// The epoch of the channel's stream.
    pub epoch: Arc<str>,
    /// One JSON value, UTF-8 (checked by the node before it publishes).
    pub data: Bytes,
}

/// What a channel's stream keeps, given by the node with every call that may create or
/// trim it (from the channel's namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Publications kept; 0 keeps none (the position still advances).
    pub history_size: usize,
    /// How long a publication is kept, and how long a stream with nothing left in it
    /// keeps its epoch and offset (so that a client that comes back within it resumes).
    pub history_ttl: Duration,
}

/// Which publications [`Broker::history`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryQuery {
    /// Only the position (no publications).
    Position,
    /// The newest `n` publications, oldest first.
    Newest(usize),
    /// Every publication after this position, oldest first, or [`HistoryPage::complete`]
    /// false when the epoch differs or history no longer reaches back that far.
    Since(StreamPosition),
}

/// What [`Broker::history`] returns: the publications asked for and the stream's position,
/// read together (none of the publications is newer than the position).
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Oldest first.
    pub publications: Vec<Publication>,
    /// The stream's current position.
    pub position: StreamPosition,
    /// For [`HistoryQuery::Since`]: whether `publications` are all those after the
    /// position asked for. Always true for the other queries.
    pub complete: bool,
}

/// Where a broker delivers what happens on the channels a node subscribed to: the node
/// implements it. Calls for one channel come in the order of the channel's stream.
pub trait BrokerEvents: Send + Sync + 'static {
    /// A publication on `channel`.
    fn publication(&self, channel: &str, publication: Publication);
    /// A client joined `channel`'s presence.
    fn join(&self, channel: &str, client: &ClientInfo);
    /// A client left `channel`'s presence.
    fn leave(&self, channel: &str, client: &ClientInfo);
    /// The link to the broker was lost and is back: publications may have been missed
    /// meanwhile, on any channel. The node tells its subscribers to resume from history.
    fn link_restored(&self);
    /// Publications of `channel` were missed and the broker could not fill the gap from
    /// history (or the channel's epoch changed under it): the node tells that channel's
    /// subscribers to resume from history.
    fn channel_lost(&self, channel: &str);
}

impl fmt::Debug for dyn BrokerEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BrokerEvents")
    }
}

/// Channel streams and their delivery to nodes.
///
/// A publication is appended to the channel's history and handed to the subscribed nodes'
/// [`BrokerEvents`] atomically per channel: every node sees a channel's publications in
/// offset order, and a [`Broker::history`] read after [`Broker::publish`] returned holds
/// the publication.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Starts delivering to `events` (the node). Called once, before anything else.
    fn start(&self, events: Arc<dyn BrokerEvents>);

    /// Appends `data` to `channel`'s stream and delivers it to every subscribed node.
    /// Returns its position.
    ///
    /// With an `idempotency_key`, a publication with the same key on the same channel
    /// within the history TTL is not appended again: the call returns the first one's
    /// position. A retry after an error or a timeout (which may have been applied) thus
    /// publishes at most once.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        options: StreamOptions,
        idempotency_key: Option<&'a str>,
    ) -> EngineFuture<'a, StreamPosition>;

    /// Delivers a join event on `channel` to every subscribed node (not kept).
    fn publish_join<'a>(&'a self, channel: &'a str, client: &'a ClientInfo)
        -> EngineFuture<'a, ()>;

    /// Delivers a leave event on `channel` to every subscribed node (not kept).
    fn publish_leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()>;

    /// This node wants `channel`'s publications, joins and leaves from now on. The stream
    /// is kept (epoch and offset) while a node is subscribed. The name is the node's
    /// shared copy: an engine that keeps state per channel may keep it rather than a copy
    /// of its own.
    fn subscribe<'a>(&'a self, channel: &'a Arc<str>) -> EngineFuture<'a, ()>;

    /// This node no longer wants `channel`'s events.
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()>;

    /// Reads `channel`'s history and position. [`HistoryQuery::Newest`] on a channel
    /// without a stream creates none and answers offset 0 with an empty epoch (as
    /// docs/protocol.md says); the other queries (a subscribe's) create the stream, with a
    /// new epoch, if there is none.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> EngineFuture<'a, HistoryPage>;

    /// Forgets `channel`'s history (the position stays).
    fn remove_history<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()>;

    /// Housekeeping: trims history by age and forgets streams left idle for a history
    /// TTL. The node calls it every few seconds.
    fn sweep(&self) -> EngineFuture<'_, ()>;

    /// Streams held, where the broker can tell cheaply (for metrics).
    fn stream_count(&self) -> Option<usize>;

    /// Streams held by namespace (the name's part before `:`, `""` for names without
    /// one), where the broker can tell cheaply (for metrics).
    fn streams_by_namespace(&self) -> Option<Vec<(String, usize)>> {
        None
    }

    /// Bytes this process holds for history (data and per-publication overhead), where
    /// the broker keeps history in this process (for metrics).
    fn history_bytes(&self) -> Option<u64> {
        None
    }

    /// Publications dropped from history early to keep it within its memory bound, where
    /// the broker keeps history in this process (for metrics).
    fn history_shed(&self) -> Option<u64> {
        None
    }

    /// The engine's health as this node sees it, without waiting (a networked engine
    /// keeps it up to date in the background). Always up in memory.
    fn health(&self) -> EngineHealth {
        EngineHealth {
            engine: "memory",
            ..EngineHealth::default()
        }
    }

    /// Records this node in the cluster's registry, to expire after `ttl` unless
    /// announced again. Nothing to do in memory (a cluster of one). True when the registry
    /// had lost this node since its last announcement (it was cut off long enough for
    /// another node to reap its presence): the node adds its presence again, with joins.
    fn announce<'a>(&'a self, _node: &'a NodeStatus, _ttl: Duration) -> EngineFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }

    /// The nodes of the cluster that announced themselves and have not expired, this one
    /// included; empty for an engine without a registry (memory: a cluster of one).
    fn nodes(&self) -> EngineFuture<'_, Vec<NodeStatus>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// What a networked engine counts for `/metrics` (see [`EngineHealth`]).
#[derive(Debug, Default)]
pub(crate) struct EngineCounters {
    /// Gaps in a live stream filled from history.
    pub(crate) repairs: std::sync::atomic::AtomicU64,
    /// Channels whose subscribers were told to resume.
    pub(crate) lost: std::sync::atomic::AtomicU64,
    /// Presence entries of dead nodes removed, each with its leave.
    pub(crate) reaped: std::sync::atomic::AtomicU64,
}

impl EngineCounters {
    /// (repairs, lost, reaped).
    pub(crate) fn read(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.repairs.load(Relaxed),
            self.lost.load(Relaxed),
            self.reaped.load(Relaxed),
        )
    }
}

/// The node's event sink, counting the channels lost ([`EngineCounters::lost`]).
#[derive(Debug)]
pub(crate) struct CountingEvents {
    pub(crate) inner: Arc<dyn BrokerEvents>,
    pub(crate) counters: Arc<EngineCounters>,
}

impl BrokerEvents for CountingEvents {
    fn publication(&self, channel: &str, publication: Publication) {
        self.inner.publication(channel, publication)
    }
    fn join(&self, channel: &str, client: &ClientInfo) {
        self.inner.join(channel, client)
    }
    fn leave(&self, channel: &str, client: &ClientInfo) {
        self.inner.leave(channel, client)
    }
    fn link_restored(&self) {
        self.inner.link_restored()
    }
    fn channel_lost(&self, channel: &str) {
        // The hub's own channels have no subscribers to tell.
        if !crate::node::is_internal(channel) {
            self.counters
                .lost
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.channel_lost(channel)
    }
}

/// A node as the cluster's registry holds it (`GET /api/cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// Unique in the cluster (`--node-name`, or generated).
    pub name: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Subscriptions of its connections.
    pub subscriptions: u64,
    /// Channels with at least one of its subscribers.
    pub channels: u64,
    /// Seconds since the Unix epoch when it started.
    pub started: u64,
    /// Seconds since the Unix epoch of this announcement.
    pub updated: u64,
    /// Its version.
    pub version: String,
}

/// The engine's health: up when every shard is ([`Broker::health`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineHealth {
    /// `memory`, `redis` or `nats`.
    pub engine: &'static str,
    /// One per shard (server or cluster) of a networked engine; empty in memory.
    pub shards: Vec<ShardHealth>,
    /// Gaps in live streams filled from history.
    pub repairs: u64,
    /// Channels whose subscribers were told to resume (a gap history could not fill, or a
    /// new epoch).
    pub lost: u64,
    /// Presence entries of dead nodes this node removed (each with its leave).
    pub reaped: u64,
}

impl EngineHealth {
    /// True when every shard is up.
    pub fn is_up(&self) -> bool {
        self.shards.iter().all(|s| s.up)
    }

    /// Why the engine is not up: the first failing shard's reason.
    pub fn reason(&self) -> Option<String> {
        self.shards
            .iter()
            .find(|s| !s.up)
            .map(|s| format!("{}: {}", s.address, s.reason.as_deref().unwrap_or("down")))
    }
}

/// One shard of a networked engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardHealth {
    /// Its address, without credentials.
    pub address: String,
    /// Answered the last probe in time.
    pub up: bool,
    /// Why it is not up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last probe's round trip, in microseconds.
    pub latency_us: u64,
    /// Times the link was established again after it was lost.
    pub reconnects: u64,
}

/// Who is present in each channel, with a time to live: a node refreshes the entries of its
/// clients, so that those of a node that died expire.
pub trait PresenceStore: Send + Sync + fmt::Debug + 'static {
    /// Adds `client` to `channel`'s presence, or refreshes it, for `ttl`. The name is the
    /// node's shared copy (see [`Broker::subscribe`]).
    fn add<'a>(
        &'a self,
        channel: &'a Arc<str>,
        client: Arc<ClientInfo>,
        ttl: Duration,
    ) -> EngineFuture<'a, ()>;

    /// Removes `client_id` from `channel`'s presence.
    fn remove<'a>(&'a self, channel: &'a str, client_id: &'a str) -> EngineFuture<'a, ()>;

    /// Who is present in `channel`, by client id.
    fn list<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<ClientInfo>>;

    /// How many clients and distinct users are present in `channel`.
    fn stats<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, PresenceStats>;

    /// Housekeeping: forgets expired entries.
    fn sweep(&self) -> EngineFuture<'_, ()>;
}

/// Counts of a channel's presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PresenceStats {
    /// Clients present.
    pub clients: usize,
    /// Distinct users among them (anonymous clients not counted).
    pub users: usize,
}

/// An engine error. `Display` is not a stable API; use the predicates.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
pub(crate) enum ErrorKind {
    InvalidChannel,
    UnknownNamespace,
    InvalidData,
    NotAvailable,
    TooManyChannels,
    Lagged(u64),
    Closed,
    Timeout(&'static str),
    Backend {
        source: Box<dyn std::error::Error + Send + Sync>,
        temporary: bool,
    },
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error { kind }
    }

    /// For networked engines: a failure of the broker or of the link to it; `temporary`
    /// when trying again may succeed (a lost connection), not for a refusal.
    pub fn backend(
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
        temporary: bool,
    ) -> Self {
        Error::new(ErrorKind::Backend {
            source: source.into(),
            temporary,
        })
    }

    /// An engine call that took longer than allowed (`what` names it).
    pub fn timeout(what: &'static str) -> Self {
        Error::new(ErrorKind::Timeout(what))
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

    /// The engine holds as many channels as it may (`limits.max_channels`): the call
    /// would have made one more.
    pub fn is_too_many_channels(&self) -> bool {
        matches!(self.kind, ErrorKind::TooManyChannels)
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

    /// The engine did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ErrorKind::Timeout(_))
    }

    /// A networked engine's broker failed.
    pub fn is_backend(&self) -> bool {
        matches!(self.kind, ErrorKind::Backend { .. })
    }

    /// Whether the same call may succeed if tried again: a timeout or a temporary backend
    /// failure; never for invalid input.
    pub fn is_temporary(&self) -> bool {
        match &self.kind {
            ErrorKind::Timeout(_) | ErrorKind::Closed => true,
            ErrorKind::Backend { temporary, .. } => *temporary,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::InvalidChannel => f.write_str("invalid channel name"),
            ErrorKind::UnknownNamespace => f.write_str("unknown namespace"),
            ErrorKind::InvalidData => f.write_str("data is not JSON"),
            ErrorKind::NotAvailable => f.write_str("not available in this namespace"),
            ErrorKind::TooManyChannels => {
                f.write_str("too many channels on this server (limits.max_channels)")
            }
            ErrorKind::Lagged(n) => write!(f, "slow consumer: {n} events dropped"),
            ErrorKind::Closed => f.write_str("engine closed"),
            ErrorKind::Timeout(what) => write!(f, "engine timeout: {what} took too long"),
            ErrorKind::Backend { source, .. } => write!(f, "engine backend: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Backend { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_errors() {
        assert!(Error::timeout("publish").is_temporary());
        assert!(Error::backend("connection reset", true).is_temporary());
        assert!(!Error::backend("WRONGTYPE", false).is_temporary());
        assert!(!Error::new(ErrorKind::InvalidData).is_temporary());
        assert!(Error::timeout("publish").to_string().contains("publish"));
    }

    #[test]
    fn traits_are_object_safe() {
        fn takes(_: Option<Arc<dyn Broker>>, _: Option<Arc<dyn PresenceStore>>) {}
        takes(None, None);
    }
}
