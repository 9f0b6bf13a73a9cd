//! The node without sockets: simulated clients (an outbox each, as a connection has) and a
//! clock the tests move drive a [`Node`] over the in-memory engine, wrapped in a broker
//! that records what the node asks of it.

use super::*;
use crate::engine::{
    EngineFuture, HistoryPage, ManualClock, MemoryBroker, MemoryPresence, StreamOptions,
};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// A broker that records the node's subscriptions, and can publish on its own around a
/// history read (as other nodes would, racing with a subscribe).
#[derive(Debug)]
struct Recording {
    inner: MemoryBroker,
    /// Channels the node is subscribed to, as the broker sees it.
    subscribed: Mutex<HashSet<String>>,
    /// Publications to make just before and just after the next history read.
    race: Mutex<Option<(u64, u64)>>,
}

impl Recording {
    fn new(clock: &ManualClock) -> Arc<Self> {
        Arc::new(Recording {
            inner: MemoryBroker::with_clock(Arc::new(clock.clone())),
            subscribed: Mutex::new(HashSet::new()),
            race: Mutex::new(None),
        })
    }

    fn subscribed(&self) -> BTreeSet<String> {
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
    ) -> EngineFuture<'a, StreamPosition> {
        self.inner.publish(channel, data, options)
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
                self.inner.publish(channel, data(0), options).await?;
            }
            let page = self.inner.history(channel, query, options).await?;
            for _ in 0..after {
                self.inner.publish(channel, data(0), options).await?;
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
}

struct Harness {
    node: Node,
    broker: Arc<Recording>,
    clock: ManualClock,
}

fn namespaces(history_size: usize) -> NamespaceConfig {
    let ns = NamespaceOptions::default()
        .history_size(history_size)
        .history_ttl(Duration::from_secs(60));
    NamespaceConfig::new()
        .default_namespace(ns.clone())
        .namespace("chat", ns.presence(true))
}

fn harness(history_size: usize) -> Harness {
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

fn data(n: u64) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}

fn json(n: u64) -> Json {
    Json::parse(data(n)).unwrap()
}

fn offsets(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().filter_map(|e| e.offset()).collect()
}

/// Everything waiting in `outbox`, or the lag error.
fn drain(outbox: &Outbox) -> Result<Vec<(u64, Arc<Event>)>, Error> {
    let mut out = Vec::new();
    while let Some(e) = outbox.try_recv()? {
        out.push(e);
    }
    Ok(out)
}

fn client(id: &str) -> Arc<ClientInfo> {
    Arc::new(ClientInfo::new(id))
}

#[tokio::test]
async fn invalid_input_is_refused() {
    let h = harness(10);
    let outbox = Outbox::new(8);
    let e = h
        .node
        .subscribe("", client("c"), None, outbox.sender())
        .await
        .unwrap_err();
    assert!(e.is_invalid_channel());
    let e = h.node.publish("nope:x", json(1)).await.unwrap_err();
    assert!(e.is_unknown_namespace());
    assert!(h
        .node
        .presence("news")
        .await
        .unwrap_err()
        .is_not_available());
    assert_eq!(h.node.channel_count(), 0);
    assert!(h.broker.subscribed().is_empty());
}

#[tokio::test]
async fn live_delivery_then_history_and_positions() {
    let h = harness(3);
    let outbox = Outbox::new(64);
    let sub = h
        .node
        .subscribe("news", client("c"), None, outbox.sender())
        .await
        .unwrap();
    assert_eq!(sub.position.offset, 0);
    assert!(matches!(sub.recovery, Recovery::NotRequested));
    for n in 1..=5 {
        let p = h.node.publish("news", json(n)).await.unwrap();
        assert_eq!(p.offset, n);
        assert_eq!(p.epoch, sub.position.epoch);
    }
    let got = drain(&outbox).unwrap();
    assert!(got.iter().all(|(id, _)| *id == sub.subscription.id()));
    let events: Vec<_> = got.into_iter().map(|(_, e)| e).collect();
    assert_eq!(offsets(&events), [1, 2, 3, 4, 5]);
    let history = h.node.history("news", 2).await.unwrap();
    assert_eq!(offsets(&history.publications), [4, 5]);
    assert_eq!(history.position.offset, 5);
    assert_eq!(
        offsets(&h.node.history("news", 100).await.unwrap().publications),
        [3, 4, 5],
        "trimmed by count"
    );
}

