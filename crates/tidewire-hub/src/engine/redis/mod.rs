//! The Redis engine: channel streams, their live delivery and presence in Redis, shared by
//! every node started with the same `--engine redis://...`.
//!
//! - **Publish** is one Lua script ([`keys::PUBLISH`]): the next offset, the history
//!   stream's append with its length cap, the expiries, and the `PUBLISH` of the
//!   publication on the channel's pub/sub channel, all in one step, so every node sees a
//!   channel's publications in offset order and a history read after a publish holds it.
//!   An idempotency key is remembered (with the publication's position) for the history
//!   TTL in the same step.
//! - **History** is read by one script too ([`keys::HISTORY`]): the position and the
//!   publications together, never a partial page; a resume that history cannot fully
//!   serve is answered `complete: false`.
//! - **Epochs**: a channel's epoch is made (by the node, random) when its keys do not exist.
//!   Redis restarted empty, an evicted key or a failover that lost writes all give a new
//!   epoch, so a resume gets `recovered: false`, never wrong data.
//! - **Live delivery**: one subscriber connection per Redis server and node
//!   ([`shard`]), which repairs gaps from history and detects a stalled connection.
//! - **Presence**: a hash and an expiry set per channel; each node also lists its entries
//!   in a set of its own, so that when a node stops announcing itself (it crashed),
//!   another node removes its entries and publishes their leaves, exactly once (the
//!   removal and the leave are one script, which finds the entry only once).
//! - **Sharding**: with several `redis://` URLs, each channel lives on one of them, chosen
//!   by rendezvous hashing of its name (a fixed hash, so every node agrees; adding a server
//!   moves only the channels that go to it). The node registry is on the first.

mod cluster;
mod hooks;
pub use hooks::RedisHookLog;
mod keys;
mod shard;

use super::{
    Broker, BrokerEvents, ClientInfo, EngineFuture, EngineHealth, Error, HistoryPage, HistoryQuery,
    NodeStatus, PresenceStats, PresenceStore, Publication, StreamOptions, StreamPosition,
};
use crate::lock;
use bytes::Bytes;
use futures_util::StreamExt;
use shard::{Command, Conn, Shard, Source, Subscriber};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) use super::EngineCounters as Counters;

/// The Redis engine: a [`Broker`] and a [`PresenceStore`] over one or more Redis servers.
pub struct RedisEngine {
    node: String,
    shards: Vec<Shard>,
    /// The subscriber tasks' halves, until [`Broker::start`] gives the node.
    pending: Mutex<Vec<mpsc::UnboundedReceiver<Command>>>,
    counters: Arc<Counters>,
    runtime: tokio::runtime::Handle,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    /// The last reap of this node's presence it answered (by rejoining).
    reaped_handled: Mutex<Option<String>>,
    /// Channels this node is subscribed to, with their history TTL (ms, once a subscribe's
    /// history read gave it) and when their position's expiry was last renewed.
    kept: Mutex<HashMap<Arc<str>, Kept>>,
    /// On Redis Cluster: live delivery by sharded pub/sub.
    cluster: bool,
}

