//! The in-memory broker: the channel streams of one process, in shards.
//!
//! A stream is its position (epoch, last offset) and its history (a deque of the
//! publications, sharing their data with what was delivered). Nothing is preallocated: a
//! stream without history is a few dozen bytes. A publication is kept and handed to the
//! node under the stream's shard lock, which is what makes the node's recovery gap-free
//! and duplicate-free; streams in other shards are not held up.
//!
//! A stream with no history that the node is not subscribed to is idle: it keeps its epoch
//! and offset for one history TTL (a client that comes back within it resumes with
//! `recovered: true` when nothing was published meanwhile, instead of finding a new
//! epoch), then it is dropped and a later use starts a new epoch. History is trimmed by
//! count when publishing and by age whenever the stream is touched or swept.
//!
//! A stream that was never published to (offset 0) is dropped as soon as the node
//! unsubscribes: subscribing to many names and leaving leaves nothing behind (issue 15).
//! Its epoch is not lost with it: a stream starts with the epoch of its slot (one of
//! [`EPOCH_SLOTS`] by the name's hash), and a slot takes a new random epoch whenever a
//! stream of it that had publications is dropped. So a client that saw offset 0 and comes
//! back to a stream made again at offset 0 resumes with `recovered: true`, while one whose
//! publications were forgotten meanwhile finds a new epoch, as before.
//!
//! At most `max_streams` streams are held ([`MemoryBroker::max_streams`]): a call that
//! would make one more fails with [`Error::is_too_many_channels`], and nothing grows.

use super::{
    Broker, BrokerEvents, ClientInfo, Clock, EngineFuture, Error, ErrorKind, HistoryPage,
    HistoryQuery, Publication, StreamOptions, StreamPosition, SystemClock,
};
use bytes::Bytes;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Shards of the stream map: publications on channels of different shards never wait for
/// each other.
const SHARDS: usize = 64;

/// Epoch slots of a shard: a stream starts with its slot's epoch (see the module's
/// documentation). 64 × 64 = 4,096 slots in all.
const EPOCH_SLOTS: usize = 64;

/// Memory a kept publication costs besides its data: its slot in the history deque (the
/// time it was published and the [`Publication`]), counted in `history_bytes`.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<(Instant, Publication)>();

/// Streams held when nothing else is said ([`MemoryBroker::max_streams`]).
pub const DEFAULT_MAX_STREAMS: usize = 1_000_000;

/// Bytes of history held when nothing else is said ([`MemoryBroker::max_history_bytes`]).
pub const DEFAULT_MAX_HISTORY_BYTES: u64 = 512 << 20;

#[derive(Debug)]
struct Shard {
    streams: HashMap<Arc<str>, Box<Stream>>,
    epochs: [u64; EPOCH_SLOTS],
    /// Streams held by namespace (the name's part before `:`, `""` without one).
    by_namespace: HashMap<Box<str>, usize>,
}

impl Shard {
    fn new() -> Self {
        Shard {
            streams: HashMap::new(),
            epochs: std::array::from_fn(|_| new_epoch()),
            by_namespace: HashMap::new(),
        }
    }

    fn count(&mut self, channel: &str, add: bool) {
        let ns = channel.split_once(':').map_or("", |(ns, _)| ns);
        if add {
            match self.by_namespace.get_mut(ns) {
                Some(n) => *n += 1,
                None => {
                    self.by_namespace.insert(ns.into(), 1);
                }
            }
        } else if let Some(n) = self.by_namespace.get_mut(ns) {
            *n -= 1;
            if *n == 0 {
                self.by_namespace.remove(ns);
            }
        }
    }
}

/// Channel streams and their delivery, in this process: a [`Broker`] for one node.
#[derive(Debug)]
pub struct MemoryBroker {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    /// Idle streams' expiry is kept in whole seconds since this.
    start: Instant,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    /// Streams held, and the most allowed.
    streams: AtomicUsize,
    max_streams: usize,
    /// Bytes held by history: data plus [`ENTRY_OVERHEAD`] per kept publication.
    history_bytes: AtomicU64,
    max_history_bytes: u64,
    /// Publications dropped from history early to stay within `max_history_bytes`.
    history_shed: AtomicU64,
}

/// The publications a stream keeps.
#[derive(Debug)]
struct Kept {
    /// The stream's epoch as its publications carry it (shared by all of them).
    epoch: Arc<str>,
    /// Consecutive offsets ending at the stream's, oldest first, with the time each was
    /// published.
    publications: VecDeque<(Instant, Publication)>,
}

