//! Event hooks (`backend.events`, docs/backend.md): the backend learns of connects,
//! disconnects, subscribes, unsubscribes, and channels occupied (a first subscriber in the
//! cluster) and vacated (the last one gone), at least once, each event with an id to
//! deduplicate by.
//!
//! The connections tell [`Hooks`] what happened; it turns that into [`HookOp`]s, in order,
//! and a recorder task writes them to the engine's [`HookLog`] (which also keeps this
//! node's sessions and channels, so that another node emits what this one could not if it
//! dies). A delivery task on every node takes events from the log, POSTs them in batches
//! to `URL/events`, and marks them done once the backend answered 200; a failed delivery is
//! retried with backoff (0.5 s doubling to 30 s, with jitter), and events a dead node had
//! taken are taken over after [`STALE_AFTER`].

use crate::backend::{Backend, Call};
use crate::config::BackendConfig;
use crate::engine::{HookEntry, HookLog, HookOp};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Events per POST to the backend.
const BATCH: usize = 100;
/// Events a node holds for retries at most; beyond, it takes no new ones (they wait in the
/// log).
const MAX_RETRYING: usize = 10_000;
/// Events taken by a node and not done for this long are taken over by another.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);
/// Events this node took and does not hold, this long after, are taken again (their take's
/// answer was lost).
const ORPHANED_AFTER: Duration = Duration::from_secs(2);
/// How often the delivery task looks for events when it has seen none.
const POLL: Duration = Duration::from_millis(200);

/// This node's hooks.
#[derive(Debug)]
pub(crate) struct Hooks {
    node: String,
    /// The event types sent.
    events: Vec<String>,
    log: Arc<dyn HookLog>,
    ops: mpsc::UnboundedSender<HookOp>,
    state: Mutex<State>,
    /// Wakes the delivery task when events were recorded here.
    recorded: Notify,
    /// Ops sent and not yet recorded.
    unrecorded: AtomicU64,
    pub(crate) stats: HookStats,
}

#[derive(Debug, Default)]
pub(crate) struct HookStats {
    pub(crate) delivered: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) retrying: AtomicU64,
}

#[derive(Debug)]
struct Session {
    user: Option<String>,
    channels: BTreeSet<String>,
    /// The close the server sent, if it closed the connection.
    close: Option<(u16, String)>,
}

#[derive(Debug, Default)]
struct State {
    /// This node's sessions: client → session.
    sessions: HashMap<String, Session>,
    /// This node's subscribers per channel.
    channels: HashMap<String, u32>,
}

impl Hooks {
    /// Hooks on `log`, or `None` when no event type is configured. Starts the recorder
    /// and the delivery tasks (inside a runtime).
    pub(crate) fn start(
        config: &BackendConfig,
        node: &str,
        log: Arc<dyn HookLog>,
        backend: Arc<Backend>,
    ) -> Option<Arc<Hooks>> {
        if config.url.is_none() || config.events.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let hooks = Arc::new(Hooks {
            node: node.to_owned(),
            events: config.events.clone(),
            log,
            ops: tx,
            state: Mutex::new(State::default()),
            recorded: Notify::new(),
            unrecorded: AtomicU64::new(0),
            stats: HookStats::default(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(record(Arc::downgrade(&hooks), rx));
                rt.spawn(deliver(Arc::downgrade(&hooks), backend));
            }
            Err(_) => tracing::warn!("hooks: no runtime to deliver events"),
        }
        Some(hooks)
    }

    fn sends(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == kind)
    }

    fn event(
        &self,
        kind: &str,
        client: &str,
        user: Option<&str>,
        extra: serde_json::Value,
    ) -> Option<String> {
        if !self.sends(kind) {
            return None;
        }
        let mut e = serde_json::json!({
            "type": kind,
            "time": crate::engine::now_ms(),
            "node": self.node,
            "client": client,
            "user": user,
        });
        if let (Some(e), serde_json::Value::Object(more)) = (e.as_object_mut(), extra) {
            e.extend(more);
        }
        Some(e.to_string())
    }

