//! The reconnecting clients against real `tidewire serve` and `tidewire echo` processes,
//! with a TCP proxy in between that cuts connections the way a network does (no close
//! frame): `tidewire::reconnect` (plain) and `tidewire_hub_client` (tidewire.v1).

mod common;

use common::hub::{serve, Serve};
use common::proxy::Proxy;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidewire::reconnect::{Backoff, Event, GiveUp, ReconnectingClient};
use tidewire::Message;
use tidewire_hub_client::{HubClient, HubEvent, Item, Subscription};
use tokio::time::{timeout, Instant};

/// A hub whose default namespace keeps 10,000 publications, without a publish rate limit.
fn hub_with_history(listen: Option<&str>) -> Serve {
    let config = common::temp_file(
        "history.toml",
        "[namespaces.default]\nhistory_size = 10000\nhistory_ttl = \"10m\"\n",
    );
    let args = ["--config", config.to_str().unwrap(), "--publish-rate", "0"];
    match listen {
        None => serve(&args),
        Some(addr) => {
            let (child, addr) = common::spawn_at("serve", addr, &args);
            Serve { child, addr }
        }
    }
}

/// Counts the hub client's connection events in the background.
#[derive(Default)]
struct Counts {
    connected: AtomicU64,
    disconnected: AtomicUsize,
}

fn watch_events(client: Arc<HubClient>) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Some(ev) = client.next_event().await {
            match ev {
                HubEvent::Connected { connection, .. } => {
                    c.connected.store(connection, Ordering::SeqCst)
                }
                HubEvent::Disconnected(_) => {
                    c.disconnected.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    counts
}

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let wait = async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"));
}

/// (a) 5,000 publications while the connection is cut 20 times: every one arrives exactly
/// once, in order, and nothing is reported lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publication_exactly_once_across_20_cuts() {
    const TOTAL: u64 = 5000;
    const CUTS: u64 = 20;
    let started = Instant::now();
    let srv = hub_with_history(None);
    let proxy = Proxy::start(srv.addr).await;
    let client = Arc::new(
        HubClient::builder(format!("ws://{}/ws", proxy.addr))
            .backoff(
                Backoff::new(Duration::from_millis(10), Duration::from_millis(100))
                    .reset_after(Duration::from_secs(60)),
            )
            .reconnect(|r| r.rng_seed(1))
            .connect(),
    );
    let counts = watch_events(client.clone());
    let mut sub = client.subscribe("feed").await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(TOTAL as usize);
        while got.len() < TOTAL as usize {
            match timeout(Duration::from_secs(20), sub.next()).await {
                Ok(Some(Item::Publication(p))) => got.push((p.offset, p.data["n"].as_u64())),
                Ok(Some(Item::Unrecoverable { .. })) => {
                    panic!("reported unrecoverable after {} publications", got.len())
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("subscription ended after {}", got.len()),
                Err(_) => panic!("stalled after {} publications", got.len()),
            }
        }
        got
    });

    let mut publisher = common::hub::client(srv.addr).await;
    let segment = TOTAL / (CUTS + 1);
    for k in 0..CUTS {
        common::hub::publish_range(&mut publisher, "feed", k * segment..(k + 1) * segment).await;
        // Cut an established connection each time: the (k+1)-th, once it has resubscribed.
        wait_for("reconnect", || counts.connected.load(Ordering::SeqCst) > k).await;
        proxy.sever();
    }
    common::hub::publish_range(&mut publisher, "feed", CUTS * segment..TOTAL).await;

    let got = timeout(Duration::from_secs(30), reader)
        .await
        .expect("reader did not finish")
        .unwrap();
    for (i, (offset, n)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64 + 1, "offset at {i}");
        assert_eq!(*n, Some(i as u64), "publication at {i}");
    }
    wait_for("the last reconnect", || {
        counts.connected.load(Ordering::SeqCst) > CUTS
    })
    .await;
    assert_eq!(counts.disconnected.load(Ordering::SeqCst), CUTS as usize);
    eprintln!(
        "{TOTAL} publications, {CUTS} cuts, {} connections through the proxy, {:?}",
        proxy.accepted(),
        started.elapsed()
    );
}

