//! Presence in memory: per channel, the clients present and until when, in shards.
//!
//! An entry lives for the TTL it was added with; the node refreshes the entries of its
//! clients well within it, so only entries whose node stopped refreshing them (a node that
//! died, in a shared store) expire. Listing skips expired entries; [`PresenceStore::sweep`]
//! forgets them. A channel's presence costs nothing until someone is present in it.

use super::{ClientInfo, Clock, EngineFuture, PresenceStats, PresenceStore, SystemClock};
use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A present client, keyed by its client id (so the map needs no copy of it).
#[derive(Debug, Clone)]
struct ByClientId(Arc<ClientInfo>);

impl PartialEq for ByClientId {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ByClientId {}

impl Hash for ByClientId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client_id.hash(state);
    }
}

impl Borrow<str> for ByClientId {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

type Entries = HashMap<ByClientId, Instant>;
type Shard = HashMap<Arc<str>, Entries>;

/// Presence of the channels of one process: a [`PresenceStore`] for one node.
#[derive(Debug)]
pub struct MemoryPresence {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl MemoryPresence {
    /// A store reading the system's clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A store reading `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryPresence {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            clock,
        }
    }

    /// Channels with someone present (expired entries count until swept).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let mut h = self.hasher.build_hasher();
        h.write(channel.as_bytes());
        lock(&self.shards[h.finish() as usize % SHARDS])
    }

    /// The live entries of `channel`.
    fn live(&self, channel: &str) -> Vec<Arc<ClientInfo>> {
        let now = self.clock.now();
        self.shard(channel).get(channel).map_or_else(Vec::new, |e| {
            e.iter()
                .filter(|(_, until)| **until > now)
                .map(|(c, _)| c.0.clone())
                .collect()
        })
    }
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl PresenceStore for MemoryPresence {
    fn add<'a>(
        &'a self,
        channel: &'a str,
        client: Arc<ClientInfo>,
        ttl: Duration,
    ) -> EngineFuture<'a, ()> {
        let until = self.clock.now() + ttl;
        let mut shard = self.shard(channel);
        let entries = match shard.get_mut(channel) {
            Some(e) => e,
            None => shard.entry(Arc::from(channel)).or_default(),
        };
        // Replaced, not only refreshed: the client's info may have changed.
        entries.remove(client.client_id.as_str());
        entries.insert(ByClientId(client), until);
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove<'a>(&'a self, channel: &'a str, client_id: &'a str) -> EngineFuture<'a, ()> {
        let mut shard = self.shard(channel);
        if let Some(entries) = shard.get_mut(channel) {
            entries.remove(client_id);
            if entries.is_empty() {
                shard.remove(channel);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn list<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, Vec<ClientInfo>> {
        let mut clients: Vec<ClientInfo> = self
            .live(channel)
            .into_iter()
            .map(|c| (*c).clone())
            .collect();
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Box::pin(std::future::ready(Ok(clients)))
    }

    fn stats<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, PresenceStats> {
        let live = self.live(channel);
        let users: HashSet<&str> = live.iter().filter_map(|c| c.user_id.as_deref()).collect();
        let stats = PresenceStats {
            clients: live.len(),
            users: users.len(),
        };
        Box::pin(std::future::ready(Ok(stats)))
    }

    fn sweep(&self) -> EngineFuture<'_, ()> {
        let now = self.clock.now();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, entries| {
                entries.retain(|_, until| *until > now);
                !entries.is_empty()
            });
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ManualClock;

    fn client(id: &str, user: Option<&str>) -> Arc<ClientInfo> {
        let mut c = ClientInfo::new(id);
        c.user_id = user.map(str::to_owned);
        Arc::new(c)
    }

    #[tokio::test]
    async fn add_list_stats_remove() {
        let p = MemoryPresence::new();
        let ttl = Duration::from_secs(60);
        p.add("a", client("c2", Some("u1")), ttl).await.unwrap();
        p.add("a", client("c1", Some("u1")), ttl).await.unwrap();
        p.add("a", client("c3", None), ttl).await.unwrap();
        p.add("b", client("c9", None), ttl).await.unwrap();
        let ids: Vec<String> = p
            .list("a")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, ["c1", "c2", "c3"], "sorted by client id");
        let stats = p.stats("a").await.unwrap();
        assert_eq!((stats.clients, stats.users), (3, 1));
        // Re-adding replaces the info.
        p.add("a", client("c3", Some("u3")), ttl).await.unwrap();
        assert_eq!(p.stats("a").await.unwrap().users, 2);
        for id in ["c1", "c2", "c3"] {
            p.remove("a", id).await.unwrap();
        }
        assert!(p.list("a").await.unwrap().is_empty());
        assert_eq!(p.channel_count(), 1, "channel a forgotten, b left");
    }

    #[tokio::test]
    async fn entries_expire_unless_refreshed() {
        let clock = ManualClock::new();
        let p = MemoryPresence::with_clock(Arc::new(clock.clone()));
        let ttl = Duration::from_secs(30);
        p.add("a", client("kept", None), ttl).await.unwrap();
        p.add("a", client("dead", None), ttl).await.unwrap();
        clock.advance(Duration::from_secs(20));
        p.add("a", client("kept", None), ttl).await.unwrap();
        clock.advance(Duration::from_secs(20));
        let ids: Vec<String> = p
            .list("a")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(ids, ["kept"]);
        p.sweep().await.unwrap();
        clock.advance(Duration::from_secs(31));
        p.sweep().await.unwrap();
        assert_eq!(p.channel_count(), 0);
    }
}
