//! Issue 15, "What it must show": hostile input across the hub's endpoints (`/ws`,
//! `/rooms/{room}`, `POST /api/publish`, the pages) gets the documented error reply, close
//! code or HTTP status; meanwhile a steady subscriber gets every publication of a steady
//! publisher (offsets without a gap), the server stays up, and its RSS stays within
//! [`RSS_GROWTH_BOUND`] of what it was before the hostile input.
//! <https://tidewire.dev/issues/15>

mod common;

use common::hub::{client, close_of, http, next_json, request, serve, upgrade_request, Ws};
use common::{frame, read_head};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidewire::Message;

const API_KEY: &str = "hostile-suite-api-key";
/// How much the server's RSS may grow over the suite. Measured (debug build, 2026-12-02):
/// 19.6 MiB before, 24.4 to 27.7 MiB after five rounds; over thirty rounds it levels off
/// between 25 and 30 MiB (at most +10.4 MiB). The ~1 MiB publication goes to `typing:`,
/// which keeps no history: in a namespace with history each round would add its 1 MiB
/// for the history's TTL, as the history is bounded in publications, not in bytes.
const RSS_GROWTH_BOUND: u64 = 32 << 20;
const MAX_MESSAGE: usize = 1 << 20;

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

/// Sends a request and returns its reply (pushes meanwhile are dropped).
async fn ask(ws: &mut Ws, req: Value) -> Value {
    request(ws, req, &mut Vec::new()).await
}

/// Sends `text` as one message and returns the next reply (or push) as JSON.
async fn reply_to(ws: &mut Ws, text: impl Into<String>) -> Value {
    ws.send(Message::text(text.into())).await.unwrap();
    next_json(ws).await
}

fn error_code(v: &Value) -> u64 {
    v["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an error reply: {v}"))
}

/// The connection is still usable: a ping gets its reply.
async fn still_open(ws: &mut Ws) {
    let r = ask(ws, json!({"id": "alive", "op": "ping"})).await;
    assert_eq!(r["ok"], true, "{r}");
}

/// Opens `path` (a WebSocket) on a raw socket, sends `frames`, and returns the code of the
/// server's close frame.
fn raw_close_code(addr: SocketAddr, path: &str, frames: &[Vec<u8>]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request(addr, path, "").as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    for f in frames {
        // The server may close before reading everything: a reset is fine.
        if s.write_all(f).is_err() {
            break;
        }
    }
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).expect("a close frame");
        let mut len = (h[1] & 0x7f) as usize;
        if len == 126 {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            len = u16::from_be_bytes(l) as usize;
        } else if len == 127 {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            len = u64::from_be_bytes(l) as usize;
        }
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        if h[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// The status of a refused upgrade (read from its head: the connection stays open).
fn upgrade_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request(addr, path, "").as_bytes())
        .unwrap();
    read_head(&mut s).0
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {response:.200}"))
}

