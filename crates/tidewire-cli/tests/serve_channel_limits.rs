//! What a client can make the hub hold through channels, against a real `tidewire serve`:
//! subscribe floods by reconnecting (issue 15, defect 1), the subscribe rate, the
//! server-wide bounds on channels and on history bytes, a message that would have been
//! expanded into a tree (defect 4), and the gauges that show what is held.

mod common;

use common::hub::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tidewire::Message;

/// A figure of the server's `/proc/PID/status` in KiB: `VmRSS` (resident now) or `VmHWM`
/// (its peak).
fn status_kib(srv: &Serve, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect(field)
}

/// The server's resident memory, in KiB.
fn rss_kib(srv: &Serve) -> u64 {
    status_kib(srv, "VmRSS")
}

async fn wait_for_metric(srv: &Serve, name: &str, ok: impl Fn(f64) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(srv.addr, name);
        if ok(v) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {name} is {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends every request at once (pipelined), then reads a reply for each; returns the
/// replies in the order of the requests.
async fn pipelined(ws: &mut Ws, requests: &[Value]) -> Vec<Value> {
    for r in requests {
        ws.feed(Message::text(r.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut replies = Vec::with_capacity(requests.len());
    while replies.len() < requests.len() {
        let v = next_json(ws).await;
        if v.get("id").is_some() {
            replies.push(v);
        }
    }
    replies.sort_by_key(|v| v["id"].as_u64());
    replies
}

/// One flooding connection: 1,000 subscribes to names never used before, then gone
/// without a word.
async fn flood(srv: &Serve, round: usize) {
    let mut ws = client(srv.addr).await;
    let subscribes: Vec<Value> = (0..1000)
        .map(|n| json!({"id": n, "op": "subscribe", "channel": format!("flood-{round}-{n}")}))
        .collect();
    let replies = pipelined(&mut ws, &subscribes).await;
    assert!(replies.iter().all(|r| r["ok"] == true), "{:?}", replies[0]);
    drop(ws);
}

/// Issue 15, defect 1: 1,000 subscribes to distinct names, disconnect, reconnect, again.
/// Each name used to stay in the engine for the history TTL (10 min), so one client grew
/// the server without bound. Now nothing stays, and memory stays flat.
#[tokio::test]
async fn reconnecting_subscribe_floods_leave_no_channels_and_keep_memory_flat() {
    const ROUNDS: usize = 60;
    let srv = serve(&["--no-demo"]);
    // Warm-up: the allocator and the maps reach their working size.
    for round in 0..5 {
        flood(&srv, round).await;
    }
    wait_for_metric(&srv, "tidewire_subscribers", |v| v == 0.0, "after warm-up").await;
    let before = rss_kib(&srv);
    for round in 5..ROUNDS {
        flood(&srv, round).await;
    }
    // Every connection's subscriptions end once the server has seen it go.
    wait_for_metric(&srv, "tidewire_subscribers", |v| v == 0.0, "subscribers").await;
    let after = rss_kib(&srv);
    let channels = metric(srv.addr, "tidewire_channels");
    eprintln!(
        "{} subscribes to distinct names over {} connections: RSS {before} KiB -> {after} KiB, \
         {channels} channels held",
        (ROUNDS - 5) * 1000,
        ROUNDS - 5
    );
    assert_eq!(channels, 0.0, "streams left behind");
    assert!(
        after <= before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// A connection that churns through channels (subscribe, unsubscribe, a new name, ...)
/// gets error 107 past `limits.subscribe_rate` (default 100/s, burst 1,000).
#[tokio::test]
async fn subscribes_beyond_the_rate_get_107() {
    let srv = serve(&["--no-demo"]);
    let mut ws = client(srv.addr).await;
    let mut requests = Vec::new();
    for n in 0..1500u64 {
        let channel = format!("churn-{n}");
        requests.push(json!({"id": 2 * n, "op": "subscribe", "channel": channel}));
        requests.push(json!({"id": 2 * n + 1, "op": "unsubscribe", "channel": channel}));
    }
    let replies = pipelined(&mut ws, &requests).await;
    let subscribed = replies
        .iter()
        .step_by(2)
        .filter(|r| r["ok"] == true)
        .count();
    let limited: Vec<&Value> = replies
        .iter()
        .step_by(2)
        .filter(|r| r["error"]["code"] == 107)
        .collect();
    assert_eq!(subscribed + limited.len(), 1500);
    assert!(subscribed >= 1000, "the burst: {subscribed}");
    assert!(limited.len() >= 200, "{} limited", limited.len());
    let message = limited[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.subscribe_rate"), "{message}");
    // Still served: other requests go through.
    let mut p = Vec::new();
    let r = request(&mut ws, json!({"id": "p", "op": "ping"}), &mut p).await;
    assert_eq!(r["ok"], true);
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_refused_total{reason=\"subscribe_rate\"}"
        ),
        limited.len() as f64
    );
}

/// `limits.max_channels`: a subscribe or publish that would make one channel more gets
/// error 111; channels that exist still work, and a channel that goes makes room.
#[tokio::test]
async fn channels_beyond_max_channels_get_111() {
    let config = common::temp_file("max-channels.toml", "[limits]\nmax_channels = 5\n");
    let key = "a-key-of-16-chars-or-more";
    let srv = serve(&[
        "--no-demo",
        "--config",
        config.to_str().unwrap(),
        "--api-key",
        key,
    ]);
    let mut ws = client(srv.addr).await;
    let mut p = Vec::new();
    for n in 0..4 {
        let r = request(
            &mut ws,
            json!({"id": n, "op": "subscribe", "channel": format!("c{n}")}),
            &mut p,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = request(
        &mut ws,
        json!({"id": 10, "op": "publish", "channel": "chat:kept", "data": {"n": 1}}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(metric(srv.addr, "tidewire_channels"), 5.0);
    let r = request(
        &mut ws,
        json!({"id": 11, "op": "subscribe", "channel": "one-too-many"}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 111, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.max_channels"), "{message}");
    let r = request(
        &mut ws,
        json!({"id": 12, "op": "publish", "channel": "chat:new", "data": 1}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 111, "{r}");
    let body = r#"{"channel":"chat:api","data":1}"#;
    let response = http(
        srv.addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("limits.max_channels"), "{response}");
    // Existing channels still take publications and subscribers.
    let r = request(
        &mut ws,
        json!({"id": 13, "op": "publish", "channel": "chat:kept", "data": 2}),
        &mut p,
    )
    .await;
    assert_eq!(r["result"]["offset"], 2, "{r}");
    let mut other = client(srv.addr).await;
    let r = request(
        &mut other,
        json!({"id": 1, "op": "subscribe", "channel": "c0"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // c1 was never published to: it goes with its only subscriber.
    let r = request(
        &mut ws,
        json!({"id": 14, "op": "unsubscribe", "channel": "c1"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = request(
        &mut ws,
        json!({"id": 15, "op": "subscribe", "channel": "one-too-many"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "room again: {r}");
    assert_eq!(metric(srv.addr, "tidewire_channels"), 5.0);
    // Counted by reason: the subscribe, the publish and the API's publish refused; then
    // the API's own refusals.
    let refused = |reason: &str| {
        metric(
            srv.addr,
            &format!("tidewire_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("max_channels"), 3.0);
    for (auth, body) in [
        ("apikey wrong-key-wrong-key", "{}"),
        (&*format!("apikey {key}"), "{"),
    ] {
        let response = http(
            srv.addr,
            &format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
    }
    assert_eq!(refused("api_auth"), 1.0);
    assert_eq!(refused("api_bad_request"), 1.0);
}

/// The gauges of what clients make the server hold: channels by namespace, history bytes,
/// bytes queued for clients.
#[tokio::test]
async fn gauges_show_channels_history_and_queued_bytes() {
    let srv = serve(&["--no-demo"]);
    let mut ws = client(srv.addr).await;
    let mut p = Vec::new();
    let by_ns = |ns: &str| format!("tidewire_channels_by_namespace{{namespace=\"{ns}\"}}");
    assert_eq!(metric(srv.addr, "tidewire_history_bytes"), 0.0);
    let text = "x".repeat(1000);
    for (n, channel) in ["chat:a", "chat:b", "news"].into_iter().enumerate() {
        let r = request(
            &mut ws,
            json!({"id": n, "op": "publish", "channel": channel, "data": text}),
            &mut p,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(metric(srv.addr, &by_ns("chat")), 2.0);
    assert_eq!(metric(srv.addr, &by_ns("default")), 1.0);
    let history = metric(srv.addr, "tidewire_history_bytes");
    // The data (1,002 bytes of JSON each) plus the broker's overhead per publication.
    assert!(
        (3.0 * 1002.0..3.0 * 1002.0 + 3.0 * 128.0).contains(&history),
        "{history}"
    );

    // A subscriber that reads nothing: what the publications bring waits for it.
    let mut slow = client(srv.addr).await;
    let r = request(
        &mut slow,
        json!({"id": 1, "op": "subscribe", "channel": "chat:q"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let big = "y".repeat(60_000);
    let requests: Vec<Value> = (0..100)
        .map(|n| json!({"id": 100 + n, "op": "publish", "channel": "chat:q", "data": big}))
        .collect();
    let replies = pipelined(&mut ws, &requests).await;
    assert!(replies.iter().all(|r| r["ok"] == true));
    wait_for_metric(
        &srv,
        "tidewire_queued_bytes",
        |v| v > 0.0,
        "queued for slow",
    )
    .await;
    let history = metric(srv.addr, "tidewire_history_bytes");
    assert!(history > 100.0 * 60_000.0, "{history}");
    // It goes (or is closed as a slow consumer): nothing is queued any more.
    drop(slow);
    wait_for_metric(&srv, "tidewire_queued_bytes", |v| v == 0.0, "queued after").await;
}

/// History is bounded in bytes, all channels together (`limits.max_history_bytes`): one
/// client publishing large messages at full speed used to make the server keep
/// `history_size` of them per channel for the TTL (1,000 × 1 MiB per channel). Past the
/// bound every publication is still delivered, the channel sheds its oldest, and a resume
/// from before what is left gets `recovered: false`.
#[tokio::test]
async fn history_stays_within_max_history_bytes() {
    const BOUND: f64 = 4.0 * 1024.0 * 1024.0;
    const COUNT: u64 = 100;
    let config = common::temp_file(
        "max-history.toml",
        "[limits]\nmax_history_bytes = 4194304\npublish_rate = 0\n",
    );
    let srv = serve(&["--no-demo", "--config", config.to_str().unwrap()]);
    let mut subscriber = client(srv.addr).await;
    let mut p = Vec::new();
    let r = request(
        &mut subscriber,
        json!({"id": 1, "op": "subscribe", "channel": "chat:big"}),
        &mut p,
    )
    .await;
    let epoch = r["result"]["epoch"].as_str().unwrap().to_owned();
    let before = rss_kib(&srv);
    let mut publisher = client(srv.addr).await;
    let big = "x".repeat(500_000);
    for n in 0..COUNT {
        let r = request(
            &mut publisher,
            json!({"id": n, "op": "publish", "channel": "chat:big", "data": big}),
            &mut p,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
        // Read as we go, so that the subscriber is no slow consumer.
        while let Ok(m) = tokio::time::timeout(Duration::from_millis(1), subscriber.recv()).await {
            if let Some(Ok(Message::Text(t))) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v.get("offset").is_some() {
                    p.push(v);
                }
            }
        }
    }
    while (p.len() as u64) < COUNT {
        let v = next_json(&mut subscriber).await;
        if v.get("offset").is_some() {
            p.push(v);
        }
    }
    let offsets: Vec<u64> = p.iter().filter_map(|v| v["offset"].as_u64()).collect();
    assert_eq!(
        offsets,
        (1..=COUNT).collect::<Vec<_>>(),
        "every one delivered"
    );
    let held = metric(srv.addr, "tidewire_history_bytes");
    assert!(held <= BOUND, "history holds {held} bytes");
    assert!(held > BOUND / 2.0, "and keeps what fits: {held}");
    assert!(metric(srv.addr, "tidewire_history_shed_total") >= 90.0);
    let grown = rss_kib(&srv).saturating_sub(before);
    // 100 × 500 KB (49 MiB) went through; without the bound all of it stayed.
    assert!(grown < 24 * 1024, "RSS grew {grown} KiB");
    let mut late = client(srv.addr).await;
    let r = request(
        &mut late,
        json!({"id": 1, "op": "subscribe", "channel": "chat:big",
               "since": {"offset": 0, "epoch": epoch}}),
        &mut Vec::new(),
    )
    .await;
    assert_eq!(r["result"]["recovered"], false, "{r}");
    let r = request(
        &mut late,
        json!({"id": 2, "op": "history", "channel": "chat:big", "limit": 100}),
        &mut Vec::new(),
    )
    .await;
    let kept: Vec<u64> = r["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["offset"].as_u64())
        .collect();
    assert!(!kept.is_empty() && kept.len() < 10, "{kept:?}");
    assert_eq!(
        *kept.last().unwrap(),
        COUNT,
        "history ends at the channel's offset"
    );
}

/// Issue 15, defect 4: a publication's `data` used to be expanded into a `serde_json::Value`
/// tree, so a 2 MB array of a million elements cost the server +41.7 MiB at its peak. Now
/// it goes from the socket to every subscriber as the bytes sent (checked, never
/// expanded): the peak grows by a few copies of the message, not by a tree.
#[tokio::test]
async fn a_million_element_array_costs_a_few_copies_of_itself() {
    let srv = serve(&["--no-demo", "--max-message-size", "4194304"]);
    let mut subscriber = client(srv.addr).await;
    let mut publisher = client(srv.addr).await;
    let mut p = Vec::new();
    let r = request(
        &mut subscriber,
        json!({"id": 1, "op": "subscribe", "channel": "typing:big"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // Warm-up with a small array: buffers and pools reach their working size.
    let small = format!("[{}0]", "0,".repeat(1000));
    let text = format!(r#"{{"id":1,"op":"publish","channel":"typing:big","data":{small}}}"#);
    publisher.send(Message::text(text)).await.unwrap();
    let _ = next_json(&mut publisher).await;
    let _ = next_json(&mut subscriber).await;
    let before = status_kib(&srv, "VmHWM");
    // 2 MB: a million zeros. Typing keeps no history, so the figure is the path's alone.
    let big = format!("[{}0]", "0,".repeat(999_999));
    let text = format!(r#"{{"id":2,"op":"publish","channel":"typing:big","data":{big}}}"#);
    publisher.send(Message::text(text)).await.unwrap();
    let r = next_json(&mut publisher).await;
    assert_eq!(r["ok"], true, "{:.200}", r.to_string());
    let pushed = match subscriber.recv().await {
        Some(Ok(Message::Text(t))) => t,
        other => panic!("{other:?}"),
    };
    assert!(pushed.as_str().contains(&big), "delivered as sent");
    let grown = status_kib(&srv, "VmHWM").saturating_sub(before);
    // The message is 2 MiB: reading it, the publication and its frame are a few copies.
    assert!(
        grown < 16 * 1024,
        "peak RSS grew {grown} KiB for a 2 MiB message"
    );
    eprintln!("peak RSS grew {grown} KiB for a 2 MiB message of a million elements");
}
