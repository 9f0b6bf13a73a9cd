//! The NATS engine: several `tidewire serve` nodes share channels through a NATS server
//! with JetStream ([`NatsEngine`], a [`Broker`] and a [`PresenceStore`]).
//!
//! # History and offsets: one JetStream stream
//!
//! Stream `TIDEWIRE` (file storage) holds subjects `tw.h.<token>`, one per channel; the
//! token is the channel name in base64url without padding (channel names may hold any
//! character, subjects may not). Every stored message has headers `Tw-Kind` (`p` a
//! publication, `m` a marker: a position without data), `Tw-Offset`, `Tw-Epoch` and
//! `Tw-Prev`, the stream sequence of the channel's previous message (0 for none).
//!
//! `publish` reads the subject's last message (`STREAM.MSG.GET` last-by-subject, answered by
//! the stream's leader, so it is never stale), then stores offset + 1 with the same epoch
//! (offset 1 and a new random epoch when the subject has no message) with
//! `Nats-Expected-Last-Subject-Sequence` set to the sequence it read: compare-and-set. When
//! another node appended meanwhile, the server refuses it (`wrong last sequence`, error
//! 10071) and the publish reads again and retries (at most 64 times, with a short
//! jittered pause after the second conflict). Every publication of a channel thus has the
//! next offset, none twice, whichever node published it.
//!
//! **nats-server 2.9.10, as measured here** (`tests/engine_nats.rs`, `cas_on_this_server`):
//! an expected last subject sequence of `0` is honoured (it means "the subject has no
//! message": refused once one is stored), so creating a channel's stream is a
//! compare-and-set too; an expected sequence on an empty subject other than 0 is refused;
//! and the `Nats-Msg-Id` duplicate check comes *before* the expected-sequence check: a
//! retry with a msg id already stored gets the first one's ack (`duplicate: true`, its
//! sequence) even though its expected sequence is stale, while a message refused by the
//! compare-and-set does not record its msg id.
//!
//! That last point is what idempotent publishes use: with an idempotency key, the message
//! carries `Nats-Msg-Id: <channel token>:<key token>`, and a retry whose first attempt was
//! stored gets the first one's sequence back, whose message gives the position returned.
//! The key is remembered for the stream's duplicate window ([`NatsOptions::duplicate_window`],
//! 5 minutes by default), not for each namespace's history TTL.
//!
//! History is read from the last message back: up to 64 publications by walking the
//! `Tw-Prev` links, one request each; more by a binary search over stream sequences for the
//! first one wanted (`next_by_subj` gets, about log2 of the stream's length) and then a
//! short-lived pull consumer (filtered on the channel's subject, starting at that sequence,
//! no acks) that sends them in one batch. Either way history ends at a marker, at a message
//! that is gone (aged out or purged), at one older than the call's `history_ttl`, or when
//! `history_size` publications were read: the stream keeps up to [`NatsOptions::max_per_channel`] messages per channel for
//! [`NatsOptions::max_age`], and each call applies its namespace's `StreamOptions` itself.
//! A `Position` or `Since` read of a channel without messages stores a marker at offset 0
//! with a new epoch (by compare-and-set, so all nodes agree on it); `Newest` creates
//! nothing. `remove_history` stores a marker at the current offset and purges the subject
//! down to it. A channel keeps its epoch and offset until its last message ages out of the
//! stream (`max_age`, which should be at least the longest history TTL); after that, or when
//! the server's store is lost, the next use starts a new epoch.
//!
//! # Live delivery: core NATS, after the store
//!
//! Subscribers are not fed from the stored subjects: a publish refused by the
//! compare-and-set would still reach plain subscribers of its subject. After the store is
//! acknowledged, the publishing node sends the publication on `tw.live.<token>` (core NATS)
//! with its offset and epoch in headers; joins and leaves go on the same subject.
//!
//! `subscribe` subscribes to the live subject, then reads the channel's position; that read
//! is a request on the same connection, which the server handles after the SUBSCRIBE, so the
//! subscription is in effect when `subscribe` returns. Each subscribed channel has a task
//! that remembers the last offset and epoch handed to the node: the next offset is
//! delivered, an offset already delivered is dropped, a publication ahead of a gap is held
//! for 250 ms (publications of different nodes may cross on the way) and then the gap is
//! filled from the stream; if the stream no longer has it, or the read fails, the node gets
//! `channel_lost`. A publication with another epoch is `channel_lost` too. When the
//! connection comes back after a loss, every subscribed channel reads what it missed from
//! the stream the same way (the client library subscribes again by itself), and the streams
//! are created again if the server lost them.
//!
//! A node that dies between the store and the live send leaves a gap that the next live
//! publication on the channel reveals and repairs.
//!
//! # Presence and the node registry
//!
//! Presence entries are messages on `tw.p.<channel>.<instance>.<client>` of stream
//! `TIDEWIRE_PRESENCE` (memory storage, one message per subject, 15 minutes `max_age`):
//! JSON with the channel, the node, the `ClientInfo` and when the entry expires (its TTL,
//! applied by `list`). `remove` purges the subject; `list` asks the stream for the subjects
//! of the channel and reads their last messages.
//!
//! Each engine is an *instance*: its node name plus a random suffix. Every 2 s it writes its
//! registry entry, `tw.n.live.<instance>` in stream `TIDEWIRE_NODES` (memory storage, one
//! message per subject, 1 hour `max_age`), with the last [`Broker::announce`]d status.
//! Every second each node reads the registry and remembers when each other instance's entry
//! last changed (its stream sequence: no clocks compared); one unchanged for 5 s is dead. A
//! surviving node claims it by storing the first message of `tw.n.reap.<instance>` (a
//! compare-and-set on "no message yet": exactly one node's claim is stored), then sends a
//! leave for each of the dead instance's presence entries, purges them, and purges its
//! registry entry. A dead node's clients thus leave within about 7 s. A node that was only
//! cut off for longer than that comes back with its presence reaped; its refreshes add its
//! clients again (without join events).
//!
//! (The registry is a plain stream rather than a KV bucket: async-nats 0.46 could not read
//! nats-server 2.9.10's answer to its KV bucket creation.)
//!
//! # Health and bounds
//!
//! A probe (a last-message read on the history stream) runs every second with a 2 s timeout; `health()`
//! returns its result, latency and the count of reconnects without waiting. Every engine
//! call is bounded by a 4 s timeout. Nothing grows without bound on the server: history
//! subjects keep at most `max_per_channel` messages for `max_age`, presence entries and
//! registry entries and reaping claims age out of their streams, and the history stream
//! holds at most [`NatsOptions::max_bytes`]. Unlike the memory broker, a channel's position is
//! kept by its last message, so it lasts `max_age` after the channel's last publication
//! whether or not nodes are subscribed.