/// A subscribed channel whose position this node keeps alive.
#[derive(Debug, Clone, Copy)]
struct Kept {
    ttl_ms: u64,
    renewed: std::time::Instant,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("node", &self.node)
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// Presence entries of this node are refreshed well within this; a node that stops
/// announcing itself for [`NODE_TTL`] has its entries reaped by another.
const NODE_TTL: Duration = Duration::from_secs(6);

/// How the engine connects, besides its URLs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// PEM of the CA that signed the servers' certificates (`rediss://`), when it is not
    /// in the system's trust store.
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisEngine {
    /// Connects to every `redis://` URL (channels are sharded over them) as node `node`
    /// (unique in the cluster). Fails when a server does not answer within 4 s or a URL
    /// is wrong.
    pub async fn connect(urls: &[String], node: &str) -> Result<Arc<RedisEngine>, Error> {
        Self::connect_with(urls, node, RedisOptions::default()).await
    }

    /// [`RedisEngine::connect`] with `options`.
    pub async fn connect_with(
        urls: &[String],
        node: &str,
        options: RedisOptions,
    ) -> Result<Arc<RedisEngine>, Error> {
        if urls.is_empty() {
            return Err(Error::backend("no redis:// URL given", false));
        }
        let mut shards = Vec::new();
        let mut pending = Vec::new();
        for url in urls {
            let (shard, rx) = Shard::connect(url, options.ca_pem.as_deref()).await?;
            shards.push(shard);
            pending.push(rx);
        }
        let cluster = shards
            .iter()
            .any(|s| matches!(*s.source, Source::Cluster(_)));
        if cluster && shards.len() > 1 {
            return Err(Error::backend(
                "a redis+cluster:// URL is the only engine URL (the cluster shards by itself)",
                false,
            ));
        }
        let engine = Arc::new(RedisEngine {
            cluster,
            node: node.to_owned(),
            shards,
            pending: Mutex::new(pending),
            counters: Arc::new(Counters::default()),
            runtime: tokio::runtime::Handle::current(),
            events: OnceLock::new(),
            kept: Mutex::new(HashMap::new()),
            reaped_handled: Mutex::new(None),
        });
        for shard in &engine.shards {
            engine.runtime.spawn(shard::prober(
                shard.conn.clone(),
                shard.source.clone(),
                Arc::downgrade(&shard.state),
                node.to_owned(),
            ));
            engine.runtime.spawn(shard::watch_master(
                shard.source.clone(),
                shard.conn.clone(),
                Arc::downgrade(&shard.state),
            ));
        }
        engine.runtime.spawn(reaper(Arc::downgrade(&engine)));
        engine.runtime.spawn(keeper(Arc::downgrade(&engine)));
        Ok(engine)
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The counters of gap repairs, lost channels and reaped presence entries.
    pub fn counters(&self) -> (u64, u64, u64) {
        self.counters.read()
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[pick(channel, &self.shards)]
    }

    fn conn(&self, channel: &str) -> Conn {
        self.shard(channel).conn.get()
    }

    /// The publish command: sharded on a cluster (it stays on the slot's master).
    fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The shard holding the node registry.
    fn registry(&self) -> Conn {
        self.shards[0].conn.get()
    }

    /// Renews the expiry of the subscribed channels' positions that are due.
    async fn renew(&self) -> Result<(), Error> {
        let now = std::time::Instant::now();
        let due: Vec<(Arc<str>, u64)> = {
            let mut kept = lock(&self.kept);
            kept.iter_mut()
                .filter(|(_, k)| {
                    k.ttl_ms > 0 && now.duration_since(k.renewed).as_millis() as u64 >= k.ttl_ms / 3
                })
                .map(|(c, k)| {
                    k.renewed = now;
                    (c.clone(), k.ttl_ms)
                })
                .collect()
        };
        if self.cluster {
            // One slot per channel: no pipeline spans them (commands still go out together
            // on the connection).
            let conn = self.shards[0].conn.get();
            let calls: Vec<_> = due
                .into_iter()
                .map(|(c, ttl)| {
                    let mut conn = conn.clone();
                    let mut cmd = redis::cmd("PEXPIRE");
                    cmd.arg(keys::meta(&c)).arg(ttl);
                    async move { cmd.query_async::<()>(&mut conn).await }
                })
                .collect();
            let results: Vec<_> = futures_util::stream::iter(calls)
                .buffer_unordered(256)
                .collect()
                .await;
            return match results.into_iter().find_map(Result::err) {
                Some(e) => Err(redis_error(&e)),
                None => Ok(()),
            };
        }
        for (i, shard) in self.shards.iter().enumerate() {
            let mine = due.iter().filter(|(c, _)| pick(c, &self.shards) == i);
            for chunk in mine.collect::<Vec<_>>().chunks(1000) {
                let mut pipe = redis::pipe();
                for (c, ttl) in chunk {
                    pipe.cmd("PEXPIRE").arg(keys::meta(c)).arg(*ttl).ignore();
                }
                pipe.query_async::<()>(&mut shard.conn.get())
                    .await
                    .map_err(|e| redis_error(&e))?;
            }
        }
        Ok(())
    }

    /// Removes node `name`'s presence entries (it stopped announcing itself), publishing a
    /// leave for each that was still there, and emits the hook events of its sessions
    /// (`hooks`). Claimed first, so one node does it.
    async fn reap(&self, name: &str) -> Result<(), Error> {
        let mut reg = self.registry();
        let claim: Option<String> = redis::cmd("SET")
            .arg(format!("{}:reaping", keys::node(name)))
            .arg(&self.node)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut reg)
            .await
            .map_err(|e| redis_error(&e))?;
        if claim.is_none() {
            return Ok(()); // another node is on it
        }
        let set = keys::node_presence(name);
        let remove = redis::Script::new(keys::PRESENCE_REMOVE);
        loop {
            let batch: Vec<String> = redis::cmd("SPOP")
                .arg(&set)
                .arg(500)
                .query_async(&mut reg)
                .await
                .map_err(|e| redis_error(&e))?;
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                let Some((channel, client)) = entry.split_once('\0') else {
                    continue;
                };
                let mut conn = self.conn(channel);
                let removed: u64 = remove
                    .key(keys::presence(channel))
                    .key(keys::presence_expiry(channel))
                    .arg(client)
                    .arg(keys::live(channel))
                    .arg(self.publish_command())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| redis_error(&e))?;
                self.counters.reaped.fetch_add(removed, Ordering::Relaxed);
            }
        }
        // The hook events of its sessions and channels (each once: the script forgets what
        // it emits); every kind, the delivering nodes skip those they do not send.
        let all = super::ReapEvents {
            disconnect: true,
            unsubscribe: true,
            vacated: true,
        };
        let n = hooks::reap(self, name, all).await?;
        if n > 0 {
            tracing::info!(
                node = name,
                reaped = n,
                "engine: emitted the hook events of a dead node's sessions"
            );
        }
        redis::pipe()
            .zrem(keys::NODES, name)
            .del(keys::node(name))
            .ignore()
            .cmd("SET")
            .arg(keys::node_reaped(name))
            .arg(new_epoch())
            .arg("EX")
            .arg(3600)
            .ignore()
            .query_async::<()>(&mut reg)
            .await
            .map_err(|e| redis_error(&e))?;
        tracing::info!(node = name, "engine: reaped a dead node's presence");
        Ok(())
    }
}

