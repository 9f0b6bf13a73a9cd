//! `tidewire serve --engine redis+cluster://...` on a Redis Cluster of the test's own:
//! three masters with a replica each, on spare ports. Channels spread over the masters;
//! a slot moved to another master mid-stream and a master killed (its replica takes over)
//! cost no publication silently (issue 16).
//!
//! Ignored by `cargo test --workspace`; the fault step of `.ci/run` runs them.

mod common;

use common::cluster::{
    exactly_once_in_order, hub_client, node_on, publish_surely, read_publications, RedisCluster,
    API_KEY,
};
use common::hub::{http, http_get, metric};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

fn api_get(addr: SocketAddr, path: &str) -> Value {
    let r = http(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {API_KEY}\r\nConnection: close\r\n\r\n"
        ),
    );
    serde_json::from_str(r.split_once("\r\n\r\n").map_or("", |(_, b)| b)).unwrap()
}

/// Channel names whose keys are on `count` different masters, one each.
fn channels_on_every_master(cluster: &RedisCluster, count: usize) -> Vec<(String, usize)> {
    let mut found: Vec<(String, usize)> = Vec::new();
    for i in 0.. {
        let name = format!("feed-{i}");
        let master = cluster.master_of(&format!("tw:{{{name}}}:m"));
        if found.iter().all(|(_, m)| *m != master) {
            found.push((name, master));
        }
        if found.len() == count {
            return found;
        }
    }
    unreachable!()
}