mod codec;
mod history;
mod live;
mod presence;

use super::{
    Broker, BrokerEvents, ClientInfo, EngineFuture, EngineHealth, Error, HistoryPage, HistoryQuery,
    NodeStatus, PresenceStats, PresenceStore, ShardHealth, StreamOptions, StreamPosition,
};
use crate::lock;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Event};
use bytes::Bytes;
use codec::{temporary, HISTORY_PREFIX, HISTORY_STREAM, NODES_PREFIX, NODES_STREAM};
use codec::{PRESENCE_PREFIX, PRESENCE_STREAM};
use live::ChannelTask;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest an engine call takes before it fails with [`Error::is_timeout`].
const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// One request to the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Health probes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the engine sets up its JetStream streams.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// How long the history stream keeps a message: the longest history TTL of any
    /// namespace, at least. A channel keeps its position (epoch and offset) for this long
    /// after its last publication. Default 24 hours.
    pub max_age: Duration,
    /// Messages the history stream keeps per channel: the largest `history_size` of any
    /// namespace, at least. Default 10,000 (the embedded `board` namespace's).
    pub max_per_channel: i64,
    /// How long an idempotency key is remembered (the stream's duplicate window). Default 5
    /// minutes.
    pub duplicate_window: Duration,
    /// Bytes the history stream holds at most, all channels together; past it the oldest
    /// messages go first (a channel that loses its last message gets a new epoch on its
    /// next use, as after `max_age`). Default 1 GiB.
    pub max_bytes: i64,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            max_age: Duration::from_secs(24 * 3600),
            max_per_channel: 10_000,
            duplicate_window: Duration::from_secs(300),
            max_bytes: 1 << 30,
        }
    }
}

