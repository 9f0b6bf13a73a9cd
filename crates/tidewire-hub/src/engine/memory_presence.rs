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

/// Up to this many clients, a channel's presence is a vector searched in order: most
/// channels (per-user ones) have one or two, and a map would cost more than they do.
const FEW: usize = 16;

/// A time as whole seconds since the store was made: an entry holds 4 bytes for it, not
/// the 16 of an `Instant`. Presence TTLs are whole seconds.
type Secs = u32;

/// A channel's present clients and until when: one inline (the common case: a per-user
/// channel), a few in a vector, many in a map.
#[derive(Debug)]
enum Entries {
    One(Arc<ClientInfo>, Secs),
    // Boxed so that the common `One` case sets the size: one pointer for the others.
    #[allow(clippy::box_collection)]
    Few(Box<Vec<(Arc<ClientInfo>, Secs)>>),
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<ByClientId, Secs>>),
}

impl Entries {
    /// Adds or replaces (the info may have changed) `client`'s entry.
    fn upsert(&mut self, client: Arc<ClientInfo>, until: Secs) {
        match self {
            Entries::One(c, t) if c.client_id == client.client_id => {
                *c = client;
                *t = until;
            }
            Entries::One(c, t) => {
                *self = Entries::Few(Box::new(vec![(c.clone(), *t), (client, until)]));
            }
            Entries::Few(v) => {
                if let Some(e) = v.iter_mut().find(|(c, _)| c.client_id == client.client_id) {
                    *e = (client, until);
                } else if v.len() < FEW {
                    v.push((client, until));
                } else {
                    let mut map: HashMap<ByClientId, Secs> =
                        v.drain(..).map(|(c, t)| (ByClientId(c), t)).collect();
                    map.insert(ByClientId(client), until);
                    *self = Entries::Many(Box::new(map));
                }
            }
            Entries::Many(m) => {
                m.remove(client.client_id.as_str());
                m.insert(ByClientId(client), until);
            }
        }
    }

    /// Removes `client_id`'s entry; true when none is left.
    fn remove(&mut self, client_id: &str) -> bool {
        match self {
            Entries::One(c, _) => c.client_id == client_id,
            Entries::Few(v) => {
                v.retain(|(c, _)| c.client_id != client_id);
                v.is_empty()
            }
            Entries::Many(m) => {
                m.remove(client_id);
                m.is_empty()
            }
        }
    }

    /// The clients whose entry has not expired at `now`.
    fn live(&self, now: Secs) -> Vec<Arc<ClientInfo>> {
        match self {
            Entries::One(c, until) => {
                if *until > now {
                    vec![c.clone()]
                } else {
                    Vec::new()
                }
            }
            Entries::Few(v) => v
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(c, _)| c.clone())
                .collect(),
            Entries::Many(m) => m
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(c, _)| c.0.clone())
                .collect(),
        }
    }

    /// Forgets the entries expired at `now`; true when none is left.
    fn retain_live(&mut self, now: Secs) -> bool {
        match self {
            Entries::One(_, until) => *until <= now,
            Entries::Few(v) => {
                v.retain(|(_, until)| *until > now);
                v.is_empty()
            }
            Entries::Many(m) => {
                m.retain(|_, until| *until > now);
                m.is_empty()
            }
        }
    }
}

type Shard = HashMap<Arc<str>, Entries>;

/// Presence of the channels of one process: a [`PresenceStore`] for one node.
#[derive(Debug)]
pub struct MemoryPresence {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    /// Times are kept as seconds since this.
    start: Instant,
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
            start: clock.now(),
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

    /// Now, in seconds since the store was made.
    fn now(&self) -> Secs {
        let secs = self
            .clock
            .now()
            .saturating_duration_since(self.start)
            .as_secs();
        Secs::try_from(secs).unwrap_or(Secs::MAX)
    }

    /// The live entries of `channel`.
    fn live(&self, channel: &str) -> Vec<Arc<ClientInfo>> {
        let now = self.now();
        self.shard(channel)
            .get(channel)
            .map_or_else(Vec::new, |e| e.live(now))
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
        channel: &'a Arc<str>,
        client: Arc<ClientInfo>,
        ttl: Duration,
    ) -> EngineFuture<'a, ()> {
        // At least a second, rounded up.
        let ttl = Secs::try_from(ttl.as_secs_f64().ceil() as u64).unwrap_or(Secs::MAX);
        let until = self.now().saturating_add(ttl.max(1));
        let mut shard = self.shard(channel);
        let entries = match shard.get_mut(&**channel) {
            Some(e) => e,
            None => {
                shard.insert(channel.clone(), Entries::One(client, until));
                return Box::pin(std::future::ready(Ok(())));
            }
        };
        // Replaced, not only refreshed: the client's info may have changed.
        entries.upsert(client, until);
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove<'a>(&'a self, channel: &'a str, client_id: &'a str) -> EngineFuture<'a, ()> {
        let mut shard = self.shard(channel);
        if shard
            .get_mut(channel)
            .is_some_and(|entries| entries.remove(client_id))
        {
            shard.remove(channel);
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
        let now = self.now();
        for shard in self.shards.iter() {
            lock(shard).retain(|_, entries| !entries.retain_live(now));
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
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let ttl = Duration::from_secs(60);
        p.add(&a, client("c2", Some("u1")), ttl).await.unwrap();
        p.add(&a, client("c1", Some("u1")), ttl).await.unwrap();
        p.add(&a, client("c3", None), ttl).await.unwrap();
        p.add(&b, client("c9", None), ttl).await.unwrap();
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
        p.add(&a, client("c3", Some("u3")), ttl).await.unwrap();
        assert_eq!(p.stats("a").await.unwrap().users, 2);
        for id in ["c1", "c2", "c3"] {
            p.remove("a", id).await.unwrap();
        }
        assert!(p.list("a").await.unwrap().is_empty());
        assert_eq!(p.channel_count(), 1, "channel a forgotten, b left");
    }

    #[tokio::test]
    async fn many_clients_switch_to_a_map_and_back_to_empty() {
        let p = MemoryPresence::new();
        let a: Arc<str> = Arc::from("a");
        let ttl = Duration::from_secs(60);
        for i in 0..100 {
            p.add(&a, client(&format!("c{i:03}"), Some("u")), ttl)
                .await
                .unwrap();
        }
        p.add(&a, client("c050", Some("v")), ttl).await.unwrap();
        let stats = p.stats("a").await.unwrap();
        assert_eq!((stats.clients, stats.users), (100, 2));
        let listed = p.list("a").await.unwrap();
        assert_eq!(listed.len(), 100);
        assert!(listed.windows(2).all(|w| w[0].client_id < w[1].client_id));
        for i in 0..100 {
            p.remove("a", &format!("c{i:03}")).await.unwrap();
        }
        assert_eq!(p.channel_count(), 0);
    }

    #[tokio::test]
    async fn entries_expire_unless_refreshed() {
        let clock = ManualClock::new();
        let p = MemoryPresence::with_clock(Arc::new(clock.clone()));
        let a: Arc<str> = Arc::from("a");
        let ttl = Duration::from_secs(30);
        p.add(&a, client("kept", None), ttl).await.unwrap();
        p.add(&a, client("dead", None), ttl).await.unwrap();
        clock.advance(Duration::from_secs(20));
        p.add(&a, client("kept", None), ttl).await.unwrap();
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
