//! Redis Cluster (`redis+cluster://`): the engine's keys and live delivery spread over the
//! cluster's masters by hash slot.
//!
//! Every key of a channel carries the channel's name as its hash tag, and so does its live
//! channel: the publish script and every read touch one slot, and live delivery uses
//! sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7), which stays on the master that owns
//! the slot instead of being copied to every node of the cluster as `PUBLISH` is. The node
//! registry's keys share one tag (`{nodes}`).
//!
//! One cluster connection (the `redis` crate's, which follows the slot map, RESP3 with
//! pushes) carries commands and subscriptions. What it does by itself, and what the
//! subscriber task adds:
//! - after a master's connection drops (a `Disconnection` push), or when a slot moves to
//!   another master (Redis sends `sunsubscribe` for its channels), the connection
//!   subscribes again on the slot's owner. Publications may have been missed meanwhile,
//!   so the task marks the channels *stale*; when the confirmation of a stale channel's
//!   subscription arrives, the channel is repaired from history (as after a standalone
//!   reconnect, [`super::shard`]). A channel still stale after [`RESUBSCRIBE_AFTER`] is
//!   subscribed again by the task itself.
//! - liveness: the prober publishes, every second, on one probe channel per master (a
//!   name whose slot that master owns, from `CLUSTER SLOTS`), and the task listens on them
//!   all; a master's probe that fails marks the engine down with the reason, and one
//!   unheard for [`STALL_AFTER`] makes the task replace the whole connection and repair
//!   every channel.