/// A [`Broker`] and [`PresenceStore`] over NATS JetStream, shared by the nodes of a cluster
/// (see the module's documentation).
pub struct NatsEngine {
    inner: Arc<Inner>,
    /// The background tasks, stopped when the engine is dropped.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl fmt::Debug for NatsEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsEngine")
            .field("node", &self.inner.node)
            .field("address", &self.inner.address)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    client: Client,
    js: jetstream::Context,
    node: String,
    /// This engine's token in the registry and in presence subjects: the node's name and a
    /// random suffix (a node started again under the same name is another instance).
    instance: String,
    address: String,
    options: NatsOptions,
    history: stream::Stream,
    presence: stream::Stream,
    nodes: stream::Stream,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    channels: Mutex<HashMap<Arc<str>, ChannelTask>>,
    health: Mutex<ShardHealth>,
    /// The last announced status and TTL.
    status: Mutex<(Option<NodeStatus>, Duration)>,
    /// Repairs, lost channels and reaped entries, for `/metrics`.
    pub(super) counters: Arc<super::EngineCounters>,
}

impl NatsEngine {
    /// Connects to `url` (`nats://HOST:PORT`, optionally `nats://user:pass@HOST:PORT`) as
    /// node `node` (unique in the cluster), with [`NatsOptions::default`].
    pub async fn connect(url: &str, node: &str) -> Result<Arc<NatsEngine>, Error> {
        Self::connect_with(url, node, NatsOptions::default()).await
    }

    /// [`NatsEngine::connect`] with `options`.
    pub async fn connect_with(
        url: &str,
        node: &str,
        options: NatsOptions,
    ) -> Result<Arc<NatsEngine>, Error> {
        if node.is_empty() || node.len() > 255 {
            return Err(Error::backend("node name: 1 to 255 bytes", false));
        }
        if options.max_per_channel < 1
            || options.max_bytes < 1
            || options.duplicate_window > options.max_age
        {
            return Err(Error::backend(
                "nats options: max_per_channel and max_bytes must be at least 1, \
                 duplicate_window at most max_age",
                false,
            ));
        }
        let server: async_nats::ServerAddr = url
            .parse()
            .map_err(|e| Error::backend(format!("NATS url {:?}: {e}", redact(url)), false))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let connecting = async_nats::ConnectOptions::new()
            .name(format!("tidewire {node}"))
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None::<usize>)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(server);
        let client = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| Error::timeout("connect"))?
            .map_err(|e| Error::backend(format!("NATS {}: {e}", redact(url)), true))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let (history, presence, nodes) = ensure_all(&js, &options).await?;
        let instance = codec::token(&format!("{node}#{}", codec::new_epoch()));
        let inner = Arc::new(Inner {
            client,
            js,
            node: node.to_owned(),
            instance,
            address: redact(url),
            options,
            history,
            presence,
            nodes,
            events: OnceLock::new(),
            channels: Mutex::new(HashMap::new()),
            health: Mutex::new(ShardHealth {
                address: redact(url),
                up: true,
                reason: None,
                latency_us: 0,
                reconnects: 0,
            }),
            status: Mutex::new((None, Duration::ZERO)),
            counters: Arc::default(),
        });
        inner.heartbeat().await?;
        let tasks = vec![
            spawn(connection_events(inner.clone(), rx)),
            spawn(probe(inner.clone())),
            spawn(heartbeats(inner.clone())),
            spawn(reaper(inner.clone())),
        ];
        Ok(Arc::new(NatsEngine { inner, tasks }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }
}

fn spawn(f: impl Future<Output = ()> + Send + 'static) -> tokio::task::AbortHandle {
    tokio::spawn(f).abort_handle()
}

impl Drop for NatsEngine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        lock(&self.inner.channels).clear();
    }
}

/// `url` without its credentials.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        (None, Some(at)) => url[at + 1..].to_owned(),
        _ => url.to_owned(),
    }
}

