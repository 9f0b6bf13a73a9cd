//! Several `tidewire serve` nodes on one Redis (the test's own `redis-server` on a spare
//! port): publications cross nodes in order, clients resume on another node after theirs
//! was killed, and the engine's failures (Redis killed, restarted empty, hung, its pub/sub
//! connection killed) cost no publication silently (issue 16's guarantees).
//!
//! Ignored by `cargo test --workspace` (a fresh machine may have no `redis-server`); the
//! fault step of `.ci/run` runs them: `cargo test -p tidewire-cli --test cluster_redis --
//! --ignored`.

mod common;

use common::cluster::{
    exactly_once_in_order, hub_client, node_on, publish_surely, read_publications, signal,
    Balancer, Redis, API_KEY,
};
use common::hub::{
    api_call, client, client_q, close_of, http, http_get, metric, next_json, publish_range,
    request, Serve,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidewire_hub_client::Item;
use tokio::time::{timeout, Instant};

/// A node on `redis` listening on `listen` (`127.0.0.1:0` for any port).
fn node(redis: &Redis, listen: &str, name: &str, extra: &[&str]) -> Serve {
    node_on(&redis.url(), listen, name, extra)
}

fn api_get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {API_KEY}\r\nConnection: close\r\n\r\n"
        ),
    )
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Publications on one node reach a subscriber on the other in order, exactly once; both
/// nodes read the same history; an idempotency key publishes once whichever node gets
/// the retry; `/api/cluster` lists both nodes and the shard's health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn two_nodes_share_channels_history_and_idempotency() {
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);

    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..500).await;
    let got = read_publications(&mut sub, 500).await;
    exactly_once_in_order(&got, 0);

    // History from the other node: the same publications.
    let mut ws_b = client(b.addr).await;
    let mut pushed = Vec::new();
    let h = request(
        &mut ws_b,
        json!({"id": 1, "op": "history", "channel": "feed", "limit": 10}),
        &mut pushed,
    )
    .await;
    let offsets: Vec<u64> = h["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (491..=500).collect::<Vec<_>>());

    // The same key on both nodes: one publication.
    let publish = |id: u64| json!({"id": id, "op": "publish", "channel": "feed", "data": {"n": 500}, "idempotency_key": "k-500"});
    let first = request(&mut publisher, publish(900), &mut pushed).await;
    let retry = request(&mut ws_b, publish(901), &mut pushed).await;
    assert_eq!(first["result"], retry["result"], "{first} {retry}");
    assert_eq!(first["result"]["offset"], 501);
    let next = request(
        &mut ws_b,
        json!({"id": 902, "op": "publish", "channel": "feed", "data": {"n": 501}}),
        &mut pushed,
    )
    .await;
    assert_eq!(next["result"]["offset"], 502);
    let got = read_publications(&mut sub, 2).await;
    assert_eq!(got, vec![(501, 500), (502, 501)]);

    // Client ids are unique across the cluster.
    let hello = |id| json!({"id": id, "op": "connect"});
    let ca = request(&mut publisher, hello(3), &mut pushed).await;
    let cb = request(&mut ws_b, hello(3), &mut pushed).await;
    assert_ne!(ca["result"]["client"], cb["result"]["client"]);

    // The registry: both nodes, with their connections; the shard up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cluster: Value = serde_json::from_str(body(&api_get(a.addr, "/api/cluster"))).unwrap();
        let names: Vec<&str> = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        if names == ["node-a", "node-b"] && cluster["nodes"][1]["connections"].as_u64() >= Some(2) {
            assert_eq!(cluster["engine"], "redis");
            assert_eq!(cluster["up"], true);
            assert_eq!(cluster["shards"][0]["up"], true, "{cluster}");
            break;
        }
        assert!(Instant::now() < deadline, "{cluster}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(http_get(a.addr, "/api/cluster").starts_with("HTTP/1.1 401"));
    assert!(http_get(b.addr, "/healthz").starts_with("HTTP/1.1 200"));
}

/// A client's node is killed with SIGKILL at random points of a stream published on the
/// other node: the client reconnects through the balancer to the surviving node and
/// resumes there; every publication arrives exactly once, in order, never unrecoverable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn resume_on_another_node_after_sigkill() {
    const TOTAL: u64 = 3000;
    const KILLS: u64 = 3;
    let redis = Redis::start();
    let a_listen = format!("127.0.0.1:{}", common::cluster::free_port());
    let mut a = node(&redis, &a_listen, "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    // The balancer tries node A first for every connection.
    let lb = Balancer::start(vec![a.addr, a.addr, a.addr, b.addr]).await;
    let reader = hub_client(lb.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let reading = tokio::spawn(async move { read_publications(&mut sub, TOTAL as usize).await });

    let mut publisher = client(b.addr).await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let segment = TOTAL / (KILLS + 1);
    for k in 0..KILLS {
        // A random point within the segment.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cut = k * segment + rng % segment;
        publish_range(&mut publisher, "feed", k * segment..cut).await;
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        publish_range(&mut publisher, "feed", cut..(k + 1) * segment).await;
        // Node A comes back (as systemd would restart it) for the next round.
        a = node(&redis, &a_listen, "node-a", &[]);
    }
    publish_range(&mut publisher, "feed", KILLS * segment..TOTAL).await;
    let got = timeout(Duration::from_secs(60), reading)
        .await
        .expect("reader did not finish")
        .unwrap();
    exactly_once_in_order(&got, 0);
}

/// A client reconnects while the engine is down (its node killed during a Redis stall,
/// the balancer sends it to the other node): its resubscribe there is refused with 112
/// until Redis answers again, and the subscription goes on from where it stood; every
/// publication arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_resubscribe_refused_during_an_engine_outage_is_tried_again() {
    let redis = Redis::start();
    let mut a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    let lb = Balancer::start(vec![a.addr, b.addr]).await;
    let reader = hub_client(lb.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(b.addr).await;
    publish_range(&mut publisher, "feed", 0..3).await;
    let mut got = read_publications(&mut sub, 3).await;
    redis.signal("-STOP");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // The reader is back, on node B, and told that its resubscribe was refused.
    let refused = async {
        loop {
            if let Some(tidewire_hub_client::HubEvent::Error(e)) = reader.next_event().await {
                if e.code() == Some(112) {
                    return e;
                }
            }
        }
    };
    let refused = timeout(Duration::from_secs(30), refused).await;
    redis.signal("-CONT");
    let refused = refused.expect("no resubscribe refused with 112 within 30 s");
    assert!(refused.to_string().contains("112"), "{refused}");
    publish_range(&mut publisher, "feed", 3..6).await;
    got.extend(read_publications(&mut sub, 3).await);
    exactly_once_in_order(&got, 0);
}

/// The subscriber connection of a node is killed by Redis (`CLIENT KILL TYPE pubsub`)
/// in the middle of a stream: the node subscribes again and fills the gap from history;
/// the client sees every publication once, in order, and nothing unrecoverable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_killed_pubsub_connection_is_repaired_from_history() {
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let reading = tokio::spawn(async move { read_publications(&mut sub, 2000).await });
    let mut publisher = client(a.addr).await;
    let killer = {
        let port = redis.port;
        tokio::task::spawn_blocking(move || {
            let mut killed = 0;
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(150));
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "CLIENT", "KILL", "TYPE", "pubsub"])
                    .output()
                    .unwrap();
                killed += String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
            killed
        })
    };
    for k in 0..20 {
        publish_range(&mut publisher, "feed", k * 100..(k + 1) * 100).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let killed = killer.await.unwrap();
    assert!(killed >= 5, "killed {killed} pub/sub connections");
    let got = timeout(Duration::from_secs(30), reading)
        .await
        .unwrap()
        .unwrap();
    exactly_once_in_order(&got, 0);
    // The node itself filled the gaps: its subscriber reconnected each time, no channel was
    // given up, and the client never had to resume.
    let reconnects = metric(b.addr, "tidewire_engine_reconnects_total");
    let repairs = metric(b.addr, "tidewire_engine_gap_repairs_total");
    assert!(reconnects >= 5.0, "{reconnects}");
    assert_eq!(metric(b.addr, "tidewire_engine_channels_lost_total"), 0.0);
    assert_eq!(metric(b.addr, "tidewire_connections_total"), 1.0);
    eprintln!(
        "{killed} pub/sub connections killed; {reconnects} reconnects, {repairs} gaps filled"
    );
}