/// (b) The hub is killed and started again on the same port: the client reconnects and
/// resubscribes by itself, reports that the old publications cannot be recovered (a new
/// epoch), then receives new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_is_reported_unrecoverable_then_live_again() {
    let mut srv = hub_with_history(None);
    let addr = srv.addr;
    let client = Arc::new(
        HubClient::builder(format!("ws://{addr}/ws"))
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .connect(),
    );
    let counts = watch_events(client.clone());
    let mut sub = client.subscribe("news").await.unwrap();
    let mut first_epoch = String::new();
    for i in 0..3 {
        client.publish("news", json!({"before": i})).await.unwrap();
        match next_item(&mut sub).await {
            Some(Item::Publication(p)) => {
                assert_eq!((p.offset, &p.data), (i + 1, &json!({"before": i})));
                first_epoch = p.epoch;
            }
            other => panic!("{other:?}"),
        }
    }

    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    wait_for("the disconnect", || {
        counts.disconnected.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Requests made while the server is away wait for the next connection.
    let late = {
        let client = client.clone();
        tokio::spawn(async move { client.ping().await })
    };
    let _srv = hub_with_history(Some(&addr.to_string()));

    match next_item(&mut sub).await {
        Some(Item::Unrecoverable {
            epoch_changed,
            position,
        }) => {
            assert!(epoch_changed);
            assert_ne!(position.epoch, first_epoch);
            assert_eq!(position.offset, 0);
        }
        other => panic!("expected Unrecoverable, got {other:?}"),
    }
    timeout(Duration::from_secs(10), late)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(counts.connected.load(Ordering::SeqCst) >= 2);
    let pos = client.publish("news", json!({"after": 1})).await.unwrap();
    assert_eq!(pos.offset, 1);
    match next_item(&mut sub).await {
        Some(Item::Publication(p)) => {
            assert_eq!((p.offset, &p.data), (1, &json!({"after": 1})));
            assert_ne!(p.epoch, first_epoch);
        }
        other => panic!("{other:?}"),
    }
    // History, presence and ping work on the new connection too.
    let h = client.history("news", 10).await.unwrap();
    assert_eq!(h.publications.len(), 1);
    assert_eq!(client.presence("news").await.unwrap().len(), 1);
    client.close().await;
    assert!(client.ping().await.unwrap_err().is_closed());
}

/// The next item that is not presence (the default namespace has presence on: each
/// (re)subscription brings the subscriber's own join).
async fn next_item(sub: &mut Subscription) -> Option<Item> {
    let wait = async {
        loop {
            match sub.next().await {
                Some(Item::Join(_) | Item::Leave(_)) => continue,
                other => return other,
            }
        }
    };
    timeout(Duration::from_secs(20), wait)
        .await
        .expect("no item within 20 s")
}

async fn next_event(c: &mut ReconnectingClient) -> Event {
    timeout(Duration::from_secs(10), c.next_event())
        .await
        .expect("no event within 10 s")
        .expect("event stream ended")
}

async fn echo_of(c: &mut ReconnectingClient, text: &str) {
    c.send(text).await.unwrap();
    match next_event(c).await {
        Event::Message(Message::Text(t)) => assert_eq!(t, text),
        e => panic!("{e:?}"),
    }
}

/// (c) Plain mode against `tidewire echo` through the proxy: a cut, failed attempts while
/// the proxy refuses, a silent connection caught by the heartbeat; the events arrive in
/// order and every backoff delay is within its bounds and actually waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_events_and_backoff_against_echo() {
    let echo = common::start(&[]);
    let proxy = Proxy::start(echo.addr).await;
    let backoff = Backoff::new(Duration::from_millis(40), Duration::from_millis(300))
        .reset_after(Duration::from_secs(60));
    let mut c = ReconnectingClient::builder(format!("ws://{}/", proxy.addr))
        .backoff(backoff)
        .heartbeat(Duration::from_millis(200), Duration::from_secs(1))
        .rng_seed(7)
        .connect();

    // Connected, then a cut: Disconnected (1006), Reconnecting (attempt 1), Connected.
    assert!(matches!(next_event(&mut c).await, Event::Connected(ref x) if x.connection == 1));
    echo_of(&mut c, "one").await;
    let cut_at = Instant::now();
    proxy.sever();
    match next_event(&mut c).await {
        Event::Disconnected(d) => {
            assert_eq!((d.connection, d.code.0, d.local), (1, 1006, false));
        }
        e => panic!("{e:?}"),
    }
    let Event::Reconnecting { attempt: 1, delay } = next_event(&mut c).await else {
        panic!("expected Reconnecting 1")
    };
    assert!(delay <= backoff.ceiling(1), "{delay:?}");
    let ev = next_event(&mut c).await;
    assert!(
        matches!(ev, Event::Connected(ref x) if x.connection == 2),
        "{ev:?}"
    );
    // The delay was waited: the new connection reached the proxy at least `delay` after
    // the cut (the client's sleep starts after the cut and ends before it connects).
    let accepted = proxy.accept_times();
    assert!(
        accepted[1] - cut_at >= delay,
        "reconnected before the delay"
    );
    echo_of(&mut c, "two").await;

    // The proxy refuses: each failed attempt is reported and waited for longer, within
    // the doubling ceilings (capped), until it lets connections through again.
    proxy.refuse(true);
    proxy.sever();
    assert!(matches!(next_event(&mut c).await, Event::Disconnected(ref d) if d.connection == 2));
    let mut expected_attempt = 2;
    let mut failures = 0;
    loop {
        let ev = next_event(&mut c).await;
        let Event::Reconnecting { attempt, delay } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(attempt, expected_attempt);
        assert!(
            delay <= backoff.ceiling(attempt),
            "attempt {attempt}: {delay:?}"
        );
        assert!(delay <= Duration::from_millis(300));
        expected_attempt += 1;
        let ev = next_event(&mut c).await;
        // This attempt reached the proxy at least `delay` after the previous one.
        let accepted = proxy.accept_times();
        let [.., before, this] = accepted[..] else {
            panic!("{accepted:?}")
        };
        assert!(
            this - before >= delay,
            "attempt {attempt} came before its delay"
        );
        match ev {
            Event::ConnectFailed { attempt, error } => {
                failures += 1;
                assert_eq!(attempt, failures);
                assert!(error.is_handshake() || error.is_io(), "{error}");
                if failures == 4 {
                    proxy.refuse(false);
                }
            }
            Event::Connected(x) => {
                assert_eq!(x.connection, 3);
                break;
            }
            e => panic!("{e:?}"),
        }
    }
    // (A fifth attempt may already have been under way when the proxy relented.)
    assert!((4..=5).contains(&failures), "{failures}");
    echo_of(&mut c, "three").await;

    // A connection that goes silent: the heartbeat ends it and the client reconnects.
    proxy.blackhole(true);
    let ev = next_event(&mut c).await;
    match ev {
        Event::Disconnected(d) => {
            assert_eq!(d.code.0, 1006);
            assert!(d.error.as_ref().is_some_and(|e| e.is_timeout()), "{d:?}");
        }
        e => panic!("{e:?}"),
    }
    proxy.blackhole(false);
    assert!(matches!(
        next_event(&mut c).await,
        Event::Reconnecting { .. }
    ));
    assert!(matches!(next_event(&mut c).await, Event::Connected(ref x) if x.connection == 4));
    echo_of(&mut c, "four").await;

    // The application closes: a last local Disconnected, then the end of the stream.
    c.close(None).await;
    match next_event(&mut c).await {
        Event::Disconnected(d) => assert!(d.local && d.code.0 == 1000),
        e => panic!("{e:?}"),
    }
    assert!(c.next_event().await.is_none());
}

