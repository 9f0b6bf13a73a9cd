//! Several `tidewire serve` nodes on NATS with JetStream (the test's own `nats-server` on a
//! spare port, file storage): publications cross nodes in order, a client resumes on
//! another node after its node was killed, a nats-server restart loses no history, and a
//! crashed node's clients leave presence (issue 16's guarantees, on NATS).
//!
//! Ignored by `cargo test --workspace` (a fresh machine may have no `nats-server`); the fault
//! step of `.ci/run` runs them: `cargo test -p tidewire-cli --test cluster_nats -- --ignored`.

mod common;

use common::cluster::{
    exactly_once_in_order, free_port, hub_client, node_on, read_publications, Balancer, Nats,
};
use common::hub::{client, publish_range, request, Serve};
use serde_json::json;
use std::time::Duration;
use tokio::time::{timeout, Instant};

fn node(nats: &Nats, listen: &str, name: &str) -> Serve {
    node_on(&nats.url(), listen, name, &[])
}

/// Killed with SIGKILL at three random points of a stream published on the other node: the
/// client resumes through the balancer on the surviving node, every publication once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server; .ci/run runs it (cargo test --test cluster_nats -- --ignored)"]
async fn resume_on_another_node_after_sigkill() {
    const TOTAL: u64 = 1500;
    const KILLS: u64 = 3;
    let nats = Nats::start();
    let a_listen = format!("127.0.0.1:{}", free_port());
    let mut a = node(&nats, &a_listen, "node-a");
    let b = node(&nats, "127.0.0.1:0", "node-b");
    let lb = Balancer::start(vec![a.addr, a.addr, a.addr, b.addr]).await;
    let reader = hub_client(lb.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let reading = tokio::spawn(async move { read_publications(&mut sub, TOTAL as usize).await });
    let mut publisher = client(b.addr).await;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let segment = TOTAL / (KILLS + 1);
    for k in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cut = k * segment + rng % segment;
        publish_range(&mut publisher, "feed", k * segment..cut).await;
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        publish_range(&mut publisher, "feed", cut..(k + 1) * segment).await;
        a = node(&nats, &a_listen, "node-a");
    }
    publish_range(&mut publisher, "feed", KILLS * segment..TOTAL).await;
    let got = timeout(Duration::from_secs(60), reading)
        .await
        .expect("reader did not finish")
        .unwrap();
    exactly_once_in_order(&got, 0);
}

/// nats-server killed and started again on its store mid-stream: the publisher retries
/// with idempotency keys; the subscriber on the other node gets every publication once, in
/// order, never told that something was lost (history survived on file storage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server; .ci/run runs it (cargo test --test cluster_nats -- --ignored)"]
async fn a_nats_restart_loses_no_history() {
    let mut nats = Nats::start();
    let a = node(&nats, "127.0.0.1:0", "node-a");
    let b = node(&nats, "127.0.0.1:0", "node-b");
    let reader = hub_client(b.addr);
    let mut sub = reader.subscribe("feed").await.unwrap();
    let reading = tokio::spawn(async move { read_publications(&mut sub, 200).await });
    let mut publisher = client(a.addr).await;
    let mut pushed = Vec::new();
    let publish = |n: u64| {
        json!({"id": n, "op": "publish", "channel": "feed",
                                      "data": {"n": n}, "idempotency_key": format!("p-{n}")})
    };
    let until = Instant::now() + Duration::from_secs(30);
    for n in 0..200u64 {
        if n == 80 {
            nats.kill();
            nats.restart();
        }
        loop {
            let r = request(&mut publisher, publish(n), &mut pushed).await;
            if r["ok"] == true {
                break;
            }
            assert_eq!(r["error"]["code"], 112, "{r}");
            assert!(Instant::now() < until, "{r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let got = timeout(Duration::from_secs(30), reading)
        .await
        .unwrap()
        .unwrap();
    exactly_once_in_order(&got, 0);
}

/// 100 clients present on a node killed with SIGKILL: a subscriber on the other node gets
/// their 100 leaves within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server; .ci/run runs it (cargo test --test cluster_nats -- --ignored)"]
async fn a_crashed_nodes_clients_leave_presence() {
    let nats = Nats::start();
    let took = common::cluster::crashed_node_leaves(&nats.url(), 100).await;
    eprintln!("100 leaves within {took:?} of the SIGKILL");
}