#[derive(Debug)]
struct Stream {
    /// 64 random bits, written as 16 hex digits: a number here, so that a stream holds no
    /// string for it.
    epoch: u64,
    offset: u64,
    /// What is kept of the publications; none (one null pointer) while there is no
    /// history, as for most per-user channels most of the time.
    history: Option<Box<Kept>>,
    /// When an idle stream may be forgotten, in seconds since the broker was made (see
    /// [`MemoryBroker::secs`]); 0 while it is not idle.
    idle_until: u32,
    /// The history TTL last given, in milliseconds: trims by age and keeps an idle stream.
    ttl_ms: u32,
    /// The node is subscribed: deliver to it.
    subscribed: bool,
    /// Idempotency keys of recent publications (none, one null pointer, until a publish
    /// gives one).
    keys: Option<Box<Keys>>,
}

/// Idempotency keys of a stream's recent publications: key → (offset, when published).
type Keys = HashMap<Box<str>, (u64, Instant)>;

/// Idempotency keys a stream holds at most; past it, the oldest go first.
const MAX_KEYS: usize = 4096;

impl Stream {
    fn new(options: StreamOptions, epoch: u64) -> Self {
        Stream {
            epoch,
            offset: 0,
            history: None,
            idle_until: 0,
            ttl_ms: ttl_ms(options.history_ttl),
            subscribed: false,
            keys: None,
        }
    }