#[tokio::test]
async fn recovery_within_history_and_failures() {
    let h = harness(100);
    let first = h.node.publish("feed", json(1)).await.unwrap();
    for n in 2..=10 {
        h.node.publish("feed", json(n)).await.unwrap();
    }
    let outbox = Outbox::new(64);
    let since = StreamPosition {
        offset: 4,
        epoch: first.epoch.clone(),
    };
    let mut sub = h
        .node
        .subscribe("feed", client("c"), Some(since), outbox.sender())
        .await
        .unwrap();
    assert!(sub.recovered());
    assert_eq!(offsets(&sub.take_recovered()), (5..=10).collect::<Vec<_>>());
    assert_eq!(sub.position.offset, 10);
    h.node.unsubscribe(sub.subscription, &client("c")).await;

    for (since, why) in [
        (
            StreamPosition {
                offset: 4,
                epoch: "another".into(),
            },
            "epoch",
        ),
        (
            StreamPosition {
                offset: 11,
                epoch: first.epoch.clone(),
            },
            "future offset",
        ),
    ] {
        let sub = h
            .node
            .subscribe("feed", client("c"), Some(since), outbox.sender())
            .await
            .unwrap();
        assert!(matches!(sub.recovery, Recovery::Failed), "{why}");
        h.node.unsubscribe(sub.subscription, &client("c")).await;
    }
}

#[tokio::test]
async fn history_beyond_its_size_is_not_recovered() {
    let h = harness(3);
    let first = h.node.publish("feed", json(1)).await.unwrap();
    for n in 2..=10 {
        h.node.publish("feed", json(n)).await.unwrap();
    }
    let outbox = Outbox::new(64);
    let since = StreamPosition {
        offset: 5,
        epoch: first.epoch,
    };
    let sub = h
        .node
        .subscribe("feed", client("c"), Some(since), outbox.sender())
        .await
        .unwrap();
    assert!(matches!(sub.recovery, Recovery::Failed));
    assert_eq!(sub.position.offset, 10);
}

/// Publications racing with a subscribe (made by the broker around its history read, as
/// other nodes would): none lost, none twice, recovered ones first.
#[tokio::test]
async fn publications_racing_a_subscribe_are_merged_exactly_once() {
    for (before, after) in [(0, 0), (3, 0), (0, 3), (2, 5)] {
        let h = harness(100);
        let first = h.node.publish("feed", json(1)).await.unwrap();
        let witness = Outbox::new(256);
        // Another local subscriber keeps the channel linked, so the racing publications
        // are delivered to the node while the new subscription buffers.
        let other = h
            .node
            .subscribe("feed", client("w"), None, witness.sender())
            .await
            .unwrap();
        *h.broker.race.lock().unwrap() = Some((before, after));
        let outbox = Outbox::new(256);
        let since = StreamPosition {
            offset: 1,
            epoch: first.epoch.clone(),
        };
        let mut sub = h
            .node
            .subscribe("feed", client("c"), Some(since), outbox.sender())
            .await
            .unwrap();
        assert!(sub.recovered());
        let recovered = offsets(&sub.take_recovered());
        assert_eq!(recovered, (2..=1 + before).collect::<Vec<_>>());
        assert_eq!(sub.position.offset, 1 + before);
        let live: Vec<_> = drain(&outbox)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(
            offsets(&live),
            (2 + before..=1 + before + after).collect::<Vec<_>>(),
            "race ({before}, {after})"
        );
        let all: Vec<_> = drain(&witness)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(offsets(&all).len() as u64, before + after);
        h.node.unsubscribe(other.subscription, &client("w")).await;
    }
}

