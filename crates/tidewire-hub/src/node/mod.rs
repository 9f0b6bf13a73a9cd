//! The node: this process's side of the hub's channels, between the connections and the
//! engine.
//!
//! A [`Node`] keeps the local registry (channel → the subscriptions of this process's
//! connections, in shards: no lock is shared by all channels), asks the [`Broker`] to
//! subscribe when a channel gets its first local subscriber and to unsubscribe when it
//! loses its last, and fans each publication the broker delivers out to the local
//! subscribers' [`Outbox`]es, encoded once ([`Event::prepared`]). It applies the namespace
//! rules, checks published JSON once, keeps presence in the [`PresenceStore`] (refreshing
//! its clients' entries), and bounds every engine call with a timeout.
//!
//! Recovery is the node's, whatever the broker: a new subscription is registered first in
//! a buffering state, then the broker's history is read (everything after the client's
//! position, and the stream's position), then the buffered live events are merged in by
//! offset: those the history read already covers are dropped, the rest follow the reply.
//! Every publication reaches the subscriber exactly once, in order, without holding the
//! broker while the history is read.

mod event;
mod namespaces;
mod outbox;
mod resume;

pub use event::{Event, EventKind, Json};
pub use namespaces::{namespace_of, NamespaceConfig, NamespaceOptions};
#[cfg(test)]
pub(crate) use outbox::outbox_size;
pub use outbox::{Deliverer, Order, Outbox, OutboxGuard, OutboxSender, Slow, Stop, Transmit};

use crate::engine::{
    Broker, BrokerEvents, ClientInfo, Clock, Error, ErrorKind, HistoryQuery, PresenceStats,
    PresenceStore, Publication, StreamOptions, StreamPosition, SystemClock,
};
use crate::log_text::peer;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards of the local registry.
const SHARDS: usize = 64;
/// The bit that marks a quiet subscription's id ([`Node::subscribe_quietly`]): ids come
/// from a counter that never gets near it, and marking the id costs no memory per
/// subscription.
const QUIET: u64 = 1 << 63;
/// Locks that order the broker subscribe and unsubscribe calls of one channel.
const SUB_LOCKS: usize = 256;

/// Tunables of a [`Node`].
#[derive(Debug, Clone, Copy)]
pub struct NodeOptions {
    /// Longest an engine call may take before the node gives up on it (the request fails
    /// with a temporary error). Default 5 s.
    pub engine_timeout: Duration,
    /// How long a presence entry lives unless refreshed. Default 60 s; the node refreshes
    /// its clients' entries every third of it (from [`Node::sweep`]).
    pub presence_ttl: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            engine_timeout: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(60),
        }
    }
}

/// A subscription of a local connection, as the node knows it: end it with
/// [`Node::unsubscribe`], which is how the broker learns that a channel has no local
/// subscriber left. Its live events go to the subscriber's [`Outbox`], tagged with
/// [`Subscription::id`].
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    channel: Arc<str>,
}

impl Subscription {
    /// The subscription `id` to `channel` (as a connection keeps it).
    pub fn new(id: u64, channel: Arc<str>) -> Self {
        Subscription { id, channel }
    }

    /// The id its events come with.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The channel's name, shared with the node's registry.
    pub fn channel_name(&self) -> &Arc<str> {
        &self.channel
    }
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

/// What [`Node::subscribe`] returns: the subscription, where live delivery starts, and what
/// was recovered.
///
/// The recovered publications and the live events neither overlap nor leave a gap: every
/// live publication has an offset above `position` (in its epoch).
#[derive(Debug)]
pub struct Subscribed {
    /// The subscription, to end with [`Node::unsubscribe`].
    pub subscription: Subscription,
    /// The channel's position when live delivery started.
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
    /// The channel's current position.
    pub position: StreamPosition,
}

/// One local subscription in the registry.
#[derive(Debug)]
struct LocalSub {
    id: u64,
    outbox: OutboxSender,
    client: Arc<ClientInfo>,
}

/// A channel's local subscriptions: most channels (per-user ones) have one, kept inline.
#[derive(Debug)]
enum Subs {
    One(LocalSub),
    Many(Vec<LocalSub>),
}

impl Subs {
    fn as_slice(&self) -> &[LocalSub] {
        match self {
            Subs::One(s) => std::slice::from_ref(s),
            Subs::Many(v) => v,
        }
    }