/// Creates the streams and buckets that do not exist (at connect, and when the server lost
/// them).
async fn ensure_all(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<(stream::Stream, stream::Stream, stream::Stream), Error> {
    let config = stream::Config {
        name: HISTORY_STREAM.into(),
        subjects: vec![format!("{HISTORY_PREFIX}>")],
        storage: stream::StorageType::File,
        max_age: options.max_age,
        max_messages_per_subject: options.max_per_channel,
        max_bytes: options.max_bytes,
        duplicate_window: options.duplicate_window,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    };
    let history = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| temporary(format!("stream {HISTORY_STREAM}: {e}")))?;
    let current = &history.cached_info().config;
    if (
        current.max_age,
        current.max_messages_per_subject,
        current.duplicate_window,
    ) != (
        config.max_age,
        config.max_messages_per_subject,
        config.duplicate_window,
    ) {
        // The options changed since the stream was made (all nodes should give the same).
        tracing::info!("nats: updating stream {HISTORY_STREAM} to this node's options");
        if let Err(e) = js.update_stream(&config).await {
            tracing::warn!("nats: stream {HISTORY_STREAM} keeps its options: {e}");
        }
    }
    let presence = js
        .get_or_create_stream(stream::Config {
            name: PRESENCE_STREAM.into(),
            subjects: vec![format!("{PRESENCE_PREFIX}>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(15 * 60),
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| temporary(format!("stream {PRESENCE_STREAM}: {e}")))?;
    let nodes = js
        .get_or_create_stream(stream::Config {
            name: NODES_STREAM.into(),
            subjects: vec![format!("{NODES_PREFIX}>")],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(3600),
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| temporary(format!("stream {NODES_STREAM}: {e}")))?;
    Ok((history, presence, nodes))
}

impl Inner {
    /// Creates again what the server lost.
    pub(super) async fn ensure(&self) -> Result<(), Error> {
        ensure_all(&self.js, &self.options).await.map(|_| ())
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<Arc<str>, ChannelTask>> {
        lock(&self.channels)
    }

    fn set_health(&self, f: impl FnOnce(&mut ShardHealth)) {
        f(&mut lock(&self.health));
    }
}

/// Follows the connection: health, and on a reconnect, the streams and every subscribed
/// channel's resync.
async fn connection_events(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut lost = false;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Disconnected => {
                lost = true;
                inner.set_health(|h| {
                    h.up = false;
                    h.reason = Some("disconnected".into());
                });
            }
            Event::Connected if lost => {
                lost = false;
                inner.set_health(|h| h.reconnects += 1);
                if let Err(e) = inner.ensure().await {
                    tracing::warn!("nats: streams after reconnect: {e}");
                }
                for task in inner.channels().values() {
                    task.resync();
                }
            }
            Event::Connected => {}
            other => tracing::debug!("nats: {other}"),
        }
    }
}

/// The health probe, every second, 2 s at most: a read of the history stream's last
/// message on a subject that no channel uses (answered "no message" by the stream's leader).
/// (JetStream's account info would be the usual probe, but async-nats 0.46 cannot read
/// nats-server 2.9.10's answer to it.)
async fn probe(inner: Arc<Inner>) {
    let subject = format!("{HISTORY_PREFIX}_probe");
    loop {
        let start = tokio::time::Instant::now();
        // `_probe` is no channel's token: a token that decodes, decodes to bytes that are
        // not UTF-8 (its first byte would be 0xFC or more).
        let r = tokio::time::timeout(PROBE_TIMEOUT, inner.last(&subject)).await;
        let latency = start.elapsed();
        let state = inner.client.connection_state();
        inner.set_health(|h| match r {
            Ok(Ok(_)) => {
                h.up = true;
                h.reason = None;
                h.latency_us = latency.as_micros() as u64;
            }
            Ok(Err(e)) => {
                h.up = false;
                h.reason = Some(format!("{e} ({state})"));
            }
            Err(_) => {
                h.up = false;
                h.reason = Some(format!("no answer in {PROBE_TIMEOUT:?} ({state})"));
            }
        });
        tokio::time::sleep(PROBE_EVERY.saturating_sub(latency)).await;
    }
}

async fn heartbeats(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(presence::HEARTBEAT).await;
        if let Err(e) = bounded("heartbeat", inner.heartbeat()).await {
            tracing::debug!("nats: heartbeat: {e}");
        }
    }
}

async fn reaper(inner: Arc<Inner>) {
    let mut seen = presence::Seen::default();
    loop {
        tokio::time::sleep(presence::REAP_EVERY).await;
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), inner.reap_round(&mut seen))
            .await
            .unwrap_or_else(|_| Err(Error::timeout("reap")))
        {
            tracing::debug!("nats: reaper: {e}");
        }
    }
}

