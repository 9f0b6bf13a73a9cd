//! The log of event hooks (`backend.events`): where a node records what happened to its
//! sessions (connect, disconnect, subscribe, unsubscribe) and to its channels' occupancy,
//! and where the nodes take the events from to deliver them to the backend, at least once.
//!
//! Recording an event also records the session or channel in a registry per node, in the
//! same step: when a node dies, another one turns what the dead node's registry still
//! holds into the disconnects, unsubscribes and vacated channels the dead node never
//! emitted ([`HookLog::reap`]), each once. Every event gets an id from the log, the same
//! at every delivery of it: the backend's idempotency key.
//!
//! In memory ([`MemoryHookLog`]) for one node: a queue. On Redis: a stream read by a
//! consumer group of the nodes (`engine::redis::hooks`).

use super::{EngineFuture, Error};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Something that happened on this node, with the event to send for it (the JSON object
/// without its `id`), if its type is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOp {
    /// A session began: `client` is `user` (`None`: anonymous).
    Connect {
        client: String,
        user: Option<String>,
        event: Option<String>,
    },
    /// A session ended.
    Disconnect {
        client: String,
        event: Option<String>,
    },
    /// A session subscribed to `channel`.
    Subscribe {
        client: String,
        user: Option<String>,
        channel: String,
        event: Option<String>,
    },
    /// A session's subscription to `channel` ended.
    Unsubscribe {
        client: String,
        channel: String,
        event: Option<String>,
    },
    /// This node has subscribers of `channel` now (it had none): the log emits
    /// `occupied` if no other node had any.
    Occupy { channel: String, emit: bool },
    /// This node has no subscriber of `channel` left: the log emits `vacated` if no other
    /// node has any.
    Vacate { channel: String, emit: bool },
}

/// The events [`HookLog::reap`] emits for a dead node's sessions and channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapEvents {
    pub disconnect: bool,
    pub unsubscribe: bool,
    pub vacated: bool,
}

/// An event to deliver: its id (the idempotency key) and its JSON object without the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEntry {
    pub id: String,
    pub event: String,
}

/// See the module documentation.
pub trait HookLog: Send + Sync + fmt::Debug + 'static {
    /// Records `ops`, in order.
    fn record<'a>(&'a self, ops: &'a [HookOp]) -> EngineFuture<'a, ()>;

    /// At most `n` events no node has taken yet; this node now delivers them.
    fn take<'a>(&'a self, n: usize) -> EngineFuture<'a, Vec<HookEntry>>;

    /// At most `n` events taken by a node more than `idle` ago and not done (a node that
    /// died with them, or this node's own retries): this node takes them over.
    fn take_stale<'a>(&'a self, n: usize, idle: Duration) -> EngineFuture<'a, Vec<HookEntry>>;

    /// At most `n` events this node took more than `idle` ago and is not known to hold: a
    /// take whose answer was lost (the engine's connection dropped after it took them).
    /// The caller leaves out those it holds for a retry. In memory nothing is lost that
    /// way: none.
    fn take_mine<'a>(&'a self, _n: usize, _idle: Duration) -> EngineFuture<'a, Vec<HookEntry>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// This node still works on `ids` (a retry is coming): not stale.
    fn keep<'a>(&'a self, ids: &'a [String]) -> EngineFuture<'a, ()>;

    /// `ids` were delivered.
    fn done<'a>(&'a self, ids: &'a [String]) -> EngineFuture<'a, ()>;

    /// Emits the events of dead node `node`'s sessions and channels still registered, and
    /// forgets them; each is emitted once, whichever nodes call this. Returns how many
    /// sessions, subscriptions and channels were reaped.
    fn reap<'a>(&'a self, node: &'a str, events: ReapEvents) -> EngineFuture<'a, u64>;

    /// Events not done yet, where the log is this process's (they go with it).
    fn backlog(&self) -> Option<usize> {
        None
    }
}

/// Events a [`MemoryHookLog`] keeps waiting at most; beyond, the oldest are dropped
/// (counted, and logged).
pub const MEMORY_HOOK_CAPACITY: usize = 100_000;

/// The hook log of one node, in memory. Events are lost with the process.
pub struct MemoryHookLog {
    inner: Mutex<Inner>,
    /// Ids: the process's start time (ms) and a counter, unique across restarts.
    prefix: String,
    node: String,
    next: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Inner {
    waiting: VecDeque<HookEntry>,
    /// Taken, not done: id → (event, when taken or kept).
    taken: HashMap<String, (String, std::time::Instant)>,
    /// Subscribers' channels of this node (for occupancy).
    occupied: HashSet<String>,
}

impl fmt::Debug for MemoryHookLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryHookLog").finish_non_exhaustive()
    }
}