    fn push(&mut self, sub: LocalSub) {
        match self {
            Subs::Many(v) => v.push(sub),
            Subs::One(_) => {
                let Subs::One(first) = std::mem::replace(self, Subs::Many(Vec::new())) else {
                    unreachable!("matched One");
                };
                *self = Subs::Many(vec![first, sub]);
            }
        }
    }
}

/// A channel's local subscribers.
#[derive(Debug)]
struct Local {
    subs: Subs,
    /// The broker has been told to subscribe.
    linked: bool,
}

/// One shard of the registry.
#[derive(Debug, Default)]
struct Shard {
    channels: HashMap<Arc<str>, Local>,
    /// Subscriptions that are starting, by id: the events that arrived meanwhile, merged
    /// with the history read when they go live ([`Registry::go_live`]). Empty as a rule.
    starting: HashMap<u64, Vec<Arc<Event>>>,
    /// Subscriptions gone live whose history read may have reached past what the broker
    /// has delivered to them yet, by id: the position it reached. A publication at or
    /// below it that arrives later (it was on its way from the engine, on another
    /// connection than the read) was in the recovered page already, and is not delivered
    /// again. An entry goes with the first publication past it, or after one to two
    /// sweeps ([`Registry::age_fresh`]: what was on its way has come by then). Empty as a
    /// rule.
    fresh: HashMap<u64, StreamPosition>,
    /// The entries of `fresh` as the last sweep found them.
    fresh_old: HashMap<u64, StreamPosition>,
}

/// The channels with local subscribers; the broker's event sink.
#[derive(Debug)]
struct Registry {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Where the events of the hub's own channels go ([`Node::watch`]).
    internal: std::sync::OnceLock<Arc<dyn InternalEvents>>,
}

/// Where the node hands what happens on the hub's own channels (names starting with `$`,
/// which clients cannot use: the cluster's control messages), instead of delivering it to
/// subscribers.
pub trait InternalEvents: Send + Sync + 'static {
    /// A publication on `channel`.
    fn publication(&self, channel: &str, publication: Publication);
    /// Publications of `channel` may have been missed (`None`: of every channel).
    fn lost(&self, channel: Option<&str>);
}

impl std::fmt::Debug for dyn InternalEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalEvents")
    }
}

/// Whether `channel` is one of the hub's own (`$...`), which clients cannot use.
pub fn is_internal(channel: &str) -> bool {
    channel.starts_with('$')
}

