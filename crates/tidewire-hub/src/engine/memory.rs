//! The in-memory engine: the channels of one process, in shards.
//!
//! A channel is its position (epoch, last offset), its history (a deque of the same
//! `Arc<Event>`s that were delivered) and its subscribers: one entry each, with the
//! subscriber connection's queue ([`OutboxSender`]) and its [`ClientInfo`] (shared by all
//! the subscriptions of one connection). Presence is the subscribers that joined it, plus
//! the rare client added with [`Engine::join`] alone. Nothing is preallocated per channel:
//! a channel with one subscriber costs a few hundred bytes. Publishing, and subscribing
//! with a history snapshot, happen under the channel's shard lock, which is what makes
//! recovery gap-free and duplicate-free; channels in other shards are not held up.
//!
//! A channel with no subscriber, no history and no presence is dropped, so memory follows
//! what is in use; recreating it starts a new epoch. History is trimmed lazily, by count
//! when publishing and by age whenever the channel is touched, or by [`MemoryEngine::sweep`].

use super::{
    check_json, ClientInfo, Engine, Error, ErrorKind, Event, EventKind, History, NamespaceConfig,
    NamespaceOptions, OutboxSender, Recovery, StreamPosition, Subscribed, Subscription,
};
use bytes::Bytes;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Shards of the channel map: publications on channels of different shards never wait
/// for each other.
const SHARDS: usize = 64;

type Shard = HashMap<Arc<str>, Box<Channel>>;

/// Channels, history and presence in this process.
#[derive(Debug)]
pub struct MemoryEngine {
    namespaces: NamespaceConfig,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

/// One subscription to a channel.
#[derive(Debug)]
struct Subscriber {
    id: u64,
    outbox: OutboxSender,
    client: Arc<ClientInfo>,
    /// Counted in the channel's presence (its namespace has presence).
    present: bool,
}

/// The publications a channel keeps.
#[derive(Debug)]
struct Kept {
    /// The channel's epoch as its publications carry it (shared by all of them).
    epoch: Arc<str>,
    /// Consecutive offsets ending at the channel's, oldest first, with the time each was
    /// published.
    publications: VecDeque<(Instant, Arc<Event>)>,
}

#[derive(Debug)]
struct Channel {
    name: Arc<str>,
    /// 64 random bits, written as 16 hex digits: a number here, so that a channel holds
    /// no string for it.
    epoch: u64,
    offset: u64,
    /// What is kept of the channel's publications; none (one null pointer) while there is
    /// no history, as for most per-user channels most of the time.
    history: Option<Box<Kept>>,
    /// Few per channel as a rule (per-user channels have one): a vector, searched by id.
    subscribers: Vec<Subscriber>,
    /// Clients present without a subscription ([`Engine::join`]); none as a rule, so
    /// one pointer here rather than a vector's three words in every channel.
    #[allow(clippy::box_collection)]
    joined: Option<Box<Vec<Arc<ClientInfo>>>>,
    /// Since when nothing is left in the channel (no history, subscribers or presence).
    /// An idle channel is kept, with its epoch and offset, for one history TTL: a client
    /// that comes back within it resumes with `recovered: true` when nothing was
    /// published meanwhile, instead of finding a new epoch.
    idle_since: Option<Instant>,
}

impl Channel {
    fn new(name: Arc<str>) -> Self {
        Channel {
            name,
            epoch: new_epoch(),
            offset: 0,
            history: None,
            subscribers: Vec::new(),
            joined: None,
            idle_since: None,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch_str(),
        }
    }

    fn epoch_str(&self) -> String {
        format!("{:016x}", self.epoch)
    }

    /// The kept publications, oldest first.
    fn kept(&self) -> impl Iterator<Item = &Arc<Event>> + '_ {
        self.history
            .iter()
            .flat_map(|k| k.publications.iter().map(|(_, e)| e))
    }

    /// How many publications are kept.
    fn kept_len(&self) -> usize {
        self.history.as_ref().map_or(0, |k| k.publications.len())
    }

    /// Keeps `event`, just published, under the namespace's limits.
    fn keep(&mut self, event: Arc<Event>, options: &NamespaceOptions, now: Instant) {
        if options.history_size == 0 {
            return;
        }
        let epoch = self.epoch_str();
        self.history
            .get_or_insert_with(|| {
                Box::new(Kept {
                    epoch: Arc::from(epoch),
                    publications: VecDeque::new(),
                })
            })
            .publications
            .push_back((now, event));
        self.trim(options, now);
    }