use super::keys;
use super::shard::{
    Command, Conn, SharedConn, Source, State, Subscriber, CALL_TIMEOUT, STALL_AFTER,
};
use super::{redis_error, Error};
use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A stale channel (see the module's documentation) is subscribed again by the subscriber
/// task after this long without a confirmation.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// How many subscriptions are sent at once when a connection is new.
const SUBSCRIBE_AT_ONCE: usize = 128;

/// The hash slot of `key` (CRC16/XMODEM of its hash tag, or of the key without one,
/// modulo 16384), as Redis Cluster computes it.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A probe channel of node `node` in the slot range `start..=end`.
fn probe_in(node: &str, start: u16, end: u16) -> Option<String> {
    (0..200_000u32)
        .map(|k| format!("tw:probe:{{{k}}}:{node}"))
        .find(|name| (start..=end).contains(&slot(name.as_bytes())))
}

/// Where a cluster is: its seed nodes, and how to connect.
pub(super) struct ClusterSource {
    nodes: Vec<String>,
    ca_pem: Option<Vec<u8>>,
    /// The pushes of the connection made at start, until the subscriber task takes them.
    first: Mutex<Option<mpsc::UnboundedReceiver<PushInfo>>>,
}

impl ClusterSource {
    /// `redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]` (`rediss+cluster://` for
    /// TLS); the source and the address shown for it.
    pub(super) fn parse(url: &str, ca_pem: Option<&[u8]>) -> Result<(Self, String), Error> {
        let shown = crate::redact_url(url);
        let (tls, rest) = match url.split_once("://") {
            Some(("redis+cluster", r)) => (false, r),
            Some(("rediss+cluster", r)) => (true, r),
            _ => return Err(Error::backend(format!("{shown}: not a cluster URL"), false)),
        };
        let bad = |why: &str| {
            Error::backend(
                format!(
                    "engine URL {shown}: {why} (expected redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...])"
                ),
                false,
            )
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        if hosts.contains('/') {
            return Err(bad("a cluster has only database 0"));
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| match auth {
                Some(a) => format!("{scheme}://{a}@{h}"),
                None => format!("{scheme}://{h}"),
            })
            .collect();
        if nodes.is_empty() {
            return Err(bad("no node address"));
        }
        for n in &nodes {
            redis::Client::open(n.as_str()).map_err(|e| bad(&e.to_string()))?;
        }
        let source = ClusterSource {
            nodes,
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            first: Mutex::new(None),
        };
        Ok((source, format!("{scheme}+cluster://{hosts}")))
    }

    /// A new connection to the cluster and its pushes.
    pub(super) async fn connect(
        &self,
    ) -> Result<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>), Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(CALL_TIMEOUT)
            .response_timeout(CALL_TIMEOUT)
            .retries(2);
        if let Some(pem) = &self.ca_pem {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let client = builder
            .build()
            .map_err(|e| Error::backend(format!("Redis Cluster: {e}"), false))?;
        let conn = tokio::time::timeout(CALL_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| Error::backend("Redis Cluster: no answer in 4 s", true))?
            .map_err(|e| Error::backend(format!("Redis Cluster: {e}"), true))?;
        Ok((conn, rx))
    }

    /// Keeps the pushes of the connection made at start for the subscriber task.
    pub(super) fn keep_first(&self, pushes: mpsc::UnboundedReceiver<PushInfo>) {
        *crate::lock(&self.first) = Some(pushes);
    }

    fn take_first(&self) -> Option<mpsc::UnboundedReceiver<PushInfo>> {
        crate::lock(&self.first).take()
    }
}

/// One probe round: the masters' probe channels from `CLUSTER SLOTS` (for the subscriber
/// task to listen on), and a publication on each that the task listens on already.
/// Whether every master answered and every probe was heard.
pub(super) async fn probe(
    shared: &SharedConn,
    state: &State,
    node: &str,
    seq: u64,
) -> Result<(), String> {
    let mut conn = shared.get();
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("CLUSTER SLOTS failed: {e}"))?;
    let mut targets = Vec::new();
    for range in as_array(&slots) {
        let r = as_array(range);
        let (Some(start), Some(end), Some(master)) = (r.first(), r.get(1), r.get(2)) else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            redis::from_redis_value_ref::<u16>(start),
            redis::from_redis_value_ref::<u16>(end),
        ) else {
            continue;
        };
        let m = as_array(master);
        let host: String = m
            .first()
            .and_then(|h| redis::from_redis_value_ref(h).ok())
            .unwrap_or_default();
        let port: u16 = m
            .get(1)
            .and_then(|p| redis::from_redis_value_ref(p).ok())
            .unwrap_or_default();
        if let Some(name) = probe_in(node, start, end) {
            targets.push((format!("{host}:{port}"), name));
        }
    }
    *crate::lock(&state.probe_targets) = targets.iter().map(|(_, n)| n.clone()).collect();
    let live = crate::lock(&state.probe_live).clone();
    let mut unheard = false;
    for (master, name) in targets.iter().filter(|(_, n)| live.contains(n)) {
        let heard: u64 = redis::cmd("SPUBLISH")
            .arg(name)
            .arg(seq)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("master {master}: {e}"))?;
        unheard |= heard == 0;
    }
    state.probe_unheard.store(unheard, Ordering::Relaxed);
    Ok(())
}

fn as_array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// The first element of a push (the channel) and the second (the payload), as bytes.
fn push_parts(push: &PushInfo) -> (Option<&[u8]>, Option<&[u8]>) {
    fn bytes(v: Option<&Value>) -> Option<&[u8]> {
        match v {
            Some(Value::BulkString(b)) => Some(b.as_slice()),
            Some(Value::SimpleString(s)) => Some(s.as_bytes()),
            _ => None,
        }
    }
    (bytes(push.data.first()), bytes(push.data.get(1)))
}