    fn send(&self, op: HookOp) {
        self.unrecorded.fetch_add(1, Relaxed);
        let _ = self.ops.send(op);
    }

    /// A session began.
    pub(crate) fn connected(&self, client: &str, user: Option<&str>) {
        let mut state = crate::lock(&self.state);
        if state.sessions.contains_key(client) {
            return;
        }
        let session = Session {
            user: user.map(str::to_owned),
            channels: BTreeSet::new(),
            close: None,
        };
        state.sessions.insert(client.to_owned(), session);
        self.send(HookOp::Connect {
            client: client.to_owned(),
            user: user.map(str::to_owned),
            event: self.event("connect", client, user, serde_json::Value::Null),
        });
    }

    /// The server is closing `client`'s connection with `code` and `reason` (told in its
    /// disconnect event).
    pub(crate) fn closing(&self, client: &str, code: u16, reason: &str) {
        let mut state = crate::lock(&self.state);
        if let Some(s) = state.sessions.get_mut(client) {
            s.close.get_or_insert_with(|| (code, reason.to_owned()));
        }
    }

    /// A session ended (its subscriptions first, if any are left).
    pub(crate) fn disconnected(&self, client: &str) {
        let mut state = crate::lock(&self.state);
        let Some(Session {
            user,
            channels,
            close,
        }) = state.sessions.remove(client)
        else {
            return;
        };
        for channel in channels {
            self.end_subscription(&mut state, client, user.as_deref(), &channel);
        }
        let extra = match close {
            Some((code, reason)) => serde_json::json!({"code": code, "reason": reason}),
            None => {
                serde_json::json!({"code": null, "reason": "connection closed by the client or lost"})
            }
        };
        self.send(HookOp::Disconnect {
            client: client.to_owned(),
            event: self.event("disconnect", client, user.as_deref(), extra),
        });
    }

    /// A session subscribed to `channel`.
    pub(crate) fn subscribed(&self, client: &str, channel: &str) {
        let mut state = crate::lock(&self.state);
        let state = &mut *state;
        let Some(session) = state.sessions.get_mut(client) else {
            return;
        };
        if !session.channels.insert(channel.to_owned()) {
            return;
        }
        let user = session.user.clone();
        let count = state.channels.entry(channel.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.send(HookOp::Occupy {
                channel: channel.to_owned(),
                emit: self.sends("occupied"),
            });
        }
        let extra = serde_json::json!({ "channel": channel });
        self.send(HookOp::Subscribe {
            client: client.to_owned(),
            user: user.clone(),
            channel: channel.to_owned(),
            event: self.event("subscribe", client, user.as_deref(), extra),
        });
    }

    /// A session's subscription to `channel` ended.
    pub(crate) fn unsubscribed(&self, client: &str, channel: &str) {
        let mut state = crate::lock(&self.state);
        let Some(session) = state.sessions.get_mut(client) else {
            return;
        };
        if !session.channels.remove(channel) {
            return;
        }
        let user = session.user.clone();
        self.end_subscription(&mut state, client, user.as_deref(), channel);
    }