/// Redis killed: `/healthz` answers 503 within 5 s with the reason, a publish gets error
/// 112 within 5 s and the WebSocket stays open. Redis back empty: publishing works again
/// within 2 s, and the subscriber is told its position is gone (a new epoch), never given
/// wrong data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn redis_lost_and_back_empty() {
    let mut redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let reader = hub_client(a.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..10).await;
    let got = read_publications(&mut sub, 10).await;
    exactly_once_in_order(&got, 0);

    redis.kill();
    let lost = Instant::now();
    loop {
        let r = http_get(a.addr, "/healthz");
        if r.starts_with("HTTP/1.1 503") {
            assert!(body(&r).contains("engine unavailable"), "{r}");
            break;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(5),
            "still healthy: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pushed = Vec::new();
    let t = Instant::now();
    let reply = request(
        &mut publisher,
        json!({"id": 77, "op": "publish", "channel": "feed", "data": {"n": 10}}),
        &mut pushed,
    )
    .await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(http_get(a.addr, "/readyz").starts_with("HTTP/1.1 503"));

    redis.restart();
    let back = Instant::now();
    let position = loop {
        let reply = request(
            &mut publisher,
            json!({"id": 78, "op": "publish", "channel": "feed", "data": {"n": 1000}}),
            &mut pushed,
        )
        .await;
        if reply["ok"] == true {
            break reply["result"].clone();
        }
        assert!(back.elapsed() < Duration::from_secs(2), "{reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Redis came back empty: a new epoch, from offset 1.
    assert_eq!(position["offset"], 1);
    assert_ne!(position["epoch"].as_str(), Some(""));
    loop {
        match timeout(Duration::from_secs(10), sub.next()).await.unwrap() {
            Some(Item::Unrecoverable { epoch_changed, .. }) => {
                assert!(epoch_changed);
                break;
            }
            Some(Item::Publication(p)) => {
                panic!("a publication of the new epoch before the loss was told: {p:?}")
            }
            Some(_) => {}
            None => panic!("subscription ended"),
        }
    }
    let back = Instant::now();
    while !http_get(a.addr, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(back.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hung Redis (SIGSTOP): `/healthz` says so within 5 s, publishes fail with 112 within
/// 5 s; after SIGCONT everything works again and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_hung_redis_is_detected_and_survived() {
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..10).await;

    redis.signal("-STOP");
    let hung = Instant::now();
    while !http_get(a.addr, "/healthz").starts_with("HTTP/1.1 503") {
        assert!(
            hung.elapsed() < Duration::from_secs(5),
            "not seen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pushed = Vec::new();
    let t = Instant::now();
    let reply = request(
        &mut publisher,
        json!({"id": 5, "op": "publish", "channel": "feed", "data": {"n": 10}, "idempotency_key": "p-10"}),
        &mut pushed,
    )
    .await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    assert!(
        t.elapsed() < Duration::from_millis(5500),
        "{:?}",
        t.elapsed()
    );

    redis.signal("-CONT");
    // The retry with the same key publishes at most once, whether or not the first
    // attempt was applied when Redis woke up.
    let back = Instant::now();
    loop {
        let reply = request(
            &mut publisher,
            json!({"id": 6, "op": "publish", "channel": "feed", "data": {"n": 10}, "idempotency_key": "p-10"}),
            &mut pushed,
        )
        .await;
        if reply["ok"] == true {
            assert_eq!(reply["result"]["offset"], 11);
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "{reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_range(&mut publisher, "feed", 11..20).await;
    let got = read_publications(&mut sub, 20).await;
    exactly_once_in_order(&got, 0);
}

/// 200 clients present in a channel on a node killed with SIGKILL: a subscriber on the
/// other node gets their 200 leaves within 10 s, and presence is left with itself only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_crashed_nodes_clients_leave_presence() {
    let redis = Redis::start();
    let took = common::cluster::crashed_node_leaves(&redis.url(), 200).await;
    eprintln!("200 leaves within {took:?} of the SIGKILL");
}

/// SIGTERM with `--drain 2s`: `/readyz` answers 503 at once, a new upgrade is refused
/// with 503, and the node's 1,000
/// WebSockets are closed with 1012 spread over the drain (not all at once). (Clients
/// resuming on another node after a drain: `deploy/test.sh`, through nginx.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn drain_spreads_1012_over_the_period() {
    const CLIENTS: usize = 1000;
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &["--drain", "2s"]);
    let _b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        conns.push(client(a.addr).await);
    }
    let start = Instant::now();
    signal(&a.child, "-TERM");
    let mut times = Vec::new();
    let waits = conns.into_iter().map(|mut ws| async move {
        let (code, reason) = common::hub::close_of(&mut ws).await;
        (code, reason, Instant::now())
    });
    let ready = {
        let addr = a.addr;
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(300));
            let ready = http_get(addr, "/readyz");
            // The refusal keeps the connection open: this reads until the node exits.
            let upgrade = http(addr, &common::hub::upgrade_request(addr, "/ws", ""));
            (ready, upgrade)
        })
    };
    for (code, reason, at) in futures_util::future::join_all(waits).await {
        assert_eq!(code, 1012, "{reason}");
        times.push(at - start);
    }
    let (r, upgrade) = ready.await.unwrap();
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("draining"),
        "{r}"
    );
    assert!(
        upgrade.starts_with("HTTP/1.1 503") && upgrade.contains("draining"),
        "{upgrade}"
    );
    times.sort();
    let (first, last) = (times[0], times[CLIENTS - 1]);
    assert!(
        last - first >= Duration::from_millis(1200),
        "{first:?}..{last:?}"
    );
    assert!(last < Duration::from_secs(4), "{last:?}");
}