fn api(addr: SocketAddr, key: Option<&str>, body: &str) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    http(
        addr,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// What `/ws` answers to malformed, type-confused, oversized and deeply nested requests.
async fn hostile_ws(addr: SocketAddr) {
    let mut ws = client(addr).await;
    // Not JSON, not an object, no op, a duplicate member: 101 with a null id.
    for bad in ["not json", "[1,2,3]", "42", "{\"id\":1", "\u{0}\u{1}"] {
        let r = reply_to(&mut ws, bad).await;
        assert_eq!(
            (error_code(&r), &r["id"]),
            (101, &Value::Null),
            "{bad}: {r}"
        );
    }
    let r = reply_to(&mut ws, r#"{"id":1,"channel":"chat:x"}"#).await;
    assert_eq!((error_code(&r), &r["id"]), (101, &json!(1)), "no op: {r}");
    let r = reply_to(&mut ws, r#"{"id":1,"id":2,"op":"ping"}"#).await;
    assert_eq!(error_code(&r), 101, "duplicate member: {r}");
    // An unknown op, and an op that is not a string.
    let r = reply_to(&mut ws, r#"{"id":2,"op":"explode"}"#).await;
    assert_eq!((error_code(&r), &r["id"]), (102, &json!(2)), "{r}");
    let r = reply_to(&mut ws, r#"{"id":3,"op":["subscribe"]}"#).await;
    assert!(matches!(error_code(&r), 101 | 102), "{r}");
    // Type confusion: channel as a number, since as an array or a string, limit negative,
    // data missing.
    for (id, bad) in [
        (10, json!({"op": "subscribe", "channel": 5})),
        (11, json!({"op": "subscribe", "channel": null})),
        (12, json!({"op": "subscribe", "channel": ["chat:x"]})),
        (
            13,
            json!({"op": "subscribe", "channel": "chat:x", "since": [1, "e"]}),
        ),
        (
            14,
            json!({"op": "subscribe", "channel": "chat:x", "since": "1"}),
        ),
        (
            15,
            json!({"op": "subscribe", "channel": "chat:x", "since": {"offset": "1", "epoch": "e"}}),
        ),
        (
            16,
            json!({"op": "history", "channel": "chat:x", "limit": -1}),
        ),
        (
            17,
            json!({"op": "history", "channel": "chat:x", "limit": "10"}),
        ),
        (18, json!({"op": "publish", "channel": "chat:x"})),
        (19, json!({"op": "publish", "channel": {"a": 1}, "data": 1})),
        (20, json!({"op": "connect", "token": 7})),
    ] {
        let mut req = bad.clone();
        req["id"] = json!(id);
        let r = ask(&mut ws, req).await;
        assert_eq!(error_code(&r), 101, "{bad}: {r}");
    }
    // Any JSON value is an id, echoed byte for byte.
    for id in [
        r#"{"a":[1,{"b":null}]}"#,
        "12345678901234567890123",
        "1.50",
        "\"x\\ny\"",
    ] {
        ws.send(Message::text(format!(r#"{{"id":{id},"op":"ping"}}"#)))
            .await
            .unwrap();
        let t = loop {
            match ws.recv().await.unwrap().unwrap() {
                Message::Text(t) => break t.to_string(),
                _ => continue,
            }
        };
        assert!(
            t.starts_with(&format!(r#"{{"id":{id},"#)),
            "id {id} not echoed as sent: {t}"
        );
    }
    // Names: empty, over 255 bytes, unknown namespace: 103. Control characters are valid
    // (names are any 1 to 255 bytes, docs/protocol.md), and come back escaped as JSON.
    for (id, name) in [
        (30, String::new()),
        (31, "c".repeat(256)),
        (32, "x".repeat(100_000)),
        (33, "nope:room".into()),
    ] {
        let r = ask(
            &mut ws,
            json!({"id": id, "op": "subscribe", "channel": name}),
        )
        .await;
        assert_eq!(error_code(&r), 103, "{name:.40}: {r}");
    }
    let odd = "chat:\u{0}\n\u{202e}\u{1b}[31m";
    let r = ask(
        &mut ws,
        json!({"id": 34, "op": "publish", "channel": odd, "data": {"k": odd}}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // Deep nesting: 100,000 brackets as the message, as `data`, as the `id`.
    let deep = "[".repeat(100_000);
    let r = reply_to(&mut ws, deep.clone()).await;
    assert_eq!(error_code(&r), 101, "{r:.200}");
    let r = reply_to(
        &mut ws,
        format!(r#"{{"id":40,"op":"publish","channel":"chat:x","data":{deep}}}"#),
    )
    .await;
    assert_eq!(error_code(&r), 101, "{r:.200}");
    // Balanced nesting is valid JSON: kept as raw bytes (never expanded into a tree on the
    // server), so it is accepted as `data` and as an `id`, and echoed unchanged.
    let closed = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let r = reply_to(
        &mut ws,
        format!(r#"{{"id":41,"op":"publish","channel":"chat:deep","data":{closed}}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r:.200}");
    ws.send(Message::text(format!(r#"{{"id":{closed},"op":"ping"}}"#)))
        .await
        .unwrap();
    match ws.recv().await.unwrap().unwrap() {
        Message::Text(t) => assert!(t.starts_with(&format!(r#"{{"id":{closed},"ok":true"#))),
        other => panic!("{other:?}"),
    }
    // Extreme values of valid types: a history limit of 2^64 - 1, a since beyond the
    // channel, an epoch of 500 KB.
    let r = ask(
        &mut ws,
        json!({"id": 60, "op": "history", "channel": "chat:x", "limit": u64::MAX}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r:.300}");
    for (id, since) in [
        (61, json!({"offset": u64::MAX, "epoch": "e"})),
        (62, json!({"offset": 0, "epoch": "e".repeat(500_000)})),
    ] {
        let r = ask(&mut ws, json!({"id": id, "op": "subscribe", "channel": format!("chat:since{id}"), "since": since}))
        .await;
        assert_eq!(r["result"]["recovered"], false, "{r:.300}");
    }
    let r = ask(
        &mut ws,
        json!({"id": 63, "op": "subscribe", "channel": "chat:since61"}),
    )
    .await;
    assert_eq!(error_code(&r), 106, "{r:.300}");
    let r = ask(
        &mut ws,
        json!({"id": 64, "op": "unsubscribe", "channel": "chat:never"}),
    )
    .await;
    assert_eq!(error_code(&r), 105, "{r:.300}");
    // `connect`'s info: at most 1 KiB, and a value the presence can show (nested at most
    // 128 deep, serde_json's limit): 101 otherwise.
    let deep_info = format!("{}{}", "[".repeat(300), "]".repeat(300));
    for (id, info) in [(70, format!("\"{}\"", "i".repeat(2000))), (71, deep_info)] {
        let r = reply_to(
            &mut ws,
            format!(r#"{{"id":{id},"op":"connect","info":{info}}}"#),
        )
        .await;
        assert_eq!(error_code(&r), 101, "{r:.300}");
    }
    // A message just under the limit is accepted (a publication of ~1 MiB).
    let big = "y".repeat(MAX_MESSAGE - 200);
    let r = ask(
        &mut ws,
        json!({"id": 50, "op": "publish", "channel": "typing:big", "data": big}),
    )
    .await;
    assert_eq!(r["ok"], true, "{r:.200}");
    still_open(&mut ws).await;
    // Over the limit: close 1009, no error reply.
    let over = json!({"id": 51, "op": "publish", "channel": "typing:big", "data": "z".repeat(MAX_MESSAGE + 1)});
    ws.send(Message::text(over.to_string())).await.unwrap();
    assert_eq!(close_of(&mut ws).await.0, 1009);

    // A binary frame: 4003. Invalid UTF-8 in a text frame: 1007. A fragmented message
    // whose parts add up to more than the limit: 1009.
    let mut ws = client(addr).await;
    ws.send(Message::binary(b"{\"id\":1,\"op\":\"ping\"}".to_vec()))
        .await
        .unwrap();
    assert_eq!(close_of(&mut ws).await.0, 4003);
    let mask = Some([7, 7, 7, 7]);
    let bad_utf8 = frame(true, 0x1, b"{\"id\":1,\"op\":\"\xff\xfe\"}", mask);
    assert_eq!(raw_close_code(addr, "/ws", &[bad_utf8]), 1007);
    let part = vec![b' '; 600 * 1024];
    let fragments = [
        frame(false, 0x1, &part, mask),
        frame(true, 0x0, &part, mask),
    ];
    assert_eq!(raw_close_code(addr, "/ws", &fragments), 1009);
    // A ping of 126 bytes (control frames carry at most 125): 1002.
    let ping = frame(true, 0x9, &[b'p'; 126], mask);
    assert_eq!(raw_close_code(addr, "/ws", &[ping]), 1002);
    // A deflate bomb: 3 MiB of spaces compressed to a few KiB: 1009 once inflated past
    // max_message_size.
    let (mut ws, _) = tidewire::ClientBuilder::new(format!("ws://{addr}/ws"))
        .protocols(["tidewire.v1"])
        .compression(Some(tidewire::DeflateConfig::default()))
        .connect()
        .await
        .unwrap();
    assert!(ws.compression().is_some());
    let bomb = format!(r#"{{"id":1,"op":"ping","pad":"{}"}}"#, " ".repeat(3 << 20));
    ws.send(Message::text(bomb)).await.unwrap();
    assert_eq!(close_of(&mut ws).await.0, 1009);
    // A frame header announcing 2^62 bytes: 1009 from the header alone.
    let mut huge = vec![0x81, 0xff];
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(raw_close_code(addr, "/ws", &[huge]), 1009);
}

/// What a raw room answers.
async fn hostile_rooms(addr: SocketAddr) {
    // Room names: over 200 bytes 400; empty: no route (404).
    let long = format!("/rooms/{}", "r".repeat(201));
    assert_eq!(upgrade_status(addr, &long), 400);
    assert_eq!(upgrade_status(addr, "/rooms/"), 404);
    // Control characters and a bidi override in a name are a room like any other.
    let odd = format!("ws://{addr}/rooms/a%00b%0A%E2%80%AE%1B");
    let (mut a, _) = tidewire::connect(&odd).await.unwrap();
    let (mut b, _) = tidewire::connect(&odd).await.unwrap();
    a.send(Message::text("hi")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), b.recv()).await;
    assert_eq!(got.unwrap().unwrap().unwrap(), Message::text("hi"));
    // Oversized: 1009; invalid UTF-8: 1007; a truncated close frame: 1002.
    a.send(Message::binary(vec![0u8; MAX_MESSAGE + 1]))
        .await
        .unwrap();
    assert_eq!(close_of(&mut a).await.0, 1009);
    let mask = Some([1, 2, 3, 4]);
    let room = "/rooms/hostile";
    assert_eq!(
        raw_close_code(addr, room, &[frame(true, 0x1, b"\xc3\x28", mask)]),
        1007
    );
    assert_eq!(
        raw_close_code(addr, room, &[frame(true, 0x8, b"\x03", mask)]),
        1002
    );
    // An unmasked client frame: 1002.
    assert_eq!(
        raw_close_code(addr, room, &[frame(true, 0x1, b"x", None)]),
        1002
    );
    drop(b);
}

/// What `POST /api/publish` answers.
fn hostile_api(addr: SocketAddr) {
    let ok = r#"{"channel":"chat:api","data":{"n":1}}"#;
    assert_eq!(status_of(&api(addr, None, ok)), 401);
    assert_eq!(status_of(&api(addr, Some("wrong-key-wrong-key"), ok)), 401);
    assert_eq!(status_of(&api(addr, Some(API_KEY), ok)), 200);
    let deep = format!(r#"{{"channel":"chat:api","data":{}}}"#, "[".repeat(100_000));
    for bad in [
        "",
        "not json",
        "[]",
        r#"{"channel":5,"data":1}"#,
        r#"{"channel":"chat:api"}"#,
        r#"{"data":1}"#,
        r#"{"channel":"chat:api","data":1,"channel":"chat:b"}"#,
        &deep,
    ] {
        let r = api(addr, Some(API_KEY), bad);
        assert_eq!(status_of(&r), 400, "{bad:.40}: {r:.300}");
    }
    // Invalid names: 400 as well.
    for name in [String::new(), "c".repeat(256), "nope:x".into()] {
        let body = json!({"channel": name, "data": 1}).to_string();
        let r = api(addr, Some(API_KEY), &body);
        assert_eq!(status_of(&r), 400, "{name:.40}: {r:.300}");
    }
    // A body over axum's limit (2 MiB): 413.
    let huge = format!(
        r#"{{"channel":"chat:api","data":"{}"}}"#,
        "h".repeat(3 << 20)
    );
    assert_eq!(status_of(&api(addr, Some(API_KEY), &huge)), 413);
}

/// What the pages answer.
fn hostile_pages(addr: SocketAddr) {
    for (path, status) in [
        ("/", 200),
        ("/chat", 200),
        ("/..%2f..%2f..%2fetc%2fpasswd", 404),
        ("/style.css/../../../etc/passwd", 404),
        ("/%00", 404),
        ("/%ff%fe", 404),
    ] {
        let r = http(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status_of(&r), status, "{path}: {r:.300}");
        assert!(!r.contains("root:"), "{path}");
    }
    let long_path = format!("/{}", "p".repeat(8000));
    let r = http(
        addr,
        &format!("GET {long_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(matches!(status_of(&r), 404 | 414 | 431), "{r:.300}");
    let r = http(
        addr,
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(status_of(&r), 405, "{r:.300}");
    // Not HTTP at all: 400 (or the connection is closed), and the server stays up.
    let r = http(addr, "\u{16}\u{3}\u{1}garbage\r\n\r\n");
    assert!(r.is_empty() || status_of(&r) == 400, "{r:.300}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_15_hostile_input_gets_documented_answers_and_hurts_no_one() {
    let srv = serve(&["--api-key", API_KEY]);
    let addr = srv.addr;
    let pid = srv.child.id();

    // The steady pair: a subscriber, and a publisher at 50 per second.
    let mut sub = client(addr).await;
    let r = ask(
        &mut sub,
        json!({"id": 1, "op": "subscribe", "channel": "chat:steady"}),
    )
    .await;
    let start = r["result"]["offset"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let publisher = tokio::spawn(async move {
        let mut ws = client(addr).await;
        let mut offsets = Vec::new();
        let mut id = 0u64;
        while !stopped.load(Ordering::Relaxed) {
            id += 1;
            let r = ask(
                &mut ws,
                json!({"id": id, "op": "publish", "channel": "chat:steady", "data": {"n": id}}),
            )
            .await;
            offsets.push(r["result"]["offset"].as_u64().expect("published"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        offsets
    });
    let subscriber = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let v = next_json(&mut sub).await;
            if v["channel"] == "chat:steady" && v.get("offset").is_some() {
                let n = v["offset"].as_u64().unwrap();
                got.push(n);
                if v["data"]["last"] == true {
                    return got;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss(pid);

    // Five rounds: what the first takes must be given back or reused by the next.
    let mut rounds = Vec::new();
    for round in 0..5 {
        hostile_ws(addr).await;
        hostile_rooms(addr).await;
        hostile_api(addr);
        if round == 0 {
            hostile_pages(addr);
        }
        rounds.push(rss(pid));
    }
    let rss_after = *rounds.iter().max().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut offsets = publisher.await.unwrap();
    let last = api(
        addr,
        Some(API_KEY),
        r#"{"channel":"chat:steady","data":{"last":true}}"#,
    );
    assert_eq!(status_of(&last), 200, "{last}");
    let body = last.split("\r\n\r\n").nth(1).unwrap();
    offsets.push(
        serde_json::from_str::<Value>(body).unwrap()["offset"]
            .as_u64()
            .unwrap(),
    );
    let got = tokio::time::timeout(Duration::from_secs(10), subscriber)
        .await
        .expect("the subscriber got the last publication")
        .unwrap();
    let expected: Vec<u64> = (start + 1..=start + offsets.len() as u64).collect();
    assert_eq!(offsets, expected, "the publisher's offsets");
    assert_eq!(got, expected, "the subscriber's offsets");
    assert!(http(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .starts_with("HTTP/1.1 200"));
    let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
    eprintln!(
        "hostile suite: {} publications received in order; RSS {} MiB before, after each round {:?} MiB (bound: +{} MiB)",
        got.len(),
        mib(rss_before),
        rounds.iter().map(|&b| mib(b)).collect::<Vec<_>>(),
        RSS_GROWTH_BOUND >> 20
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_BOUND,
        "RSS grew from {rss_before} to {rss_after}"
    );
}