    fn end_subscription(&self, state: &mut State, client: &str, user: Option<&str>, channel: &str) {
        let extra = serde_json::json!({ "channel": channel });
        self.send(HookOp::Unsubscribe {
            client: client.to_owned(),
            channel: channel.to_owned(),
            event: self.event("unsubscribe", client, user, extra),
        });
        if let Some(count) = state.channels.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                state.channels.remove(channel);
                self.send(HookOp::Vacate {
                    channel: channel.to_owned(),
                    emit: self.sends("vacated"),
                });
            }
        }
    }

    /// Records this node's sessions, subscriptions and channels again (another node
    /// reaped them while this one was cut off from the engine): the backend gets their
    /// connect and subscribe events again, as the reap gave it their ends.
    pub(crate) fn rejoin(&self) {
        let state = crate::lock(&self.state);
        for (client, Session { user, channels, .. }) in &state.sessions {
            self.send(HookOp::Connect {
                client: client.clone(),
                user: user.clone(),
                event: self.event("connect", client, user.as_deref(), serde_json::Value::Null),
            });
            for channel in channels {
                let extra = serde_json::json!({ "channel": channel });
                self.send(HookOp::Subscribe {
                    client: client.clone(),
                    user: user.clone(),
                    channel: channel.clone(),
                    event: self.event("subscribe", client, user.as_deref(), extra),
                });
            }
        }
        for channel in state.channels.keys() {
            self.send(HookOp::Occupy {
                channel: channel.clone(),
                emit: self.sends("occupied"),
            });
        }
    }

    /// Waits (at most `limit`) until what happened here reached the log and, where the
    /// log is this process's, the backend: for a graceful stop.
    pub(crate) async fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let unrecorded = self.unrecorded.load(Relaxed);
            let undelivered = self.log.backlog().unwrap_or(0);
            if self.ops.is_closed() || unrecorded + undelivered as u64 == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes the ops to the log in order, in batches, retrying while the engine is down.
async fn record(hooks: std::sync::Weak<Hooks>, mut rx: mpsc::UnboundedReceiver<HookOp>) {
    let mut batch = Vec::with_capacity(512);
    loop {
        if rx.recv_many(&mut batch, 512).await == 0 {
            return;
        }
        let Some(h) = hooks.upgrade() else { return };
        let mut delay = Duration::from_millis(100);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), h.log.record(&batch)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => tracing::warn!("hooks: recording {} events failed: {e}", batch.len()),
                Err(_) => tracing::warn!("hooks: recording {} events took over 5 s", batch.len()),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        h.unrecorded.fetch_sub(batch.len() as u64, Relaxed);
        batch.clear();
        h.recorded.notify_one();
    }
}

/// An event whose delivery failed, due again at `due`.
struct Retry {
    entry: HookEntry,
    attempts: u32,
    due: Instant,
}

fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_millis(500) * 2u32.saturating_pow(attempts.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(30));
    let jitter = rand::random::<f64>() * 0.4 + 0.8;
    base.mul_f64(jitter)
}

/// The body of a POST: `{"events":[{"id":ID,...},...]}`.
fn body(entries: &[HookEntry]) -> String {
    let mut out = String::from("{\"events\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        out.push_str(&serde_json::Value::from(e.id.as_str()).to_string());
        let rest = e.event.trim_start().strip_prefix('{').unwrap_or("}");
        if rest.trim_start() != "}" {
            out.push(',');
        }
        out.push_str(rest);
    }
    out.push_str("]}");
    out
}

/// The event's `type`.
fn kind(event: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<T>(event).ok().map(|t| t.kind)
}