#[tokio::test]
async fn the_broker_learns_of_first_and_last_local_subscribers() {
    let h = harness(10);
    let (a, b) = (Outbox::new(8), Outbox::new(8));
    let sa = h
        .node
        .subscribe("news", client("a"), None, a.sender())
        .await
        .unwrap();
    let sb = h
        .node
        .subscribe("news", client("b"), None, b.sender())
        .await
        .unwrap();
    assert_eq!(h.broker.subscribed(), BTreeSet::from(["news".to_owned()]));
    assert_eq!(h.node.subscriber_count("news"), 2);
    h.node.unsubscribe(sa.subscription, &client("a")).await;
    assert_eq!(h.broker.subscribed().len(), 1, "b is still subscribed");
    // The connection of b ends: its outbox goes, then it unsubscribes, as connections do.
    drop(b);
    h.node.unsubscribe(sb.subscription, &client("b")).await;
    assert!(
        h.broker.subscribed().is_empty(),
        "the end of the last subscription must reach the broker"
    );
    assert_eq!(h.node.channel_count(), 0);
    assert!(!h.broker.inner.is_subscribed("news"));
}

#[tokio::test]
async fn slow_consumer_is_lagged_and_others_are_not_held_up() {
    let h = harness(10);
    let slow = Outbox::new(2);
    let fast = Outbox::new(64);
    h.node
        .subscribe("news", client("s"), None, slow.sender())
        .await
        .unwrap();
    h.node
        .subscribe("news", client("f"), None, fast.sender())
        .await
        .unwrap();
    for n in 1..=5 {
        h.node.publish("news", json(n)).await.unwrap();
    }
    let err = drain(&slow).unwrap_err();
    assert!(err.is_lagged());
    assert_eq!(err.lagged_by(), Some(3));
    assert_eq!(drain(&fast).unwrap().len(), 5);
}

#[tokio::test]
async fn presence_join_leave_events_listing_and_refresh() {
    let h = harness(10);
    let mut ann = ClientInfo::new("c1");
    ann.user_id = Some("ann".into());
    let ann = Arc::new(ann);
    let a = Outbox::new(64);
    let b = Outbox::new(64);
    let sa = h
        .node
        .subscribe("chat:lobby", ann.clone(), None, a.sender())
        .await
        .unwrap();
    let sb = h
        .node
        .subscribe("chat:lobby", client("c2"), None, b.sender())
        .await
        .unwrap();
    let kinds: Vec<EventKind> = drain(&a)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.kind().clone())
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Join((*ann).clone()),
            EventKind::Join(ClientInfo::new("c2"))
        ],
        "the new subscriber receives its own join too"
    );
    assert_eq!(
        h.node.presence("chat:lobby").await.unwrap(),
        [(*ann).clone(), ClientInfo::new("c2")]
    );
    let stats = h.node.presence_stats("chat:lobby").await.unwrap();
    assert_eq!((stats.clients, stats.users), (2, 1));
    h.node.unsubscribe(sb.subscription, &client("c2")).await;
    let (_, leave) = a.try_recv().unwrap().unwrap();
    assert_eq!(leave.kind(), &EventKind::Leave(ClientInfo::new("c2")));
    assert_eq!(
        h.node.presence("chat:lobby").await.unwrap(),
        [(*ann).clone()]
    );
    // No offsets are spent on presence.
    assert_eq!(
        h.node.publish("chat:lobby", json(1)).await.unwrap().offset,
        1
    );

    // Entries live on while the node refreshes them, past their TTL.
    for _ in 0..10 {
        h.clock.advance(Duration::from_secs(15));
        h.node.sweep().await;
    }
    assert_eq!(h.node.presence("chat:lobby").await.unwrap().len(), 1);
    h.node.unsubscribe(sa.subscription, &ann).await;
    assert!(h.node.presence("chat:lobby").await.unwrap().is_empty());
}