    /// The offset already published with `key` within the TTL, if any.
    fn published_with(&mut self, key: &str, now: Instant) -> Option<u64> {
        let ttl = self.ttl();
        let keys = self.keys.as_mut()?;
        match keys.get(key) {
            Some(&(offset, at)) if now.saturating_duration_since(at) < ttl => Some(offset),
            Some(_) => {
                keys.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers that `offset` was published with `key`.
    fn remember(&mut self, key: &str, offset: u64, now: Instant) {
        let ttl = self.ttl();
        let keys = self.keys.get_or_insert_with(Default::default);
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        }
        if keys.len() >= MAX_KEYS {
            if let Some(oldest) = keys
                .iter()
                .min_by_key(|(_, (o, _))| *o)
                .map(|(k, _)| k.clone())
            {
                keys.remove(&oldest);
            }
        }
        keys.insert(key.into(), (offset, now));
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
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

    /// The epoch as publications carry it: shared with the kept ones when there are some.
    fn epoch_arc(&self) -> Arc<str> {
        match &self.history {
            Some(k) => k.epoch.clone(),
            None => Arc::from(self.epoch_str()),
        }
    }

    /// The kept publications, oldest first.
    fn kept(&self) -> impl Iterator<Item = &Publication> + '_ {
        self.history
            .iter()
            .flat_map(|k| k.publications.iter().map(|(_, p)| p))
    }

    fn kept_len(&self) -> usize {
        self.history.as_ref().map_or(0, |k| k.publications.len())
    }

    /// Keeps `publication`, just published, within `size`; returns the bytes of history
    /// added and removed.
    fn keep(&mut self, publication: Publication, size: usize, now: Instant) -> (u64, u64) {
        if size == 0 {
            return (0, 0);
        }
        let added = entry_bytes(&publication);
        let mut removed = 0;
        let kept = self.history.get_or_insert_with(|| {
            Box::new(Kept {
                epoch: publication.epoch.clone(),
                publications: VecDeque::new(),
            })
        });
        kept.publications.push_back((now, publication));
        while kept.publications.len() > size {
            if let Some((_, p)) = kept.publications.pop_front() {
                removed += entry_bytes(&p);
            }
        }
        (added, removed)
    }

    /// Drops the oldest kept publications until `excess` bytes are freed or none is left
    /// (history still ends at the stream's offset). Returns the bytes and publications
    /// dropped.
    fn shed(&mut self, excess: u64) -> (u64, u64) {
        let Some(kept) = &mut self.history else {
            return (0, 0);
        };
        let (mut freed, mut count) = (0, 0);
        while freed < excess {
            let Some((_, p)) = kept.publications.pop_front() else {
                break;
            };
            freed += entry_bytes(&p);
            count += 1;
        }
        if kept.publications.is_empty() {
            self.history = None;
        }
        (freed, count)
    }

    /// Bytes its history holds.
    fn history_bytes(&self) -> u64 {
        self.kept().map(entry_bytes).sum()
    }

    /// Drops publications as old as the TTL; a stream left with none gives the memory
    /// back. Returns the bytes of history removed.
    fn trim(&mut self, now: Instant) -> u64 {
        let ttl = self.ttl();
        let Some(kept) = &mut self.history else {
            return 0;
        };
        let mut removed = 0;
        while let Some((at, _)) = kept.publications.front() {
            if now.saturating_duration_since(*at) < ttl {
                break;
            }
            if let Some((_, p)) = kept.publications.pop_front() {
                removed += entry_bytes(&p);
            }
        }
        if kept.publications.is_empty() {
            self.history = None;
        }
        removed
    }

    /// Notes whether the stream is idle now; true once it has been idle for a whole
    /// history TTL, when it may be forgotten, and at once when it was never published to
    /// (its slot keeps its epoch).
    fn expired(&mut self, now_secs: u32) -> bool {
        if self.subscribed || self.history.is_some() {
            self.idle_until = 0;
            return false;
        }
        if self.offset == 0 {
            return true;
        }
        if self.idle_until == 0 {
            let ttl = self.ttl().as_secs_f64().ceil() as u64;
            self.idle_until = now_secs.saturating_add(u32::try_from(ttl).unwrap_or(u32::MAX));
        }
        now_secs >= self.idle_until
    }

    /// The page `query` asks for.
    fn page(&self, query: HistoryQuery) -> HistoryPage {
        let (publications, complete) = match query {
            HistoryQuery::Position => (Vec::new(), true),
            HistoryQuery::Newest(n) => {
                let skip = self.kept_len().saturating_sub(n);
                (self.kept().skip(skip).cloned().collect(), true)
            }
            HistoryQuery::Since(since) => self.since(&since),
        };
        HistoryPage {
            publications,
            position: self.position(),
            complete,
        }
    }

    /// The publications after `since`, and whether history still has all of them.
    fn since(&self, since: &StreamPosition) -> (Vec<Publication>, bool) {
        if since.epoch != self.epoch_str() || since.offset > self.offset {
            return (Vec::new(), false);
        }
        let missed = self.offset - since.offset;
        // History holds consecutive offsets ending at `self.offset`.
        let kept = self.kept_len();
        if (kept as u64) < missed {
            return (Vec::new(), false);
        }
        let skip = kept - missed as usize;
        (self.kept().skip(skip).cloned().collect(), true)
    }
}

/// What a kept publication costs in `history_bytes`.
fn entry_bytes(p: &Publication) -> u64 {
    (p.data.len() + ENTRY_OVERHEAD) as u64
}

fn ttl_ms(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX)
}

/// A new epoch: 64 random bits as 16 hex digits, from the standard library's per-process
/// random hash keys plus a counter.
fn new_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

impl MemoryBroker {
    /// A broker reading the system's clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A broker reading `clock` (tests pass a [`super::ManualClock`]).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryBroker {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            start: clock.now(),
            clock,
            events: OnceLock::new(),
            streams: AtomicUsize::new(0),
            max_streams: DEFAULT_MAX_STREAMS,
            history_bytes: AtomicU64::new(0),
            max_history_bytes: DEFAULT_MAX_HISTORY_BYTES,
            history_shed: AtomicU64::new(0),
        }
    }

    /// Holds at most about `n` bytes of history in all (default
    /// [`DEFAULT_MAX_HISTORY_BYTES`]): a publication that takes the total past it is
    /// delivered as always, and its channel's oldest publications (the new one too, if
    /// need be) leave history at once. A client that resumes past what is left gets
    /// `recovered: false`, as when `history_size` trims; nothing is refused.
    pub fn max_history_bytes(mut self, n: u64) -> Self {
        self.max_history_bytes = n;
        self
    }

    /// Publications dropped from history early to stay within
    /// [`max_history_bytes`](Self::max_history_bytes), since the start.
    pub fn history_shed(&self) -> u64 {
        self.history_shed.load(Ordering::Relaxed)
    }

    /// Holds at most `n` streams (default [`DEFAULT_MAX_STREAMS`]): a publish or subscribe
    /// that would make one more fails with [`Error::is_too_many_channels`].
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n;
        self
    }

    /// Bytes held by history: the data of the kept publications plus the broker's
    /// per-publication overhead, kept up to date as publications come and go.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes.load(Ordering::Relaxed)
    }

    /// Counts a new stream, unless there are `max_streams` already.
    fn reserve(&self) -> bool {
        self.streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .is_ok()
    }

    /// Forgets a stream taken from `shard`: gives its count and history back, and gives
    /// its slot a new epoch when it had publications (they are forgotten with it).
    fn forget(&self, shard: &mut Shard, slot: usize, channel: &str, stream: &Stream) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
        self.history_bytes
            .fetch_sub(stream.history_bytes(), Ordering::Relaxed);
        shard.count(channel, false);
        if stream.offset > 0 {
            shard.epochs[slot] = new_epoch();
        }
    }

    /// `now` as whole seconds since the broker was made, from 1 (0 means "not idle").
    fn secs(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.start).as_secs() + 1;
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    /// Number of streams held.
    pub fn len(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// True when no stream is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the node is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.shard(channel)
            .0
            .streams
            .get(channel)
            .is_some_and(|s| s.subscribed)
    }

    fn hash(&self, channel: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write(channel.as_bytes());
        h.finish() as usize
    }

    /// The locked shard that holds `channel`, and the channel's epoch slot in it.
    fn shard(&self, channel: &str) -> (MutexGuard<'_, Shard>, usize) {
        let h = self.hash(channel);
        (lock(&self.shards[h % SHARDS]), (h / SHARDS) % EPOCH_SLOTS)
    }

    /// Streams held by namespace (the name's part before `:`; `""` for names without
    /// one), in no order.
    pub fn streams_by_namespace(&self) -> Vec<(String, usize)> {
        let mut all: HashMap<String, usize> = HashMap::new();
        for shard in self.shards.iter() {
            for (ns, n) in lock(shard).by_namespace.iter() {
                *all.entry(ns.to_string()).or_default() += n;
            }
        }
        all.into_iter().collect()
    }

    /// Runs `f` on `channel`'s stream after trimming its history, then drops the stream
    /// if it is left idle long enough. `f` gets the node's event sink when the node is
    /// subscribed. An absent stream is created with `options` ([`Use::Create`]; also the
    /// TTL of an existing one), with a TTL of 0 until the node says more ([`Use::Keep`]),
    /// or not at all ([`Use::Existing`], `None` then). A stream that cannot be made
    /// (`max_streams`) gives `Some(Err)`.
    fn with_stream<R>(
        &self,
        channel: &str,
        how: Use<'_>,
        f: impl FnOnce(&mut Stream, Instant, Option<&Arc<dyn BrokerEvents>>) -> R,
    ) -> Option<Result<R, Error>> {
        let now = self.clock.now();
        let now_secs = self.secs(now);
        let (mut guard, slot) = self.shard(channel);
        let shard = &mut *guard;
        if !shard.streams.contains_key(channel) {
            let (name, options) = match how {
                Use::Create(o) => (Arc::from(channel), o),
                // The TTL comes with the node's next history read.
                Use::Keep(name) => (
                    name.clone(),
                    StreamOptions {
                        history_size: 0,
                        history_ttl: Duration::ZERO,
                    },
                ),
                Use::Existing => return None,
            };
            if !self.reserve() {
                return Some(Err(Error::new(ErrorKind::TooManyChannels)));
            }
            shard.count(channel, true);
            let stream = Stream::new(options, shard.epochs[slot]);
            shard.streams.insert(name, Box::new(stream));
        } else if let Use::Create(o) = how {
            if let Some(s) = shard.streams.get_mut(channel) {
                s.ttl_ms = ttl_ms(o.history_ttl);
            }
        }
        let stream = shard.streams.get_mut(channel)?;
        let trimmed = stream.trim(now);
        let events = self.events.get().filter(|_| stream.subscribed);
        let r = f(stream, now, events);
        self.history_bytes.fetch_sub(trimmed, Ordering::Relaxed);
        if stream.expired(now_secs) {
            if let Some(stream) = shard.streams.remove(channel) {
                self.forget(shard, slot, channel, &stream);
            }
        }
        Some(Ok(r))
    }
}