/// (c) With a limit on attempts the client gives up, and says so.
#[tokio::test]
async fn plain_client_gives_up_after_max_attempts() {
    let echo = common::start(&[]);
    let proxy = Proxy::start(echo.addr).await;
    proxy.refuse(true);
    let mut c = ReconnectingClient::builder(format!("ws://{}/", proxy.addr))
        .backoff(
            Backoff::new(Duration::from_millis(5), Duration::from_millis(20)).max_attempts(Some(3)),
        )
        .connect();
    let mut kinds = Vec::new();
    while let Some(ev) = timeout(Duration::from_secs(10), c.next_event())
        .await
        .unwrap()
    {
        kinds.push(match ev {
            Event::ConnectFailed { attempt, .. } => format!("failed {attempt}"),
            Event::Reconnecting { attempt, .. } => format!("reconnecting {attempt}"),
            Event::GaveUp(GiveUp::Attempts(n)) => format!("gave up {n}"),
            e => panic!("{e:?}"),
        });
    }
    assert_eq!(
        kinds,
        [
            "failed 1",
            "reconnecting 1",
            "failed 2",
            "reconnecting 2",
            "failed 3",
            "gave up 3"
        ]
    );
    assert_eq!(proxy.accepted(), 3);
}

/// A subscription whose reader falls behind its buffer loses nothing: it stops, then
/// resumes with `since` once the reader catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscription_reader_resumes_without_loss() {
    let srv = hub_with_history(None);
    let client = HubClient::builder(format!("ws://{}/ws", srv.addr))
        .subscription_buffer(16)
        .connect();
    let mut sub = client.subscribe("slow").await.unwrap();
    let mut publisher = common::hub::client(srv.addr).await;
    common::hub::publish_range(&mut publisher, "slow", 0..500).await;
    // Nothing read yet: far more than 16 were published.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    while got.len() < 500 {
        match next_item(&mut sub).await {
            Some(Item::Publication(p)) => got.push(p.data["n"].as_u64().unwrap()),
            other => panic!("after {}: {other:?}", got.len()),
        }
    }
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    let _: Value = client.request(json!({"op": "ping"})).await.unwrap();
}

