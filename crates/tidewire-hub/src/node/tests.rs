//! The node's tests, without sockets (see [`super::model`]).

use super::model::*;
use super::*;
use std::collections::{BTreeMap, BTreeSet};

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
async fn quiet_subscriptions_see_everything_and_are_seen_nowhere() {
    let h = harness(10);
    let member = Outbox::new(64);
    let sm = h
        .node
        .subscribe("chat:lobby", client("c1"), None, member.sender())
        .await
        .unwrap();
    drain(&member).unwrap(); // its own join
    let watcher = Outbox::new(64);
    let sw = h
        .node
        .subscribe_quietly("chat:lobby", client("admin"), None, watcher.sender())
        .await
        .unwrap();
    assert_ne!(sw.subscription.id(), sm.subscription.id());
    // No join for the watcher, and it is not present, even after refreshes.
    assert!(member.try_recv().unwrap().is_none());
    for _ in 0..5 {
        h.clock.advance(Duration::from_secs(25));
        h.node.sweep().await;
    }
    assert_eq!(
        h.node.presence("chat:lobby").await.unwrap(),
        [ClientInfo::new("c1")]
    );
    assert_eq!(h.node.local_channels(|_| true), [("chat:lobby".into(), 1)]);
    assert_eq!(h.node.channel_count(), 1);
    // It receives the publications and the others' presence events.
    h.node.publish("chat:lobby", json(1)).await.unwrap();
    h.node.unsubscribe(sm.subscription, &client("c1")).await;
    let kinds: Vec<EventKind> = drain(&watcher)
        .unwrap()
        .into_iter()
        .map(|(id, e)| {
            assert_eq!(id, sw.subscription.id());
            e.kind().clone()
        })
        .collect();
    assert!(matches!(kinds[0], EventKind::Publication { offset: 1, .. }));
    assert_eq!(kinds[1], EventKind::Leave(ClientInfo::new("c1")));
    // A channel with only quiet subscribers is not listed nor counted; ending one sends
    // no leave.
    assert!(h.node.local_channels(|_| true).is_empty());
    assert_eq!(h.node.channel_count(), 0);
    let other = Outbox::new(64);
    let so = h
        .node
        .subscribe_quietly("chat:lobby", client("admin2"), None, other.sender())
        .await
        .unwrap();
    h.node.unsubscribe(sw.subscription, &client("admin")).await;
    assert!(other.try_recv().unwrap().is_none());
    h.node.unsubscribe(so.subscription, &client("admin2")).await;
    assert_eq!(h.node.channel_count(), 0);
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
        .subscribe("news", client("c"), Some(position.clone()), outbox.sender())
        .await
        .unwrap();
    assert!(later.recovered(), "never published: nothing was missed");
    h.node.unsubscribe(later.subscription, &client("c")).await;
    // A publication while nobody listens, forgotten after its TTL and the idle TTL: the
    // stream comes back with a new epoch, so the client learns it missed something.
    h.node.publish("news", json(1)).await.unwrap();
    for _ in 0..2 {
        h.clock.advance(Duration::from_secs(61));
        h.node.sweep().await;
    }
    assert!(h.broker.inner.is_empty());
    let last = h
        .node
        .subscribe("news", client("c"), Some(position), outbox.sender())
        .await
        .unwrap();
    assert!(matches!(last.recovery, Recovery::Failed), "a new epoch");
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
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut draw = |n: u64| Some(rng.below(n));
        run(&mut draw, 600, &format!("seed {seed}")).await;
    }
}