impl Registry {
    fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            internal: std::sync::OnceLock::new(),
        }
    }

    fn hash(&self, channel: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write(channel.as_bytes());
        h.finish() as usize
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.hash(channel) % SHARDS])
    }

    /// Adds a subscription, buffering until it goes live; returns the channel's shared
    /// name and whether the broker still has to be told to subscribe.
    fn add(&self, channel: &str, sub: LocalSub) -> (Arc<str>, bool) {
        let mut shard = self.shard(channel);
        shard.starting.insert(sub.id, Vec::new());
        let r = if let Some((name, _)) = shard.channels.get_key_value(channel) {
            let name = name.clone();
            let local = shard.channels.get_mut(channel).expect("just found");
            local.subs.push(sub);
            (name, !local.linked)
        } else {
            let name: Arc<str> = Arc::from(channel);
            let local = Local {
                subs: Subs::One(sub),
                linked: false,
            };
            shard.channels.insert(name.clone(), local);
            (name, true)
        };
        if shard.starting.len() == 1 {
            // The map's first entry in a while: keep it from holding memory once empty.
            shard.starting.shrink_to(1);
        }
        r
    }

    fn set_linked(&self, channel: &str) {
        if let Some(local) = self.shard(channel).channels.get_mut(channel) {
            local.linked = true;
        }
    }

    /// Removes subscription `id`; returns whether it was there, and whether the channel
    /// is left without local subscribers while the broker is subscribed (tell it to
    /// unsubscribe).
    fn remove(&self, channel: &str, id: u64) -> (bool, bool) {
        let mut shard = self.shard(channel);
        if shard.starting.remove(&id).is_some() && shard.starting.is_empty() {
            shard.starting.shrink_to_fit();
        }
        shard.fresh.remove(&id);
        shard.fresh_old.remove(&id);
        let Some(local) = shard.channels.get_mut(channel) else {
            return (false, false);
        };
        let (found, empty) = match &mut local.subs {
            Subs::One(s) => (s.id == id, s.id == id),
            Subs::Many(v) => {
                let i = v.iter().position(|s| s.id == id);
                if let Some(i) = i {
                    v.swap_remove(i);
                }
                (i.is_some(), v.is_empty())
            }
        };
        if !empty {
            return (found, false);
        }
        let linked = local.linked;
        shard.channels.remove(channel);
        (found, linked)
    }

    /// Ends the buffering of subscription `id`: of the events buffered, those the history
    /// read at `position` already covers are dropped, the others are queued.
    fn go_live(&self, channel: &str, id: u64, position: &StreamPosition) {
        let mut shard = self.shard(channel);
        let Some(buffered) = shard.starting.remove(&id) else {
            return;
        };
        if shard.starting.is_empty() {
            shard.starting.shrink_to_fit();
        }
        let Some(sub) = shard
            .channels
            .get(channel)
            .and_then(|l| l.subs.as_slice().iter().find(|s| s.id == id))
        else {
            return;
        };
        let mut past = false;
        for event in buffered {
            if covered(&event, position) {
                continue;
            }
            past |= event.offset().is_some();
            sub.outbox.push(id, event);
        }
        // Offset 0: nothing was ever published, so nothing can be on its way.
        if !past && position.offset > 0 {
            shard.fresh.insert(id, position.clone());
        }
    }

    /// Forgets the entries of `fresh` older than one sweep.
    fn age_fresh(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            if shard.fresh.is_empty() && shard.fresh_old.is_empty() {
                continue;
            }
            shard.fresh_old = std::mem::take(&mut shard.fresh);
        }
    }

    /// Delivers `make()` to every local subscriber of `channel`, if it has any.
    fn deliver(&self, channel: &str, make: impl FnOnce(Arc<str>) -> Event) {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let Some((name, local)) = shard.channels.get_key_value(channel) else {
            return;
        };
        let event = Arc::new(make(name.clone()));
        for sub in local.subs.as_slice() {
            if !shard.starting.is_empty() {
                if let Some(buffer) = shard.starting.get_mut(&sub.id) {
                    buffer.push(event.clone());
                    continue;
                }
            }
            if (!shard.fresh.is_empty() || !shard.fresh_old.is_empty()) && event.offset().is_some()
            {
                let read = shard.fresh.get(&sub.id);
                if let Some(read) = read.or_else(|| shard.fresh_old.get(&sub.id)) {
                    if covered(&event, read) {
                        continue;
                    }
                    shard.fresh.remove(&sub.id);
                    shard.fresh_old.remove(&sub.id);
                }
            }
            // A closed outbox (its connection is ending) is skipped; the connection
            // unsubscribes on its way out.
            sub.outbox.push(sub.id, event.clone());
        }
    }

    /// (channel, client) of every live local subscription in a namespace with presence.
    fn present(&self, namespaces: &NamespaceConfig) -> Vec<(Arc<str>, Arc<ClientInfo>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (name, local) in lock(shard).channels.iter() {
                if namespaces.for_channel(name).is_some_and(|ns| ns.presence) {
                    let subs = local.subs.as_slice().iter().filter(|s| s.id & QUIET == 0);
                    out.extend(subs.map(|s| (name.clone(), s.client.clone())));
                }
            }
        }
        out
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).channels.len()).sum()
    }
}

