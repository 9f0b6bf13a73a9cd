//! A model of the node's clients, without sockets: simulated connections (an outbox each,
//! as a connection has) and a clock the test moves drive a [`Node`] over the in-memory
//! engine, wrapped in a broker that records what the node asks of it. Used by the node's
//! tests (a randomized run over many seeds) and by the `hub_node` fuzz target (choices
//! drawn from the fuzzer's input).

use super::*;
use crate::engine::{
    EngineFuture, HistoryPage, ManualClock, MemoryBroker, MemoryPresence, StreamOptions,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// A broker that records the node's subscriptions, and can publish on its own around a
/// history read (as other nodes would, racing with a subscribe).
#[derive(Debug)]
pub struct Recording {
    /// The broker that does the work.
    pub inner: MemoryBroker,
    /// Channels the node is subscribed to, as the broker sees it.
    subscribed: Mutex<HashSet<String>>,
    /// Publications to make just before and just after the next history read.
    pub race: Mutex<Option<(u64, u64)>>,
}

impl Recording {
    pub fn new(clock: &ManualClock) -> Arc<Self> {
        Arc::new(Recording {
            inner: MemoryBroker::with_clock(Arc::new(clock.clone())),
            subscribed: Mutex::new(HashSet::new()),
            race: Mutex::new(None),
        })
    }

    pub fn subscribed(&self) -> BTreeSet<String> {
        self.subscribed.lock().unwrap().iter().cloned().collect()
    }
}

impl Broker for Recording {
    fn start(&self, events: Arc<dyn BrokerEvents>) {
        self.inner.start(events)
    }
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: Bytes,
        options: StreamOptions,
        key: Option<&'a str>,
    ) -> EngineFuture<'a, StreamPosition> {
        self.inner.publish(channel, data, options, key)
    }
    fn publish_join<'a>(&'a self, channel: &'a str, c: &'a ClientInfo) -> EngineFuture<'a, ()> {
        self.inner.publish_join(channel, c)
    }
    fn publish_leave<'a>(&'a self, channel: &'a str, c: &'a ClientInfo) -> EngineFuture<'a, ()> {
        self.inner.publish_leave(channel, c)
    }
    fn subscribe<'a>(&'a self, channel: &'a Arc<str>) -> EngineFuture<'a, ()> {
        let fresh = self.subscribed.lock().unwrap().insert(channel.to_string());
        assert!(fresh, "subscribed twice to {channel}");
        self.inner.subscribe(channel)
    }
    fn unsubscribe<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        let was = self.subscribed.lock().unwrap().remove(channel);
        assert!(was, "unsubscribed from {channel} without a subscription");
        self.inner.unsubscribe(channel)
    }
    fn history<'a>(
        &'a self,
        channel: &'a str,
        query: HistoryQuery,
        options: StreamOptions,
    ) -> EngineFuture<'a, HistoryPage> {
        Box::pin(async move {
            let race = self.race.lock().unwrap().take();
            let (before, after) = race.unwrap_or((0, 0));
            for _ in 0..before {
                self.inner.publish(channel, data(0), options, None).await?;
            }
            let page = self.inner.history(channel, query, options).await?;
            for _ in 0..after {
                self.inner.publish(channel, data(0), options, None).await?;
            }
            Ok(page)
        })
    }
    fn remove_history<'a>(&'a self, channel: &'a str) -> EngineFuture<'a, ()> {
        self.inner.remove_history(channel)
    }
    fn sweep(&self) -> EngineFuture<'_, ()> {
        self.inner.sweep()
    }
    fn stream_count(&self) -> Option<usize> {
        self.inner.stream_count()
    }
    fn streams_by_namespace(&self) -> Option<Vec<(String, usize)>> {
        Broker::streams_by_namespace(&self.inner)
    }
    fn history_bytes(&self) -> Option<u64> {
        Broker::history_bytes(&self.inner)
    }

    fn history_shed(&self) -> Option<u64> {
        Broker::history_shed(&self.inner)
    }
}