/// Every 0.5 s: renews the positions of the channels this node is subscribed to, each every
/// third of its TTL, so that a channel keeps its epoch and offset while it has subscribers,
/// however long nobody publishes (as in memory).
async fn keeper(engine: std::sync::Weak<RedisEngine>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let renew = tokio::time::timeout(Duration::from_secs(3), engine.renew());
        if let Ok(Err(e)) = renew.await {
            tracing::debug!("engine: renewing positions failed: {e}");
        }
    }
}

/// Every 2 s: reaps the presence of nodes that stopped announcing themselves.
async fn reaper(engine: std::sync::Weak<RedisEngine>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let dead = async {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(keys::SILENT_NODES));
            let mut reg = engine.registry();
            let dead: Vec<String> = script
                .key(keys::NODES)
                .arg(NODE_TTL.as_millis() as u64)
                .invoke_async(&mut reg)
                .await
                .map_err(|e| redis_error(&e))?;
            Ok::<_, Error>(dead)
        };
        let dead = match tokio::time::timeout(Duration::from_secs(3), dead).await {
            Ok(Ok(d)) => d,
            _ => continue,
        };
        for name in dead.iter().filter(|n| **n != engine.node) {
            let reap = tokio::time::timeout(Duration::from_secs(10), engine.reap(name));
            if let Ok(Err(e)) = reap.await {
                tracing::warn!(node = name.as_str(), "engine: reaping failed: {e}");
            }
        }
    }
}

/// Rendezvous hashing: the shard whose hash with the channel is highest.
fn pick(channel: &str, shards: &[Shard]) -> usize {
    if shards.len() == 1 {
        return 0;
    }
    (0..shards.len())
        .max_by_key(|&i| fnv1a(shards[i].address.as_bytes(), channel.as_bytes()))
        .unwrap_or(0)
}

