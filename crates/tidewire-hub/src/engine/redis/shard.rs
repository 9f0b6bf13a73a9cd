//! One Redis server of the engine: a command connection (reconnecting by itself), a
//! subscriber connection owned by one task, and a prober that keeps the shard's health.
//!
//! The subscriber task is the only place where a channel's live messages come in. It keeps,
//! per subscribed channel, the last offset and epoch it handed to the node, so that:
//! - a publication at the next offset is delivered;
//! - one at an offset already delivered is dropped (never two payloads for one offset);
//! - one past a gap (the connection was lost, or Redis dropped it for an output buffer
//!   overflow) is preceded by the missing ones, read from history; when history no longer
//!   has them, the node is told ([`BrokerEvents::channel_lost`]) and that channel's
//!   subscribers resume by themselves;
//! - a new epoch (Redis lost the channel's data) is a lost channel too.
//!
//! After its connection comes back, the task subscribes again to every channel and repairs
//! each from history the same way; a channel that has had no publication since it was
//! subscribed has no known position to repair from, so it is lost (its subscribers resume
//! from their own position, exactly).
//!
//! The prober publishes on this node's probe channel every second through the command
//! connection: the round trip is the shard's latency, a failure or no answer within
//! [`PROBE_TIMEOUT`] marks it down (`/healthz` answers 503 with the reason), and a probe
//! that reaches no subscriber, or that the subscriber task has not seen for
//! [`STALL_AFTER`], means the subscriber connection stalled silently: it is replaced.

use super::cluster::ClusterSource;
use super::keys::{self, Message};
use super::{history_call, redis_error, Counters, HistoryArgs};
use crate::engine::{BrokerEvents, ClientInfo, Error, Publication, ShardHealth};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Longest a probe may take before the shard is marked down.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the prober probes.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A subscriber connection that has seen no probe for this long, while probes are
/// published, is replaced.
pub(super) const STALL_AFTER: Duration = Duration::from_secs(5);
/// Longest a (re)subscribe may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a gap repair may take before the channel's subscribers are told to resume
/// (issue 16: within 1 s).
const REPAIR_WITHIN: Duration = Duration::from_millis(900);

/// What the node asks of the subscriber task.
#[derive(Debug)]
pub(super) enum Command {
    Subscribe(Arc<str>, oneshot::Sender<Result<(), Error>>),
    Unsubscribe(Arc<str>),
}

/// The health of a shard, kept by its prober and subscriber task.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) commands_up: AtomicBool,
    pub(super) subscriber_up: AtomicBool,
    latency_us: AtomicU64,
    pub(super) reconnects: AtomicU64,
    reason: Mutex<Option<String>>,
    /// When the subscriber task last saw a probe (ms since `born`).
    probe_seen_ms: AtomicU64,
    /// A probe reached no subscriber: the subscriber connection is gone.
    pub(super) probe_unheard: AtomicBool,
    /// Redis Cluster: the probe channels, one per master, that the prober found...
    pub(super) probe_targets: Mutex<Vec<String>>,
    /// ...and those the subscriber task listens on (the prober publishes on these).
    pub(super) probe_live: Mutex<Vec<String>>,
    born: OnceInstant,
    /// The address of the server in use (with Sentinel: the master it named last).
    master: Mutex<String>,
    /// Sentinel named a new master: the subscriber connection moves to it.
    master_changed: AtomicBool,
}

#[derive(Debug)]
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

impl State {
    pub(super) fn ms(&self) -> u64 {
        self.born.0.elapsed().as_millis() as u64
    }

    fn set_reason(&self, reason: Option<String>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }
}

/// A command connection: one server's (reconnecting by itself) or a cluster's (following
/// its slot map).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The command connection of a shard, replaced when Sentinel names a new master (or a
/// cluster's connection stalled).
pub(super) struct SharedConn(std::sync::RwLock<Conn>);

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedConn")
    }
}

impl SharedConn {
    /// The connection in force (a cheap clone: it multiplexes).
    pub(super) fn get(&self) -> Conn {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set(&self, conn: Conn) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = conn;
    }
}