/// How [`MemoryBroker::with_stream`] finds a stream.
#[derive(Clone, Copy)]
enum Use<'a> {
    Create(StreamOptions),
    /// Keeps the name given as the map's key.
    Keep(&'a Arc<str>),
    Existing,
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker for MemoryBroker {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events);
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        options: StreamOptions,
        idempotency_key: Option<&'a str>,
    ) -> EngineFuture<'a, StreamPosition> {
        let r = self.with_stream(channel, Use::Create(options), |s, now, events| {
            if let Some(key) = idempotency_key {
                if let Some(offset) = s.published_with(key, now) {
                    return StreamPosition {
                        offset,
                        epoch: s.epoch_str(),
                    };
                }
                s.remember(key, s.offset + 1, now);
            }
            s.offset += 1;
            let publication = Publication {
                offset: s.offset,
                epoch: s.epoch_arc(),
                data,
            };
            if let Some(events) = events {
                events.publication(channel, publication.clone());
            }
            let (added, removed) = s.keep(publication, options.history_size, now);
            let before = self.history_bytes.fetch_add(added, Ordering::Relaxed);
            self.history_bytes.fetch_sub(removed, Ordering::Relaxed);
            let total = (before + added).saturating_sub(removed);
            if total > self.max_history_bytes {
                let (freed, count) = s.shed(total - self.max_history_bytes);
                self.history_bytes.fetch_sub(freed, Ordering::Relaxed);
                self.history_shed.fetch_add(count, Ordering::Relaxed);
            }
            s.position()
        });
        let r = r.unwrap_or_else(|| Err(Error::new(ErrorKind::Closed)));
        Box::pin(std::future::ready(r))
    }

    fn publish_join<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        self.with_stream(channel, Use::Existing, |_, _, events| {
            if let Some(events) = events {
                events.join(channel, client);
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish_leave<'a>(
        &'a self,
        channel: &'a str,
        client: &'a ClientInfo,
    ) -> EngineFuture<'a, ()> {
        self.with_stream(channel, Use::Existing, |_, _, events| {
            if let Some(events) = events {
                events.leave(channel, client);
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn subscribe<'a>(&'a self, channel: &'a Arc<str>) -> EngineFuture<'a, ()> {
        // The TTL of a stream created here comes with the node's next history read.
        let r = self.with_stream(channel, Use::Keep(channel), |s, _, _| s.subscribed = true);
        Box::pin(std::future::ready(r.unwrap_or(Ok(()))))
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.with_stream(channel, Use::Existing, |s, _, _| s.subscribed = false);
        Box::pin(std::future::ready(Ok(())))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> EngineFuture<'a, HistoryPage> {
        // Reading the newest publications of a channel that has none creates nothing (a
        // client cannot make streams by reading); a subscribe's read gives it its epoch.
        let how = match query {
            HistoryQuery::Newest(_) => Use::Existing,
            _ => Use::Create(options),
        };
        let page = self
            .with_stream(channel, how, |s, _, _| s.page(query))
            .unwrap_or_else(|| {
                Ok(HistoryPage {
                    publications: Vec::new(),
                    position: StreamPosition {
                        offset: 0,
                        epoch: String::new(),
                    },
                    complete: true,
                })
            });
        Box::pin(std::future::ready(page))
    }

    fn remove_history<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.with_stream(channel, Use::Existing, |s, _, _| {
            self.history_bytes
                .fetch_sub(s.history_bytes(), Ordering::Relaxed);
            s.history = None;
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn sweep(&self) -> EngineFuture<'_, ()> {
        let now = self.clock.now();
        let now_secs = self.secs(now);
        for shard in self.shards.iter() {
            let mut guard = lock(shard);
            let shard = &mut *guard;
            let mut gone = Vec::new();
            shard.streams.retain(|name, s| {
                let trimmed = s.trim(now);
                self.history_bytes.fetch_sub(trimmed, Ordering::Relaxed);
                let expired = s.expired(now_secs);
                if expired {
                    gone.push((name.clone(), s.offset));
                }
                !expired
            });
            for (name, offset) in gone {
                self.streams.fetch_sub(1, Ordering::Relaxed);
                shard.count(&name, false);
                if offset > 0 {
                    let slot = (self.hash(&name) / SHARDS) % EPOCH_SLOTS;
                    shard.epochs[slot] = new_epoch();
                }
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn stream_count(&self) -> Option<usize> {
        Some(self.len())
    }

    fn streams_by_namespace(&self) -> Option<Vec<(String, usize)>> {
        Some(MemoryBroker::streams_by_namespace(self))
    }

    fn history_bytes(&self) -> Option<u64> {
        Some(MemoryBroker::history_bytes(self))
    }

    fn history_shed(&self) -> Option<u64> {
        Some(MemoryBroker::history_shed(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ManualClock;

    /// What the node would have received.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl BrokerEvents for Recorder {
        fn publication(&self, channel: &str, p: Publication) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{channel} {}", p.offset));
        }
        fn join(&self, channel: &str, c: &ClientInfo) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{channel} join {}", c.client_id));
        }
        fn leave(&self, channel: &str, c: &ClientInfo) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{channel} leave {}", c.client_id));
        }
        fn link_restored(&self) {}
        fn channel_lost(&self, _: &str) {}
    }

    fn options(size: usize, ttl_secs: u64) -> StreamOptions {
        StreamOptions {
            history_size: size,
            history_ttl: Duration::from_secs(ttl_secs),
        }
    }

    fn data(n: u64) -> Bytes {
        Bytes::from(format!("{{\"n\":{n}}}"))
    }

    fn offsets(p: &[Publication]) -> Vec<u64> {
        p.iter().map(|p| p.offset).collect()
    }

    fn broker() -> (MemoryBroker, ManualClock, Arc<Recorder>) {
        let clock = ManualClock::new();
        let b = MemoryBroker::with_clock(Arc::new(clock.clone()));
        let rec = Arc::new(Recorder::default());
        b.start(rec.clone());
        (b, clock, rec)
    }

    #[test]
    fn a_stream_is_small() {
        // docs/design.md ("Memory") quotes this size.
        assert_eq!(std::mem::size_of::<Stream>(), 48);
    }

    #[tokio::test]
    async fn a_key_publishes_once_within_the_ttl() {
        let (b, clock, rec) = broker();
        let o = options(10, 60);
        let ch: Arc<str> = Arc::from("a");
        b.subscribe(&ch).await.unwrap();
        let first = b.publish("a", data(1), o, Some("k1")).await.unwrap();
        let retry = b.publish("a", data(1), o, Some("k1")).await.unwrap();
        assert_eq!(first, retry);
        let other = b.publish("a", data(2), o, Some("k2")).await.unwrap();
        assert_eq!(other.offset, 2);
        // Another channel has its own keys.
        assert_eq!(
            b.publish("b", data(1), o, Some("k1")).await.unwrap().offset,
            1
        );
        assert_eq!(
            rec.0.lock().unwrap().len(),
            2,
            "the retry was not delivered"
        );
        clock.advance(Duration::from_secs(61));
        let late = b.publish("a", data(1), o, Some("k1")).await.unwrap();
        assert_eq!(late.offset, 3, "a key is forgotten after the history TTL");
    }

    #[tokio::test]
    async fn offsets_increase_from_one_in_one_epoch() {
        let (b, _, _) = broker();
        let o = options(10, 60);
        let p1 = b.publish("a", data(1), o, None).await.unwrap();
        let p2 = b.publish("a", data(2), o, None).await.unwrap();
        let other = b.publish("b", data(1), o, None).await.unwrap();
        assert_eq!((p1.offset, p2.offset, other.offset), (1, 2, 1));
        assert_eq!(p1.epoch, p2.epoch);
        assert_eq!(p1.epoch.len(), 16);
    }

    #[tokio::test]
    async fn only_subscribed_channels_are_delivered_in_order() {
        let (b, _, rec) = broker();
        let o = options(10, 60);
        b.publish("a", data(1), o, None).await.unwrap();
        b.subscribe(&Arc::from("a")).await.unwrap();
        b.publish("a", data(2), o, None).await.unwrap();
        b.publish_join("a", &ClientInfo::new("c1")).await.unwrap();
        b.publish("b", data(1), o, None).await.unwrap();
        b.publish_leave("a", &ClientInfo::new("c1")).await.unwrap();
        b.unsubscribe("a").await.unwrap();
        b.publish("a", data(3), o, None).await.unwrap();
        assert_eq!(*rec.0.lock().unwrap(), ["a 2", "a join c1", "a leave c1"]);
    }

    #[tokio::test]
    async fn history_newest_since_and_position() {
        let (b, _, _) = broker();
        let o = options(3, 60);
        for n in 1..=5 {
            b.publish("a", data(n), o, None).await.unwrap();
        }
        let newest = b.history("a", HistoryQuery::Newest(2), o).await.unwrap();
        assert_eq!(offsets(&newest.publications), [4, 5]);
        assert_eq!(newest.position.offset, 5);
        let all = b.history("a", HistoryQuery::Newest(100), o).await.unwrap();
        assert_eq!(offsets(&all.publications), [3, 4, 5], "trimmed by count");
        let epoch = all.position.epoch.clone();
        let since = |offset| {
            HistoryQuery::Since(StreamPosition {
                offset,
                epoch: epoch.clone(),
            })
        };
        let page = b.history("a", since(3), o).await.unwrap();
        assert!(page.complete);
        assert_eq!(offsets(&page.publications), [4, 5]);
        let page = b.history("a", since(5), o).await.unwrap();
        assert!(page.complete && page.publications.is_empty());
        assert!(
            !b.history("a", since(1), o).await.unwrap().complete,
            "trimmed"
        );
        assert!(
            !b.history("a", since(9), o).await.unwrap().complete,
            "future"
        );
        let other_epoch = HistoryQuery::Since(StreamPosition {
            offset: 4,
            epoch: "0000000000000000".into(),
        });
        assert!(!b.history("a", other_epoch, o).await.unwrap().complete);
        let pos = b.history("a", HistoryQuery::Position, o).await.unwrap();
        assert!(pos.publications.is_empty() && pos.position.offset == 5);
        b.remove_history("a").await.unwrap();
        let after = b.history("a", HistoryQuery::Newest(10), o).await.unwrap();
        assert!(after.publications.is_empty());
        assert_eq!(after.position, pos.position, "the position stays");
    }

    #[tokio::test]
    async fn reading_a_channel_that_does_not_exist_creates_nothing() {
        let (b, _, _) = broker();
        let o = options(10, 60);
        let page = b
            .history("never", HistoryQuery::Newest(10), o)
            .await
            .unwrap();
        assert_eq!(page.position.offset, 0);
        assert_eq!(page.position.epoch, "", "docs/protocol.md: no epoch yet");
        assert!(page.publications.is_empty() && b.is_empty());
        let pos = b.history("never", HistoryQuery::Position, o).await.unwrap();
        assert_eq!(pos.position.epoch.len(), 16, "a subscribe's read has one");
        assert!(b.is_empty(), "never published, not subscribed: not kept");
        b.subscribe(&Arc::from("never")).await.unwrap();
        let sub = b.history("never", HistoryQuery::Position, o).await.unwrap();
        assert_eq!(sub.position, pos.position, "the slot's epoch");
        assert_eq!(b.len(), 1);
    }

    #[tokio::test]
    async fn a_stream_never_published_to_goes_with_its_last_subscriber() {
        let (b, _, _) = broker();
        let o = options(10, 60);
        let mut seen = Vec::new();
        for n in 0..1000 {
            let name: Arc<str> = Arc::from(format!("flood{n}"));
            b.subscribe(&name).await.unwrap();
            let page = b.history(&name, HistoryQuery::Position, o).await.unwrap();
            seen.push((name, page.position));
        }
        assert_eq!(b.len(), 1000);
        for (name, _) in &seen {
            b.unsubscribe(name).await.unwrap();
        }
        assert!(b.is_empty(), "nothing left behind");
        assert!(b.streams_by_namespace().is_empty());
        // Coming back finds the same epoch at offset 0: nothing was missed.
        for (name, position) in &seen[..10] {
            let since = HistoryQuery::Since(position.clone());
            assert!(b.history(name, since, o).await.unwrap().complete);
        }
    }

    #[tokio::test]
    async fn at_most_max_streams_are_held() {
        let clock = ManualClock::new();
        let b = MemoryBroker::with_clock(Arc::new(clock.clone())).max_streams(3);
        let o = options(10, 60);
        for ch in ["a", "b", "c"] {
            b.publish(ch, data(1), o, None).await.unwrap();
        }
        let e = b.publish("d", data(1), o, None).await.unwrap_err();
        assert!(e.is_too_many_channels(), "{e}");
        let e = b.subscribe(&Arc::from("d")).await.unwrap_err();
        assert!(e.is_too_many_channels());
        let e = b.history("d", HistoryQuery::Position, o).await.unwrap_err();
        assert!(e.is_too_many_channels());
        assert_eq!(b.len(), 3);
        // Existing streams still take publications, and a stream that goes makes room.
        assert_eq!(b.publish("a", data(2), o, None).await.unwrap().offset, 2);
        for _ in 0..2 {
            clock.advance(Duration::from_secs(61));
            b.sweep().await.unwrap();
        }
        assert!(b.is_empty());
        b.publish("d", data(1), o, None).await.unwrap();
    }

    #[tokio::test]
    async fn history_bytes_and_namespaces_are_counted_as_they_change() {
        let (b, clock, _) = broker();
        let o = options(2, 60);
        let entry = (ENTRY_OVERHEAD + data(1).len()) as u64;
        assert_eq!(b.history_bytes(), 0);
        b.publish("chat:a", data(1), o, None).await.unwrap();
        b.publish("chat:b", data(1), o, None).await.unwrap();
        b.publish("news", data(1), o, None).await.unwrap();
        assert_eq!(b.history_bytes(), 3 * entry);
        let mut ns = b.streams_by_namespace();
        ns.sort();
        assert_eq!(ns, [("".to_string(), 1), ("chat".to_string(), 2)]);
        b.publish("news", data(2), o, None).await.unwrap();
        b.publish("news", data(3), o, None).await.unwrap();
        assert_eq!(b.history_bytes(), 4 * entry, "trimmed to 2 by count");
        b.remove_history("chat:a").await.unwrap();
        assert_eq!(b.history_bytes(), 3 * entry);
        clock.advance(Duration::from_secs(61));
        b.sweep().await.unwrap();
        assert_eq!(b.history_bytes(), 0, "trimmed by age");
        clock.advance(Duration::from_secs(61));
        b.sweep().await.unwrap();
        assert!(b.streams_by_namespace().is_empty());
    }

    #[tokio::test]
    async fn history_stays_within_its_memory_bound_and_resumes_past_it_are_not_recovered() {
        let clock = ManualClock::new();
        let entry = (ENTRY_OVERHEAD + data(1).len()) as u64;
        // Room for 10 publications in all; each channel may keep 100 by count.
        let b = MemoryBroker::with_clock(Arc::new(clock.clone())).max_history_bytes(10 * entry);
        let rec = Arc::new(Recorder::default());
        b.start(rec.clone());
        let o = options(100, 600);
        for c in ["a", "b"] {
            b.subscribe(&Arc::from(c)).await.unwrap();
        }
        for n in 1..=8 {
            b.publish("a", data(n), o, None).await.unwrap();
        }
        let b1 = b.publish("b", data(1), o, None).await.unwrap();
        for n in 2..=8 {
            b.publish("b", data(n), o, None).await.unwrap();
            assert!(b.history_bytes() <= 10 * entry, "within the bound");
        }
        assert_eq!(b.history_bytes(), 10 * entry);
        assert_eq!(
            b.history_shed(),
            6,
            "b, which passed the bound, shed its oldest"
        );
        // Every publication was delivered all the same.
        assert_eq!(rec.0.lock().unwrap().len(), 16);
        // What is left of b is consecutive and ends at its offset; a resume from before
        // it is not recovered, one within it is; a keeps all 8.
        let since = |offset| {
            HistoryQuery::Since(StreamPosition {
                offset,
                epoch: b1.epoch.clone(),
            })
        };
        let page = b.history("b", since(0), o).await.unwrap();
        assert!(!page.complete);
        let page = b.history("b", since(6), o).await.unwrap();
        assert!(page.complete);
        assert_eq!(offsets(&page.publications), [7, 8]);
        let page = b.history("a", HistoryQuery::Newest(100), o).await.unwrap();
        assert_eq!(page.publications.len(), 8);
        // One publication bigger than the whole bound is delivered and not kept.
        let big = Bytes::from(format!("\"{}\"", "x".repeat(20 * entry as usize)));
        b.publish("c", big, o, None).await.unwrap();
        assert!(b.history_bytes() <= 10 * entry);
        let page = b.history("c", HistoryQuery::Newest(10), o).await.unwrap();
        assert!(page.publications.is_empty());
        assert_eq!(page.position.offset, 1);
    }

    #[tokio::test]
    async fn idle_streams_keep_their_epoch_for_a_ttl_then_go() {
        let (b, clock, _) = broker();
        let o = options(10, 60);
        let first = b.publish("a", data(1), o, None).await.unwrap();
        clock.advance(Duration::from_secs(61));
        b.sweep().await.unwrap();
        // History expired: the stream is idle from now, and kept for one more TTL.
        assert_eq!(b.len(), 1);
        let pos = b.history("a", HistoryQuery::Position, o).await.unwrap();
        assert_eq!(pos.position, first, "same epoch and offset while idle");
        clock.advance(Duration::from_secs(61));
        b.sweep().await.unwrap();
        assert!(b.is_empty());
        let again = b.publish("a", data(2), o, None).await.unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch, "a new epoch");
    }

    #[tokio::test]
    async fn a_subscribed_stream_is_kept() {
        let (b, clock, _) = broker();
        let o = options(0, 1);
        b.subscribe(&Arc::from("a")).await.unwrap();
        let pos = b.history("a", HistoryQuery::Position, o).await.unwrap();
        clock.advance(Duration::from_secs(10));
        b.sweep().await.unwrap();
        assert!(b.is_subscribed("a"));
        let later = b.history("a", HistoryQuery::Position, o).await.unwrap();
        assert_eq!(pos.position, later.position);
        b.unsubscribe("a").await.unwrap();
        clock.advance(Duration::from_secs(2));
        b.sweep().await.unwrap();
        assert!(b.is_empty());
    }
}