/// 1,000 clients resume on one channel at once (the clients of a node that died, coming
/// back to this one): far fewer than 1,000 history reads reach Redis, and each client gets
/// exactly what it missed from its own position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_reconnect_storm_is_not_a_history_storm() {
    const CLIENTS: u64 = 1000;
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..100).await;
    let mut pushed = Vec::new();
    let h = request(
        &mut publisher,
        json!({"id": 1, "op": "history", "channel": "feed", "limit": 1}),
        &mut pushed,
    )
    .await;
    let epoch = h["result"]["epoch"].as_str().unwrap().to_owned();
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        conns.push(client(a.addr).await);
    }
    let evals = |r: &Redis| -> u64 {
        let info = r.cli(&["INFO", "commandstats"]);
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let before = evals(&redis);
    let resumes = conns.into_iter().enumerate().map(|(i, mut ws)| {
        let epoch = epoch.clone();
        async move {
            let since = 50 + (i as u64 % 50);
            let req = json!({"id": 1, "op": "subscribe", "channel": "feed",
                             "since": {"offset": since, "epoch": epoch}});
            let mut pushed = Vec::new();
            let r = request(&mut ws, req, &mut pushed).await;
            assert_eq!(r["result"]["recovered"], true, "{r}");
            let offsets: Vec<u64> = r["result"]["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["offset"].as_u64().unwrap())
                .collect();
            assert_eq!(offsets, (since + 1..=100).collect::<Vec<_>>());
            ws
        }
    });
    let conns = futures_util::future::join_all(resumes).await;
    let reads = evals(&redis) - before;
    eprintln!("{CLIENTS} resumes at once: {reads} scripts run by Redis");
    assert!(reads < 50, "{reads} history reads for {CLIENTS} resumes");
    drop(conns);
}

/// Publishes `{"n": N}` for each N of `range` one at a time, each with the key `p-N`,
/// retrying after error 112 until it is accepted (within `deadline` in all).
async fn publish_retrying(
    ws: &mut common::hub::Ws,
    range: std::ops::Range<u64>,
    deadline: Duration,
) {
    let until = Instant::now() + deadline;
    let mut pushed = Vec::new();
    for n in range {
        loop {
            let req = json!({"id": n, "op": "publish", "channel": "feed", "data": {"n": n},
                             "idempotency_key": format!("p-{n}")});
            let r = request(ws, req, &mut pushed).await;
            if r["ok"] == true {
                break;
            }
            assert_eq!(r["error"]["code"], 112, "{r}");
            assert!(
                Instant::now() < until,
                "publication {n} not accepted in time: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Redis with an append-only file killed with SIGKILL mid-stream and started again: the
/// publisher retries with idempotency keys, the nodes subscribe again and fill their gaps
/// from the history Redis kept; the subscriber on the other node sees every publication
/// once, in order, without ever being told that something was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn redis_restarted_with_its_data_loses_nothing() {
    let mut redis = Redis::start_with(true);
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let reading = tokio::spawn(async move { read_publications(&mut sub, 300).await });
    let mut publisher = client(a.addr).await;
    publish_retrying(&mut publisher, 0..100, Duration::from_secs(5)).await;
    redis.kill();
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(700));
        redis.restart();
        redis
    });
    publish_retrying(&mut publisher, 100..300, Duration::from_secs(15)).await;
    let _redis = restart.await.unwrap();
    let got = timeout(Duration::from_secs(20), reading)
        .await
        .unwrap()
        .unwrap();
    exactly_once_in_order(&got, 0);
    assert_eq!(metric(b.addr, "tidewire_engine_channels_lost_total"), 0.0);
}

/// Channels sharded over two Redis servers; one is killed: `/healthz` names it, channels on
/// the other keep working, those on the dead one get error 112; it comes back empty: its
/// channels start a new epoch, the other shard's keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn one_of_two_shards_lost() {
    let r1 = Redis::start();
    let mut r2 = Redis::start();
    let u2 = r2.url();
    let a = node(&r1, "127.0.0.1:0", "node-a", &["--engine", &u2]);
    // node() passes `--engine` with the first server; the second is added here.
    let mut ws = client(a.addr).await;
    let mut pushed = Vec::new();
    let mut first = Vec::new();
    for i in 0..40u64 {
        let ch = format!("s{i}");
        let r = request(
            &mut ws,
            json!({"id": i, "op": "publish", "channel": ch, "data": i}),
            &mut pushed,
        )
        .await;
        assert_eq!(r["result"]["offset"], 1, "{r}");
        first.push(r["result"]["epoch"].as_str().unwrap().to_owned());
    }
    let on = |r: &Redis| -> Vec<u64> {
        (0..40u64)
            .filter(|i| r.cli(&["EXISTS", &format!("tw:{{s{i}}}:m")]).trim() == "1")
            .collect()
    };
    let (on1, on2) = (on(&r1), on(&r2));
    assert_eq!(on1.len() + on2.len(), 40, "{on1:?} {on2:?}");
    assert!(on1.len() >= 8 && on2.len() >= 8, "spread: {on1:?} {on2:?}");

    r2.kill();
    let t = Instant::now();
    let why = loop {
        let r = http_get(a.addr, "/healthz");
        if r.starts_with("HTTP/1.1 503") {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains(&format!("127.0.0.1:{}", r2.port)), "{why}");
    let publish =
        |i: u64, id: u64| json!({"id": id, "op": "publish", "channel": format!("s{i}"), "data": i});
    for &i in &on1 {
        let r = request(&mut ws, publish(i, 1000 + i), &mut pushed).await;
        assert_eq!(r["result"]["offset"], 2, "{r}");
    }
    let r = request(&mut ws, publish(on2[0], 2000), &mut pushed).await;
    assert_eq!(r["error"]["code"], 112, "{r}");

    r2.restart();
    let t = Instant::now();
    while !http_get(a.addr, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &i in &on2 {
        let r = request(&mut ws, publish(i, 3000 + i), &mut pushed).await;
        assert_eq!(r["result"]["offset"], 1, "{r}");
        assert_ne!(r["result"]["epoch"].as_str().unwrap(), first[i as usize]);
    }
    for &i in &on1 {
        let r = request(&mut ws, publish(i, 4000 + i), &mut pushed).await;
        assert_eq!(r["result"]["offset"], 3, "{r}");
        assert_eq!(r["result"]["epoch"].as_str().unwrap(), first[i as usize]);
    }
}

/// A channel with subscribers keeps its position past its history TTL (3 s here) while no
/// one publishes; once its last subscriber is gone, its keys expire with the TTL (nothing
/// is left in Redis); a channel whose keys Redis lost (evicted) starts a new epoch and its
/// subscriber is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn positions_live_with_subscribers_and_expire_without() {
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let reader = hub_client(a.addr);
    let mut sub = reader.subscribe("short:quiet").await.unwrap();
    let mut publisher = client(a.addr).await;
    let mut pushed = Vec::new();
    let publish =
        |id: u64, ch: &str| json!({"id": id, "op": "publish", "channel": ch, "data": {"n": id}});
    let first = request(&mut publisher, publish(0, "short:quiet"), &mut pushed).await;
    assert_eq!(first["result"]["offset"], 1, "{first}");
    // Three TTLs of silence; the node's sweep (every 5 s) renews the position.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let second = request(&mut publisher, publish(1, "short:quiet"), &mut pushed).await;
    assert_eq!(second["result"]["offset"], 2, "{second}");
    assert_eq!(second["result"]["epoch"], first["result"]["epoch"]);
    assert_eq!(read_publications(&mut sub, 2).await, vec![(1, 0), (2, 1)]);

    // Evicted: the subscriber is told (a new epoch), never given a wrong offset.
    redis.cli(&["DEL", "tw:{short:quiet}:m"]);
    let third = request(&mut publisher, publish(2, "short:quiet"), &mut pushed).await;
    assert_eq!(third["result"]["offset"], 1, "{third}");
    assert_ne!(third["result"]["epoch"], first["result"]["epoch"]);
    match timeout(Duration::from_secs(10), sub.next()).await.unwrap() {
        Some(Item::Unrecoverable { epoch_changed, .. }) => assert!(epoch_changed),
        other => panic!("expected Unrecoverable, got {other:?}"),
    }

    // No subscriber: the keys go with the TTL.
    let p = request(&mut publisher, publish(3, "short:gone"), &mut pushed).await;
    assert_eq!(p["result"]["offset"], 1, "{p}");
    assert_eq!(
        redis
            .cli(&["EXISTS", "tw:{short:gone}:m", "tw:{short:gone}:s"])
            .trim(),
        "2"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        redis
            .cli(&["EXISTS", "tw:{short:gone}:m", "tw:{short:gone}:s"])
            .trim(),
        "0"
    );
}

/// Random faults (seeded: `TIDEWIRE_FAULT_SEED` replays a run) while two channels are
/// published through three nodes: a node killed with SIGKILL and started again, the
/// subscriber connections killed by Redis, Redis stopped (SIGSTOP) for a while, Redis
/// killed and started again on its append-only file, writes paused (`CLIENT PAUSE`).
/// Three readers behind the balancer get every publication of their channel exactly once,
/// in order, and are never told that something was lost; the publishers' offsets are
/// 1, 2, 3... (never two payloads for one offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn random_node_and_engine_faults_keep_every_guarantee() {
    const FAULTS: usize = 8;
    let seed: u64 = std::env::var("TIDEWIRE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("TIDEWIRE_FAULT_SEED={seed}");
    // splitmix64 of the seed: close seeds give unrelated runs.
    let mut rng = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    rng = (rng ^ (rng >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    rng = (rng ^ (rng >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    rng = (rng ^ (rng >> 31)) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut redis = Redis::start_with(true);
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::cluster::free_port()))
        .collect();
    let names = ["node-a", "node-b", "node-c"];
    let mut nodes: Vec<Serve> = (0..3)
        .map(|i| node(&redis, &listens[i], names[i], &[]))
        .collect();
    let lb = Balancer::start(nodes.iter().map(|n| n.addr).collect()).await;

    let channels = ["chat:one", "chat:two"];
    let mut readers = Vec::new();
    for r in 0..3 {
        let channel = channels[r % 2];
        let client = hub_client(lb.addr);
        let mut sub = client.subscribe(channel).await.unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match sub.next().await {
                    Some(Item::Publication(p)) => sink
                        .lock()
                        .unwrap()
                        .push((p.offset, p.data["n"].as_u64().unwrap())),
                    Some(Item::Unrecoverable { .. }) => panic!("told that something was lost"),
                    Some(Item::Failed(e)) => panic!("the subscription failed: {e}"),
                    Some(_) => {}
                    None => return,
                }
            }
        });
        readers.push((r % 2, got, task));
    }
    // The publishers go on until the faults are over.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishers: Vec<_> = channels
        .iter()
        .map(|&channel| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut ws = None;
                let mut n = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let offset = publish_surely(&mut ws, lb.addr, channel, n).await;
                    assert_eq!(offset, n + 1, "{channel}: publication {n}");
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                n
            })
        })
        .collect();

    for _ in 0..FAULTS {
        tokio::time::sleep(Duration::from_millis(300 + next(700))).await;
        match next(5) {
            0 => {
                let i = next(3) as usize;
                eprintln!("fault: SIGKILL {}", names[i]);
                nodes[i].child.kill().unwrap();
                nodes[i].child.wait().unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                nodes[i] = node(&redis, &listens[i], names[i], &[]);
            }
            1 => {
                eprintln!("fault: CLIENT KILL TYPE pubsub");
                redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            }
            2 => {
                let ms = 1000 + next(2000);
                eprintln!("fault: Redis stopped for {ms} ms");
                redis.signal("-STOP");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                redis.signal("-CONT");
            }
            3 => {
                eprintln!("fault: Redis killed and started again on its AOF");
                redis.kill();
                redis.restart();
            }
            _ => {
                eprintln!("fault: CLIENT PAUSE 1500 WRITE");
                redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut published = Vec::new();
    for p in publishers {
        published.push(timeout(Duration::from_secs(60), p).await.unwrap().unwrap());
    }
    eprintln!("published {published:?} through {FAULTS} faults");
    for (ch, got, task) in readers {
        let want = published[ch] as usize;
        let wait = async {
            while got.lock().unwrap().len() < want && !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        timeout(Duration::from_secs(60), wait).await.unwrap();
        if task.is_finished() {
            task.await.unwrap();
            panic!("a reader stopped early");
        }
        task.abort();
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), want, "{}", channels[ch]);
        exactly_once_in_order(&got, 0);
    }
}

/// A network partition between a node and Redis (its link taken down: no reset, its
/// connections hang): `/healthz` says so within 5 s, a publish on it gets 112 within 5 s
/// and its WebSockets stay open; when the link comes back its subscriber gets what the
/// other node published meanwhile (repaired from history, exactly once) and live delivery
/// resumes within 2 s. Needs root (`ip netns`, veth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and root (ip netns); .ci/run runs it"]
async fn a_partition_between_a_node_and_redis() {
    let ns = common::cluster::Netns::new();
    let mut redis = Redis::start();
    redis.also_bind = vec![ns.engine_host.clone()];
    redis.kill();
    redis.restart();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let b = ns.node(
        &format!("redis://{}:{}", ns.engine_host, redis.port),
        "node-b",
    );
    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..50).await;
    assert_eq!(read_publications(&mut sub, 50).await.len(), 50);

    ns.partition(true);
    let cut = Instant::now();
    loop {
        let r = http_get(b.addr, "/healthz");
        if r.starts_with("HTTP/1.1 503") {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "not seen within 5 s: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("partition seen by /healthz after {:?}", cut.elapsed());
    let mut on_b = client(b.addr).await;
    let mut pushed = Vec::new();
    // Sent into the hung connection: it may still be applied when the link comes back
    // (error 112 says "may or may not have been applied"), so it carries a key.
    let late = json!({"id": 1, "op": "publish", "channel": "feed", "data": {"n": 150},
                      "idempotency_key": "late-150"});
    let t = Instant::now();
    let r = request(&mut on_b, late.clone(), &mut pushed).await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    assert!(
        t.elapsed() < Duration::from_millis(5500),
        "{:?}",
        t.elapsed()
    );
    // Published on the other side meanwhile.
    publish_range(&mut publisher, "feed", 50..150).await;

    ns.partition(false);
    let healed = Instant::now();
    let got = read_publications(&mut sub, 100).await;
    let caught_up = healed.elapsed();
    // The retry publishes at most once: offset 151 whether the first attempt was applied
    // when the link came back or not.
    let retried = loop {
        let r = request(&mut on_b, late.clone(), &mut pushed).await;
        if r["ok"] == true {
            break r;
        }
        assert_eq!(r["error"]["code"], 112, "{r}");
        assert!(healed.elapsed() < Duration::from_secs(5), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retried["result"]["offset"], 151, "{retried}");
    publish_range(&mut publisher, "feed", 151..152).await;
    let live = read_publications(&mut sub, 2).await;
    let resumed = healed.elapsed();
    let mut all: Vec<(u64, u64)> = (1..=50).map(|o| (o, o - 1)).collect();
    all.extend(got);
    all.extend(live);
    exactly_once_in_order(&all, 0);
    eprintln!("after the link came back: caught up in {caught_up:?}, live in {resumed:?}");
    assert!(resumed < Duration::from_millis(2500), "{resumed:?}");
    // The WebSocket on the partitioned node stayed open through it all.
    let r = request(&mut on_b, json!({"id": 2, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true, "{r}");
    drop(ns);
}

/// Redis goes back in time (a restart that lost its last writes, a failover to a replica
/// that had not received them: simulated by rewinding the channel's offset and dropping
/// its newest entries): the node that delivered the lost publications sees its position
/// ahead of Redis's when its subscriber connection comes back, and gives the channel a new
/// epoch, so that the lost offsets are never given to other payloads; the subscriber is
/// told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_redis_that_lost_delivered_writes_gives_a_new_epoch() {
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let reader = hub_client(a.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..10).await;
    assert_eq!(read_publications(&mut sub, 10).await.len(), 10);
    // Offsets 8, 9 and 10 were delivered; Redis "forgets" them.
    redis.cli(&["HSET", "tw:{feed}:m", "o", "7"]);
    redis.cli(&["XDEL", "tw:{feed}:s", "8-0", "9-0", "10-0"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    match timeout(Duration::from_secs(10), sub.next()).await.unwrap() {
        Some(Item::Unrecoverable { epoch_changed, .. }) => assert!(epoch_changed),
        other => panic!("expected Unrecoverable, got {other:?}"),
    }
    let mut pushed = Vec::new();
    let r = request(
        &mut publisher,
        json!({"id": 1, "op": "publish", "channel": "feed", "data": {"n": 0}}),
        &mut pushed,
    )
    .await;
    // A new epoch from 1: offset 8 is never given to another payload in the old one.
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert_eq!(read_publications(&mut sub, 1).await, vec![(1, 0)]);
    assert!(metric(a.addr, "tidewire_engine_channels_lost_total") >= 1.0);
}

/// Worse: Redis lost the last publications a node delivered and gave their offsets to new
/// ones before the node's subscriber came back (the new master of a failover took
/// publications first). The offsets alone look fine; the node checks that the publication
/// it delivered last is still the one at its offset, and gives the channel a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn offsets_given_again_to_other_publications_give_a_new_epoch() {
    let redis = Redis::start();
    let a = node(&redis, "127.0.0.1:0", "node-a", &[]);
    let reader = hub_client(a.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..10).await;
    assert_eq!(read_publications(&mut sub, 10).await.len(), 10);
    // 9 and 10 lost (the stream as a replica would have it: up to 8), then 9, 10 and 11
    // published again with other data.
    redis.cli(&["DEL", "tw:{feed}:s"]);
    let again = [(9, 90), (10, 100), (11, 110)];
    for (offset, n) in (1..=8).map(|o| (o, o - 1)).chain(again) {
        let (id, data) = (format!("{offset}-0"), format!("{{\"n\":{n}}}"));
        redis.cli(&["XADD", "tw:{feed}:s", &id, "d", &data, "t", "9999999999999"]);
    }
    redis.cli(&["HSET", "tw:{feed}:m", "o", "11"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    match timeout(Duration::from_secs(10), sub.next()).await.unwrap() {
        Some(Item::Unrecoverable { epoch_changed, .. }) => assert!(epoch_changed),
        other => panic!("expected Unrecoverable, got {other:?}"),
    }
}

/// Redis Sentinel: a master, a replica, a sentinel (quorum 1); two nodes on
/// `redis+sentinel://`. The master is killed with SIGKILL mid-stream; the sentinel promotes
/// the replica; the nodes follow it (publishes resume, with retries) and the subscriber on
/// the other node either gets every publication once, in order, or is told of a new epoch
/// (writes the replica had not received): never two payloads for one (epoch, offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn sentinel_failover() {
    let mut master = Redis::start();
    let replica = Redis::start();
    replica.cli(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    let sentinel_port = common::cluster::free_port();
    let conf = replica.dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor tw 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds tw 1000\n\
             sentinel failover-timeout tw 5000\n",
            replica.dir.display(),
            master.port
        ),
    )
    .unwrap();
    /// Kills the sentinel however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _sentinel = Kill(
        std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server --sentinel"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica did not sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("redis+sentinel://127.0.0.1:{sentinel_port}/tw");
    let a = common::cluster::node_on(&url, "127.0.0.1:0", "node-a", &[]);
    let b = common::cluster::node_on(&url, "127.0.0.1:0", "node-b", &[]);
    let cluster: Value = serde_json::from_str(body(&api_get(a.addr, "/api/cluster"))).unwrap();
    assert!(
        cluster["shards"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("redis+sentinel://"),
        "{cluster}"
    );

    let reader = hub_client(b.addr);
    let seen = common::cluster::Seen::default();
    let reading = seen.record(reader.subscribe("feed").await.unwrap());
    let mut ws = None;
    for n in 0..100 {
        publish_surely(&mut ws, a.addr, "feed", n).await;
    }
    master.kill();
    let killed = Instant::now();
    publish_surely(&mut ws, a.addr, "feed", 100).await;
    let resumed = killed.elapsed();
    for n in 101..200 {
        publish_surely(&mut ws, a.addr, "feed", n).await;
    }
    seen.wait_for(199).await;
    reading.abort();
    let (count, told, epochs) = seen.check(200);
    eprintln!(
        "failover: publishing resumed {resumed:?} after the master was killed; \
         {count} publications seen, {told} loss(es) told, {epochs} epoch(s)"
    );
    assert!(resumed < Duration::from_secs(15), "{resumed:?}");
}

/// `rediss://`: a Redis that speaks TLS only. With `--engine-ca-file` naming the CA that
/// signed its certificate, two nodes share a channel through it; without it, the node
/// refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn redis_over_tls() {
    let redis = Redis::start_tls();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = redis.tls_ca.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let a = common::cluster::node_on(&url, "127.0.0.1:0", "node-a", &["--engine-ca-file", ca]);
    let b = common::cluster::node_on(&url, "127.0.0.1:0", "node-b", &["--engine-ca-file", ca]);
    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let mut publisher = client(a.addr).await;
    publish_range(&mut publisher, "feed", 0..100).await;
    exactly_once_in_order(&read_publications(&mut sub, 100).await, 0);
    assert!(http_get(a.addr, "/healthz").starts_with("HTTP/1.1 200"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--listen", "127.0.0.1:0", "--engine", &url])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("--engine") && e.to_lowercase().contains("certificate"),
        "{e}"
    );
}

/// The next push of `ws` that has member `kind` (`join`, `leave`), within 20 s.
async fn next_event(
    ws: &mut common::hub::Ws,
    kind: &str,
) -> Result<(), tokio::time::error::Elapsed> {
    let fut = async {
        loop {
            if next_json(ws).await.get(kind).is_some() {
                return;
            }
        }
    };
    timeout(Duration::from_secs(20), fut).await
}

/// A node cut off from Redis for longer than its registry TTL is taken for dead: the other
/// node reaps its presence and sends the leaves. Its clients are still connected to it, so
/// when the link comes back it adds their presence again, with joins: presence is right
/// again on both sides. Needs root (`ip netns`, veth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and root (ip netns); .ci/run runs it"]
async fn a_node_cut_off_long_rejoins_presence() {
    use common::backend::{Answer, Backend};
    let ns = common::cluster::Netns::new();
    let mut redis = Redis::start();
    redis.also_bind = vec![ns.engine_host.clone()];
    redis.kill();
    redis.restart();
    // Hooks too: the reap's disconnect, then the rejoin's connect (issue 17). The backend
    // listens where the namespace reaches the host.
    let backend = Backend::start_on(
        "0.0.0.0",
        Arc::new(|_: &str, _: &Value| Answer::result(json!({}))),
    )
    .await;
    let port = backend.addr.port();
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://{}:{port}", ns.client_host()),
    );
    let a = node(
        &redis,
        "127.0.0.1:0",
        "node-a",
        &["--backend-url", &url_a, "--backend-events", "all"],
    );
    let b = ns.node_with(
        &format!("redis://{}:{}", ns.engine_host, redis.port),
        "node-b",
        &["--backend-url", &url_b, "--backend-events", "all"],
    );
    // The member's session as the backend last heard of it: (type, reason).
    let member_events = |backend: &Backend| -> Vec<(String, String)> {
        let mut seen = std::collections::HashSet::new();
        backend
            .bodies("/events")
            .into_iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
            .filter(|e| e["node"] == "node-b" && e["client"].is_string())
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let mut watcher = client(a.addr).await;
    let mut member = client(b.addr).await;
    let mut pushed = Vec::new();
    let sub = json!({"id": 1, "op": "subscribe", "channel": "room:lobby"});
    assert_eq!(
        request(&mut watcher, sub.clone(), &mut pushed).await["ok"],
        true
    );
    assert_eq!(request(&mut member, sub, &mut pushed).await["ok"], true);
    // The watcher sees its own join, then the member's.
    next_event(&mut watcher, "join").await.expect("join");
    next_event(&mut watcher, "join").await.expect("join");
    ns.partition(true);
    next_event(&mut watcher, "leave")
        .await
        .expect("the cut-off node's client was not reaped");
    ns.partition(false);
    let healed = Instant::now();
    next_event(&mut watcher, "join")
        .await
        .expect("the client did not join again");
    eprintln!(
        "joined again {:?} after the link came back",
        healed.elapsed()
    );
    let p = request(
        &mut watcher,
        json!({"id": 2, "op": "presence", "channel": "room:lobby"}),
        &mut pushed,
    )
    .await;
    assert_eq!(p["result"]["clients"].as_array().unwrap().len(), 2, "{p}");
    let r = request(&mut member, json!({"id": 3, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true, "{r}");
    // The backend heard: connect, subscribe; the reap's unsubscribe and disconnect ("node
    // lost"); then the rejoin's connect and subscribe: online again, as it is.
    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let evs = member_events(&backend);
        let count = |kind: &str| evs.iter().filter(|(t, _)| t == kind).count();
        // The reap's events come from node A, the rejoin's from node B: either may be
        // heard first.
        if count("connect") >= 2
            && count("subscribe") >= 2
            && count("unsubscribe") >= 1
            && count("disconnect") >= 1
        {
            eprintln!(
                "the backend had the six events {:?} after the link came back",
                healed.elapsed()
            );
            break evs;
        }
        assert!(
            Instant::now() < deadline,
            "the rejoin's events did not come: {evs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "disconnect").count(),
        1,
        "{events:?}"
    );
    assert!(
        events.contains(&("disconnect".into(), "node lost".into())),
        "{events:?}"
    );
    assert_eq!(kinds.len(), 6, "{events:?}");
}

/// The server API called on node A reaches the connections of node B: a server-side
/// subscription and its publications, `channels` summed over both nodes, a disconnect,
/// a block (also refused by a node started after it) and its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn the_server_api_reaches_every_node() {
    const SECRET: &str = "cluster-api-test-secret-of-32-chars-or-more";
    let token = |sub: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "exp": now + 3600, "iat": now}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let ok = |addr: SocketAddr, method: &str, body: Value| {
        let (status, v) = api_call(addr, method, &body.to_string(), Some(API_KEY));
        assert_eq!(status, 200, "{method} {body}: {v}");
        v
    };
    let redis = Redis::start();
    let extra = ["--auth-hmac-secret", SECRET, "--auth-anonymous"];
    let a = node(&redis, "127.0.0.1:0", "node-a", &extra);
    let b = node(&redis, "127.0.0.1:0", "node-b", &extra);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok(a.addr, "info", json!({}))["nodes"]
        .as_array()
        .map(Vec::len)
        != Some(2)
    {
        assert!(Instant::now() < deadline, "node b never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut watcher = client(a.addr).await;
    let mut pushed = Vec::new();
    let r = request(
        &mut watcher,
        json!({"id": 1, "op": "subscribe", "channel": "feed"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true);
    let mut ann = client_q(b.addr, &format!("?token={}", token("ann"))).await;
    // Listed for the API once its task runs: a reply proves it.
    let r = request(&mut ann, json!({"id": 1, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true);
    ok(
        a.addr,
        "subscribe",
        json!({"user": "ann", "channel": "feed"}),
    );
    let v = next_json(&mut ann).await;
    assert_eq!(v["subscribed"]["offset"], 0, "{v}");
    ok(
        a.addr,
        "publish",
        json!({"channel": "feed", "data": {"n": 1}}),
    );
    let mut v = next_json(&mut ann).await;
    while v.get("offset").is_none() {
        v = next_json(&mut ann).await;
    }
    assert_eq!(v["data"], json!({"n": 1}));
    let c = ok(a.addr, "channels", json!({"pattern": "fe*"}));
    assert_eq!(c["channels"]["feed"]["subscribers"], 2, "{c}");
    ok(a.addr, "disconnect", json!({"user": "ann"}));
    assert_eq!(close_of(&mut ann).await.0, 4500);
    // A block reaches node B's connection, and node B's upgrades...
    let mut bob = client_q(b.addr, &format!("?token={}", token("bob"))).await;
    let r = request(&mut bob, json!({"id": 1, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true);
    ok(a.addr, "block_user", json!({"user": "bob"}));
    assert_eq!(close_of(&mut bob).await, (4501, "blocked".to_owned()));
    let upgrade = |addr: SocketAddr| {
        let url = format!("ws://{addr}/ws?token={}", token("bob"));
        async move {
            tidewire::ClientBuilder::new(url)
                .protocols(["tidewire.v1"])
                .connect()
                .await
                .map(|_| ())
        }
    };
    let refused = upgrade(b.addr).await.unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    // ...and a node started after it (it reads the blocks from the engine).
    let c_node = node(&redis, "127.0.0.1:0", "node-c", &extra);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match upgrade(c_node.addr).await {
            Err(e) if e.to_string().contains("403") => break,
            other => {
                assert!(Instant::now() < deadline, "node c let bob in: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ok(a.addr, "unblock_user", json!({"user": "bob"}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while upgrade(b.addr).await.is_err() || upgrade(c_node.addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "bob still refused after the unblock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Event hooks across a crash (issue 17): node A holds 500 sessions in 50 channels, node B
/// 50 sessions in 10 of those channels; A is SIGKILLed. Within 15 s the backend has a
/// disconnect for each of A's 500 sessions, an unsubscribe for each of their
/// subscriptions, and `vacated` for the 40 channels only A had, each once after
/// deduplication by id, and nothing about B's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn a_dead_nodes_hook_events_come_from_another_node() {
    use common::backend::{Answer, Backend};
    use std::collections::{HashMap, HashSet};
    let redis = Redis::start();
    let backend = Backend::start(Arc::new(|_: &str, _: &Value| Answer::result(json!({})))).await;
    let hooks = ["--backend-url", &backend.url, "--backend-events", "all"];
    let mut a = node(&redis, "127.0.0.1:0", "node-a", &hooks);
    let b = node(&redis, "127.0.0.1:0", "node-b", &hooks);
    let mut pushed = Vec::new();
    let mut keep = Vec::new();
    for (addr, n, channels) in [(a.addr, 500, 50), (b.addr, 50, 10)] {
        for i in 0..n {
            let mut ws = client(addr).await;
            let channel = format!("h{}", i % channels);
            let r = request(
                &mut ws,
                json!({"id": i, "op": "subscribe", "channel": channel}),
                &mut pushed,
            )
            .await;
            assert_eq!(r["ok"], true, "{r}");
            keep.push(ws);
        }
    }
    // Every session's connect and subscribe delivered: the sessions are registered.
    let events = |backend: &Backend| -> Vec<Value> {
        let mut seen = HashSet::new();
        backend
            .bodies("/events")
            .into_iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
            .collect()
    };
    let count = |evs: &[Value], kind: &str, node: &str| {
        evs.iter()
            .filter(|e| e["type"] == kind && e["node"] == node)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let evs = events(&backend);
        if count(&evs, "subscribe", "node-a") == 500 && count(&evs, "subscribe", "node-b") == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "sessions not all registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = events(&backend);
    let a_clients: HashSet<String> = before
        .iter()
        .filter(|e| e["type"] == "connect" && e["node"] == "node-a")
        .map(|e| e["client"].as_str().unwrap().to_owned())
        .collect();
    let b_clients: HashSet<String> = before
        .iter()
        .filter(|e| e["type"] == "connect" && e["node"] == "node-b")
        .map(|e| e["client"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!((a_clients.len(), b_clients.len()), (500, 50));
    assert_eq!(
        count(&before, "occupied", "node-a") + count(&before, "occupied", "node-b"),
        50
    );

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let after = loop {
        let evs = events(&backend);
        let done = count(&evs, "disconnect", "node-a") >= 500
            && count(&evs, "unsubscribe", "node-a") >= 500
            && count(&evs, "vacated", "node-a") >= 40;
        if done {
            break evs;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "after 15 s: {} disconnects, {} unsubscribes, {} vacated",
            count(&evs, "disconnect", "node-a"),
            count(&evs, "unsubscribe", "node-a"),
            count(&evs, "vacated", "node-a")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed.elapsed();
    println!("a dead node's 500 disconnects, 500 unsubscribes and 40 vacated in {took:?}");
    // Nothing more comes (no duplicates under other ids), and nothing about B's sessions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = events(&backend);
    let mut per: HashMap<(String, String, String), usize> = HashMap::new();
    for e in all.iter().filter(|e| !before.contains(e)) {
        let key = (
            e["type"].as_str().unwrap().to_owned(),
            e["client"].as_str().unwrap_or("").to_owned(),
            e["channel"].as_str().unwrap_or("").to_owned(),
        );
        *per.entry(key).or_default() += 1;
    }
    assert!(per.values().all(|&n| n == 1), "duplicates: {per:?}");
    let disconnected: HashSet<&str> = per
        .keys()
        .filter(|(t, _, _)| t == "disconnect")
        .map(|(_, c, _)| c.as_str())
        .collect();
    assert_eq!(disconnected.len(), 500);
    assert!(disconnected.iter().all(|c| a_clients.contains(*c)));
    assert!(disconnected.iter().all(|c| !b_clients.contains(*c)));
    let vacated: HashSet<&str> = per
        .keys()
        .filter(|(t, _, _)| t == "vacated")
        .map(|(_, _, ch)| ch.as_str())
        .collect();
    let expected: HashSet<String> = (10..50).map(|i| format!("h{i}")).collect();
    assert_eq!(vacated, expected.iter().map(String::as_str).collect());
    assert_eq!(
        all.len() - before.len(),
        1040,
        "{} new events",
        all.len() - before.len()
    );
    assert_eq!(after.len(), all.len());
    drop(keep);
}

/// The next push that is not a reply, a join or a leave.
async fn push(ws: &mut common::hub::Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v.get("id").is_none() && v.get("join").is_none() && v.get("leave").is_none() {
            return v;
        }
    }
}

/// The server API's other methods across two nodes (issue 17): each called on node A about
/// a connection or a channel of node B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn every_server_api_method_works_across_two_nodes() {
    const SECRET: &str = "cluster-api-test-secret-of-32-chars-or-more";
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let token = |sub: &str, iat: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "exp": now() + 3600, "iat": iat}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let ok = |addr: SocketAddr, method: &str, body: Value| {
        let (status, v) = api_call(addr, method, &body.to_string(), Some(API_KEY));
        assert_eq!(status, 200, "{method} {body}: {v}");
        v
    };
    let redis = Redis::start();
    let extra = ["--auth-hmac-secret", SECRET, "--auth-anonymous"];
    let a = node(&redis, "127.0.0.1:0", "node-a", &extra);
    let b = node(&redis, "127.0.0.1:0", "node-b", &extra);
    let mut pushed = Vec::new();
    let mut cal = client_q(b.addr, &format!("?token={}", token("cal", now()))).await;
    let r = request(&mut cal, json!({"id": 1, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true);
    // subscribe (server-side), presence, presence_stats.
    ok(
        a.addr,
        "subscribe",
        json!({"user": "cal", "channel": "room:x"}),
    );
    let v = push(&mut cal).await;
    assert_eq!(v["channel"], "room:x", "{v}");
    assert!(v.get("subscribed").is_some(), "{v}");
    let p = ok(a.addr, "presence", json!({"channel": "room:x"}));
    assert_eq!(p["clients"][0]["user"], "cal", "{p}");
    let s = ok(a.addr, "presence_stats", json!({"channel": "room:x"}));
    assert_eq!(s, json!({"clients": 1, "users": 1}));
    // broadcast: node B's subscriber gets it.
    let r = ok(
        a.addr,
        "broadcast",
        json!({"channels": ["room:x", "feed2"], "data": {"n": 1}}),
    );
    assert_eq!(r["responses"].as_array().unwrap().len(), 2, "{r}");
    let v = push(&mut cal).await;
    assert_eq!(
        (&v["channel"], &v["data"]),
        (&json!("room:x"), &json!({"n": 1})),
        "{v}"
    );
    // history (newest, and since), history_remove.
    let h = ok(a.addr, "history", json!({"channel": "room:x"}));
    assert_eq!(h["publications"].as_array().unwrap().len(), 1, "{h}");
    let since = json!({"offset": 0, "epoch": h["epoch"]});
    let h2 = ok(
        a.addr,
        "history",
        json!({"channel": "room:x", "since": since}),
    );
    assert_eq!(
        (
            h2["complete"].as_bool(),
            h2["publications"].as_array().map(Vec::len)
        ),
        (Some(true), Some(1))
    );
    ok(a.addr, "history_remove", json!({"channel": "room:x"}));
    let h3 = ok(b.addr, "history", json!({"channel": "room:x"}));
    assert_eq!(
        (
            h3["offset"].as_u64(),
            h3["publications"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0)),
        "{h3}"
    );
    // batch, in order.
    let r = ok(
        a.addr,
        "batch",
        json!({"commands": [
            {"method": "publish", "params": {"channel": "room:x", "data": 2}},
            {"method": "presence_stats", "params": {"channel": "room:x"}},
        ]}),
    );
    assert_eq!(r["replies"][0]["result"]["offset"], 2, "{r}");
    assert_eq!(r["replies"][1]["result"]["clients"], 1, "{r}");
    let v = push(&mut cal).await;
    assert_eq!(v["data"], 2, "{v}");
    // unsubscribe (server-side).
    ok(
        a.addr,
        "unsubscribe",
        json!({"user": "cal", "channel": "room:x"}),
    );
    let v = push(&mut cal).await;
    assert_eq!(
        (&v["channel"], v.get("unsubscribed").is_some()),
        (&json!("room:x"), true),
        "{v}"
    );
    // revoke_tokens: node B's connection with an older token goes (4001).
    let mut dan = client_q(b.addr, &format!("?token={}", token("dan", now() - 100))).await;
    let r = request(&mut dan, json!({"id": 1, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true);
    ok(
        a.addr,
        "revoke_tokens",
        json!({"user": "dan", "before": now() - 50}),
    );
    assert_eq!(close_of(&mut dan).await, (4001, "token revoked".to_owned()));
    // refresh: node B's connection now expires in 2 s (4001 then).
    ok(
        a.addr,
        "refresh",
        json!({"user": "cal", "expire_at": now() + 2}),
    );
    let started = Instant::now();
    let (code, _) = close_of(&mut cal).await;
    assert_eq!(code, 4001);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// What an SSE reader saw: the last event id, the publications' `n` in order, and how many
/// `subscribed` events.
type SseSeen = Arc<std::sync::Mutex<(Option<String>, Vec<u64>, usize)>>;

/// `curl -N URL`, with `Last-Event-ID: ID` when given; its stdout piped.
fn curl_sse(url: &str, last_id: Option<&str>) -> std::process::Child {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-N", "-s", url]);
    if let Some(id) = last_id {
        cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("curl")
}

/// The Server-Sent Events fallback (issue 18) read by `curl -N` across a SIGKILL and a
/// restart of its node, while another node publishes: every publication once, in order,
/// resuming from `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis -- --ignored)"]
async fn sse_resumes_across_a_restart_with_last_event_id() {
    use std::io::BufRead;
    let redis = Redis::start();
    let listen = format!("127.0.0.1:{}", common::cluster::free_port());
    let mut a = node(&redis, &listen, "node-a", &[]);
    let b = node(&redis, "127.0.0.1:0", "node-b", &[]);
    let url = format!("http://{}/sse?channel=feed", a.addr);
    let seen = Arc::new(std::sync::Mutex::new((
        None::<String>,
        Vec::<u64>::new(),
        0usize,
    )));
    let read = |child: &mut std::process::Child, seen: SseSeen| {
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut id = None;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(data).unwrap();
                    let mut s = seen.lock().unwrap();
                    if let Some(n) = v["data"]["n"].as_u64() {
                        s.1.push(n);
                    } else if v.get("recovered").is_some() {
                        s.2 += 1;
                        assert_ne!(v["recovered"], false, "a gap: {v}");
                    }
                    s.0 = id.clone();
                }
            }
        })
    };
    let mut curl = curl_sse(&url, None);
    let mut reader = read(&mut curl, seen.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().2 == 0 {
        assert!(Instant::now() < deadline, "no subscribed event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publisher = tokio::spawn(async move {
        for n in 1..=60u64 {
            let body = json!({"channel": "feed", "data": {"n": n}}).to_string();
            let (status, v) = api_call(b.addr, "publish", &body, Some(API_KEY));
            assert_eq!(status, 200, "{v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        b
    });
    // After some publications: node A dies, and comes back on the same address.
    while seen.lock().unwrap().1.len() < 15 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let _ = curl.wait();
    reader.join().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a = node(&redis, &listen, "node-a", &[]);
    let last = seen.lock().unwrap().0.clone();
    assert!(last.is_some());
    curl = curl_sse(&url, last.as_deref());
    reader = read(&mut curl, seen.clone());
    let _b = publisher.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().1.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "got {:?}",
            seen.lock().unwrap().1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = curl.kill();
    let _ = curl.wait();
    let _ = reader.join();
    let (_, got, subscribed) = seen.lock().unwrap().clone();
    assert_eq!(got, (1..=60).collect::<Vec<_>>(), "no gap, no duplicate");
    // Two streams: the first, and the one resumed (recovered) after the restart.
    assert_eq!(subscribed, 2);
    drop(a);
}