const SECRET: &str = "reconnect-test-secret-of-32-chars-or-more";

fn token(sub: &str, exp_from_now: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now + exp_from_now}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The token goes out in `connect` on every connection; an expired one (4001) is final
/// with a fixed token, and reconnects with a token function that has a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_sent_again_and_renewed_after_4001() {
    let srv = serve(&["--auth-hmac-secret", SECRET, "--publish-rate", "0"]);
    let proxy = Proxy::start(srv.addr).await;
    let quick = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));

    // A valid fixed token: sent again after a cut, the subscription carries on.
    let client = HubClient::builder(format!("ws://{}/ws", proxy.addr))
        .token(token("alice", 3600))
        .backoff(quick)
        .connect();
    let mut sub = client.subscribe("room").await.unwrap();
    // One publication first: a channel with no history is forgotten when its last
    // subscriber drops, and resuming it then reports a new epoch.
    client.publish("room", json!(1)).await.unwrap();
    assert!(matches!(next_item(&mut sub).await, Some(Item::Publication(p)) if p.data == json!(1)));
    let mut users = Vec::new();
    while users.len() < 2 {
        match timeout(Duration::from_secs(10), client.next_event())
            .await
            .unwrap()
        {
            Some(HubEvent::Connected { user, .. }) => {
                users.push(user);
                if users.len() == 1 {
                    proxy.sever();
                }
            }
            Some(_) => {}
            None => panic!("stopped"),
        }
    }
    assert_eq!(users, [Some("alice".to_owned()), Some("alice".to_owned())]);
    client.publish("room", json!(2)).await.unwrap();
    assert!(matches!(next_item(&mut sub).await, Some(Item::Publication(p)) if p.data == json!(2)));

    // An expired fixed token: error 109, close 4001, and the client stops.
    let client = HubClient::builder(format!("ws://{}/ws", srv.addr))
        .token(token("bob", -60))
        .backoff(quick)
        .connect();
    let mut seen = Vec::new();
    while let Some(ev) = timeout(Duration::from_secs(10), client.next_event())
        .await
        .unwrap()
    {
        seen.push(match ev {
            HubEvent::Error(e) => format!("error {:?}", e.code()),
            HubEvent::Disconnected(d) => format!("disconnected {}", d.code.0),
            HubEvent::GaveUp(why) => format!("gave up: {why}"),
            e => panic!("{e:?}"),
        });
    }
    assert_eq!(seen[0], "error Some(109)");
    assert_eq!(seen[1], "disconnected 4001");
    assert!(
        seen[2].starts_with("gave up: the server closed with 4001"),
        "{seen:?}"
    );

    // A token function: the expired token first, then a fresh one after the 4001.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let client = HubClient::builder(format!("ws://{}/ws", srv.addr))
        .token_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { Some(token("carol", if n == 0 { -60 } else { 3600 })) }
        })
        .backoff(quick)
        .connect();
    loop {
        match timeout(Duration::from_secs(10), client.next_event())
            .await
            .unwrap()
        {
            Some(HubEvent::Connected {
                user, connection, ..
            }) => {
                assert_eq!((user.as_deref(), connection), (Some("carol"), 2));
                break;
            }
            Some(HubEvent::GaveUp(why)) => panic!("gave up: {why}"),
            Some(_) => {}
            None => panic!("stopped"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    client.ping().await.unwrap();
}