impl MemoryHookLog {
    /// The log of node `node` (named in its occupancy events).
    pub fn new(node: &str) -> MemoryHookLog {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        MemoryHookLog {
            inner: Mutex::new(Inner::default()),
            prefix: format!("{ms:x}"),
            node: node.to_owned(),
            next: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn push(&self, inner: &mut Inner, event: String) {
        if inner.waiting.len() >= MEMORY_HOOK_CAPACITY {
            inner.waiting.pop_front();
            if self.dropped.fetch_add(1, Relaxed).is_multiple_of(10_000) {
                tracing::warn!(
                    "hooks: {MEMORY_HOOK_CAPACITY} events wait for the backend: dropping the oldest"
                );
            }
        }
        let id = format!("{}-{}", self.prefix, self.next.fetch_add(1, Relaxed));
        inner.waiting.push_back(HookEntry { id, event });
    }
}

/// `{"type":KIND,"time":MS,"node":NODE,"channel":CHANNEL}`: an occupancy event.
fn channel_event(kind: &str, node: &str, channel: &str) -> String {
    serde_json::json!({
        "type": kind,
        "time": now_ms(),
        "node": node,
        "channel": channel,
    })
    .to_string()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl HookLog for MemoryHookLog {
    fn record<'a>(&'a self, ops: &'a [HookOp]) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let mut inner = crate::lock(&self.inner);
            for op in ops {
                let event = match op {
                    HookOp::Connect { event, .. }
                    | HookOp::Disconnect { event, .. }
                    | HookOp::Subscribe { event, .. }
                    | HookOp::Unsubscribe { event, .. } => event.clone(),
                    // One node: this node's occupancy is the channel's.
                    HookOp::Occupy { channel, emit } => {
                        let fresh = inner.occupied.insert(channel.clone());
                        (fresh && *emit).then(|| channel_event("occupied", &self.node, channel))
                    }
                    HookOp::Vacate { channel, emit } => {
                        let gone = inner.occupied.remove(channel);
                        (gone && *emit).then(|| channel_event("vacated", &self.node, channel))
                    }
                };
                if let Some(e) = event {
                    self.push(&mut inner, e);
                }
            }
            Ok(())
        })
    }

    fn take<'a>(&'a self, n: usize) -> EngineFuture<'a, Vec<HookEntry>> {
        Box::pin(async move {
            let mut inner = crate::lock(&self.inner);
            let k = n.min(inner.waiting.len());
            let out: Vec<HookEntry> = inner.waiting.drain(..k).collect();
            let now = std::time::Instant::now();
            for e in &out {
                inner.taken.insert(e.id.clone(), (e.event.clone(), now));
            }
            Ok(out)
        })
    }

    fn take_stale<'a>(&'a self, n: usize, idle: Duration) -> EngineFuture<'a, Vec<HookEntry>> {
        Box::pin(async move {
            let mut inner = crate::lock(&self.inner);
            let now = std::time::Instant::now();
            let mut out = Vec::new();
            for (id, (event, at)) in inner.taken.iter_mut() {
                if out.len() == n {
                    break;
                }
                if now.duration_since(*at) >= idle {
                    *at = now;
                    out.push(HookEntry {
                        id: id.clone(),
                        event: event.clone(),
                    });
                }
            }
            Ok(out)
        })
    }

    fn keep<'a>(&'a self, ids: &'a [String]) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let mut inner = crate::lock(&self.inner);
            let now = std::time::Instant::now();
            for id in ids {
                if let Some((_, at)) = inner.taken.get_mut(id) {
                    *at = now;
                }
            }
            Ok(())
        })
    }

    fn done<'a>(&'a self, ids: &'a [String]) -> EngineFuture<'a, ()> {
        Box::pin(async move {
            let mut inner = crate::lock(&self.inner);
            for id in ids {
                inner.taken.remove(id);
            }
            Ok(())
        })
    }

    fn backlog(&self) -> Option<usize> {
        let inner = crate::lock(&self.inner);
        Some(inner.waiting.len() + inner.taken.len())
    }

    fn reap<'a>(&'a self, _node: &'a str, _events: ReapEvents) -> EngineFuture<'a, u64> {
        // One node: no other node's sessions to reap.
        Box::pin(async { Ok::<u64, Error>(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_taken_once_and_retried_when_stale() {
        let log = MemoryHookLog::new("n");
        let ops = [
            HookOp::Occupy {
                channel: "a".into(),
                emit: true,
            },
            HookOp::Occupy {
                channel: "a".into(),
                emit: true,
            },
            HookOp::Connect {
                client: "c1".into(),
                user: None,
                event: Some("{\"type\":\"connect\"}".into()),
            },
            HookOp::Vacate {
                channel: "a".into(),
                emit: true,
            },
            HookOp::Vacate {
                channel: "a".into(),
                emit: true,
            },
        ];
        log.record(&ops).await.unwrap();
        let got = log.take(10).await.unwrap();
        let kinds: Vec<&str> = got
            .iter()
            .map(|e| {
                if e.event.contains("occupied") {
                    "occupied"
                } else if e.event.contains("vacated") {
                    "vacated"
                } else {
                    "connect"
                }
            })
            .collect();
        assert_eq!(kinds, ["occupied", "connect", "vacated"]);
        assert!(log.take(10).await.unwrap().is_empty());
        // Not done: stale after `idle`, with the same ids.
        assert!(log
            .take_stale(10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty());
        let again = log.take_stale(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 3);
        let ids: Vec<String> = got.iter().map(|e| e.id.clone()).collect();
        assert!(again.iter().all(|e| ids.contains(&e.id)));
        log.done(&ids).await.unwrap();
        assert!(log.take_stale(10, Duration::ZERO).await.unwrap().is_empty());
    }
}