impl Subscriber {
    /// The subscriber task on a cluster (see the module's documentation).
    pub(super) async fn run_cluster(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let source = self.source.clone();
        let Source::Cluster(source) = &*source else {
            return;
        };
        let mut backoff = Duration::from_millis(50);
        let mut connected_before = false;
        loop {
            let pushes = match source.take_first() {
                Some(p) => Ok(p),
                None => source.connect().await.map(|(c, p)| {
                    self.conn.set(Conn::Cluster(c));
                    p
                }),
            };
            let mut pushes = match pushes {
                Ok(p) => p,
                Err(e) => {
                    self.down(format!("cluster connection: {e}"));
                    if !self.wait_down(&mut commands, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Conn::Cluster(mut conn) = self.conn.get() else {
                return;
            };
            let mut probes: HashMap<String, u64> = HashMap::new();
            crate::lock(&self.state.probe_live).clear();
            if connected_before {
                self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    channels = self.channels.len(),
                    "engine: cluster connection replaced; subscribing again and repairing"
                );
                let now = self.state.ms();
                for t in self.channels.values_mut() {
                    t.stale_since = Some(now);
                }
                let names: Vec<Arc<str>> = self.channels.keys().cloned().collect();
                if let Err(why) = subscribe_all(&conn, names).await {
                    self.down(why);
                    if !self.wait_down(&mut commands, backoff).await {
                        return;
                    }
                    continue;
                }
            }
            connected_before = true;
            backoff = Duration::from_millis(50);
            self.state.subscriber_up.store(true, Ordering::Relaxed);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let why = loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        None => return,
                        Some(Command::Subscribe(name, ack)) => {
                            if ack.is_closed() {
                                continue;
                            }
                            let live = keys::live(&name);
                            match tokio::time::timeout(CALL_TIMEOUT, conn.ssubscribe(&live)).await {
                                Ok(Ok(())) => {
                                    self.channels.entry(name).or_default();
                                    let _ = ack.send(Ok(()));
                                }
                                // One master may be failing over: the subscribe fails
                                // (retryable), the connection stays.
                                Ok(Err(e)) => {
                                    let _ = ack.send(Err(redis_error(&e)));
                                }
                                Err(_) => {
                                    let _ = ack.send(Err(Error::timeout("subscribe")));
                                }
                            }
                        }
                        Some(Command::Unsubscribe(name)) => {
                            self.channels.remove(&name);
                            let live = keys::live(&name);
                            let _ = tokio::time::timeout(CALL_TIMEOUT, conn.sunsubscribe(&live)).await;
                        }
                    },
                    push = pushes.recv() => match push {
                        Some(p) => self.push(p, &mut probes).await,
                        None => break "cluster connection closed".to_owned(),
                    },
                    _ = tick.tick() => {
                        if let Some(why) = self.cluster_tick(&conn, &mut probes).await {
                            break why;
                        }
                    }
                }
            };
            tracing::warn!("engine: {why}; reconnecting to the cluster");
            self.down(why);
            // A new connection (the old one is dropped with its last clone).
            if let Ok((c, p)) = source.connect().await {
                self.conn.set(Conn::Cluster(c));
                source.keep_first(p);
            }
        }
    }

    async fn push(&mut self, push: PushInfo, probes: &mut HashMap<String, u64>) {
        let (channel, payload) = push_parts(&push);
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let (Some(name), Some(payload)) = (channel, payload) else {
                    return;
                };
                let Ok(name) = std::str::from_utf8(name) else {
                    return;
                };
                if let Some(seen) = probes.get_mut(name) {
                    *seen = self.state.ms();
                    return;
                }
                let name = name.to_owned();
                self.message(&name, payload).await;
            }
            PushKind::SSubscribe => {
                let Some(name) = channel.and_then(|c| std::str::from_utf8(c).ok()) else {
                    return;
                };
                let Some(channel) = keys::channel_of_live(name) else {
                    return;
                };
                let Some(track) = self.channels.get_mut(channel) else {
                    return;
                };
                if track.stale_since.take().is_some() {
                    tracing::debug!(channel, "engine: subscribed again; repairing from history");
                    if let Some((channel, _)) = self.channels.get_key_value(channel) {
                        let channel = channel.clone();
                        self.repair(&channel, None).await;
                    }
                }
            }
            PushKind::SUnsubscribe => {
                // Redis moved the slot (or the connection let go): subscribe again on its
                // owner; publications in between are repaired when it is confirmed.
                let Some(name) = channel.and_then(|c| std::str::from_utf8(c).ok()) else {
                    return;
                };
                if let Some(t) = keys::channel_of_live(name).and_then(|c| self.channels.get_mut(c))
                {
                    tracing::debug!(name, "engine: Redis ended a subscription (slot moved?)");
                    t.stale_since.get_or_insert(0);
                }
                if probes.remove(name).is_some() {
                    crate::lock(&self.state.probe_live).retain(|p| p != name);
                }
            }
            PushKind::Disconnection => {
                // Which master's connection dropped is not told: every channel may have
                // missed publications until the connection subscribes again.
                let now = self.state.ms();
                for t in self.channels.values_mut() {
                    t.stale_since.get_or_insert(now);
                }
            }
            _ => {}
        }
    }

    /// Subscribes stale channels again, follows the probe channels; why the connection
    /// must be replaced, if it must.
    async fn cluster_tick(
        &mut self,
        conn: &ClusterConnection,
        probes: &mut HashMap<String, u64>,
    ) -> Option<String> {
        let now = self.state.ms();
        let due: Vec<Arc<str>> = self
            .channels
            .iter()
            .filter(|(_, t)| {
                t.stale_since
                    .is_some_and(|s| now.saturating_sub(s) >= RESUBSCRIBE_AFTER.as_millis() as u64)
            })
            .map(|(c, _)| c.clone())
            .collect();
        if !due.is_empty() {
            for c in &due {
                if let Some(t) = self.channels.get_mut(c) {
                    t.stale_since = Some(now);
                }
            }
            // A failure leaves them stale: tried again next time.
            let _ = subscribe_all(conn, due).await;
        }
        let targets = crate::lock(&self.state.probe_targets).clone();
        let mut conn = conn.clone();
        for name in &targets {
            if probes.contains_key(name) {
                continue;
            }
            let sub = tokio::time::timeout(CALL_TIMEOUT, conn.ssubscribe(name)).await;
            if let Ok(Ok(())) = sub {
                probes.insert(name.clone(), self.state.ms());
            }
        }
        let gone: Vec<String> = probes
            .keys()
            .filter(|p| !targets.contains(p))
            .cloned()
            .collect();
        for name in gone {
            probes.remove(&name);
            let _ = tokio::time::timeout(CALL_TIMEOUT, conn.sunsubscribe(&name)).await;
        }
        *crate::lock(&self.state.probe_live) = probes.keys().cloned().collect();
        let commands_up = self.state.commands_up.load(Ordering::Relaxed);
        if commands_up && self.state.probe_unheard.swap(false, Ordering::Relaxed) {
            return Some("a master's probe reached no subscriber".to_owned());
        }
        let now = self.state.ms();
        if commands_up {
            if let Some((name, seen)) = probes
                .iter()
                .find(|(_, &seen)| now.saturating_sub(seen) > STALL_AFTER.as_millis() as u64)
            {
                return Some(format!(
                    "probe {name} unheard for {} ms: stalled",
                    now - seen
                ));
            }
        }
        None
    }
}