pub struct Harness {
    /// The node under test.
    pub node: Node,
    /// Its broker.
    pub broker: Arc<Recording>,
    /// The clock of the node and the engine.
    pub clock: ManualClock,
}

pub fn namespaces(history_size: usize) -> NamespaceConfig {
    let ns = NamespaceOptions::default()
        .history_size(history_size)
        .history_ttl(Duration::from_secs(60));
    NamespaceConfig::new()
        .default_namespace(ns.clone())
        .namespace("chat", ns.presence(true))
}

pub fn harness(history_size: usize) -> Harness {
    let clock = ManualClock::new();
    let broker = Recording::new(&clock);
    let presence = Arc::new(MemoryPresence::with_clock(Arc::new(clock.clone())));
    let node = Node::with_clock(
        broker.clone(),
        presence,
        namespaces(history_size),
        NodeOptions::default(),
        Arc::new(clock.clone()),
    );
    Harness {
        node,
        broker,
        clock,
    }
}

pub fn data(n: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}

pub fn json(n: u64) -> Json {
    Json::parse(data(n)).unwrap()
}

pub fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().filter_map(|e| e.offset()).collect()
}

/// Everything waiting in `outbox`, or the lag error.
pub fn drain(outbox: &Outbox) -> Result<Vec<(u64, Arc<Event>)>, Error> {
    let mut out = Vec::new();
    while let Some(e) = outbox.try_recv()? {
        out.push(e);
    }
    Ok(out)
}

pub fn client(id: &str) -> Arc<ClientInfo> {
    Arc::new(ClientInfo::new(id))
}

/// A tiny deterministic generator (xorshift), so a failing seed can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One simulated connection.
#[derive(Default)]
struct Sim {
    outbox: Option<Outbox>,
    /// channel → (subscription id, next offset expected, epoch).
    subs: BTreeMap<String, (u64, u64, String)>,
    /// Where each channel was left: resumed from with `since`.
    last: BTreeMap<String, StreamPosition>,
}

/// Runs the model for at most `steps` steps, each drawing its choices from `draw` (a value
/// below the bound given, or `None` when the input is spent: the run ends there). `label`
/// names the run in failure messages.
pub async fn run(draw: &mut dyn FnMut(u64) -> Option<u64>, steps: usize, label: &str) {
    const CHANNELS: [&str; 4] = ["news", "feed", "chat:a", "chat:b"];
    const CLIENTS: usize = 6;
    let h = harness(8);
    let mut sims: Vec<Sim> = (0..CLIENTS).map(|_| Sim::default()).collect();
    let info: Vec<Arc<ClientInfo>> = (0..CLIENTS).map(|i| client(&format!("c{i}"))).collect();
    macro_rules! pick {
        ($n:expr) => {
            match draw($n) {
                Some(v) => v,
                None => break,
            }
        };
    }
    for step in 0..steps {
        let at = format!("{label} step {step}");
        let i = pick!(CLIENTS as u64) as usize;
        let ch = CHANNELS[pick!(CHANNELS.len() as u64) as usize];
        match pick!(10) {
            0..=2 => {
                let sim = &mut sims[i];
                if sim.subs.contains_key(ch) {
                    continue;
                }
                let outbox = sim.outbox.get_or_insert_with(|| Outbox::new(6)).sender();
                let since = sim.last.get(ch).cloned();
                let mut s = h
                    .node
                    .subscribe(ch, info[i].clone(), since.clone(), outbox)
                    .await
                    .unwrap();
                let recovered = offsets(&s.take_recovered());
                if let (Some(since), true) = (&since, s.recovered()) {
                    let want: Vec<u64> = (since.offset + 1..=s.position.offset).collect();
                    assert_eq!(recovered, want, "{at}: recovered");
                }
                sim.subs.insert(
                    ch.to_owned(),
                    (
                        s.subscription.id(),
                        s.position.offset + 1,
                        s.position.epoch.clone(),
                    ),
                );
            }
            3 => {
                if let Some((id, next, epoch)) = sims[i].subs.remove(ch) {
                    h.node
                        .unsubscribe(Subscription::new(id, Arc::from(ch)), &info[i])
                        .await;
                    let position = StreamPosition {
                        offset: next - 1,
                        epoch,
                    };
                    sims[i].last.insert(ch.to_owned(), position);
                }
            }
            4..=6 => {
                h.node.publish(ch, json(step as u64)).await.unwrap();
            }
            7 | 8 => {
                if !read(&mut sims[i], &at) {
                    disconnect(&h, &mut sims[i], &info[i]).await;
                }
            }
            _ => match pick!(3) {
                0 => disconnect(&h, &mut sims[i], &info[i]).await,
                1 => {
                    h.clock.advance(Duration::from_secs(7));
                    h.node.sweep().await;
                }
                _ => h.node.sweep().await,
            },
        }
        check(&h, &sims, &info, &at).await;
    }
    // In the end every subscription has received every publication of its channel.
    for (i, sim) in sims.iter_mut().enumerate() {
        let at = format!("{label} end, client {i}");
        if read(sim, &at) {
            for (ch, (_, next, _)) in &sim.subs {
                let position = h.node.history(ch, 0).await.unwrap().position;
                assert_eq!(*next, position.offset + 1, "{at}: {ch} incomplete");
            }
        }
    }
}