/// FNV-1a (64 bits) of `bytes`: the same on every node and every build.
pub(super) fn fnv1a_of<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a over `a`, a separator and `b`, mixed: the same on every node and every build.
fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h = fnv1a_of(a.iter().chain(&[0xff]).chain(b));
    // Mix, so that close inputs spread over the shards.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn ttl_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1000)
}

/// A Redis failure as an engine error: temporary unless Redis refused the command itself.
pub(crate) fn redis_error(e: &redis::RedisError) -> Error {
    let refused = matches!(
        e.kind(),
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
    );
    Error::backend(e.to_string(), !refused)
}

/// The arguments of [`keys::HISTORY`].
struct HistoryArgs<'a> {
    mode: &'static str,
    n: u64,
    epoch: &'a str,
    create: bool,
    ttl_ms: u64,
    size: u64,
}

impl<'a> HistoryArgs<'a> {
    fn new(query: &'a HistoryQuery, options: StreamOptions) -> Self {
        let (mode, n, epoch, create) = match query {
            HistoryQuery::Position => ("pos", 0, "", true),
            HistoryQuery::Newest(n) => ("newest", *n as u64, "", false),
            HistoryQuery::Since(p) => ("since", p.offset, p.epoch.as_str(), true),
        };
        HistoryArgs {
            mode,
            n,
            epoch,
            create,
            ttl_ms: ttl_ms(options.history_ttl),
            size: options.history_size as u64,
        }
    }

    /// A gap repair: everything after `since`, as far as the stream keeps it, without
    /// touching the channel's expiry.
    fn repair(since: u64, epoch: &'a str) -> Self {
        HistoryArgs {
            mode: "since",
            n: since,
            epoch,
            create: false,
            ttl_ms: 10 * 365 * 24 * 3600 * 1000,
            size: u64::MAX >> 12,
        }
    }
}

/// Runs [`keys::HISTORY`] on `conn` for `channel`.
async fn history_call(
    conn: &mut Conn,
    channel: &str,
    args: HistoryArgs<'_>,
) -> Result<HistoryPage, Error> {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(keys::HISTORY));
    let (offset, epoch, complete, flat): (u64, String, u8, Vec<redis::Value>) = script
        .key(keys::meta(channel))
        .key(keys::stream(channel))
        .arg(args.mode)
        .arg(args.n)
        .arg(args.epoch)
        .arg(if args.create { "1" } else { "0" })
        .arg(new_epoch())
        .arg(args.ttl_ms)
        .arg(args.size)
        .invoke_async(conn)
        .await
        .map_err(|e| redis_error(&e))?;
    let shared: Arc<str> = Arc::from(epoch.as_str());
    let mut publications = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(o), Some(d)) = (it.next(), it.next()) {
        let offset: u64 =
            redis::from_redis_value(o).map_err(|e| Error::backend(e.to_string(), false))?;
        let data: Vec<u8> =
            redis::from_redis_value(d).map_err(|e| Error::backend(e.to_string(), false))?;
        publications.push(Publication {
            offset,
            epoch: shared.clone(),
            data: Bytes::from(data),
        });
    }
    Ok(HistoryPage {
        publications,
        position: StreamPosition { offset, epoch },
        complete: complete == 1,
    })
}

fn boxed<'a, T: Send + 'a>(
    f: impl std::future::Future<Output = Result<T, Error>> + Send + 'a,
) -> EngineFuture<'a, T> {
    Box::pin(f)
}