/// Where a shard's server is: one address, or the master Redis Sentinel names.
pub(super) enum Source {
    Direct(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    Cluster(ClusterSource),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Direct(_) => "Direct",
            Source::Sentinel(_) => "Sentinel",
            Source::Cluster(_) => "Cluster",
        })
    }
}

impl Source {
    /// `redis://...`, or `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]`.
    fn parse(url: &str, ca_pem: Option<&[u8]>) -> Result<(Source, String), Error> {
        if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
            let (cluster, address) = ClusterSource::parse(url, ca_pem)?;
            return Ok((Source::Cluster(cluster), address));
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            let shown = crate::redact_url(url);
            let client = match ca_pem {
                Some(pem) if url.starts_with("rediss://") => {
                    let certs = redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.to_vec()),
                    };
                    redis::Client::build_with_tls(url, certs)
                }
                _ => redis::Client::open(url),
            }
            .map_err(|e| Error::backend(format!("engine URL {shown}: {e}"), false))?;
            let address = address_of(&client);
            return Ok((Source::Direct(client), address));
        };
        let shown = crate::redact_url(url);
        let bad = |why: &str| {
            Error::backend(
                format!(
                    "engine URL {shown}: {why} (expected redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB])"
                ),
                false,
            )
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
        let mut path = path.split('/');
        let master = path
            .next()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| bad("no master name"))?;
        let db: i64 = match path.next() {
            None | Some("") => 0,
            Some(d) => d.parse().map_err(|_| bad("the database is not a number"))?,
        };
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{h}"))
            .collect();
        if sentinels.is_empty() {
            return Err(bad("no sentinel address"));
        }
        let mut info = redis::RedisConnectionInfo::default().set_db(db);
        if let Some(auth) = auth {
            let (user, password) = auth.split_once(':').unwrap_or(("", auth));
            if !user.is_empty() {
                info = info.set_username(user);
            }
            if !password.is_empty() {
                info = info.set_password(password);
            }
        }
        let node =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        let client = redis::sentinel::SentinelClient::build(
            sentinels,
            master,
            Some(node),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| bad(&e.to_string()))?;
        let address = format!("redis+sentinel://{hosts}/{master}/{db}");
        Ok((Source::Sentinel(tokio::sync::Mutex::new(client)), address))
    }

    /// A client of the server to use now (for Sentinel: the master it names now).
    pub(super) async fn resolve(&self) -> Result<redis::Client, Error> {
        match self {
            Source::Direct(c) => Ok(c.clone()),
            Source::Cluster(_) => Err(Error::backend("a cluster has no single server", false)),
            Source::Sentinel(s) => {
                let ask = async { s.lock().await.async_get_client().await };
                match tokio::time::timeout(CALL_TIMEOUT, ask).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(Error::backend(format!("Sentinel: {e}"), true)),
                    Err(_) => Err(Error::backend("Sentinel: no answer in 2 s", true)),
                }
            }
        }
    }
}

/// One Redis server.
#[derive(Debug)]
pub(super) struct Shard {
    pub(super) address: String,
    pub(super) conn: Arc<SharedConn>,
    pub(super) source: Arc<Source>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) state: Arc<State>,
}

fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