#[tokio::test]
async fn idle_channel_keeps_its_epoch_for_a_ttl() {
    let h = harness(10);
    let outbox = Outbox::new(8);
    let sub = h
        .node
        .subscribe("news", client("c"), None, outbox.sender())
        .await
        .unwrap();
    let position = sub.position.clone();
    h.node.unsubscribe(sub.subscription, &client("c")).await;
    h.clock.advance(Duration::from_secs(30));
    h.node.sweep().await;
    let again = h
        .node
        .subscribe("news", client("c"), Some(position.clone()), outbox.sender())
        .await
        .unwrap();
    assert!(again.recovered(), "back within the TTL: same epoch");
    h.node.unsubscribe(again.subscription, &client("c")).await;
    h.clock.advance(Duration::from_secs(61));
    h.node.sweep().await;
    h.node.sweep().await;
    let later = h
        .node
        .subscribe("news", client("c"), Some(position), outbox.sender())
        .await
        .unwrap();
    assert!(matches!(later.recovery, Recovery::Failed), "a new epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publish_and_recovery_have_no_gap_or_duplicate() {
    const N: u64 = 2000;
    let h = Arc::new(harness(N as usize));
    for round in 0..10u64 {
        let channel = format!("race{round}");
        let first = h.node.publish(&channel, json(1)).await.unwrap();
        let published = Arc::new(AtomicU64::new(1));
        let publisher = {
            let (h, channel, published) = (h.clone(), channel.clone(), published.clone());
            tokio::spawn(async move {
                for i in 2..=N {
                    h.node.publish(&channel, json(i)).await.unwrap();
                    published.store(i, Ordering::Relaxed);
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        while published.load(Ordering::Relaxed) < round * 150 {
            tokio::task::yield_now().await;
        }
        let since = StreamPosition {
            offset: 1,
            epoch: first.epoch.clone(),
        };
        let outbox = Outbox::new(N as usize);
        let mut sub = h
            .node
            .subscribe(&channel, client("c"), Some(since), outbox.sender())
            .await
            .unwrap();
        assert!(sub.recovered(), "round {round}");
        let mut seen = offsets(&sub.take_recovered());
        assert_eq!(seen.last().copied().unwrap_or(1), sub.position.offset);
        while seen.last().copied().unwrap_or(1) < N {
            let (_, ev) = tokio::time::timeout(Duration::from_secs(10), outbox.recv())
                .await
                .expect("a publication was lost")
                .unwrap();
            seen.extend(ev.offset());
        }
        publisher.await.unwrap();
        assert!(outbox.try_recv().unwrap().is_none());
        assert_eq!(seen, (2..=N).collect::<Vec<_>>(), "round {round}");
    }
}

#[tokio::test]
async fn one_outbox_serves_many_subscriptions() {
    let h = harness(10);
    let outbox = Outbox::new(64);
    let mut ids = BTreeMap::new();
    for ch in ["a", "b", "c"] {
        let sub = h
            .node
            .subscribe(ch, client("c"), None, outbox.sender())
            .await
            .unwrap();
        ids.insert(sub.subscription.id(), ch);
    }
    for ch in ["c", "a", "b"] {
        h.node.publish(ch, json(1)).await.unwrap();
    }
    let got: Vec<&str> = drain(&outbox)
        .unwrap()
        .into_iter()
        .map(|(id, e)| {
            assert_eq!(ids[&id], e.channel());
            ids[&id]
        })
        .collect();
    assert_eq!(got, ["c", "a", "b"]);
}

#[test]
fn futures_are_send() {
    fn send<T: Send>(_: T) {}
    let h = harness(1);
    let outbox = Outbox::new(1);
    send(h.node.publish("a", json(1)));
    send(h.node.subscribe("a", client("c"), None, outbox.sender()));
    send(h.node.history("a", 1));
    send(h.node.sweep());
}

/// A randomized model of many clients: subscribe (resuming from their last position),
/// publish, unsubscribe, disconnect, read their queues (small: slow consumers happen,
/// and resume from history), and let time pass. Checks exactly-once, in-order delivery
/// of every publication to every subscription (recovered, then live), presence, and
/// that the broker is subscribed exactly to the channels with local subscribers.
#[tokio::test]
async fn randomized_model_of_clients() {
    for seed in 1..=40u64 {
        model(seed, 600).await;
    }
}

/// A tiny deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
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

async fn model(seed: u64, steps: usize) {
    const CHANNELS: [&str; 4] = ["news", "feed", "chat:a", "chat:b"];
    const CLIENTS: usize = 6;
    let h = harness(8);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut sims: Vec<Sim> = (0..CLIENTS).map(|_| Sim::default()).collect();
    let info: Vec<Arc<ClientInfo>> = (0..CLIENTS).map(|i| client(&format!("c{i}"))).collect();
    for step in 0..steps {
        let at = format!("seed {seed} step {step}");
        let i = rng.below(CLIENTS as u64) as usize;
        let ch = CHANNELS[rng.below(CHANNELS.len() as u64) as usize];
        match rng.below(10) {
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
            _ => match rng.below(3) {
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
        let at = format!("seed {seed} end, client {i}");
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