/// Whether `event` is a publication that a history read up to `read` returned.
fn covered(event: &Event, read: &StreamPosition) -> bool {
    match event.kind() {
        EventKind::Publication { offset, epoch, .. } => {
            *offset <= read.offset && **epoch == *read.epoch
        }
        _ => false,
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl BrokerEvents for Registry {
    fn publication(&self, channel: &str, publication: Publication) {
        if is_internal(channel) {
            if let Some(internal) = self.internal.get() {
                internal.publication(channel, publication);
            }
            return;
        }
        self.deliver(channel, |name| Event::publication(name, publication));
    }

    fn join(&self, channel: &str, client: &ClientInfo) {
        self.deliver(channel, |name| {
            Event::new(name, EventKind::Join(client.clone()))
        });
    }

    fn leave(&self, channel: &str, client: &ClientInfo) {
        self.deliver(channel, |name| {
            Event::new(name, EventKind::Leave(client.clone()))
        });
    }

    fn link_restored(&self) {
        if let Some(internal) = self.internal.get() {
            internal.lost(None);
        }
        // Publications may have been missed: every subscriber resumes from history, as a
        // slow consumer does.
        for shard in self.shards.iter() {
            for local in lock(shard).channels.values() {
                for sub in local.subs.as_slice() {
                    sub.outbox.mark_lagged();
                }
            }
        }
    }

    fn channel_lost(&self, channel: &str) {
        if is_internal(channel) {
            if let Some(internal) = self.internal.get() {
                internal.lost(Some(channel));
            }
            return;
        }
        if let Some(local) = self.shard(channel).channels.get(channel) {
            for sub in local.subs.as_slice() {
                sub.outbox.mark_lagged();
            }
        }
    }
}

/// This process's side of the hub's channels (see the module's documentation).
#[derive(Debug)]
pub struct Node {
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceStore>,
    namespaces: NamespaceConfig,
    registry: Arc<Registry>,
    /// Order the broker subscribe and unsubscribe calls of a channel (by hash).
    sub_locks: Box<[tokio::sync::Mutex<()>]>,
    options: NodeOptions,
    next_id: AtomicU64,
    /// When presence entries were last refreshed.
    refreshed: Mutex<Option<Instant>>,
    /// Quiet subscriptions ([`Node::subscribe_quietly`]) by channel: few (the admin
    /// page's tails), and not counted in [`Node::channel_count`] where they are all a
    /// channel has.
    quiet: Mutex<HashMap<Arc<str>, usize>>,
    /// History reads of resumes, shared when they come together.
    resumes: resume::Resumes,
    clock: Arc<dyn Clock>,
}

impl Node {
    /// A node over `broker` and `presence`, applying `namespaces`. Starts the broker's
    /// delivery to this node.
    pub fn new(
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        namespaces: NamespaceConfig,
        options: NodeOptions,
    ) -> Self {
        Self::with_clock(broker, presence, namespaces, options, Arc::new(SystemClock))
    }

    /// [`Node::new`] reading `clock` (for its presence refreshes; tests pass the clock
    /// their memory engine reads).
    pub fn with_clock(
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        namespaces: NamespaceConfig,
        options: NodeOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let registry = Arc::new(Registry::new());
        broker.start(registry.clone());
        Node {
            broker,
            presence,
            namespaces,
            registry,
            sub_locks: (0..SUB_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            options,
            next_id: AtomicU64::new(1),
            refreshed: Mutex::new(None),
            quiet: Mutex::new(HashMap::new()),
            resumes: resume::Resumes::default(),
            clock,
        }
    }

    /// The namespaces this node applies.
    pub fn namespaces(&self) -> &NamespaceConfig {
        &self.namespaces
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Channels with at least one local subscriber (quiet ones not counted).
    pub fn channel_count(&self) -> usize {
        let quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
        let only_quiet = quiet
            .iter()
            .filter(|(channel, n)| self.subscriber_count(channel) == **n)
            .count();
        self.registry.len().saturating_sub(only_quiet)
    }

    /// Hands the events of the hub's own channels (`$...`) to `events` (once; later calls
    /// do nothing).
    pub fn set_internal(&self, events: Arc<dyn InternalEvents>) {
        let _ = self.registry.internal.set(events);
    }

    /// Subscribes this node to the hub's own channel `channel` (`$...`), whose events go
    /// to [`Node::set_internal`]'s receiver, for the node's life.
    pub async fn watch(&self, channel: &str) -> Result<(), Error> {
        let name: Arc<str> = Arc::from(channel);
        self.call("subscribe", self.broker.subscribe(&name)).await
    }

    /// Publishes on the hub's own channel `channel` (`$...`), keeping `history_size`
    /// publications for `history_ttl`.
    pub async fn publish_internal(
        &self,
        channel: &str,
        data: bytes::Bytes,
        stream: StreamOptions,
    ) -> Result<StreamPosition, Error> {
        self.call("publish", self.broker.publish(channel, data, stream, None))
            .await
    }

    /// The newest `limit` publications of the hub's own channel `channel`.
    pub async fn history_internal(
        &self,
        channel: &str,
        limit: usize,
        stream: StreamOptions,
    ) -> Result<crate::engine::HistoryPage, Error> {
        let read = self
            .broker
            .history(channel, HistoryQuery::Newest(limit), stream);
        self.call("history", read).await
    }

    /// The channels with local subscribers whose names `keep` accepts, with their
    /// numbers of local subscriptions (quiet ones, [`Node::subscribe_quietly`], are not
    /// counted, and a channel that has only those is not listed).
    pub fn local_channels(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.registry.shards.iter() {
            for (name, local) in lock(shard).channels.iter() {
                if keep(name) {
                    let subs = local.subs.as_slice();
                    let n = subs.iter().filter(|s| s.id & QUIET == 0).count();
                    if n > 0 {
                        out.push((name.clone(), n));
                    }
                }
            }
        }
        out
    }

    /// Local subscriptions to `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.registry
            .shard(channel)
            .channels
            .get(channel)
            .map_or(0, |l| l.subs.as_slice().len())
    }

    /// Runs an engine call within the node's timeout.
    async fn call<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.options.engine_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(what)),
        }
    }

    fn sub_lock(&self, channel: &str) -> &tokio::sync::Mutex<()> {
        &self.sub_locks[self.registry.hash(channel) % SUB_LOCKS]
    }

    /// Publishes `data` on `channel`: kept in history and delivered to every subscriber,
    /// on every node. Returns its position.
    pub async fn publish(&self, channel: &str, data: Json) -> Result<StreamPosition, Error> {
        self.publish_once(channel, data, None).await
    }

    /// [`Node::publish`] with an idempotency key: a second publication with the same key
    /// on the same channel within its history TTL is not published again, and returns the
    /// first one's position (see [`Broker::publish`]).
    pub async fn publish_once(
        &self,
        channel: &str,
        data: Json,
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition, Error> {
        let ns = self.namespaces.check(channel)?;
        let stream = ns.stream();
        let publish = self
            .broker
            .publish(channel, data.into_bytes(), stream, idempotency_key);
        self.call("publish", publish).await
    }

    /// Subscribes `client` to `channel`, its live events going into `outbox` (the
    /// connection's queue); with presence in the namespace, adds it to the channel's
    /// presence (a join event, which the new subscriber receives too, after the reply).
    /// With `since`, recovers the publications after it (see the module's documentation).
    pub async fn subscribe(
        &self,
        channel: &str,
        client: Arc<ClientInfo>,
        since: Option<StreamPosition>,
        outbox: OutboxSender,
    ) -> Result<Subscribed, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & !QUIET;
        self.subscribe_with_id(channel, client, since, outbox, id)
            .await
    }

    /// [`Node::subscribe`] for an observer (the admin page's live tail): it receives the
    /// channel's events like any subscriber, but is never in its presence (no join or
    /// leave, not refreshed) and is not counted in [`Node::local_channels`]. End it with
    /// [`Node::unsubscribe`] as any other.
    pub async fn subscribe_quietly(
        &self,
        channel: &str,
        client: Arc<ClientInfo>,
        since: Option<StreamPosition>,
        outbox: OutboxSender,
    ) -> Result<Subscribed, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) | QUIET;
        self.subscribe_with_id(channel, client, since, outbox, id)
            .await
    }

    async fn subscribe_with_id(
        &self,
        channel: &str,
        client: Arc<ClientInfo>,
        since: Option<StreamPosition>,
        outbox: OutboxSender,
        id: u64,
    ) -> Result<Subscribed, Error> {
        let ns = self.namespaces.check(channel)?.clone();
        let sub = LocalSub {
            id,
            outbox,
            client: client.clone(),
        };
        let name = {
            let _order = self.sub_lock(channel).lock().await;
            let (name, link) = self.registry.add(channel, sub);
            if id & QUIET != 0 {
                let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
                *quiet.entry(name.clone()).or_default() += 1;
            }
            if link {
                if let Err(e) = self.call("subscribe", self.broker.subscribe(&name)).await {
                    self.registry.remove(channel, id);
                    return Err(e);
                }
                self.registry.set_linked(channel);
            }
            name
        };
        let subscription = Subscription::new(id, name.clone());
        let started = async {
            if ns.presence && id & QUIET == 0 {
                let ttl = self.options.presence_ttl;
                self.call("presence", self.presence.add(&name, client.clone(), ttl))
                    .await?;
                self.call("join", self.broker.publish_join(channel, &client))
                    .await?;
            }
            let stream = ns.stream();
            match &since {
                Some(p) => {
                    let read = |after: StreamPosition| {
                        let query = HistoryQuery::Since(after);
                        self.call("history", self.broker.history(channel, query, stream))
                    };
                    self.resumes.read(&name, p, read).await
                }
                None => {
                    let query = HistoryQuery::Position;
                    self.call("history", self.broker.history(channel, query, stream))
                        .await
                }
            }
        };
        let page = match started.await {
            Ok(page) => page,
            Err(e) => {
                self.unsubscribe(subscription, &client).await;
                return Err(e);
            }
        };
        self.registry.go_live(channel, id, &page.position);
        let recovery = match (&since, page.complete) {
            (None, _) => Recovery::NotRequested,
            (Some(_), true) => Recovery::Recovered(
                page.publications
                    .into_iter()
                    .map(|p| Arc::new(Event::publication(name.clone(), p)))
                    .collect(),
            ),
            (Some(_), false) => Recovery::Failed,
        };
        Ok(Subscribed {
            subscription,
            position: page.position,
            recovery,
        })
    }

    /// Ends `subscription` of `client`: no more deliveries; the broker unsubscribes when
    /// it was the channel's last local subscription; with presence, a leave event. Engine
    /// failures are logged: the subscription is gone from the node whatever happens.
    pub async fn unsubscribe(&self, subscription: Subscription, client: &ClientInfo) {
        let channel = subscription.channel();
        let removed = {
            let _order = self.sub_lock(channel).lock().await;
            let (removed, unlink) = self.registry.remove(channel, subscription.id());
            if removed && subscription.id() & QUIET != 0 {
                let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = quiet.get_mut(channel) {
                    *n -= 1;
                    if *n == 0 {
                        quiet.remove(channel);
                    }
                }
            }
            if unlink {
                if let Err(e) = self
                    .call("unsubscribe", self.broker.unsubscribe(channel))
                    .await
                {
                    tracing::warn!(
                        channel = peer(channel).to_string(),
                        "broker unsubscribe failed: {}",
                        peer(&e)
                    );
                }
            }
            removed
        };
        let presence = subscription.id() & QUIET == 0
            && self
                .namespaces
                .for_channel(channel)
                .is_some_and(|ns| ns.presence);
        if removed && presence {
            let left = async {
                self.call("presence", self.presence.remove(channel, &client.client_id))
                    .await?;
                self.call("leave", self.broker.publish_leave(channel, client))
                    .await
            };
            if let Err(e) = left.await {
                tracing::warn!(
                    channel = peer(channel).to_string(),
                    "presence leave failed: {}",
                    peer(&e)
                );
            }
        }
    }

    /// The newest `limit` publications of `channel`, oldest first, and its position.
    pub async fn history(&self, channel: &str, limit: usize) -> Result<History, Error> {
        let ns = self.namespaces.check(channel)?;
        let page = self
            .call(
                "history",
                self.broker
                    .history(channel, HistoryQuery::Newest(limit), ns.stream()),
            )
            .await?;
        let name: Arc<str> = Arc::from(channel);
        Ok(History {
            publications: page
                .publications
                .into_iter()
                .map(|p| Arc::new(Event::publication(name.clone(), p)))
                .collect(),
            position: page.position,
        })
    }

    /// `channel`'s history as `query` asks (the server API's `history`), with its
    /// position.
    pub async fn history_page(
        &self,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<crate::engine::HistoryPage, Error> {
        let ns = self.namespaces.check(channel)?;
        let read = self.broker.history(channel, query, ns.stream());
        self.call("history", read).await
    }

    /// Removes `channel`'s history (its position stays).
    pub async fn remove_history(&self, channel: &str) -> Result<(), Error> {
        self.namespaces.check(channel)?;
        self.call("history", self.broker.remove_history(channel))
            .await
    }

    /// Who is present in `channel`. Fails with [`Error::is_not_available`] when its
    /// namespace has no presence.
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, Error> {
        self.presence_namespace(channel)?;
        self.call("presence", self.presence.list(channel)).await
    }

    /// How many clients and users are present in `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, Error> {
        self.presence_namespace(channel)?;
        self.call("presence", self.presence.stats(channel)).await
    }

    fn presence_namespace(&self, channel: &str) -> Result<(), Error> {
        if !self.namespaces.check(channel)?.presence {
            return Err(Error::new(ErrorKind::NotAvailable));
        }
        Ok(())
    }

    /// Adds the presence of every local subscriber again, each with a join event: after
    /// the cluster reaped this node's presence (it was cut off from the engine for longer
    /// than its registry TTL) while its clients stayed connected.
    pub async fn rejoin_presence(&self) {
        let ttl = self.options.presence_ttl;
        for (channel, client) in self.registry.present(&self.namespaces) {
            let again = async {
                self.call("presence", self.presence.add(&channel, client.clone(), ttl))
                    .await?;
                self.call("join", self.broker.publish_join(&channel, &client))
                    .await
            };
            if let Err(e) = again.await {
                tracing::warn!(
                    channel = peer(&channel).to_string(),
                    "presence rejoin failed: {}",
                    peer(&e)
                );
            }
        }
    }

    /// Housekeeping, every few seconds: the engine's sweeps, and the refresh of this
    /// node's presence entries every third of their TTL.
    pub async fn sweep(&self) {
        self.registry.age_fresh();
        if let Err(e) = self.call("sweep", self.broker.sweep()).await {
            tracing::warn!("broker sweep failed: {}", peer(&e));
        }
        if let Err(e) = self.call("sweep", self.presence.sweep()).await {
            tracing::warn!("presence sweep failed: {}", peer(&e));
        }
        let due = {
            let mut last = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
            let now = self.clock.now();
            let due = match *last {
                None => true,
                Some(t) => now - t >= self.options.presence_ttl / 3,
            };
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            let ttl = self.options.presence_ttl;
            for (channel, client) in self.registry.present(&self.namespaces) {
                let refresh = self.presence.add(&channel, client, ttl);
                if let Err(e) = self.call("presence", refresh).await {
                    tracing::warn!(
                        channel = peer(&channel).to_string(),
                        "presence refresh failed: {}",
                        peer(&e)
                    );
                }
            }
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod model;
#[cfg(test)]
mod tests;