/// Channels on each of the three masters: publications on one node reach subscribers on
/// the other exactly once and in order, and history answers on both. Then one channel's
/// slot moves to another master while it is being published: its subscriber still gets
/// every publication once, in order, never told that something was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis_cluster -- --ignored)"]
async fn channels_spread_over_the_masters_and_survive_a_slot_move() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let a = node_on(&url, "127.0.0.1:0", "node-a", &[]);
    let b = node_on(&url, "127.0.0.1:0", "node-b", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut info = api_get(a.addr, "/api/cluster");
    while info["nodes"].as_array().map(Vec::len) != Some(2) {
        assert!(
            Instant::now() < deadline,
            "both nodes are not listed: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        info = api_get(a.addr, "/api/cluster");
    }
    assert!(
        info["shards"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("redis+cluster://"),
        "{info}"
    );

    let channels = channels_on_every_master(&cluster, 3);
    let reader = hub_client(b.addr);
    let mut subs = Vec::new();
    for (name, _) in &channels {
        subs.push(reader.subscribe(name).await.unwrap());
    }
    let mut ws = None;
    for (name, _) in &channels {
        for n in 0..100 {
            publish_surely(&mut ws, a.addr, name, n).await;
        }
    }
    for sub in &mut subs {
        let got = read_publications(sub, 100).await;
        exactly_once_in_order(&got, 0);
    }
    let history_on_a = hub_client(a.addr)
        .history(&channels[1].0, 10)
        .await
        .unwrap();
    let history_on_b = reader.history(&channels[1].0, 10).await.unwrap();
    assert_eq!(history_on_a.publications.len(), 10);
    let positions = |h: &tidewire_hub_client::History| {
        h.publications
            .iter()
            .map(|p| (p.offset, p.data.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(positions(&history_on_a), positions(&history_on_b));

    // The first channel's slot moves to the third channel's master mid-stream.
    let (moving, from) = channels[0].clone();
    let to = channels[2].1;
    let publishing = {
        let (addr, moving) = (a.addr, moving.clone());
        tokio::spawn(async move {
            let mut ws = None;
            for n in 100..400 {
                publish_surely(&mut ws, addr, &moving, n).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let moved = tokio::task::spawn_blocking({
        let key = format!("tw:{{{moving}}}:m");
        move || {
            cluster.move_slot_of(&key, to);
            let now = cluster.master_of(&key);
            (cluster, now)
        }
    });
    let (cluster, now) = moved.await.unwrap();
    assert_eq!(now, to, "the slot did not move from {from} to {to}");
    let got = read_publications(&mut subs[0], 300).await;
    publishing.await.unwrap();
    for (i, (offset, n)) in got.iter().enumerate() {
        assert_eq!(*offset, 101 + i as u64, "offset at {i}");
        assert_eq!(*n, 100 + i as u64, "publication at {i}");
    }
    // The other channels still flow.
    let mut ws = None;
    publish_surely(&mut ws, a.addr, &channels[1].0, 100).await;
    let got = read_publications(&mut subs[1], 1).await;
    assert_eq!(got, vec![(101, 100)]);
    // A subscriber arriving on the other node after the move resumes from history.
    let late = hub_client(a.addr);
    let history = late.history(&moving, 400).await.unwrap();
    assert_eq!(history.publications.len(), 400);
    assert!(http_get(a.addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(b.addr, "/healthz").starts_with("HTTP/1.1 200"));
    eprintln!(
        "slot move: node b repaired {} gap(s) from history, lost {} channel(s), reconnected {} time(s)",
        metric(b.addr, "tidewire_engine_gap_repairs_total"),
        metric(b.addr, "tidewire_engine_channels_lost_total"),
        metric(b.addr, "tidewire_engine_reconnects_total"),
    );
    assert_eq!(metric(b.addr, "tidewire_engine_channels_lost_total"), 0.0);
    drop(cluster);
}

/// A master is killed with SIGKILL while its channel is published; its replica takes
/// over. `/healthz` says so meanwhile; publishing resumes after the failover; the
/// subscriber on the other node sees one payload per (epoch, offset), consecutive offsets
/// within an epoch, and, unless it was told that publications were lost (writes the
/// replica had not received), every publication once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis_cluster -- --ignored)"]
async fn a_killed_master_fails_over_to_its_replica() {
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let a = node_on(&url, "127.0.0.1:0", "node-a", &[]);
    let b = node_on(&url, "127.0.0.1:0", "node-b", &[]);
    let channels = channels_on_every_master(&cluster, 3);
    let (feed, master) = channels[0].clone();

    let reader = hub_client(b.addr);
    let mut other = reader.subscribe(&channels[1].0).await.unwrap();
    let seen = common::cluster::Seen::default();
    let reading = seen.record(reader.subscribe(&feed).await.unwrap());
    let mut ws = None;
    for n in 0..100 {
        publish_surely(&mut ws, a.addr, &feed, n).await;
    }
    cluster.nodes[master].kill();
    let killed = Instant::now();
    // /healthz, watched from aside: 503 while a master's slots are not served.
    let watching = {
        let addr = a.addr;
        tokio::task::spawn_blocking(move || {
            let mut changes: Vec<(Duration, String)> = Vec::new();
            while killed.elapsed() < Duration::from_secs(12) {
                let h = http_get(addr, "/healthz");
                let status = h.lines().next().unwrap_or("").to_owned();
                let body = h
                    .split_once("\r\n\r\n")
                    .map_or("", |(_, b)| b)
                    .trim()
                    .to_owned();
                let now = format!("{status} {body}");
                if changes.last().map(|c| &c.1) != Some(&now) {
                    changes.push((killed.elapsed(), now));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            changes
        })
    };
    publish_surely(&mut ws, a.addr, &feed, 100).await;
    let resumed = killed.elapsed();
    for n in 101..200 {
        publish_surely(&mut ws, a.addr, &feed, n).await;
    }
    seen.wait_for(199).await;
    reading.abort();
    let (count, told, epochs) = seen.check(200);
    // A channel on a master that stayed up was not disturbed.
    publish_surely(&mut ws, a.addr, &channels[1].0, 0).await;
    assert_eq!(read_publications(&mut other, 1).await, vec![(1, 0)]);
    let changes = watching.await.unwrap();
    eprintln!("/healthz after the kill: {changes:#?}");
    // Healthy again once the replica serves the slots.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !http_get(a.addr, "/healthz").starts_with("HTTP/1.1 200") {
        assert!(
            Instant::now() < deadline,
            "/healthz stayed 503 after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cluster failover: publishing resumed \
         {resumed:?} after the master was killed; {count} publications seen, {told} \
         loss(es) told, {epochs} epoch(s)"
    );
    assert!(resumed < Duration::from_secs(15), "{resumed:?}");
}

/// Presence on a cluster: node A's 100 clients in a room; A is killed with SIGKILL; the
/// watcher on node B gets their 100 leaves within 10 s (the reaper's claim and the node
/// registry live on one slot, each leave is published on the room's master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; .ci/run runs it (cargo test --test cluster_redis_cluster -- --ignored)"]
async fn a_crashed_nodes_clients_leave_presence() {
    let cluster = RedisCluster::start();
    let took = common::cluster::crashed_node_leaves(&cluster.url(), 100).await;
    eprintln!("cluster: 100 leaves within {took:?} of the SIGKILL");
}