/// Takes events from the log and delivers them, until the hooks go.
async fn deliver(hooks: std::sync::Weak<Hooks>, backend: Arc<Backend>) {
    let mut retrying: Vec<Retry> = Vec::new();
    let mut last_stale = Instant::now();
    loop {
        let Some(h) = hooks.upgrade() else { return };
        let mut worked = false;
        // Retries that are due.
        let now = Instant::now();
        let (due, later): (Vec<Retry>, Vec<Retry>) = retrying.drain(..).partition(|r| r.due <= now);
        retrying = later;
        for chunk in due.chunks(BATCH) {
            let ids: Vec<String> = chunk.iter().map(|r| r.entry.id.clone()).collect();
            let _ = h.log.keep(&ids).await;
            let entries: Vec<HookEntry> = chunk.iter().map(|r| r.entry.clone()).collect();
            worked = true;
            if post(&h, &backend, &entries).await {
                let _ = h.log.done(&ids).await;
            } else {
                retrying.extend(chunk.iter().map(|r| Retry {
                    entry: r.entry.clone(),
                    attempts: r.attempts + 1,
                    due: Instant::now() + backoff(r.attempts + 1),
                }));
            }
        }
        // New events, and those a dead node had taken.
        if retrying.len() < MAX_RETRYING {
            let mut fresh = match h.log.take(BATCH).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("hooks: taking events failed: {e}");
                    Vec::new()
                }
            };
            if last_stale.elapsed() >= Duration::from_secs(5) && fresh.len() < BATCH {
                last_stale = Instant::now();
                let held: std::collections::HashSet<String> =
                    retrying.iter().map(|r| r.entry.id.clone()).collect();
                // Taken by this node but never seen (a take whose answer was lost: nothing
                // is in flight between two rounds of this loop), then a dead node's.
                if let Ok(lost) = h.log.take_mine(BATCH - fresh.len(), ORPHANED_AFTER).await {
                    fresh.extend(lost.into_iter().filter(|e| !held.contains(&e.id)));
                }
                if let Ok(stale) = h.log.take_stale(BATCH - fresh.len(), STALE_AFTER).await {
                    fresh.extend(stale.into_iter().filter(|e| !held.contains(&e.id)));
                }
            }
            if !fresh.is_empty() {
                worked = true;
                // Events of types this node does not send (emitted by a reap) are done.
                let (send, skip): (Vec<HookEntry>, Vec<HookEntry>) = fresh
                    .into_iter()
                    .partition(|e| kind(&e.event).is_some_and(|k| h.sends(&k)));
                if !skip.is_empty() {
                    let ids: Vec<String> = skip.into_iter().map(|e| e.id).collect();
                    let _ = h.log.done(&ids).await;
                }
                if !send.is_empty() {
                    if post(&h, &backend, &send).await {
                        let ids: Vec<String> = send.into_iter().map(|e| e.id).collect();
                        let _ = h.log.done(&ids).await;
                    } else {
                        let due = Instant::now() + backoff(1);
                        retrying.extend(send.into_iter().map(|entry| Retry {
                            entry,
                            attempts: 1,
                            due,
                        }));
                    }
                }
            }
        }
        h.stats.retrying.store(retrying.len() as u64, Relaxed);
        if !worked {
            let wake = h.recorded.notified();
            let next_retry = retrying.iter().map(|r| r.due).min().map_or(POLL, |d| {
                d.saturating_duration_since(Instant::now()).min(POLL)
            });
            let _ = tokio::time::timeout(next_retry, wake).await;
        }
    }
}

/// POSTs `entries`; true when the backend took them (200).
async fn post(h: &Hooks, backend: &Backend, entries: &[HookEntry]) -> bool {
    let text = body(entries);
    match backend.send_raw(Call::Events, text.into_bytes()).await {
        Ok(()) => {
            h.stats.delivered.fetch_add(entries.len() as u64, Relaxed);
            true
        }
        Err(why) => {
            h.stats.failures.fetch_add(1, Relaxed);
            tracing::warn!(
                events = entries.len(),
                "hooks: delivery failed, will retry: {why}"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_each_events_id_first() {
        let entries = [
            HookEntry {
                id: "1-0".into(),
                event: r#"{"type":"connect","client":"c"}"#.into(),
            },
            HookEntry {
                id: "2-0".into(),
                event: "{}".into(),
            },
        ];
        let b = body(&entries);
        assert_eq!(
            b,
            r#"{"events":[{"id":"1-0","type":"connect","client":"c"},{"id":"2-0"}]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["events"][0]["type"], "connect");
        assert_eq!(
            kind(r#"{"type":"vacated","channel":"x"}"#).as_deref(),
            Some("vacated")
        );
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let b1 = backoff(1).as_secs_f64();
        assert!((0.4..=0.6).contains(&b1), "{b1}");
        let b3 = backoff(3).as_secs_f64();
        assert!((1.6..=2.4).contains(&b3), "{b3}");
        let b20 = backoff(20).as_secs_f64();
        assert!((24.0..=36.0).contains(&b20), "{b20}");
    }
}