/// Reads the sim's outbox, checking each publication is the next one of its subscription.
/// False when it lagged (a slow consumer: the connection is closed).
fn read(sim: &mut Sim, at: &str) -> bool {
    let Some(outbox) = &sim.outbox else {
        return true;
    };
    let events = match drain(outbox) {
        Ok(e) => e,
        Err(e) if e.is_lagged() => return false,
        Err(e) => panic!("{at}: {e}"),
    };
    for (id, event) in events {
        let Some((sub_id, next, epoch)) = sim.subs.get_mut(event.channel()) else {
            continue;
        };
        if *sub_id != id {
            // Queued for a subscription that has since ended.
            continue;
        }
        if let EventKind::Publication {
            offset, epoch: e, ..
        } = event.kind()
        {
            assert_eq!(&**e, epoch.as_str(), "{at}: epoch of {}", event.channel());
            assert_eq!(*offset, *next, "{at}: offset on {}", event.channel());
            *next += 1;
        }
    }
    true
}

/// The connection ends: its outbox goes, then every subscription ends.
async fn disconnect(h: &Harness, sim: &mut Sim, info: &ClientInfo) {
    sim.outbox = None;
    for (ch, (id, next, epoch)) in std::mem::take(&mut sim.subs) {
        h.node
            .unsubscribe(Subscription::new(id, Arc::from(ch.as_str())), info)
            .await;
        let position = StreamPosition {
            offset: next - 1,
            epoch,
        };
        sim.last.insert(ch, position);
    }
}

/// Presence lists exactly the subscribed clients; the broker is subscribed exactly to the
/// channels with local subscribers.
async fn check(h: &Harness, sims: &[Sim], info: &[Arc<ClientInfo>], at: &str) {
    for ch in ["chat:a", "chat:b"] {
        let listed: BTreeSet<String> = h
            .node
            .presence(ch)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        let subscribed: BTreeSet<String> = sims
            .iter()
            .zip(info)
            .filter(|(s, _)| s.subs.contains_key(ch))
            .map(|(_, c)| c.client_id.clone())
            .collect();
        assert_eq!(listed, subscribed, "{at}: presence of {ch}");
    }
    let local: BTreeSet<String> = sims.iter().flat_map(|s| s.subs.keys().cloned()).collect();
    assert_eq!(h.broker.subscribed(), local, "{at}: broker subscriptions");
}

/// Runs the model on `data` (the fuzzer's input), on a runtime of its own.
#[cfg(feature = "fuzzing")]
pub fn run_bytes(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut bytes = data.iter();
    let mut draw = |n: u64| bytes.next().map(|b| u64::from(*b) % n);
    rt.block_on(run(&mut draw, usize::MAX, "fuzz input"));
}