impl Shard {
    /// Connects the command connection; the subscriber task and the prober start with
    /// the engine.
    pub(super) async fn connect(
        url: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<(Shard, mpsc::UnboundedReceiver<Command>), Error> {
        let (source, address) = Source::parse(url, ca_pem)?;
        let state = Arc::new(State::default());
        let conn = if let Source::Cluster(cluster) = &source {
            let (conn, pushes) = cluster.connect().await?;
            cluster.keep_first(pushes);
            Conn::Cluster(conn)
        } else {
            let client = source.resolve().await?;
            let conn = tokio::time::timeout(
                CALL_TIMEOUT * 2,
                client.get_connection_manager_with_config(manager_config()),
            )
            .await
            .map_err(|_| Error::backend(format!("{address}: no answer in 4 s"), true))?
            .map_err(|e| Error::backend(format!("{address}: {e}"), true))?;
            *state.master.lock().unwrap_or_else(|e| e.into_inner()) = address_of(&client);
            Conn::Single(conn)
        };
        let (tx, rx) = mpsc::unbounded_channel();
        state.commands_up.store(true, Ordering::Relaxed);
        Ok((
            Shard {
                address,
                conn: Arc::new(SharedConn(std::sync::RwLock::new(conn))),
                source: Arc::new(source),
                commands: tx,
                state,
            },
            rx,
        ))
    }

    pub(super) fn health(&self) -> ShardHealth {
        let s = &self.state;
        let commands = s.commands_up.load(Ordering::Relaxed);
        let subscriber = s.subscriber_up.load(Ordering::Relaxed);
        let reason = s.reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ShardHealth {
            address: self.address.clone(),
            up: commands && subscriber,
            reason: if commands && subscriber { None } else { reason },
            latency_us: s.latency_us.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// `host:port/db` of a client, without credentials.
fn address_of(client: &redis::Client) -> String {
    let info = client.get_connection_info();
    let db = info.redis_settings().db();
    format!("redis://{}/{db}", info.addr())
}

/// With Sentinel: every second, asks which server is the master; when it changed, the
/// command connection is replaced and the subscriber task told to reconnect (to it).
pub(super) async fn watch_master(
    source: Arc<Source>,
    conn: Arc<SharedConn>,
    state: std::sync::Weak<State>,
) {
    if !matches!(*source, Source::Sentinel(_)) {
        return;
    }
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let Ok(client) = source.resolve().await else {
            continue;
        };
        let now = address_of(&client);
        let before = state
            .master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if now == before {
            continue;
        }
        let made = tokio::time::timeout(
            CALL_TIMEOUT,
            client.get_connection_manager_with_config(manager_config()),
        )
        .await;
        if let Ok(Ok(c)) = made {
            tracing::warn!("engine: Sentinel names a new master: {now} (was {before})");
            conn.set(Conn::Single(c));
            *state.master.lock().unwrap_or_else(|e| e.into_inner()) = now;
            state.master_changed.store(true, Ordering::Relaxed);
        }
    }
}

/// Probes the shard every second until the engine is dropped: one server's own probe
/// channel, or on a cluster one per master ([`super::cluster::probe`]).
pub(super) async fn prober(
    shared: Arc<SharedConn>,
    source: Arc<Source>,
    state: std::sync::Weak<State>,
    node: String,
) {
    let cluster = matches!(*source, Source::Cluster(_));
    let probe_channel = keys::probe(&node);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        seq += 1;
        let start = Instant::now();
        let round = async {
            if cluster {
                return super::cluster::probe(&shared, &state, &node, seq).await;
            }
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(&probe_channel).arg(seq);
            let heard: u64 = publish
                .query_async(&mut shared.get())
                .await
                .map_err(|e| e.to_string())?;
            // Our own subscriber connection listens on the probe channel.
            state.probe_unheard.store(heard == 0, Ordering::Relaxed);
            Ok(())
        };
        let why = match tokio::time::timeout(PROBE_TIMEOUT, round).await {
            Ok(Ok(())) => {
                state
                    .latency_us
                    .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                if !state.commands_up.swap(true, Ordering::Relaxed) {
                    tracing::info!("engine: Redis answers again");
                }
                continue;
            }
            Ok(Err(e)) => format!("probe failed: {e}"),
            Err(_) => "no answer to a probe in 2 s".to_owned(),
        };
        if state.commands_up.swap(false, Ordering::Relaxed) {
            tracing::warn!("engine: Redis {why}");
        }
        state.set_reason(Some(why));
    }
}

/// Where a subscribed channel's stream is, as delivered to the node.
#[derive(Debug, Default)]
pub(super) struct Track {
    /// Unknown until the first publication since the subscribe.
    epoch: Option<Arc<str>>,
    offset: u64,
    /// A hash of the data delivered at `offset`: after a reconnect, the publication at
    /// that offset must still be the same one (a failover may have lost it and given its
    /// offset to another).
    last: u64,
    /// Redis Cluster: since when (ms, [`State::ms`]) the channel may have missed
    /// publications, until its subscription is confirmed again ([`super::cluster`]).
    pub(super) stale_since: Option<u64>,
}

/// FNV-1a of a publication's data.
fn data_hash(data: &[u8]) -> u64 {
    super::fnv1a_of(data)
}

/// The subscriber task of a shard: see the module's documentation.
pub(super) struct Subscriber {
    pub(super) source: Arc<Source>,
    pub(super) conn: Arc<SharedConn>,
    pub(super) state: Arc<State>,
    pub(super) events: Arc<dyn BrokerEvents>,
    pub(super) counters: Arc<Counters>,
    pub(super) probe_channel: String,
    pub(super) channels: HashMap<Arc<str>, Track>,
}

impl Subscriber {
    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        if matches!(*self.source, Source::Cluster(_)) {
            return self.run_cluster(commands).await;
        }
        let mut connected_before = false;
        let mut backoff = Duration::from_millis(50);
        loop {
            self.state.master_changed.store(false, Ordering::Relaxed);
            let client = match self.source.resolve().await {
                Ok(c) => c,
                Err(e) => {
                    self.down(format!("subscriber connection: {e}"));
                    if !self.wait_down(&mut commands, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let connect = tokio::time::timeout(CALL_TIMEOUT, client.get_async_pubsub());
            let pubsub = match connect.await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    self.down(format!("subscriber connection: {e}"));
                    if !self.wait_down(&mut commands, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(_) => {
                    self.down("subscriber connection: no answer in 2 s".into());
                    if !self.wait_down(&mut commands, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let mut names: Vec<String> = self.channels.keys().map(|c| keys::live(c)).collect();
            names.push(self.probe_channel.clone());
            match tokio::time::timeout(CALL_TIMEOUT * 2, sink.subscribe(&names)).await {
                Ok(Ok(())) => {}
                _ => {
                    self.down("subscribing again failed".into());
                    if !self.wait_down(&mut commands, backoff).await {
                        return;
                    }
                    continue;
                }
            }
            backoff = Duration::from_millis(50);
            self.state
                .probe_seen_ms
                .store(self.state.ms(), Ordering::Relaxed);
            self.state.probe_unheard.store(false, Ordering::Relaxed);
            self.state.subscriber_up.store(true, Ordering::Relaxed);
            if connected_before {
                self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    channels = self.channels.len(),
                    "engine: subscriber connection back; repairing channels from history"
                );
                let names: Vec<Arc<str>> = self.channels.keys().cloned().collect();
                for name in names {
                    self.repair(&name, None).await;
                }
            }
            connected_before = true;
            let mut tick = tokio::time::interval(PROBE_EVERY);
            let why = loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        None => return,
                        Some(Command::Subscribe(name, ack)) => {
                            if ack.is_closed() {
                                continue; // the node gave up waiting
                            }
                            let live = keys::live(&name);
                            match tokio::time::timeout(CALL_TIMEOUT, sink.subscribe(&live)).await {
                                Ok(Ok(())) => {
                                    self.channels.entry(name).or_default();
                                    let _ = ack.send(Ok(()));
                                }
                                Ok(Err(e)) => {
                                    let _ = ack.send(Err(redis_error(&e)));
                                    break format!("subscribe failed: {e}");
                                }
                                Err(_) => {
                                    let _ = ack.send(Err(Error::timeout("subscribe")));
                                    break "subscribe: no answer in 2 s".to_owned();
                                }
                            }
                        }
                        Some(Command::Unsubscribe(name)) => {
                            self.channels.remove(&name);
                            let live = keys::live(&name);
                            match tokio::time::timeout(CALL_TIMEOUT, sink.unsubscribe(&live)).await {
                                Ok(Ok(())) => {}
                                _ => break "unsubscribe failed".to_owned(),
                            }
                        }
                    },
                    message = stream.next() => match message {
                        Some(m) => {
                            let name = m.get_channel_name().to_owned();
                            self.message(&name, m.get_payload_bytes()).await;
                        }
                        None => break "subscriber connection lost".to_owned(),
                    },
                    _ = tick.tick() => {
                        let unseen = self.state.ms()
                            .saturating_sub(self.state.probe_seen_ms.load(Ordering::Relaxed));
                        let commands_up = self.state.commands_up.load(Ordering::Relaxed);
                        if commands_up && self.state.probe_unheard.load(Ordering::Relaxed) {
                            break "the subscriber connection no longer hears probes".to_owned();
                        }
                        if self.state.master_changed.load(Ordering::Relaxed) {
                            break "Sentinel named a new master".to_owned();
                        }
                        if commands_up && unseen > STALL_AFTER.as_millis() as u64 {
                            break format!("no probe heard for {} ms: stalled", unseen);
                        }
                    }
                }
            };
            tracing::warn!("engine: {why}; reconnecting");
            self.down(why);
        }
    }

    pub(super) fn down(&self, why: String) {
        self.state.subscriber_up.store(false, Ordering::Relaxed);
        self.state.set_reason(Some(why));
    }

    /// While disconnected: answers subscribes at once (temporarily unavailable), applies
    /// unsubscribes, for `pause`. False when the engine is gone.
    pub(super) async fn wait_down(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        pause: Duration,
    ) -> bool {
        let until = tokio::time::sleep(pause);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return true,
                command = commands.recv() => match command {
                    None => return false,
                    Some(Command::Subscribe(_, ack)) => {
                        let _ = ack.send(Err(Error::backend("Redis is unreachable", true)));
                    }
                    Some(Command::Unsubscribe(name)) => {
                        self.channels.remove(&name);
                    }
                }
            }
        }
    }

    pub(super) async fn message(&mut self, name: &str, payload: &[u8]) {
        if name == self.probe_channel {
            self.state
                .probe_seen_ms
                .store(self.state.ms(), Ordering::Relaxed);
            return;
        }
        let Some(channel) = keys::channel_of_live(name) else {
            return;
        };
        let Some((channel, _)) = self.channels.get_key_value(channel) else {
            return; // unsubscribed meanwhile
        };
        let channel = channel.clone();
        match Message::parse(payload) {
            Some(Message::Publication {
                offset,
                epoch,
                data,
            }) => self.publication(&channel, offset, epoch, data).await,
            Some(Message::Join(json)) => {
                if let Ok(c) = serde_json::from_slice::<ClientInfo>(&json) {
                    self.events.join(&channel, &c);
                }
            }
            Some(Message::Leave(json)) => {
                if let Ok(c) = serde_json::from_slice::<ClientInfo>(&json) {
                    self.events.leave(&channel, &c);
                }
            }
            None => tracing::debug!("engine: unknown message on {name}"),
        }
    }

    async fn publication(
        &mut self,
        channel: &Arc<str>,
        offset: u64,
        epoch: String,
        data: bytes::Bytes,
    ) {
        let Some(track) = self.channels.get(channel) else {
            return;
        };
        let (known, last) = (track.epoch.clone(), track.offset);
        let epoch: Arc<str> = match known {
            Some(e) if *e == *epoch => {
                if offset <= last {
                    return; // delivered already (by a repair)
                }
                if offset > last + 1 {
                    self.repair(channel, Some(offset)).await;
                    let Some(t) = self.channels.get(channel) else {
                        return;
                    };
                    if t.epoch.is_some() && offset <= t.offset {
                        return;
                    }
                }
                e
            }
            Some(_) => {
                // A new epoch: Redis lost this channel's data; its subscribers' positions
                // mean nothing in the new one.
                self.count_lost(channel);
                self.events.channel_lost(channel);
                Arc::from(epoch.as_str())
            }
            None => Arc::from(epoch.as_str()),
        };
        let Some(track) = self.channels.get_mut(channel) else {
            return;
        };
        track.epoch = Some(epoch);
        track.offset = offset;
        track.last = data_hash(&data);
        self.deliver(channel, offset, data);
    }

    fn deliver(&self, channel: &Arc<str>, offset: u64, data: bytes::Bytes) {
        let Some(epoch) = self.channels.get(channel).and_then(|t| t.epoch.clone()) else {
            return;
        };
        self.events.publication(
            channel,
            Publication {
                offset,
                epoch,
                data,
            },
        );
    }

    /// Delivers what `channel` missed after its tracked position, read from history (up to
    /// but not including `before`, when given). When history cannot fill the gap, or the
    /// position is unknown, the channel is lost: its subscribers resume by themselves.
    pub(super) async fn repair(&mut self, channel: &Arc<str>, before: Option<u64>) {
        let Some(track) = self.channels.get(channel) else {
            return;
        };
        let Some(epoch) = track.epoch.clone() else {
            self.lose(channel);
            return;
        };
        let (since, last) = (track.offset, track.last);
        // The command connection may still be coming back (Redis restarted, or loading its
        // data): try again until REPAIR_WITHIN, then tell the subscribers. The read starts
        // at the last publication delivered, to check that it is still the same one.
        let deadline = tokio::time::Instant::now() + REPAIR_WITHIN;
        let page = loop {
            let args = HistoryArgs::repair(since - 1, &epoch);
            let mut conn = self.conn.get();
            let read = history_call(&mut conn, channel, args);
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(page)) if page.complete => break page,
                Ok(Ok(page)) if page.position.epoch == *epoch && page.position.offset < since => {
                    // Redis went back in time (a restart that lost its last writes, a
                    // failover to a replica that had not got them): publications this node
                    // delivered are gone, and their offsets would be given again to other
                    // payloads. The channel takes a new epoch instead.
                    self.fence(channel, &epoch, since).await;
                    self.lose(channel);
                    return;
                }
                Ok(Ok(_)) | Err(_) => {
                    self.lose(channel);
                    return;
                }
                Ok(Err(e)) => {
                    if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                        tracing::warn!("engine: repair from history failed: {e}");
                        self.lose(channel);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut publications = page.publications.into_iter();
        match publications.next() {
            Some(p) if p.offset == since && data_hash(&p.data) == last => {}
            _ => {
                // The publication delivered at `since` is gone or another one: Redis lost
                // writes and gave their offsets again. A new epoch, so that no client
                // takes the new ones for the old.
                self.fence(channel, &epoch, u64::MAX).await;
                self.lose(channel);
                return;
            }
        }
        let mut filled = false;
        for p in publications {
            if before.is_some_and(|b| p.offset >= b) {
                break;
            }
            filled = true;
            if let Some(t) = self.channels.get_mut(channel) {
                t.offset = p.offset;
                t.last = data_hash(&p.data);
            }
            self.events.publication(channel, p);
        }
        if filled {
            self.counters.repairs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Gives `channel` a new epoch (its keys are dropped; the next use makes them again)
    /// if it is still in `epoch` below `delivered`.
    async fn fence(&mut self, channel: &Arc<str>, epoch: &str, delivered: u64) {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(keys::FENCE));
        let mut call = script.key(keys::meta(channel));
        call.key(keys::stream(channel)).arg(epoch).arg(delivered);
        let mut conn = self.conn.get();
        let fenced = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<u8>(&mut conn));
        match fenced.await {
            Ok(Ok(1)) => tracing::warn!(
                channel = crate::log_text::peer(channel).to_string(),
                "engine: Redis lost publications already delivered (offset {delivered}); \
                 the channel starts a new epoch"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("engine: fencing a rolled-back channel failed: {e}"),
            Err(_) => tracing::warn!("engine: fencing a rolled-back channel took over 2 s"),
        }
    }

    /// Counts a lost channel (`tidewire_engine_channels_lost_total`): its subscribers are
    /// told to resume. The hub's own channels (`$...`) have none.
    fn count_lost(&self, channel: &str) {
        if !crate::node::is_internal(channel) {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lose(&mut self, channel: &Arc<str>) {
        self.count_lost(channel);
        if let Some(t) = self.channels.get_mut(channel) {
            t.epoch = None;
            t.offset = 0;
        }
        self.events.channel_lost(channel);
    }
}