impl Broker for RedisEngine {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        if self.events.set(events.clone()).is_err() {
            return;
        }
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (shard, rx) in self.shards.iter().zip(pending) {
            let subscriber = Subscriber {
                source: shard.source.clone(),
                conn: shard.conn.clone(),
                state: shard.state.clone(),
                events: events.clone(),
                counters: self.counters.clone(),
                probe_channel: keys::probe(&self.node),
                channels: HashMap::new(),
            };
            self.runtime.spawn(subscriber.run(rx));
        }
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        options: StreamOptions,
        idempotency_key: Option<&'a str>,
    ) -> EngineFuture<'a, StreamPosition> {
        boxed(async move {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(keys::PUBLISH));
            let mut conn = self.conn(channel);
            let mut call = script.key(keys::meta(channel));
            call.key(keys::stream(channel));
            if let Some(k) = idempotency_key {
                call.key(keys::idempotency(channel, k));
            }
            let (offset, epoch): (u64, String) = call
                .arg(keys::live(channel))
                .arg(&data[..])
                .arg(options.history_size as u64)
                .arg(ttl_ms(options.history_ttl))
                .arg(new_epoch())
                .arg(self.publish_command())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            Ok(StreamPosition { offset, epoch })
        })
    }

    fn publish_join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        self.publish_presence(channel, b'j', client)
    }

    fn publish_leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        self.publish_presence(channel, b'l', client)
    }

    fn subscribe<'a>(&'a self, channel: &'a Arc<str>) -> EngineFuture<'a, ()> {
        boxed(async move {
            let (tx, rx) = oneshot::channel();
            self.shard(channel)
                .commands
                .send(Command::Subscribe(channel.clone(), tx))
                .map_err(|_| Error::backend("engine stopped", true))?;
            rx.await
                .map_err(|_| Error::backend("engine stopped", true))??;
            let kept = Kept {
                ttl_ms: 0,
                renewed: std::time::Instant::now(),
            };
            lock(&self.kept).entry(channel.clone()).or_insert(kept);
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        lock(&self.kept).remove(channel);
        let sent = self
            .shard(channel)
            .commands
            .send(Command::Unsubscribe(Arc::from(channel)));
        let r = sent.map_err(|_| Error::backend("engine stopped", true));
        Box::pin(std::future::ready(r))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> EngineFuture<'a, HistoryPage> {
        boxed(async move {
            if !matches!(query, HistoryQuery::Newest(_)) {
                // A subscribe's read: it renews the position's expiry, with this TTL.
                if let Some(k) = lock(&self.kept).get_mut(channel) {
                    k.ttl_ms = ttl_ms(options.history_ttl);
                    k.renewed = std::time::Instant::now();
                }
            }
            let mut conn = self.conn(channel);
            history_call(&mut conn, channel, HistoryArgs::new(&query, options)).await
        })
    }

    fn remove_history<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        boxed(async move {
            let mut conn = self.conn(channel);
            redis::cmd("DEL")
                .arg(keys::stream(channel))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| redis_error(&e))
        })
    }

    fn sweep(&self) -> EngineFuture<'_, ()> {
        // Redis expires keys by itself (and `keeper` renews the subscribed channels').
        Box::pin(std::future::ready(Ok(())))
    }

    fn stream_count(&self) -> Option<usize> {
        None
    }

    fn health(&self) -> EngineHealth {
        let (repairs, lost, reaped) = self.counters();
        EngineHealth {
            engine: "redis",
            shards: self.shards.iter().map(Shard::health).collect(),
            repairs,
            lost,
            reaped,
        }
    }

    fn announce<'a>(&'a self, node: &'a NodeStatus, ttl: Duration) -> EngineFuture<'a, bool> {
        boxed(async move {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(keys::ANNOUNCE));
            let json = serde_json::to_string(node).map_err(|e| Error::backend(e, false))?;
            let mut reg = self.registry();
            let reaped: Option<String> = script
                .key(keys::node(&node.name))
                .key(keys::NODES)
                .key(keys::node_reaped(&node.name))
                .arg(&node.name)
                .arg(json)
                .arg(ttl_ms(ttl))
                .invoke_async(&mut reg)
                .await
                .map_err(|e| redis_error(&e))?;
            // A reap this node has not answered yet (every announcement reads the marker,
            // so an answer lost to a timeout is not lost for good).
            let mut handled = lock(&self.reaped_handled);
            let fresh = reaped.is_some() && *handled != reaped;
            if fresh {
                *handled = reaped;
            }
            Ok(fresh)
        })
    }

    fn nodes(&self) -> EngineFuture<'_, Vec<NodeStatus>> {
        boxed(async move {
            let mut reg = self.registry();
            let names: Vec<String> = redis::cmd("ZRANGE")
                .arg(keys::NODES)
                .arg(0)
                .arg(-1)
                .query_async(&mut reg)
                .await
                .map_err(|e| redis_error(&e))?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let mut get = redis::cmd("MGET");
            for n in &names {
                get.arg(keys::node(n));
            }
            let all: Vec<Option<String>> = get
                .query_async(&mut reg)
                .await
                .map_err(|e| redis_error(&e))?;
            Ok(all
                .into_iter()
                .flatten()
                .filter_map(|j| serde_json::from_str(&j).ok())
                .collect())
        })
    }
}