    /// The epoch as publications carry it: shared with the kept ones when there are some.
    fn epoch_arc(&self) -> Arc<str> {
        match &self.history {
            Some(k) => k.epoch.clone(),
            None => Arc::from(self.epoch_str()),
        }
    }

    /// Drops publications beyond the namespace's count, or as old as its TTL; a channel
    /// left with none gives the memory back.
    fn trim(&mut self, options: &NamespaceOptions, now: Instant) {
        let Some(kept) = &mut self.history else {
            return;
        };
        let publications = &mut kept.publications;
        while publications.len() > options.history_size {
            publications.pop_front();
        }
        while let Some((at, _)) = publications.front() {
            if now.saturating_duration_since(*at) < options.history_ttl {
                break;
            }
            publications.pop_front();
        }
        if publications.is_empty() {
            self.history = None;
        }
    }

    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_none() && self.joined.is_none()
    }

    /// Notes whether the channel is idle now; true once it has been idle for a whole
    /// history TTL, when it may be forgotten.
    fn expired(&mut self, options: &NamespaceOptions, now: Instant) -> bool {
        if !self.is_idle() {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert(now);
        now.saturating_duration_since(since) >= options.history_ttl
    }

    fn broadcast(&mut self, kind: EventKind) -> Arc<Event> {
        let event = Arc::new(Event::new(self.name.clone(), kind));
        // A subscriber whose connection has gone without unsubscribing is forgotten here.
        self.subscribers
            .retain(|s| s.outbox.push(s.id, event.clone()));
        event
    }

    /// The publications after `since`, if history still has all of them.
    fn recover(&self, since: &StreamPosition) -> Recovery {
        if since.epoch != self.epoch_str() || since.offset > self.offset {
            return Recovery::Failed;
        }
        let missed = self.offset - since.offset;
        if missed == 0 {
            return Recovery::Recovered(Vec::new());
        }
        // History holds consecutive offsets ending at `self.offset`.
        let kept = self.kept_len();
        if (kept as u64) < missed {
            return Recovery::Failed;
        }
        let skip = kept - missed as usize;
        Recovery::Recovered(self.kept().skip(skip).cloned().collect())
    }

    fn joined(&self) -> &[Arc<ClientInfo>] {
        self.joined.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Whether `client_id` is in the channel's presence.
    fn is_present(&self, client_id: &str) -> bool {
        self.subscribers
            .iter()
            .any(|s| s.present && s.client.client_id == client_id)
            || self.joined().iter().any(|c| c.client_id == client_id)
    }

    /// Who is present, by client id, each once.
    fn presence(&self) -> Vec<ClientInfo> {
        let subscribed = self.subscribers.iter().filter(|s| s.present);
        let mut clients: Vec<ClientInfo> = subscribed
            .map(|s| &s.client)
            .chain(self.joined())
            .map(|c| (**c).clone())
            .collect();
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        clients.dedup_by(|a, b| a.client_id == b.client_id);
        clients
    }

    /// Adds `client` to presence without a subscription; a join event unless present.
    fn join(&mut self, client: Arc<ClientInfo>) {
        if self.is_present(&client.client_id) {
            return;
        }
        self.joined
            .get_or_insert_with(Default::default)
            .push(client.clone());
        self.broadcast(EventKind::Join((*client).clone()));
    }

    /// Removes `client_id` from presence (subscribed or joined); a leave event if it was
    /// there.
    fn leave(&mut self, client_id: &str) {
        let mut gone = None;
        for s in self.subscribers.iter_mut().filter(|s| s.present) {
            if s.client.client_id == client_id {
                s.present = false;
                gone = Some(s.client.clone());
            }
        }
        if let Some(joined) = &mut self.joined {
            if let Some(i) = joined.iter().position(|c| c.client_id == client_id) {
                gone = Some(joined.swap_remove(i));
            }
            if joined.is_empty() {
                self.joined = None;
            }
        }
        if let Some(client) = gone {
            self.broadcast(EventKind::Leave((*client).clone()));
        }
    }
}

/// A new epoch: 64 random bits as 16 hex digits, from the standard library's per-process
/// random hash keys plus a counter.
fn new_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

impl MemoryEngine {
    /// An engine applying `namespaces`.
    pub fn new(namespaces: NamespaceConfig) -> Self {
        MemoryEngine {
            namespaces,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Number of channels held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Subscriptions to `channel` that the engine delivers to (0 for a channel it does not
    /// hold). A subscriber whose outbox was dropped counts until the next delivery.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shard(channel)
            .get(channel)
            .map_or(0, |ch| ch.subscribers.len())
    }

    /// True when no channel is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Trims every channel's history by age and drops the channels left idle. Call it
    /// now and then (say every few seconds) to bound memory for channels nobody touches.
    pub fn sweep(&self, now: Instant) {
        for shard in self.shards.iter() {
            lock(shard).retain(|name, ch| match self.namespaces.for_channel(name) {
                Some(options) => {
                    ch.trim(options, now);
                    !ch.expired(options, now)
                }
                None => false,
            });
        }
    }

    /// The locked shard that holds `channel`.
    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let mut h = self.hasher.build_hasher();
        h.write(channel.as_bytes());
        lock(&self.shards[h.finish() as usize % SHARDS])
    }

    /// Runs `f` on `channel` (created if `create`, else skipped when absent) after
    /// trimming its history, then drops the channel if it is left idle.
    fn with_channel<R>(
        &self,
        channel: &str,
        now: Instant,
        create: bool,
        f: impl FnOnce(&mut Channel, &NamespaceOptions) -> R,
    ) -> Result<Option<R>, Error> {
        let options = self.namespaces.check(channel)?;
        let mut shard = self.shard(channel);
        let ch = match shard.get_mut(channel) {
            Some(ch) => ch,
            None if create => {
                let name: Arc<str> = Arc::from(channel);
                shard
                    .entry(name.clone())
                    .or_insert_with(|| Box::new(Channel::new(name)))
            }
            None => return Ok(None),
        };
        ch.trim(options, now);
        let r = f(ch, options);
        if ch.expired(options, now) {
            shard.remove(channel);
        }
        Ok(Some(r))
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine::new(NamespaceConfig::default())
    }
}

impl Engine for MemoryEngine {
    fn namespaces(&self) -> &NamespaceConfig {
        &self.namespaces
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        now: Instant,
    ) -> Result<StreamPosition, Error> {
        check_json(&data)?;
        let position = self.with_channel(channel, now, true, |ch, options| {
            ch.offset += 1;
            let event = ch.broadcast(EventKind::Publication {
                offset: ch.offset,
                epoch: ch.epoch_arc(),
                data,
            });
            ch.keep(event, options, now);
            ch.position()
        })?;
        position.ok_or(Error::new(ErrorKind::Closed))
    }

    async fn subscribe(
        &self,
        channel: &str,
        client: Arc<ClientInfo>,
        since: Option<StreamPosition>,
        outbox: OutboxSender,
        now: Instant,
    ) -> Result<Subscribed, Error> {
        let sub = self.with_channel(channel, now, true, |ch, options| {
            // Snapshot and live delivery start under the same lock as `publish`.
            let recovery = match &since {
                Some(since) => ch.recover(since),
                None => Recovery::NotRequested,
            };
            let id = Subscription::next_id();
            let join = options.presence && !ch.is_present(&client.client_id);
            ch.subscribers.push(Subscriber {
                id,
                outbox,
                client: client.clone(),
                present: options.presence,
            });
            if join {
                // The new subscriber receives its own join too.
                ch.broadcast(EventKind::Join((*client).clone()));
            }
            Subscribed {
                subscription: Subscription::new(id, ch.name.clone()),
                position: ch.position(),
                recovery,
            }
        })?;
        sub.ok_or(Error::new(ErrorKind::Closed))
    }

    async fn unsubscribe(&self, subscription: Subscription, now: Instant) -> Result<(), Error> {
        self.with_channel(subscription.channel(), now, false, |ch, _| {
            let Some(i) = ch
                .subscribers
                .iter()
                .position(|s| s.id == subscription.id())
            else {
                return;
            };
            let gone = ch.subscribers.swap_remove(i);
            if ch.subscribers.is_empty() {
                ch.subscribers = Vec::new();
            }
            if gone.present && !ch.is_present(&gone.client.client_id) {
                ch.broadcast(EventKind::Leave((*gone.client).clone()));
            }
        })?;
        Ok(())
    }

    async fn history(&self, channel: &str, limit: usize, now: Instant) -> Result<History, Error> {
        let history = self.with_channel(channel, now, false, |ch, _| {
            let skip = ch.kept_len().saturating_sub(limit);
            History {
                publications: ch.kept().skip(skip).cloned().collect(),
                position: ch.position(),
            }
        })?;
        Ok(history.unwrap_or(History {
            publications: Vec::new(),
            position: StreamPosition {
                offset: 0,
                epoch: String::new(),
            },
        }))
    }

    async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, Error> {
        let options = self.namespaces.check(channel)?;
        if !options.presence {
            return Err(Error::new(ErrorKind::NotAvailable));
        }
        Ok(self
            .shard(channel)
            .get(channel)
            .map(|ch| ch.presence())
            .unwrap_or_default())
    }

    async fn join(&self, channel: &str, client: ClientInfo) -> Result<(), Error> {
        let options = self.namespaces.check(channel)?;
        if !options.presence {
            return Err(Error::new(ErrorKind::NotAvailable));
        }
        let mut shard = self.shard(channel);
        let ch = match shard.get_mut(channel) {
            Some(ch) => ch,
            None => {
                let name: Arc<str> = Arc::from(channel);
                shard
                    .entry(name.clone())
                    .or_insert_with(|| Box::new(Channel::new(name)))
            }
        };
        ch.join(Arc::new(client));
        Ok(())
    }

    async fn leave(&self, channel: &str, client_id: &str) -> Result<(), Error> {
        let options = self.namespaces.check(channel)?;
        if !options.presence {
            return Err(Error::new(ErrorKind::NotAvailable));
        }
        if let Some(ch) = self.shard(channel).get_mut(channel) {
            // An idle channel is forgotten by `sweep` once it has been idle for a TTL.
            ch.leave(client_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Outbox;
    use std::time::Duration;

    /// A subscription with an outbox of its own, as each connection has.
    struct Sub {
        sub: Subscription,
        position: StreamPosition,
        recovery: Recovery,
        outbox: Outbox,
    }

    impl Sub {
        fn position(&self) -> &StreamPosition {
            &self.position
        }

        fn recovery(&self) -> &Recovery {
            &self.recovery
        }

        fn recovered(&self) -> bool {
            matches!(self.recovery, Recovery::Recovered(_))
        }

        fn take_recovered(&mut self) -> Vec<Arc<Event>> {
            match &mut self.recovery {
                Recovery::Recovered(v) => std::mem::take(v),
                _ => Vec::new(),
            }
        }

        async fn recv(&self) -> Result<Arc<Event>, Error> {
            let (id, event) = self.outbox.recv().await?;
            assert_eq!(id, self.sub.id(), "an event for another subscription");
            Ok(event)
        }

        fn try_recv(&self) -> Result<Option<Arc<Event>>, Error> {
            Ok(self.outbox.try_recv()?.map(|(_, event)| event))
        }
    }

    async fn subscribe(
        e: &MemoryEngine,
        channel: &str,
        client: ClientInfo,
        since: Option<StreamPosition>,
        now: Instant,
    ) -> Result<Sub, Error> {
        subscribe_with_room(e, 1 << 16, channel, client, since, now).await
    }

    /// [`subscribe`] with an outbox of `capacity` events.
    async fn subscribe_with_room(
        e: &MemoryEngine,
        capacity: usize,
        channel: &str,
        client: ClientInfo,
        since: Option<StreamPosition>,
        now: Instant,
    ) -> Result<Sub, Error> {
        let outbox = Outbox::new(capacity);
        let Subscribed {
            subscription,
            position,
            recovery,
        } = e
            .subscribe(channel, Arc::new(client), since, outbox.sender(), now)
            .await?;
        Ok(Sub {
            sub: subscription,
            position,
            recovery,
            outbox,
        })
    }

    fn data(n: u64) -> Bytes {
        Bytes::from(format!("{{\"n\":{n}}}"))
    }

    fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().filter_map(|e| e.offset()).collect()
    }

    fn engine(options: NamespaceOptions) -> MemoryEngine {
        MemoryEngine::new(NamespaceConfig::new().default_namespace(options))
    }

    #[tokio::test]
    async fn offsets_strictly_increase_from_one() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let mut epoch = None;
        for i in 1..=5 {
            let pos = e.publish("news", data(i), t).await.unwrap();
            assert_eq!(pos.offset, i);
            assert_eq!(epoch.get_or_insert(pos.epoch.clone()), &pos.epoch);
        }
        let other = e.publish("sport", data(1), t).await.unwrap();
        assert_eq!(other.offset, 1);
        assert_ne!(Some(other.epoch), epoch);
    }

    #[tokio::test]
    async fn invalid_input_is_refused() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let err = e
            .publish("news", Bytes::from_static(b"{"), t)
            .await
            .unwrap_err();
        assert!(err.is_invalid_data());
        let err = e.publish("nope:x", data(1), t).await.unwrap_err();
        assert!(err.is_unknown_namespace());
        let err = e.history("", 10, t).await.unwrap_err();
        assert!(err.is_invalid_channel());
        assert!(e.is_empty());
    }

    #[tokio::test]
    async fn history_is_newest_k_oldest_first() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        for i in 1..=10 {
            e.publish("news", data(i), t).await.unwrap();
        }
        let h = e.history("news", 3, t).await.unwrap();
        assert_eq!(offsets(&h.publications), [8, 9, 10]);
        assert_eq!(h.position.offset, 10);
        assert!(h.publications[0].to_json().contains(r#""data":{"n":8}"#));
        let all = e.history("news", 100, t).await.unwrap();
        assert_eq!(offsets(&all.publications), (1..=10).collect::<Vec<_>>());
        let none = e.history("news", 0, t).await.unwrap();
        assert!(none.publications.is_empty());
        assert_eq!(none.position, h.position);
        let missing = e.history("empty", 5, t).await.unwrap();
        assert_eq!(missing.position.offset, 0);
        assert!(missing.publications.is_empty());
    }

    #[tokio::test]
    async fn history_trimmed_by_count() {
        let e = engine(NamespaceOptions::default().history_size(4));
        let t = Instant::now();
        for i in 1..=10 {
            e.publish("news", data(i), t).await.unwrap();
        }
        let h = e.history("news", 100, t).await.unwrap();
        assert_eq!(offsets(&h.publications), [7, 8, 9, 10]);
    }

    #[tokio::test]
    async fn history_trimmed_by_ttl_and_channel_dropped() {
        let e = engine(NamespaceOptions::default().history_ttl(Duration::from_secs(60)));
        let t = Instant::now();
        for i in 1..=3 {
            e.publish("news", data(i), t + Duration::from_secs(10 * i))
                .await
                .unwrap();
        }
        // At t+75 s the publication of t+10 s is 65 s old; t+20 s is exactly 55 s old.
        let h = e
            .history("news", 100, t + Duration::from_secs(75))
            .await
            .unwrap();
        assert_eq!(offsets(&h.publications), [2, 3]);
        let h = e
            .history("news", 100, t + Duration::from_secs(89))
            .await
            .unwrap();
        assert_eq!(offsets(&h.publications), [3]);
        // Nothing left and nobody subscribed: the channel keeps its position for one more
        // TTL (a client resuming from offset 3 has missed nothing), then goes, and comes
        // back anew.
        let h = e
            .history("news", 100, t + Duration::from_secs(90))
            .await
            .unwrap();
        assert!(h.publications.is_empty());
        assert_eq!(h.position.offset, 3);
        let back = subscribe(
            &e,
            "news",
            ClientInfo::new("c"),
            Some(h.position.clone()),
            t + Duration::from_secs(100),
        )
        .await
        .unwrap();
        assert!(back.recovered());
        e.unsubscribe(back.sub, t + Duration::from_secs(100))
            .await
            .unwrap();
        assert_eq!(e.len(), 1);
        e.sweep(t + Duration::from_secs(159));
        assert_eq!(e.len(), 1, "idle for 59 s only");
        e.sweep(t + Duration::from_secs(161));
        assert!(e.is_empty());
        let again = e
            .publish("news", data(4), t + Duration::from_secs(162))
            .await
            .unwrap();
        assert_eq!(again.offset, 1);
    }

    #[tokio::test]
    async fn sweep_trims_and_drops_idle_channels() {
        let e = engine(NamespaceOptions::default().history_ttl(Duration::from_secs(1)));
        let t = Instant::now();
        e.publish("a", data(1), t).await.unwrap();
        let sub = subscribe(&e, "b", ClientInfo::new("c"), None, t)
            .await
            .unwrap();
        e.publish("b", data(1), t).await.unwrap();
        assert_eq!(e.len(), 2);
        e.sweep(t + Duration::from_secs(5));
        assert_eq!(e.len(), 2, "a is idle from now on, kept for one TTL");
        e.sweep(t + Duration::from_secs(6));
        assert_eq!(e.len(), 1, "b has a subscriber");
        e.unsubscribe(sub.sub, t + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(e.len(), 1, "kept for one TTL after it became idle");
        e.sweep(t + Duration::from_secs(6));
        e.sweep(t + Duration::from_secs(7));
        assert!(e.is_empty());
    }

    #[tokio::test]
    async fn subscriber_receives_live_publications() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let sub = subscribe(&e, "news", ClientInfo::new("c"), None, t)
            .await
            .unwrap();
        assert!(!sub.recovered());
        assert!(matches!(sub.recovery(), Recovery::NotRequested));
        assert_eq!(sub.position().offset, 0);
        e.publish("news", data(1), t).await.unwrap();
        let ev = sub.recv().await.unwrap();
        assert_eq!(ev.offset(), Some(1));
        assert_eq!(ev.channel(), "news");
        assert!(sub.try_recv().unwrap().is_none());
    }

    #[tokio::test]
    async fn recovery_succeeds_within_history() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let mut last = None;
        for i in 1..=5 {
            last = Some(e.publish("news", data(i), t).await.unwrap());
        }
        let last = last.unwrap();
        let since = StreamPosition {
            offset: 2,
            epoch: last.epoch.clone(),
        };
        let mut sub = subscribe(&e, "news", ClientInfo::new("c"), Some(since), t)
            .await
            .unwrap();
        assert!(sub.recovered());
        assert_eq!(offsets(&sub.take_recovered()), [3, 4, 5]);
        assert_eq!(sub.position(), &last);
        // Already up to date: recovered, nothing missed.
        let sub = subscribe(&e, "news", ClientInfo::new("d"), Some(last), t)
            .await
            .unwrap();
        assert!(sub.recovered());
        assert!(matches!(sub.recovery(), Recovery::Recovered(v) if v.is_empty()));
    }

    #[tokio::test]
    async fn recovery_fails_on_epoch_mismatch_or_trimmed_history() {
        let e = engine(NamespaceOptions::default().history_size(3));
        let t = Instant::now();
        let mut last = None;
        for i in 1..=10 {
            last = Some(e.publish("news", data(i), t).await.unwrap());
        }
        let epoch = last.unwrap().epoch;
        let client = || ClientInfo::new("c");
        let at = |offset, epoch: &str| {
            Some(StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            })
        };
        let sub = subscribe(&e, "news", client(), at(8, "other"), t)
            .await
            .unwrap();
        assert!(!sub.recovered());
        assert!(matches!(sub.recovery(), Recovery::Failed));
        // History holds 8..=10: from 7 on works, from 6 on does not.
        let sub = subscribe(&e, "news", client(), at(7, &epoch), t)
            .await
            .unwrap();
        assert!(sub.recovered());
        let sub = subscribe(&e, "news", client(), at(6, &epoch), t)
            .await
            .unwrap();
        assert!(!sub.recovered());
        // A position from the future.
        let sub = subscribe(&e, "news", client(), at(11, &epoch), t)
            .await
            .unwrap();
        assert!(!sub.recovered());
        // Expired by TTL.
        let later = t + Duration::from_secs(601);
        let sub = subscribe(&e, "news", client(), at(9, &epoch), later)
            .await
            .unwrap();
        assert!(!sub.recovered());
        assert_eq!(sub.position().offset, 10);
    }

    #[tokio::test]
    async fn restarted_engine_has_new_epoch() {
        let t = Instant::now();
        let first = MemoryEngine::default();
        let pos = first.publish("news", data(1), t).await.unwrap();
        drop(first);
        let second = MemoryEngine::default();
        second.publish("news", data(1), t).await.unwrap();
        let sub = subscribe(&second, "news", ClientInfo::new("c"), Some(pos), t)
            .await
            .unwrap();
        assert!(!sub.recovered());
    }

    /// Publishes 1..=N from another task while subscribing with `since` at varying moments:
    /// the recovered publications followed by the live ones are exactly 1..=N.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publish_recovery_has_no_gap_or_duplicate() {
        const N: u64 = 2000;
        let e = Arc::new(engine(NamespaceOptions::default().history_size(N as usize)));
        for round in 0..20u64 {
            let channel = format!("race{round}");
            let t = Instant::now();
            let first = e.publish(&channel, data(1), t).await.unwrap();
            let published = Arc::new(AtomicU64::new(1));
            let publisher = {
                let e = e.clone();
                let channel = channel.clone();
                let published = published.clone();
                tokio::spawn(async move {
                    for i in 2..=N {
                        e.publish(&channel, data(i), t).await.unwrap();
                        published.store(i, Ordering::Relaxed);
                        if i % 16 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            };
            // Subscribe somewhere in the middle of the publisher's run.
            while published.load(Ordering::Relaxed) < round * 90 {
                tokio::task::yield_now().await;
            }
            let since = StreamPosition {
                offset: 1,
                epoch: first.epoch.clone(),
            };
            let mut sub = subscribe(&e, &channel, ClientInfo::new("c"), Some(since), t)
                .await
                .unwrap();
            assert!(sub.recovered(), "round {round}");
            let mut seen = offsets(&sub.take_recovered());
            assert_eq!(seen.last().copied().unwrap_or(1), sub.position().offset);
            while seen.last().copied().unwrap_or(1) < N {
                let ev = sub.recv().await.unwrap();
                seen.extend(ev.offset());
            }
            publisher.await.unwrap();
            assert!(sub.try_recv().unwrap().is_none());
            assert_eq!(seen, (2..=N).collect::<Vec<_>>(), "round {round}");
        }
    }

    #[tokio::test]
    async fn resume_after_ten_thousand_publications() {
        const N: u64 = 10_000;
        let e = engine(NamespaceOptions::default().history_size(N as usize));
        let t = Instant::now();
        let sub = subscribe(&e, "feed", ClientInfo::new("c"), None, t)
            .await
            .unwrap();
        for i in 1..=N {
            e.publish("feed", data(i), t).await.unwrap();
        }
        let mut last = None;
        for i in 1..=4000 {
            let ev = sub.recv().await.unwrap();
            assert_eq!(ev.offset(), Some(i));
            if let EventKind::Publication { offset, epoch, .. } = ev.kind() {
                last = Some(StreamPosition {
                    offset: *offset,
                    epoch: epoch.to_string(),
                });
            }
        }
        e.unsubscribe(sub.sub, t).await.unwrap();
        let mut sub = subscribe(&e, "feed", ClientInfo::new("c"), last, t)
            .await
            .unwrap();
        assert!(sub.recovered());
        assert_eq!(
            offsets(&sub.take_recovered()),
            (4001..=N).collect::<Vec<_>>()
        );
        e.publish("feed", data(N + 1), t).await.unwrap();
        assert_eq!(sub.recv().await.unwrap().offset(), Some(N + 1));
    }

    #[tokio::test]
    async fn lagging_subscriber_gets_lag_error() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let slow = subscribe_with_room(&e, 2, "news", ClientInfo::new("c"), None, t)
            .await
            .unwrap();
        for i in 1..=5 {
            e.publish("news", data(i), t).await.unwrap();
        }
        let err = slow.recv().await.unwrap_err();
        assert!(err.is_lagged());
        assert_eq!(err.lagged_by(), Some(3));
        assert!(err.to_string().contains("slow consumer"));
        let slow2 = subscribe_with_room(&e, 2, "news", ClientInfo::new("d"), None, t)
            .await
            .unwrap();
        for i in 6..=9 {
            e.publish("news", data(i), t).await.unwrap();
        }
        assert!(slow2.try_recv().unwrap_err().is_lagged());
    }

    #[tokio::test]
    async fn presence_join_leave_events_and_listing() {
        let config =
            NamespaceConfig::new().namespace("chat", NamespaceOptions::default().presence(true));
        let e = MemoryEngine::new(config);
        let t = Instant::now();
        let mut ann = ClientInfo::new("c1");
        ann.user_id = Some("ann".into());
        let a = subscribe(&e, "chat:lobby", ann.clone(), None, t)
            .await
            .unwrap();
        let b = subscribe(&e, "chat:lobby", ClientInfo::new("c2"), None, t)
            .await
            .unwrap();

        let ev = a.recv().await.unwrap();
        assert_eq!(ev.kind(), &EventKind::Join(ann.clone()));
        let ev = a.recv().await.unwrap();
        assert_eq!(ev.kind(), &EventKind::Join(ClientInfo::new("c2")));
        assert_eq!(
            ev.to_json(),
            r#"{"channel":"chat:lobby","join":{"client":"c2","user":null,"info":null}}"#
        );

        let members = e.presence("chat:lobby").await.unwrap();
        assert_eq!(members, [ann.clone(), ClientInfo::new("c2")]);

        e.unsubscribe(b.sub, t).await.unwrap();
        let ev = a.recv().await.unwrap();
        assert_eq!(ev.kind(), &EventKind::Leave(ClientInfo::new("c2")));
        assert_eq!(e.presence("chat:lobby").await.unwrap(), [ann.clone()]);

        // Explicit join/leave; a second join of the same client is not an event.
        e.join("chat:lobby", ClientInfo::new("c3")).await.unwrap();
        e.join("chat:lobby", ClientInfo::new("c3")).await.unwrap();
        e.leave("chat:lobby", "c3").await.unwrap();
        e.leave("chat:lobby", "c3").await.unwrap();
        assert!(
            matches!(a.recv().await.unwrap().kind(), EventKind::Join(c) if c.client_id == "c3")
        );
        assert!(
            matches!(a.recv().await.unwrap().kind(), EventKind::Leave(c) if c.client_id == "c3")
        );
        assert!(a.try_recv().unwrap().is_none());

        // No offsets are spent on presence.
        assert_eq!(e.publish("chat:lobby", data(1), t).await.unwrap().offset, 1);

        e.unsubscribe(a.sub, t).await.unwrap();
        assert!(e.presence("chat:lobby").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn presence_off_by_default() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let sub = subscribe(&e, "news", ClientInfo::new("c1"), None, t)
            .await
            .unwrap();
        let _other = subscribe(&e, "news", ClientInfo::new("c2"), None, t)
            .await
            .unwrap();
        assert!(sub.try_recv().unwrap().is_none());
        assert!(e.presence("news").await.unwrap_err().is_not_available());
        assert!(e
            .join("news", ClientInfo::new("c3"))
            .await
            .unwrap_err()
            .is_not_available());
    }

    #[test]
    fn epochs_differ() {
        let a = Channel::new(Arc::from("a"));
        let b = Channel::new(Arc::from("a"));
        assert_ne!(a.epoch_str(), b.epoch_str());
        assert_eq!(a.epoch_str().len(), 16);
        assert_eq!(a.position().epoch, a.epoch_str());
    }

    /// Issue 14: a subscription's end must reach the engine, or a networked engine would
    /// keep delivering to (and a channel keep the memory of) a subscriber that has gone.
    #[tokio::test]
    async fn a_subscriptions_end_reaches_the_engine() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let a = subscribe(&e, "news", ClientInfo::new("a"), None, t)
            .await
            .unwrap();
        let b = subscribe(&e, "news", ClientInfo::new("b"), None, t)
            .await
            .unwrap();
        assert_eq!(e.subscriber_count("news"), 2);
        e.unsubscribe(a.sub, t).await.unwrap();
        assert_eq!(e.subscriber_count("news"), 1);
        // A connection that went away without unsubscribing (its outbox dropped) is
        // forgotten at the next delivery.
        drop(b);
        e.publish("news", data(1), t).await.unwrap();
        assert_eq!(e.subscriber_count("news"), 0);
    }

    /// One outbox for many channels: events of every channel arrive in the order they
    /// were published, each tagged with its own subscription.
    #[tokio::test]
    async fn one_outbox_serves_many_subscriptions() {
        let e = MemoryEngine::default();
        let t = Instant::now();
        let outbox = Outbox::new(100);
        let mut ids = Vec::new();
        for ch in ["a", "b", "c"] {
            let sub = e
                .subscribe(ch, Arc::new(ClientInfo::new("x")), None, outbox.sender(), t)
                .await
                .unwrap();
            ids.push((ch, sub.subscription.id()));
        }
        for (i, ch) in ["c", "a", "b", "a"].iter().enumerate() {
            e.publish(ch, data(i as u64), t).await.unwrap();
        }
        let mut got = Vec::new();
        while let Some((id, ev)) = outbox.try_recv().unwrap() {
            let (ch, want) = ids.iter().find(|(c, _)| *c == ev.channel()).unwrap();
            assert_eq!(id, *want, "{ch}");
            got.push(ev.channel().to_owned());
        }
        assert_eq!(got, ["c", "a", "b", "a"]);
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let e = MemoryEngine::default();
        let t = Instant::now();
        send(e.publish("news", data(1), t));
        let outbox = Outbox::new(1);
        let client = Arc::new(ClientInfo::new("c"));
        send(e.subscribe("news", client, None, outbox.sender(), t));
        send(e.history("news", 1, t));
        send(e.presence("news"));
    }
}
