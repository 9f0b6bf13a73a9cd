//! The NATS engine against a real nats-server (`nats-server` on the PATH, with JetStream):
//! each test starts its own on a spare port with a fresh store directory, and kills it at
//! the end. Ignored by `cargo test --workspace` (a fresh machine may have no nats-server);
//! `.ci/run` runs them with `--ignored`.
#![cfg(feature = "nats")]

use bytes::Bytes;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewire_hub::engine::{
    Broker, BrokerEvents, ClientInfo, HistoryQuery, NatsEngine, PresenceStore, Publication,
    StreamOptions, StreamPosition,
};

// --- the server -----------------------------------------------------------------------

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    /// A server on a spare port storing in a new directory.
    fn start() -> Server {
        let dir = std::env::temp_dir().join(format!(
            "tw-nats-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Server::start_at(port, dir)
    }

    fn start_at(port: u16, dir: PathBuf) -> Server {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on the PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port, dir }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would), keeping its store.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        self.kill();
        let s = Server::start_at(self.port, self.dir.clone());
        let old = std::mem::replace(self, s);
        std::mem::forget(old); // its child is dead and its directory is ours now
    }

    fn store(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// --- a node's events -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Pub(String, u64, String, String),
    Join(String, String),
    Leave(String, String),
    Lost(String),
    Restored,
}

#[derive(Default)]
struct Rec(Mutex<Vec<Ev>>);

impl BrokerEvents for Rec {
    fn publication(&self, channel: &str, p: Publication) {
        let data = String::from_utf8(p.data.to_vec()).unwrap();
        self.0
            .lock()
            .unwrap()
            .push(Ev::Pub(channel.into(), p.offset, p.epoch.to_string(), data));
    }
    fn join(&self, channel: &str, c: &ClientInfo) {
        self.0
            .lock()
            .unwrap()
            .push(Ev::Join(channel.into(), c.client_id.clone()));
    }
    fn leave(&self, channel: &str, c: &ClientInfo) {
        self.0
            .lock()
            .unwrap()
            .push(Ev::Leave(channel.into(), c.client_id.clone()));
    }
    fn link_restored(&self) {
        self.0.lock().unwrap().push(Ev::Restored);
    }
    fn channel_lost(&self, channel: &str) {
        self.0.lock().unwrap().push(Ev::Lost(channel.into()));
    }
}

impl Rec {
    fn all(&self) -> Vec<Ev> {
        self.0.lock().unwrap().clone()
    }

    /// (offset, data) of the publications delivered on `channel`, in order.
    fn pubs(&self, channel: &str) -> Vec<(u64, String)> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                Ev::Pub(c, o, _, d) if c == channel => Some((o, d)),
                _ => None,
            })
            .collect()
    }

    async fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&[Ev]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if f(&self.all()) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; events: {:?}", self.all());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Node {
    engine: Arc<NatsEngine>,
    rec: Arc<Rec>,
}