impl RedisEngine {
    fn publish_presence<'a>(
        &'a self,
        channel: &'a str,
        kind: u8,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        boxed(async move {
            let mut payload = vec![kind];
            serde_json::to_writer(&mut payload, client).map_err(|e| Error::backend(e, false))?;
            let mut conn = self.conn(channel);
            redis::cmd(self.publish_command())
                .arg(keys::live(channel))
                .arg(payload)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| redis_error(&e))
        })
    }
}

impl PresenceStore for RedisEngine {
    fn add<'a>(
        &'a self,
        channel: &'a Arc<str>,
        client: Arc<ClientInfo>,
        ttl: Duration,
    ) -> EngineFuture<'a, ()> {
        boxed(async move {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(keys::PRESENCE_ADD));
            let json = serde_json::to_string(&*client).map_err(|e| Error::backend(e, false))?;
            let mut conn = self.conn(channel);
            let ttl = ttl_ms(ttl);
            script
                .key(keys::presence(channel))
                .key(keys::presence_expiry(channel))
                .arg(&client.client_id)
                .arg(json)
                .arg(0)
                .arg(ttl)
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            let mut reg = self.registry();
            redis::cmd("SADD")
                .arg(keys::node_presence(&self.node))
                .arg(format!("{channel}\0{}", client.client_id))
                .query_async::<()>(&mut reg)
                .await
                .map_err(|e| redis_error(&e))
        })
    }

    fn remove<'a>(&'a self, channel: &'a str, client_id: &'a str) -> EngineFuture<'a, ()> {
        boxed(async move {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(keys::PRESENCE_REMOVE));
            let mut conn = self.conn(channel);
            script
                .key(keys::presence(channel))
                .key(keys::presence_expiry(channel))
                .arg(client_id)
                .arg("")
                .arg(self.publish_command())
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            let mut reg = self.registry();
            redis::cmd("SREM")
                .arg(keys::node_presence(&self.node))
                .arg(format!("{channel}\0{client_id}"))
                .query_async::<()>(&mut reg)
                .await
                .map_err(|e| redis_error(&e))
        })
    }

    fn list<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<ClientInfo>> {
        boxed(async move {
            static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
            let script = SCRIPT.get_or_init(|| redis::Script::new(keys::PRESENCE_LIST));
            let mut conn = self.conn(channel);
            let all: Vec<Option<String>> = script
                .key(keys::presence(channel))
                .key(keys::presence_expiry(channel))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            let mut seen = HashSet::new();
            Ok(all
                .into_iter()
                .flatten()
                .filter_map(|j| serde_json::from_str::<ClientInfo>(&j).ok())
                .filter(|c| seen.insert(c.client_id.clone()))
                .collect())
        })
    }

    fn stats<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, PresenceStats> {
        boxed(async move {
            let all = self.list(channel).await?;
            let users: HashSet<&str> = all.iter().filter_map(|c| c.user_id.as_deref()).collect();
            Ok(PresenceStats {
                clients: all.len(),
                users: users.len(),
            })
        })
    }

    fn sweep(&self) -> EngineFuture<'_, ()> {
        // Entries expire in Redis; a dead node's are reaped with their leaves (`reaper`).
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // Every node, on every build, must pick the same shard for a channel.
        assert_eq!(fnv1a(b"a", b"b"), fnv1a(b"a", b"b"));
        assert_ne!(fnv1a(b"a", b"b"), fnv1a(b"a", b"c"));
        // FNV-1a 64 then a murmur3 finalizer, computed independently (Python).
        assert_eq!(fnv1a(b"redis://h:1/0", b"news"), 0xf877_b689_77e6_9cd6);
    }
}