/// `f`, failing with a timeout after [`CALL_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(Error::timeout(what)))
}

impl Broker for NatsEngine {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        let counting = super::CountingEvents {
            inner: events,
            counters: self.inner.counters.clone(),
        };
        let _ = self.inner.events.set(Arc::new(counting));
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        _options: StreamOptions,
        idempotency_key: Option<&'a str>,
    ) -> EngineFuture<'a, StreamPosition> {
        Box::pin(bounded(
            "publish",
            self.inner.publish(channel, data, idempotency_key),
        ))
    }

    fn publish_join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        Box::pin(bounded(
            "join",
            self.inner.send_presence_event(channel, client, true),
        ))
    }

    fn publish_leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        Box::pin(bounded(
            "leave",
            self.inner.send_presence_event(channel, client, false),
        ))
    }

    fn subscribe<'a>(&'a self, channel: &'a Arc<str>) -> EngineFuture<'a, ()> {
        Box::pin(bounded("subscribe", async move {
            codec::check_channel(channel)?;
            self.inner.subscribe_live(channel).await
        }))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.inner.unsubscribe_live(channel);
        Box::pin(std::future::ready(Ok(())))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> EngineFuture<'a, HistoryPage> {
        Box::pin(bounded(
            "history",
            self.inner.history(channel, query, options),
        ))
    }

    fn remove_history<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(bounded(
            "remove_history",
            self.inner.remove_history(channel),
        ))
    }

    fn sweep(&self) -> EngineFuture<'_, ()> {
        // The server ages history out (`max_age`, `max_per_channel`).
        Box::pin(std::future::ready(Ok(())))
    }

    fn stream_count(&self) -> Option<usize> {
        None
    }

    fn health(&self) -> EngineHealth {
        let (repairs, lost, reaped) = self.inner.counters.read();
        EngineHealth {
            engine: "nats",
            shards: vec![lock(&self.inner.health).clone()],
            repairs,
            lost,
            reaped,
        }
    }

    fn announce<'a>(&'a self, node: &'a NodeStatus, ttl: Duration) -> EngineFuture<'a, bool> {
        *lock(&self.inner.status) = (Some(node.clone()), ttl);
        // (This engine's refreshes add its presence again after a reap, without joins.)
        Box::pin(bounded("announce", async move {
            self.inner.heartbeat().await.map(|()| false)
        }))
    }

    fn nodes(&self) -> EngineFuture<'_, Vec<NodeStatus>> {
        Box::pin(bounded("nodes", self.inner.nodes_list()))
    }
}

impl PresenceStore for NatsEngine {
    fn add<'a>(
        &'a self,
        channel: &'a Arc<str>,
        client: Arc<ClientInfo>,
        ttl: Duration,
    ) -> EngineFuture<'a, ()> {
        Box::pin(bounded("presence", async move {
            self.inner.presence_add(channel, &client, ttl).await
        }))
    }

    fn remove<'a>(&'a self, channel: &'a str, client_id: &'a str) -> EngineFuture<'a, ()> {
        Box::pin(bounded(
            "presence",
            self.inner.presence_remove(channel, client_id),
        ))
    }

    fn list<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<ClientInfo>> {
        Box::pin(bounded("presence", self.inner.presence_list(channel)))
    }

    fn stats<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, PresenceStats> {
        Box::pin(bounded("presence", self.inner.presence_stats(channel)))
    }

    fn sweep(&self) -> EngineFuture<'_, ()> {
        // Entries past their TTL are not listed; the stream ages them out.
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("nats://u:p@h:4222"), "nats://h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("u:p@h:4222"), "h:4222");
    }

    #[tokio::test]
    async fn bad_input_is_an_error() {
        let e = NatsEngine::connect("nats://127.0.0.1:1", "")
            .await
            .unwrap_err();
        assert!(!e.is_temporary());
        let e = NatsEngine::connect("nats://[::1", "n").await.unwrap_err();
        assert!(e.is_backend());
    }
}