/// Subscribes to every channel of `names` (one slot each, so one command each).
async fn subscribe_all(conn: &ClusterConnection, names: Vec<Arc<str>>) -> Result<(), String> {
    let started = Instant::now();
    let count = names.len();
    let calls: Vec<_> = names
        .into_iter()
        .map(|n| {
            let mut conn = conn.clone();
            let live = keys::live(&n);
            async move { tokio::time::timeout(CALL_TIMEOUT, conn.ssubscribe(live)).await }
        })
        .collect();
    let results = futures_util::stream::iter(calls)
        .buffer_unordered(SUBSCRIBE_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let failed = results.iter().filter(|r| !matches!(r, Ok(Ok(())))).count();
    if failed > 0 {
        return Err(format!(
            "subscribing again failed for {failed} of {} channels ({} ms)",
            count,
            started.elapsed().as_millis()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(keys::meta("a}b").as_bytes()), slot(b"a"));
        assert_eq!(
            slot(keys::live("news").as_bytes()),
            slot(keys::stream("news").as_bytes())
        );
    }

    #[test]
    fn a_probe_falls_in_its_range() {
        let p = probe_in("n1", 5461, 10922).unwrap();
        assert!((5461..=10922).contains(&slot(p.as_bytes())));
        let p = probe_in("n1", 100, 100).unwrap();
        assert_eq!(slot(p.as_bytes()), 100);
    }
}