/// Issue 15, defect 1: subscribing to many names and leaving left a stream per name for
/// the whole history TTL, so reconnecting grew the server without bound.
#[tokio::test]
async fn subscribe_floods_leave_no_streams_behind() {
    let h = harness(10);
    for conn in 0..50 {
        let outbox = Outbox::new(8);
        let mut subs = Vec::new();
        for n in 0..1000 {
            let channel = format!("flood{conn}x{n}");
            let s = h
                .node
                .subscribe(&channel, client("c"), None, outbox.sender());
            subs.push(s.await.unwrap().subscription);
        }
        assert_eq!(h.broker.inner.len(), 1000);
        // The connection ends: every subscription ends with it.
        for s in subs {
            h.node.unsubscribe(s, &client("c")).await;
        }
        assert!(h.broker.inner.is_empty(), "connection {conn}");
    }
    assert_eq!(h.node.channel_count(), 0);
    assert_eq!(h.broker.inner.history_bytes(), 0);
}

/// A publication that the history read of a new subscription covered but that reaches
/// the node only after the subscription went live (the engine's live message travels on
/// another connection than the read's reply, as with Redis) is not delivered to it again;
/// the channel's other subscribers get it, and publications past the read go to both.
#[test]
fn a_publication_covered_by_the_read_and_arriving_late_is_not_delivered_twice() {
    let registry = Registry::new();
    let (old, new) = (Outbox::new(16), Outbox::new(16));
    let sub = |id, outbox: &Outbox| LocalSub {
        id,
        outbox: outbox.sender(),
        client: client(&id.to_string()),
    };
    let read = StreamPosition {
        offset: 5,
        epoch: "e".into(),
    };
    registry.add("feed", sub(1, &old));
    registry.set_linked("feed");
    registry.go_live(
        "feed",
        1,
        &StreamPosition {
            offset: 3,
            epoch: "e".into(),
        },
    );
    registry.add("feed", sub(2, &new));
    // Published at 4 and 5 before the read of subscription 2, which reached 5: only 4 is
    // in the node yet (buffered while 2 starts).
    let publication = |offset| Publication {
        offset,
        epoch: Arc::from("e"),
        data: bytes::Bytes::from_static(b"0"),
    };
    BrokerEvents::publication(&registry, "feed", publication(4));
    registry.go_live("feed", 2, &read);
    for offset in [5, 6, 7] {
        BrokerEvents::publication(&registry, "feed", publication(offset));
    }
    let got = |outbox: &Outbox| {
        let events: Vec<_> = drain(outbox).unwrap().into_iter().map(|(_, e)| e).collect();
        offsets(&events)
    };
    assert_eq!(got(&old), [4, 5, 6, 7]);
    assert_eq!(got(&new), [6, 7], "4 and 5 came with the read");
    let empty = |r: &Registry| {
        r.shards
            .iter()
            .all(|s| lock(s).fresh.is_empty() && lock(s).fresh_old.is_empty())
    };
    assert!(
        empty(&registry),
        "the entry goes with the first publication past the read"
    );
    let at = |offset| StreamPosition {
        offset,
        epoch: "e".into(),
    };
    // Removed before anything past the read came: the entry goes too.
    registry.add("feed", sub(3, &Outbox::new(4)));
    registry.go_live("feed", 3, &at(9));
    assert!(!empty(&registry));
    registry.remove("feed", 3);
    assert!(empty(&registry));
    // A quiet channel: the entry lasts one to two sweeps, then goes (what was on its way
    // has come by then).
    let quiet = Outbox::new(4);
    registry.add("quiet", sub(4, &quiet));
    registry.set_linked("quiet");
    registry.go_live("quiet", 4, &at(2));
    registry.age_fresh();
    let late = Publication {
        offset: 2,
        epoch: Arc::from("e"),
        data: bytes::Bytes::from_static(b"0"),
    };
    BrokerEvents::publication(&registry, "quiet", late);
    assert!(got(&quiet).is_empty(), "still skipped after one sweep");
    registry.age_fresh();
    assert!(empty(&registry));
    // A channel never published on (offset 0) needs no entry at all.
    registry.add("new", sub(5, &Outbox::new(4)));
    registry.go_live("new", 5, &at(0));
    assert!(empty(&registry));
}