async fn node(server: &Server, name: &str) -> Node {
    let deadline = Instant::now() + Duration::from_secs(10);
    let engine = loop {
        // JetStream may still be starting right after the port opens.
        match NatsEngine::connect(&server.url(), name).await {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let rec = Arc::new(Rec::default());
    engine.start(rec.clone());
    Node { engine, rec }
}

const OPTS: StreamOptions = StreamOptions {
    history_size: 100,
    history_ttl: Duration::from_secs(300),
};

fn data(s: &str) -> Bytes {
    Bytes::from(serde_json::to_string(s).unwrap())
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Retries `publish` until the server is back (after a restart).
async fn publish_eventually(n: &Node, channel: &str, d: &str) -> StreamPosition {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match n.engine.publish(channel, data(d), OPTS, None).await {
            Ok(p) => return p,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_temporary(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

// --- the server's compare-and-set, as this engine relies on it -------------------------

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn cas_on_this_server() {
    use async_nats::jetstream::{self, context::PublishErrorKind, stream};
    let server = Server::start();
    let client = async_nats::connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "P".into(),
        subjects: vec!["p.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    // Ok(seq, duplicate) or the error kind.
    async fn put(
        js: &jetstream::Context,
        subject: &str,
        expected: u64,
        id: Option<&str>,
    ) -> Result<(u64, bool), PublishErrorKind> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        if let Some(id) = id {
            h.insert("Nats-Msg-Id", id);
        }
        let ack = js
            .publish_with_headers(subject.to_owned(), h, "x".into())
            .await
            .unwrap()
            .await;
        ack.map(|a| (a.sequence, a.duplicate)).map_err(|e| e.kind())
    }
    use PublishErrorKind::WrongLastSequence as Wrong;
    // 0 means "no message on the subject yet", and is enforced.
    assert_eq!(put(&js, "p.a", 0, None).await, Ok((1, false)));
    assert_eq!(put(&js, "p.a", 0, None).await, Err(Wrong));
    assert_eq!(put(&js, "p.a", 1, None).await, Ok((2, false)));
    assert_eq!(put(&js, "p.a", 1, None).await, Err(Wrong));
    // Per subject: the stream's last sequence (2) is not p.b's.
    assert_eq!(put(&js, "p.b", 2, None).await, Err(Wrong));
    // The msg id check comes first: a retry with a stale expectation gets the first ack.
    assert_eq!(put(&js, "p.c", 0, Some("X")).await, Ok((3, false)));
    assert_eq!(put(&js, "p.c", 0, Some("X")).await, Ok((3, true)));
    assert_eq!(put(&js, "p.c", 99, Some("X")).await, Ok((3, true)));
    // A message refused by the compare-and-set does not record its msg id.
    assert_eq!(put(&js, "p.c", 0, Some("Y")).await, Err(Wrong));
    assert_eq!(put(&js, "p.c", 3, Some("Y")).await, Ok((4, false)));
}

// --- the engine --------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn publish_on_a_is_delivered_on_b_in_order() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("chat:room 1.*>");
    b.engine.subscribe(&ch).await.unwrap();
    let mut positions = Vec::new();
    for i in 1..=20 {
        positions.push(
            a.engine
                .publish(&ch, data(&format!("m{i}")), OPTS, None)
                .await
                .unwrap(),
        );
    }
    let epoch = positions[0].epoch.clone();
    assert_eq!(epoch.len(), 16);
    for (i, p) in positions.iter().enumerate() {
        assert_eq!((p.offset, p.epoch.as_str()), (i as u64 + 1, epoch.as_str()));
    }
    b.rec
        .wait("20 publications", Duration::from_secs(5), |e| e.len() >= 20)
        .await;
    let want: Vec<(u64, String)> = (1..=20).map(|i| (i, json(&format!("m{i}")))).collect();
    assert_eq!(b.rec.pubs(&ch), want);
    assert!(b
        .rec
        .all()
        .iter()
        .all(|e| matches!(e, Ev::Pub(_, _, ep, _) if *ep == epoch)));
    // History from either node is what was delivered.
    for n in [&a, &b] {
        let page = n
            .engine
            .history(&ch, HistoryQuery::Newest(100), OPTS)
            .await
            .unwrap();
        let got: Vec<(u64, String)> = page
            .publications
            .iter()
            .map(|p| (p.offset, String::from_utf8(p.data.to_vec()).unwrap()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(page.position.offset, 20);
    }
    // history_size applies per call.
    let small = StreamOptions {
        history_size: 3,
        ..OPTS
    };
    let page = a
        .engine
        .history(&ch, HistoryQuery::Newest(10), small)
        .await
        .unwrap();
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        [18, 19, 20]
    );
    // After unsubscribing, nothing more is delivered.
    b.engine.unsubscribe(&ch).await.unwrap();
    a.engine
        .publish(&ch, data("after"), OPTS, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.rec.pubs(&ch).len(), 20);
    // Health: up, with a probe's latency, and the cluster's nodes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let h = a.engine.health();
    assert_eq!(h.engine, "nats");
    assert!(h.is_up(), "{h:?}");
    assert!(h.shards[0].latency_us > 0);
    let names: Vec<String> = a
        .engine
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn concurrent_publishers_get_each_offset_once() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("race");
    a.engine.subscribe(&ch).await.unwrap();
    b.engine.subscribe(&ch).await.unwrap();
    let mut tasks = Vec::new();
    for (k, n) in [&a, &b].into_iter().enumerate() {
        for t in 0..4 {
            let engine = n.engine.clone();
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..10 {
                    let d = format!("n{k}t{t}i{i}");
                    out.push(
                        engine
                            .publish(&ch, data(&d), OPTS, None)
                            .await
                            .unwrap()
                            .offset,
                    );
                }
                out
            }));
        }
    }
    let mut offsets = Vec::new();
    for t in tasks {
        offsets.extend(t.await.unwrap());
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=80).collect::<Vec<u64>>());
    for n in [&a, &b] {
        n.rec
            .wait("80 publications", Duration::from_secs(10), |e| {
                e.len() >= 80
            })
            .await;
        let delivered = n.rec.pubs(&ch);
        assert_eq!(
            delivered.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            (1..=80).collect::<Vec<u64>>()
        );
        assert!(!n.rec.all().iter().any(|e| matches!(e, Ev::Lost(_))));
        let page = n
            .engine
            .history(&ch, HistoryQuery::Newest(100), OPTS)
            .await
            .unwrap();
        let history: Vec<(u64, String)> = page
            .publications
            .iter()
            .map(|p| (p.offset, String::from_utf8(p.data.to_vec()).unwrap()))
            .collect();
        assert_eq!(history, delivered);
    }
    let distinct: HashSet<String> = a.rec.pubs(&ch).into_iter().map(|(_, d)| d).collect();
    assert_eq!(distinct.len(), 80);
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn since_recovery_positions_and_removed_history() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let ch = "news";
    // Reading the newest of a channel without a stream creates nothing.
    for _ in 0..2 {
        let page = a
            .engine
            .history(ch, HistoryQuery::Newest(10), OPTS)
            .await
            .unwrap();
        assert_eq!(
            (page.position.offset, page.position.epoch.as_str()),
            (0, "")
        );
    }
    // A position read creates it: offset 0 and an epoch that the first publication keeps.
    let created = a
        .engine
        .history(ch, HistoryQuery::Position, OPTS)
        .await
        .unwrap()
        .position;
    assert_eq!(created.offset, 0);
    assert_eq!(created.epoch.len(), 16);
    let mut last = created.clone();
    for i in 1..=10 {
        last = a
            .engine
            .publish(ch, data(&format!("m{i}")), OPTS, None)
            .await
            .unwrap();
        assert_eq!(last.epoch, created.epoch);
    }
    assert_eq!(last.offset, 10);
    let since = |offset, epoch: &str| {
        HistoryQuery::Since(StreamPosition {
            offset,
            epoch: epoch.into(),
        })
    };
    let page = a
        .engine
        .history(ch, since(4, &last.epoch), OPTS)
        .await
        .unwrap();
    assert!(page.complete);
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        (5..=10).collect::<Vec<_>>()
    );
    assert_eq!(page.publications[0].data, data("m5"));
    assert_eq!(page.position, last);
    let page = a
        .engine
        .history(ch, since(10, &last.epoch), OPTS)
        .await
        .unwrap();
    assert!(page.complete && page.publications.is_empty());
    // Another epoch, a position ahead, or further back than history_size: incomplete.
    for (q, o) in [
        (since(4, "0123456789abcdef"), OPTS),
        (since(11, &last.epoch), OPTS),
        (
            since(2, &last.epoch),
            StreamOptions {
                history_size: 5,
                ..OPTS
            },
        ),
    ] {
        let page = a.engine.history(ch, q, o).await.unwrap();
        assert!(!page.complete);
        assert!(page.publications.is_empty());
        assert_eq!(page.position, last);
    }
    // Removed history: the position stays and the next offset follows it.
    a.engine.remove_history(ch).await.unwrap();
    let page = a
        .engine
        .history(ch, HistoryQuery::Newest(10), OPTS)
        .await
        .unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, last);
    assert!(
        !a.engine
            .history(ch, since(8, &last.epoch), OPTS)
            .await
            .unwrap()
            .complete
    );
    let next = a.engine.publish(ch, data("m11"), OPTS, None).await.unwrap();
    assert_eq!(
        (next.offset, next.epoch.as_str()),
        (11, last.epoch.as_str())
    );
    let page = a
        .engine
        .history(ch, since(10, &last.epoch), OPTS)
        .await
        .unwrap();
    assert!(page.complete);
    assert_eq!(page.publications.len(), 1);
    // Bad input is an error, not a panic.
    assert!(a
        .engine
        .publish("", data("x"), OPTS, None)
        .await
        .unwrap_err()
        .is_invalid_channel());
    let long = "x".repeat(256);
    assert!(a
        .engine
        .history(&long, HistoryQuery::Position, OPTS)
        .await
        .unwrap_err()
        .is_invalid_channel());
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn idempotent_publish_is_applied_and_delivered_once() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("orders");
    b.engine.subscribe(&ch).await.unwrap();
    let first = a
        .engine
        .publish(&ch, data("one"), OPTS, Some("key 1"))
        .await
        .unwrap();
    // Retried (from the other node too): the first one's position, nothing appended.
    let again = a
        .engine
        .publish(&ch, data("one"), OPTS, Some("key 1"))
        .await
        .unwrap();
    let other_node = b
        .engine
        .publish(&ch, data("one"), OPTS, Some("key 1"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(first, other_node);
    let second = a
        .engine
        .publish(&ch, data("two"), OPTS, Some("key 2"))
        .await
        .unwrap();
    assert_eq!(second.offset, 2);
    // The same key on another channel is another publication.
    let elsewhere = a
        .engine
        .publish("other", data("one"), OPTS, Some("key 1"))
        .await
        .unwrap();
    assert_eq!(elsewhere.offset, 1);
    b.rec
        .wait("2 publications", Duration::from_secs(5), |e| e.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.rec.pubs(&ch), [(1, json("one")), (2, json("two"))]);
    assert_eq!(b.rec.all().len(), 2);
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn server_restart_keeps_history_and_delivery_resumes() {
    let mut server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("durable");
    b.engine.subscribe(&ch).await.unwrap();
    let mut last = None;
    for i in 1..=5 {
        last = Some(
            a.engine
                .publish(&ch, data(&format!("m{i}")), OPTS, None)
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    b.rec
        .wait("5 publications", Duration::from_secs(5), |e| e.len() >= 5)
        .await;

    server.kill();
    // A hung or gone server shows in health within 5 s, and calls fail in bounded time.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.engine.health().is_up() {
        assert!(Instant::now() < deadline, "health still up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.engine.health().reason().is_some());
    let t = Instant::now();
    let e = a
        .engine
        .publish(&ch, data("down"), OPTS, None)
        .await
        .unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(6));

    server.restart();
    let p6 = publish_eventually(&a, &ch, "m6").await;
    assert_eq!((p6.offset, p6.epoch.as_str()), (6, last.epoch.as_str()));
    let page = b
        .engine
        .history(&ch, HistoryQuery::Since(last.clone()), OPTS)
        .await
        .unwrap();
    assert!(page.complete);
    assert_eq!(
        page.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        [6]
    );
    for i in 7..=8 {
        a.engine
            .publish(&ch, data(&format!("m{i}")), OPTS, None)
            .await
            .unwrap();
    }
    b.rec
        .wait("8 publications", Duration::from_secs(10), |e| {
            e.iter().filter(|e| matches!(e, Ev::Pub(..))).count() >= 8
        })
        .await;
    let offsets: Vec<u64> = b.rec.pubs(&ch).into_iter().map(|(o, _)| o).collect();
    assert_eq!(offsets, (1..=8).collect::<Vec<_>>());
    assert!(!b.rec.all().iter().any(|e| matches!(e, Ev::Lost(_))));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.engine.health().is_up() {
        assert!(Instant::now() < deadline, "health not back up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.engine.health().shards[0].reconnects >= 1);
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn wiped_store_gives_a_new_epoch() {
    let mut server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("fragile");
    b.engine.subscribe(&ch).await.unwrap();
    let mut last = None;
    for i in 1..=3 {
        last = Some(
            a.engine
                .publish(&ch, data(&format!("m{i}")), OPTS, None)
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    b.rec
        .wait("3 publications", Duration::from_secs(5), |e| e.len() >= 3)
        .await;

    server.kill();
    std::fs::remove_dir_all(server.store()).unwrap();
    std::fs::create_dir_all(server.store()).unwrap();
    server.restart();

    let p = publish_eventually(&a, &ch, "new").await;
    assert_ne!(p.epoch, last.epoch);
    assert_eq!(p.offset, 1);
    let page = a
        .engine
        .history(&ch, HistoryQuery::Since(last.clone()), OPTS)
        .await
        .unwrap();
    assert!(!page.complete);
    assert_eq!(page.position, p);
    // B's subscribers are told to resume from history.
    b.rec
        .wait("channel lost", Duration::from_secs(10), |e| {
            e.contains(&Ev::Lost("fragile".into()))
        })
        .await;
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn presence_across_nodes() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("lobby");
    b.engine.subscribe(&ch).await.unwrap();
    let alice = Arc::new(ClientInfo {
        client_id: "c1".into(),
        user_id: Some("alice".into()),
        info: Some(serde_json::json!({"color": "red"})),
    });
    let anon = Arc::new(ClientInfo::new("c2"));
    a.engine
        .add(&ch, alice.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    a.engine.publish_join(&ch, &alice).await.unwrap();
    b.engine
        .add(&ch, anon.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    b.engine.publish_join(&ch, &anon).await.unwrap();
    for n in [&a, &b] {
        assert_eq!(
            n.engine.list(&ch).await.unwrap(),
            vec![(*alice).clone(), (*anon).clone()]
        );
        let s = n.engine.stats(&ch).await.unwrap();
        assert_eq!((s.clients, s.users), (2, 1));
    }
    a.engine.remove(&ch, "c1").await.unwrap();
    a.engine.publish_leave(&ch, &alice).await.unwrap();
    assert_eq!(b.engine.list(&ch).await.unwrap(), vec![(*anon).clone()]);
    b.rec
        .wait("join, join, leave", Duration::from_secs(5), |e| {
            e.len() >= 3
        })
        .await;
    assert_eq!(
        b.rec.all(),
        [
            Ev::Join("lobby".into(), "c1".into()),
            Ev::Join("lobby".into(), "c2".into()),
            Ev::Leave("lobby".into(), "c1".into()),
        ]
    );
    // An entry past its TTL is not listed.
    let brief = Arc::new(ClientInfo::new("c3"));
    a.engine
        .add(&ch, brief, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(a.engine.list(&ch).await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.engine.list(&ch).await.unwrap(), vec![(*anon).clone()]);
    assert!(a.engine.list("empty").await.unwrap().is_empty());
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn dead_node_presence_is_reaped_once() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let c = node(&server, "c").await;
    let rooms: [Arc<str>; 2] = [Arc::from("r1"), Arc::from("r2")];
    for n in [&b, &c] {
        for r in &rooms {
            n.engine.subscribe(r).await.unwrap();
        }
    }
    let x = Arc::new(ClientInfo::new("x"));
    let y = Arc::new(ClientInfo::new("y"));
    let z = Arc::new(ClientInfo::new("z"));
    a.engine
        .add(&rooms[0], x.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    a.engine
        .add(&rooms[1], y.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    b.engine
        .add(&rooms[0], z.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(c.engine.list(&rooms[0]).await.unwrap().len(), 2);
    let names: Vec<String> = c
        .engine
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    // A dies without cleaning up.
    let died = Instant::now();
    drop(a);
    for n in [&b, &c] {
        n.rec
            .wait("two leaves", Duration::from_secs(10), |e| e.len() >= 2)
            .await;
    }
    let elapsed = died.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in [&b, &c] {
        let mut events = n.rec.all();
        events.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            events,
            [
                Ev::Leave("r1".into(), "x".into()),
                Ev::Leave("r2".into(), "y".into())
            ],
            "each leave once"
        );
    }
    assert_eq!(c.engine.list(&rooms[0]).await.unwrap(), vec![(*z).clone()]);
    assert!(c.engine.list(&rooms[1]).await.unwrap().is_empty());
    let names: Vec<String> = c
        .engine
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["b", "c"]);
    eprintln!("reaped {elapsed:?} after the node died");
}

/// Stores a publication on `channel` behind the engine's back, as a node that died between
/// the store and the live send leaves it: in history, never delivered live.
async fn store_without_live(server: &Server, channel: &str, offset: u64, epoch: &str) {
    use async_nats::jetstream;
    use base64::Engine as _;
    let client = async_nats::connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    let js = jetstream::new(client);
    let subject = format!(
        "tw.h.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(channel)
    );
    let stream = js.get_stream("TIDEWIRE").await.unwrap();
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Tw-Kind", "p");
    h.insert("Tw-Offset", offset.to_string().as_str());
    h.insert("Tw-Epoch", epoch);
    h.insert("Tw-Prev", last.sequence.to_string().as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        last.sequence.to_string().as_str(),
    );
    js.publish_with_headers(subject, h, data(&format!("hidden{offset}")))
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn gaps_are_repaired_from_history_or_the_channel_is_lost() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let ch: Arc<str> = Arc::from("gappy");
    b.engine.subscribe(&ch).await.unwrap();
    let mut epoch = String::new();
    for i in 1..=3 {
        epoch = a
            .engine
            .publish(&ch, data(&format!("m{i}")), OPTS, None)
            .await
            .unwrap()
            .epoch;
    }
    // Offset 4 is only in history; 5 arrives live after a gap: 4 is read back, in order.
    store_without_live(&server, &ch, 4, &epoch).await;
    let p5 = a.engine.publish(&ch, data("m5"), OPTS, None).await.unwrap();
    assert_eq!(p5.offset, 5);
    b.rec
        .wait("5 publications", Duration::from_secs(5), |e| e.len() >= 5)
        .await;
    assert_eq!(
        b.rec.pubs(&ch),
        [
            (1, json("m1")),
            (2, json("m2")),
            (3, json("m3")),
            (4, json("hidden4")),
            (5, json("m5")),
        ]
    );
    // Offset 6 only in history and then removed from it: the gap cannot be filled.
    store_without_live(&server, &ch, 6, &epoch).await;
    a.engine.remove_history(&ch).await.unwrap();
    a.engine.publish(&ch, data("m7"), OPTS, None).await.unwrap();
    b.rec
        .wait("channel lost", Duration::from_secs(5), |e| {
            e.contains(&Ev::Lost("gappy".into()))
        })
        .await;
    // Delivery goes on after it, in order.
    a.engine.publish(&ch, data("m8"), OPTS, None).await.unwrap();
    b.rec
        .wait("offset 8", Duration::from_secs(5), |e| {
            e.iter().any(|e| matches!(e, Ev::Pub(_, 8, _, _)))
        })
        .await;
    let offsets: Vec<u64> = b.rec.pubs(&ch).into_iter().map(|(o, _)| o).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 8]);
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn long_history_reads() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let ch = "board:long";
    let big = StreamOptions {
        history_size: 10_000,
        history_ttl: Duration::from_secs(3600),
    };
    // Interleaved with another channel's, so that the channel's stream sequences are not
    // consecutive.
    let mut epoch = String::new();
    for i in 1..=150 {
        epoch = a
            .engine
            .publish(ch, data(&format!("m{i}")), big, None)
            .await
            .unwrap()
            .epoch;
        a.engine
            .publish("noise", data("n"), big, None)
            .await
            .unwrap();
    }
    let offsets = |page: &tidewire_hub::engine::HistoryPage| -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    };
    let since = |offset| {
        HistoryQuery::Since(StreamPosition {
            offset,
            epoch: epoch.clone(),
        })
    };
    let h = |q, o| a.engine.history(ch, q, o);
    // Many (a search and a consumer) and few (walking back).
    let page = h(HistoryQuery::Newest(150), big).await.unwrap();
    assert_eq!(offsets(&page), (1..=150).collect::<Vec<_>>());
    assert!(page
        .publications
        .iter()
        .all(|p| p.data == data(&format!("m{}", p.offset))));
    let page = h(HistoryQuery::Newest(1000), big).await.unwrap();
    assert_eq!(offsets(&page), (1..=150).collect::<Vec<_>>());
    let page = h(HistoryQuery::Newest(100), big).await.unwrap();
    assert_eq!(offsets(&page), (51..=150).collect::<Vec<_>>());
    let page = h(HistoryQuery::Newest(10), big).await.unwrap();
    assert_eq!(offsets(&page), (141..=150).collect::<Vec<_>>());
    let page = h(since(5), big).await.unwrap();
    assert!(page.complete);
    assert_eq!(offsets(&page), (6..=150).collect::<Vec<_>>());
    let page = h(since(100), big).await.unwrap();
    assert!(page.complete);
    assert_eq!(offsets(&page), (101..=150).collect::<Vec<_>>());
    // A smaller history_size applies.
    let smaller = StreamOptions {
        history_size: 120,
        ..big
    };
    assert!(!h(since(5), smaller).await.unwrap().complete);
    let page = h(HistoryQuery::Newest(150), smaller).await.unwrap();
    assert_eq!(offsets(&page), (31..=150).collect::<Vec<_>>());
    // History removed, then more: only what follows the removal.
    a.engine.remove_history(ch).await.unwrap();
    for i in 151..=230 {
        a.engine
            .publish(ch, data(&format!("m{i}")), big, None)
            .await
            .unwrap();
    }
    let page = h(HistoryQuery::Newest(200), big).await.unwrap();
    assert_eq!(offsets(&page), (151..=230).collect::<Vec<_>>());
    let page = h(since(150), big).await.unwrap();
    assert!(page.complete);
    assert_eq!(offsets(&page), (151..=230).collect::<Vec<_>>());
    assert!(!h(since(149), big).await.unwrap().complete);
    // A TTL that the older publications are past: only the newer ones.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 231..=300 {
        a.engine
            .publish(ch, data(&format!("m{i}")), big, None)
            .await
            .unwrap();
    }
    let recent = StreamOptions {
        history_ttl: Duration::from_secs(1),
        ..big
    };
    let page = h(HistoryQuery::Newest(500), recent).await.unwrap();
    let got = offsets(&page);
    assert!(
        !got.is_empty() && got.len() <= 70 && *got.last().unwrap() == 300,
        "{got:?}"
    );
    assert!(!h(since(151), recent).await.unwrap().complete);
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn hung_server_shows_in_health_and_calls_are_bounded() {
    let server = Server::start();
    let a = node(&server, "a").await;
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &server.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    a.engine
        .publish("ch", data("before"), OPTS, None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.engine.health().shards[0].latency_us == 0 {
        assert!(Instant::now() < deadline, "no probe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.engine.health().is_up());

    signal("-STOP");
    let hung = Instant::now();
    let t = Instant::now();
    let e = a
        .engine
        .publish("ch", data("hung"), OPTS, None)
        .await
        .unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(5500),
        "{:?}",
        t.elapsed()
    );
    while a.engine.health().is_up() {
        assert!(hung.elapsed() < Duration::from_secs(5), "health still up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("hung server seen after {:?}", hung.elapsed());

    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.engine.health().is_up() {
        assert!(Instant::now() < deadline, "health not back up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.engine
        .publish("ch", data("after"), OPTS, None)
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn stream_options_are_applied() {
    use tidewire_hub::engine::NatsOptions;
    let server = Server::start();
    let _a = node(&server, "a").await;
    let client = async_nats::connect(format!("127.0.0.1:{}", server.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let config = |js: async_nats::jetstream::Context| async move {
        let mut s = js.get_stream("TIDEWIRE").await.unwrap();
        s.info().await.unwrap().config.clone()
    };
    let c = config(js.clone()).await;
    assert_eq!(c.max_messages_per_subject, 10_000);
    assert_eq!(c.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(c.max_bytes, 1 << 30);
    assert_eq!(c.storage, async_nats::jetstream::stream::StorageType::File);
    // A node with other options updates the stream.
    let options = NatsOptions {
        max_per_channel: 500,
        max_age: Duration::from_secs(7200),
        duplicate_window: Duration::from_secs(60),
        max_bytes: 1 << 20,
    };
    let _b = NatsEngine::connect_with(&server.url(), "b", options)
        .await
        .unwrap();
    let c = config(js).await;
    assert_eq!(c.max_messages_per_subject, 500);
    assert_eq!(c.max_age, Duration::from_secs(7200));
    assert_eq!(c.duplicate_window, Duration::from_secs(60));
    assert_eq!(c.max_bytes, 1 << 20);
    // Options that cannot work are refused.
    let bad = NatsOptions {
        max_per_channel: 0,
        ..NatsOptions::default()
    };
    let e = NatsEngine::connect_with(&server.url(), "c", bad)
        .await
        .unwrap_err();
    assert!(!e.is_temporary());
}

// --- two hubs (as two `tidewire serve`) over one NATS ------------------------------------

type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

async fn hub_over(server: &Server, name: &str) -> (String, tokio::sync::watch::Sender<bool>) {
    let engine = NatsEngine::connect(&server.url(), name).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let hub = tidewire_hub::Hub::with_engine(
        tidewire_hub::HubConfig::default(),
        shutdown,
        engine.clone(),
        engine,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, tidewire_hub::router(hub)).await;
    });
    (format!("ws://{addr}/ws"), stop)
}

async fn ws(url: &str) -> Ws {
    let client = tidewire::ClientBuilder::new(url).protocols(["tidewire.v1"]);
    client.connect().await.unwrap().0
}

/// The next text message that satisfies `f`, within 5 s.
async fn next_text(ws: &mut Ws, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("a message within 5 s")
            .expect("the connection is open")
            .unwrap();
        if let tidewire::Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if f(&v) {
                return v;
            }
        }
    }
}

async fn request(ws: &mut Ws, id: u64, body: serde_json::Value) -> serde_json::Value {
    let mut body = body;
    body["id"] = id.into();
    ws.send(tidewire::Message::text(body.to_string()))
        .await
        .unwrap();
    let reply = next_text(ws, |v| v["id"] == id).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply["result"].clone()
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn two_hubs_share_channels() {
    use serde_json::json;
    let server = Server::start();
    let (url1, _stop1) = hub_over(&server, "hub1").await;
    let (url2, _stop2) = hub_over(&server, "hub2").await;
    let mut alice = ws(&url1).await;
    let mut bob = ws(&url2).await;
    let sub = request(
        &mut alice,
        1,
        json!({"op": "subscribe", "channel": "chat:x"}),
    )
    .await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    assert_eq!(sub["offset"], 0);
    // Bob, on the other hub, joins (alice sees it) and publishes (alice receives it).
    request(&mut bob, 1, json!({"op": "subscribe", "channel": "chat:x"})).await;
    next_text(&mut alice, |v| v.to_string().contains("join")).await;
    for i in 1..=3 {
        let r = request(
            &mut bob,
            1 + i,
            json!({"op": "publish", "channel": "chat:x", "data": {"n": i}}),
        )
        .await;
        assert_eq!(
            (r["offset"].as_u64(), r["epoch"].as_str()),
            (Some(i), Some(epoch.as_str()))
        );
    }
    for i in 1..=3 {
        let push = next_text(&mut alice, |v| {
            v.get("id").is_none() && v.to_string().contains("\"n\"")
        })
        .await;
        let text = push.to_string();
        assert!(text.contains(&format!("{{\"n\":{i}}}")), "{text}");
    }
    let presence = request(
        &mut alice,
        2,
        json!({"op": "presence", "channel": "chat:x"}),
    )
    .await;
    assert_eq!(
        presence["clients"].as_array().unwrap().len(),
        2,
        "{presence}"
    );
    // A client that resumes on the other hub gets exactly what it missed.
    drop(alice);
    request(
        &mut bob,
        10,
        json!({"op": "publish", "channel": "chat:x", "data": {"n": 4}}),
    )
    .await;
    let mut carol = ws(&url2).await;
    let r = request(
        &mut carol,
        1,
        json!({"op": "subscribe", "channel": "chat:x", "since": {"offset": 3, "epoch": epoch}}),
    )
    .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["publications"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["publications"][0]["offset"], 4, "{r}");
    let h = request(
        &mut carol,
        2,
        json!({"op": "history", "channel": "chat:x", "limit": 10}),
    )
    .await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 4, "{h}");
}

/// A TCP proxy to the server that can be cut (its connections closed, new ones refused)
/// and restored: one node's link fails while the others' does not.
struct Proxy {
    port: u16,
    up: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    async fn start(to: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = tokio::sync::watch::channel(true);
        let up = Arc::new(up);
        let watch = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = watch.subscribe();
                if !*cut.borrow() {
                    continue; // refused: dropped at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { port, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test]
#[ignore = "needs nats-server; .ci/run runs it (cargo test -p tidewire-hub --features nats --test engine_nats -- --ignored)"]
async fn lost_link_is_repaired_from_history() {
    let server = Server::start();
    let proxy = Proxy::start(server.port).await;
    let a = node(&server, "a").await;
    let b = NatsEngine::connect(&format!("nats://127.0.0.1:{}", proxy.port), "b")
        .await
        .unwrap();
    let rec = Arc::new(Rec::default());
    b.start(rec.clone());
    let ch: Arc<str> = Arc::from("flaky");
    b.subscribe(&ch).await.unwrap();
    for i in 1..=3 {
        a.engine
            .publish(&ch, data(&format!("m{i}")), OPTS, None)
            .await
            .unwrap();
    }
    rec.wait("3 publications", Duration::from_secs(5), |e| e.len() >= 3)
        .await;
    // B's link is cut; A goes on publishing; B's link comes back.
    proxy.set(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.health().is_up() {
        assert!(Instant::now() < deadline, "b's health still up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 4..=7 {
        a.engine
            .publish(&ch, data(&format!("m{i}")), OPTS, None)
            .await
            .unwrap();
    }
    proxy.set(true);
    rec.wait("7 publications", Duration::from_secs(10), |e| e.len() >= 7)
        .await;
    let offsets: Vec<u64> = rec.pubs(&ch).into_iter().map(|(o, _)| o).collect();
    assert_eq!(offsets, (1..=7).collect::<Vec<_>>());
    assert_eq!(rec.pubs(&ch)[4].1, json("m5"));
    assert!(!rec.all().iter().any(|e| matches!(e, Ev::Lost(_))));
    assert!(b.health().shards[0].reconnects >= 1);
    // And live delivery goes on.
    a.engine.publish(&ch, data("m8"), OPTS, None).await.unwrap();
    rec.wait("8 publications", Duration::from_secs(5), |e| e.len() >= 8)
        .await;
}
