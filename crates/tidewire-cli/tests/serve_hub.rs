//! The hub's production features against a real `tidewire serve` process: auth (HS256,
//! RS256, URL and connect tokens, private namespaces), origin checks, slow consumers,
//! rate limits, connection limits, metrics, configuration files, logs, graceful shutdown.

mod common;

use common::hub::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tidewire::Message;

const SECRET: &str = "test-secret-of-at-least-thirty-two-chars";
const RSA_PRIVATE: &str = include_str!("fixtures/rsa-test-private.pem");
const RSA_PUBLIC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rsa-test-public.pem"
);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidewire-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn auth_server() -> Serve {
    let config = temp_file(
        "auth.toml",
        "[namespaces.private]\nprivate = true\npresence = true\n",
    );
    serve(&[
        "--config",
        config.to_str().unwrap(),
        "--auth-hmac-secret",
        SECRET,
        "--auth-rsa-public-key",
        RSA_PUBLIC,
    ])
}

#[tokio::test]
async fn auth_accepted_and_rejected() {
    let srv = auth_server();
    let mut p = Vec::new();

    // No token: any op but connect and ping is refused, then the connection is closed.
    let mut ws = client(srv.addr).await;
    let r = request(&mut ws, json!({"id": 1, "op": "ping"}), &mut p).await;
    assert_eq!(r["ok"], true);
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "subscribe", "channel": "x"}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, 4008, "{reason}");

    // A valid HS256 token in connect.
    let mut ws = client(srv.addr).await;
    let t = hs256(json!({"sub": "ann", "exp": now() + 60, "info": {"name": "Ann"}}));
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut p,
    )
    .await;
    assert_eq!(r["result"]["user"], "ann", "{r}");
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "subscribe", "channel": "lobby"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // ... but not a private channel its claims do not list.
    let r = request(
        &mut ws,
        json!({"id": 3, "op": "subscribe", "channel": "private:support-1"}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 104, "{r}");

    // An RS256 token in the URL, allowed in private:support-*; presence shows the user.
    let t = rs256(json!({"sub": "bob", "exp": now() + 60, "channels": ["private:support-*"]}));
    let mut bob = client_q(srv.addr, &format!("?token={t}")).await;
    let r = request(
        &mut bob,
        json!({"id": 1, "op": "subscribe", "channel": "private:support-1"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = request(
        &mut bob,
        json!({"id": 2, "op": "presence", "channel": "private:support-1"}),
        &mut p,
    )
    .await;
    assert_eq!(r["result"]["clients"][0]["user"], "bob", "{r}");
    let r = request(
        &mut bob,
        json!({"id": 3, "op": "subscribe", "channel": "private:other"}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 104, "{r}");

    // Expired: error 109 and close 4001 ("get a new token").
    let mut ws = client(srv.addr).await;
    let t = hs256(json!({"sub": "ann", "exp": now() - 600}));
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 109);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("expired"),
        "{r}"
    );
    assert_eq!(close_of(&mut ws).await.0, 4001);

    // Forged signature: close 4008.
    let mut ws = client(srv.addr).await;
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 60}),
        &EncodingKey::from_secret(b"some-other-secret-of-32-characters!!"),
    )
    .unwrap();
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": forged}),
        &mut p,
    )
    .await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{r}"
    );
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (4008, "unauthorized: token signature invalid")
    );

    // A bad URL token is refused at the handshake with 401 and the reason; so is a room
    // without a token.
    let resp = http(srv.addr, &upgrade_request(srv.addr, "/ws?token=abc", ""));
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.contains("token is not a valid JWT"), "{resp}");
    let resp = http(srv.addr, &upgrade_request(srv.addr, "/rooms/lobby", ""));
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.contains("token required"), "{resp}");
    let ok = hs256(json!({"sub": "ann", "exp": now() + 60}));
    let resp = http(
        srv.addr,
        &upgrade_request(srv.addr, &format!("/rooms/lobby?token={ok}"), ""),
    );
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(metric(srv.addr, "tidewire_auth_failures_total") >= 4.0);
}

#[tokio::test]
async fn origin_checked_against_own_host_and_list() {
    let srv = serve(&["--allowed-origins", "https://app.example.com"]);
    let evil = http(
        srv.addr,
        &upgrade_request(srv.addr, "/ws", "Origin: http://evil.example\r\n"),
    );
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    assert!(
        evil.contains("origin not allowed: http://evil.example"),
        "{evil}"
    );
    let evil = http(
        srv.addr,
        &upgrade_request(srv.addr, "/rooms/a", "Origin: null\r\n"),
    );
    assert!(evil.starts_with("HTTP/1.1 403"), "{evil}");
    let own = format!("Origin: http://{}\r\n", srv.addr);
    let resp = http(srv.addr, &upgrade_request(srv.addr, "/rooms/a", &own));
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let listed = http(
        srv.addr,
        &upgrade_request(srv.addr, "/ws", "Origin: https://app.example.com\r\n"),
    );
    assert!(listed.starts_with("HTTP/1.1 101"), "{listed}");
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_handshake_failures_total{reason=\"origin\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn slow_consumer_closed_while_100_fast_subscribers_get_everything() {
    let srv = serve(&["--publish-rate", "0", "--send-buffer", "65536"]);
    // Enough bytes to fill the kernel's buffers for the slow one and then the server's
    // 64 KiB send buffer: the server's side alone may take up to tcp_wmem's maximum (4 MiB
    // on Debian 12), and 2,000 publications (4 MB) did not always fill it.
    let total = 4000u64;
    let payload = "x".repeat(2000);

    // The slow one subscribes over a raw socket with a tiny receive buffer, then never reads.
    let mut slow = std::net::TcpStream::connect(srv.addr).unwrap();
    set_rcvbuf(&slow, 4096);
    slow.write_all(upgrade_request(srv.addr, "/ws", "").as_bytes())
        .unwrap();
    let mut head = [0u8; 1];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        slow.read_exact(&mut head).unwrap();
        got.push(head[0]);
    }
    let sub = br#"{"id":1,"op":"subscribe","channel":"firehose"}"#;
    slow.write_all(&masked_text(sub)).unwrap();

    let mut fast = Vec::new();
    for _ in 0..100 {
        let mut ws = client(srv.addr).await;
        let r = request(
            &mut ws,
            json!({"id": 1, "op": "subscribe", "channel": "firehose"}),
            &mut Vec::new(),
        )
        .await;
        assert_eq!(r["ok"], true);
        fast.push(tokio::spawn(async move {
            let mut offsets = Vec::with_capacity(total as usize);
            while (offsets.len() as u64) < total {
                let v = next_json(&mut ws).await;
                if let Some(o) = v.get("offset").and_then(Value::as_u64) {
                    offsets.push(o);
                }
            }
            (offsets, ws)
        }));
    }
    let mut publisher = client(srv.addr).await;
    let mut p = Vec::new();
    for i in 0..total {
        let r = request(
            &mut publisher,
            json!({"id": i, "op": "publish", "channel": "firehose", "data": payload}),
            &mut p,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut kept = Vec::new();
    for f in fast {
        let (offsets, ws) = tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("a fast subscriber fell behind")
            .unwrap();
        assert_eq!(offsets, (1..=total).collect::<Vec<_>>());
        kept.push(ws);
    }
    wait_for_slow_consumer(srv.addr).await;
    assert_eq!(metric(srv.addr, SLOW_TOTAL), 1.0);
    // The server lets go of the slow one (after at most 2 s for its close handshake): 100
    // fast subscribers and the publisher remain.
    let ws = "tidewire_connections{endpoint=\"ws\"}";
    wait_for_metric(srv.addr, ws, |v| v <= 101.0, 5, "slow consumer still held").await;
    assert_eq!(metric(srv.addr, "tidewire_subscribers"), 100.0);
    drop(kept);
    drop(slow);
}

/// Rooms and `/ws` close a slow consumer the same way (issue 14: `connection::close_slow`,
/// 4000), counted, while the other members get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_room_member_closed_while_the_others_get_everything() {
    // The slow one never reads: past the kernel's buffers (about 1.3 MB on loopback) and
    // 1 MiB waiting in its socket, it is closed. The fast one keeps up (its queue holds 1 MiB
    // too, more than the sender's task pushes between two turns of the deliverer).
    let srv = serve(&["--publish-rate", "0", "--send-buffer", "1048576"]);
    let (total, payload) = (3000usize, "x".repeat(2000));
    let url = format!("ws://{}/rooms/firehose", srv.addr);
    let mut slow = std::net::TcpStream::connect(srv.addr).unwrap();
    set_rcvbuf(&slow, 4096);
    slow.write_all(upgrade_request(srv.addr, "/rooms/firehose", "").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        slow.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let (mut fast, _) = tidewire::connect(&url).await.unwrap();
    let (mut sender, _) = tidewire::connect(&url).await.unwrap();
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = read.clone();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            match fast.recv().await {
                Some(Ok(Message::Text(_))) => {
                    n += 1;
                    seen.store(n, std::sync::atomic::Ordering::Relaxed);
                }
                Some(Ok(Message::Close(f))) => panic!("the fast member was closed: {f:?}"),
                Some(Ok(_)) => {}
                other => panic!("the fast member lost its connection: {other:?}"),
            }
        }
        fast
    });
    for i in 0..total {
        sender.send(Message::text(payload.clone())).await.unwrap();
        // Rooms have no acknowledgement: the sender stays at most 200 messages (400 KB)
        // ahead of the fast reader, well within its 1 MiB, however busy the machine is.
        while i >= read.load(std::sync::atomic::Ordering::Relaxed) + 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let fast = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the fast member fell behind")
        .unwrap();
    wait_for_slow_consumer(srv.addr).await;
    // The server lets go of it (after at most 2 s for its close handshake, which its
    // 4 KiB receive window cannot take in time): the fast member and the sender remain.
    let rooms = "tidewire_connections{endpoint=\"rooms\"}";
    wait_for_metric(srv.addr, rooms, |v| v <= 2.0, 5, "slow member still held").await;
    assert_eq!(metric(srv.addr, SLOW_TOTAL), 1.0);
    drop(slow);
    drop((fast, sender));
}

const SLOW_TOTAL: &str = "tidewire_slow_consumer_disconnects_total";

/// Waits (at most 10 s) until a slow consumer has been closed: its task closes it when it
/// wakes after its queue overflowed, which on a busy machine can come after the others
/// have read everything.
async fn wait_for_slow_consumer(addr: std::net::SocketAddr) {
    wait_for_metric(
        addr,
        SLOW_TOTAL,
        |v| v >= 1.0,
        10,
        "no slow consumer closed",
    )
    .await;
}

/// Waits (at most `secs`) until metric `name` satisfies `ok`; fails with `what` otherwise.
async fn wait_for_metric(
    addr: std::net::SocketAddr,
    name: &str,
    ok: impl Fn(f64) -> bool,
    secs: u64,
    what: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !ok(metric(addr, name)) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set_rcvbuf(s: &std::net::TcpStream, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `bytes` for the length given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// A masked text frame (mask key 0: the payload is unchanged).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn publish_rate_limited_per_connection() {
    let srv = serve(&["--publish-rate", "5", "--publish-burst", "5"]);
    let mut ws = client(srv.addr).await;
    let mut p = Vec::new();
    let mut codes = Vec::new();
    for i in 0..8 {
        let r = request(
            &mut ws,
            json!({"id": i, "op": "publish", "channel": "r", "data": i}),
            &mut p,
        )
        .await;
        codes.push(r["error"]["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, [0, 0, 0, 0, 0, 107, 107, 107]);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = request(
        &mut ws,
        json!({"id": 9, "op": "publish", "channel": "r", "data": 9}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "refilled after 450 ms at 5/s: {r}");
    assert_eq!(metric(srv.addr, "tidewire_rate_limited_total"), 3.0);

    // In a raw room there is nobody to answer: going over the limit closes with 4029.
    let (mut room, _) = tidewire::ClientBuilder::new(format!("ws://{}/rooms/r", srv.addr))
        .connect()
        .await
        .unwrap();
    for i in 0..10 {
        if room.send(Message::text(format!("m{i}"))).await.is_err() {
            break;
        }
    }
    let code = loop {
        match room.recv().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code.0),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(4029));
}

#[tokio::test]
async fn max_connections_answered_with_503() {
    let srv = serve(&["--max-connections", "2"]);
    let _a = client(srv.addr).await;
    let _b = client(srv.addr).await;
    let resp = http(srv.addr, &upgrade_request(srv.addr, "/ws", ""));
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(resp.contains("limits.max_connections"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("\r\nretry-after: 5\r\n"),
        "{resp}"
    );
    drop(_a);
    // The slot is free again once the server has seen the first one go.
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if http(srv.addr, &upgrade_request(srv.addr, "/rooms/x", "")).starts_with("HTTP/1.1 101") {
            ok = true;
            break;
        }
    }
    assert!(ok);
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_handshake_failures_total{reason=\"max_connections\"}"
        ),
        1.0
    );
}

/// At the open-file limit the server cannot accept: every client beyond it gets a 503 that
/// says why (not a timeout), and accepting resumes as soon as connections close.
#[test]
fn out_of_descriptors_answered_with_503_then_recovers() {
    let (child, addr) = common::spawn_with_open_files("serve", 64, &[]);
    let _srv = Serve { child, addr };
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(upgrade_request(addr, "/rooms/x", "").as_bytes())
            .unwrap();
        let (status, head) = common::read_head(&mut s);
        match status {
            101 => {
                assert_eq!(refused, 0, "accepted after a refusal while all were held");
                held.push(s);
            }
            503 => {
                let mut body = String::new();
                s.read_to_string(&mut body).unwrap();
                assert!(head.contains("Retry-After: 5"), "{head}");
                assert!(body.contains("out of file descriptors"), "{body}");
                refused += 1;
                if refused == 20 {
                    break;
                }
            }
            _ => panic!("neither 101 nor 503 (a timeout reads as nothing): {head:?}"),
        }
    }
    assert_eq!(refused, 20);
    assert!(
        held.len() >= 30,
        "only {} held under 64 descriptors",
        held.len()
    );
    // Every held connection lived through the refusals.
    for s in &mut held[..5] {
        s.write_all(&common::masked(0x1, b"still here")).unwrap();
    }
    held.drain(..5);
    let mut ok = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(50));
        if http(addr, &upgrade_request(addr, "/rooms/x", "")).starts_with("HTTP/1.1 101") {
            ok = true;
            break;
        }
    }
    assert!(ok, "no upgrade accepted after connections closed");
    assert_eq!(
        metric(
            addr,
            "tidewire_connections_refused_total{reason=\"open_files\"}"
        ),
        20.0
    );
}

/// Connections that send no request head (silent, a byte at a time, idle after a
/// keep-alive request) are closed after the header timeout (10 s) instead of holding a
/// descriptor for ever; a WebSocket is not subject to it.
#[test]
fn silent_slow_and_idle_http_clients_are_closed_after_the_header_timeout() {
    use std::net::TcpStream;
    let srv = serve(&[]);
    let addr = srv.addr;
    let started = std::time::Instant::now();
    let open = |head: &[u8]| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(head).unwrap();
        s
    };
    let silent = open(b"");
    let mut idle = open(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, _) = common::read_head(&mut idle);
    assert_eq!(status, 200);
    let slow = open(b"GET /healthz HTTP/1.1\r\n");
    let mut trickle = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(500));
            if trickle.write_all(b"X").is_err() {
                break;
            }
        }
    });
    let mut ws = open(upgrade_request(addr, "/rooms/x", "").as_bytes());
    assert_eq!(common::read_head(&mut ws).0, 101);
    let waits: Vec<_> = [silent, idle, slow]
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                started.elapsed()
            })
        })
        .collect();
    for (name, t) in ["silent", "idle", "slow"].iter().zip(waits) {
        let closed_after = t.join().unwrap();
        assert!(
            closed_after >= Duration::from_secs(9) && closed_after < Duration::from_secs(20),
            "{name}: closed after {closed_after:?}"
        );
    }
    // The WebSocket, quiet as long, is still up.
    ws.write_all(&common::masked(0x9, b"still")).unwrap();
    assert_eq!(common::read_frame(&mut ws), Some((0xA, b"still".to_vec())));
}

#[tokio::test]
async fn metrics_count_traffic() {
    // Without the demo ticker, whose channel would count.
    let srv = serve(&["--no-demo"]);
    let mut ws = client(srv.addr).await;
    let mut p = Vec::new();
    request(
        &mut ws,
        json!({"id": 1, "op": "subscribe", "channel": "m"}),
        &mut p,
    )
    .await;
    request(
        &mut ws,
        json!({"id": 2, "op": "publish", "channel": "m", "data": "hello"}),
        &mut p,
    )
    .await;
    let page = http_get(srv.addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/plain; version=0.0.4"), "{page}");
    for family in [
        "tidewire_connections{endpoint=\"ws\"} 1",
        "tidewire_subscribers 1",
        "tidewire_channels 1",
        "tidewire_publications_total 1",
        "tidewire_messages_received_total 2",
        "tidewire_publish_duration_seconds_count 1",
        "tidewire_handshake_failures_total{reason=\"bad_request\"} 0",
    ] {
        assert!(page.contains(family), "{family} missing:\n{page}");
    }
    // A bad upgrade is counted.
    let resp = http(
        srv.addr,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_handshake_failures_total{reason=\"bad_request\"}"
        ),
        1.0
    );
    let resp = http(
        srv.addr,
        "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.contains("DELETE is not allowed on /metrics"), "{resp}");
}

#[tokio::test]
async fn http_publish_api_with_key() {
    let srv = serve(&["--api-key", "0123456789abcdef"]);
    let mut ws = client(srv.addr).await;
    let mut p = Vec::new();
    request(
        &mut ws,
        json!({"id": 1, "op": "subscribe", "channel": "quotes"}),
        &mut p,
    )
    .await;
    let body = r#"{"channel":"quotes","data":{"sym":"ACME","px":12.5}}"#;
    let post = |key: &str| {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let resp = http(srv.addr, &post("wrong-key-wrong-key"));
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    let resp = http(srv.addr, &post("0123456789abcdef"));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"offset\":1"), "{resp}");
    let v = next_json(&mut ws).await;
    let v = if v.get("join").is_some() {
        next_json(&mut ws).await
    } else {
        v
    };
    assert_eq!(v["data"]["sym"], "ACME", "{v}");
}

#[test]
fn bad_config_file_names_file_line_and_key() {
    let path = temp_file(
        "bad.toml",
        "listen = \"127.0.0.1:0\"\n\n[heartbeat]\nping_interval = \"soon\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:4: heartbeat.ping_interval: ", path.display());
    assert!(err.contains(&expected), "{err}");

    let path = temp_file("typo.toml", "[limits]\nmax_conections = 5\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml:2:") && err.contains("max_conections"),
        "{err}"
    );
}

#[test]
fn environment_overrides_and_json_logs() {
    use std::io::BufRead;
    let path = temp_file(
        "env.toml",
        "listen = \"127.0.0.1:1\"\nlog_format = \"human\"\n",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("TIDEWIRE_LISTEN", "127.0.0.1:0")
        .env("TIDEWIRE_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
    assert!(
        !line.contains("127.0.0.1:1/"),
        "the environment wins over the file: {line}"
    );
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&first).expect(&first);
    assert_eq!(v["level"], "INFO", "{v}");
}

#[tokio::test]
async fn graceful_shutdown_closes_ws_and_rooms_with_1001() {
    let mut srv = serve(&[]);
    let mut ws = client(srv.addr).await;
    request(
        &mut ws,
        json!({"id": 1, "op": "subscribe", "channel": "s"}),
        &mut Vec::new(),
    )
    .await;
    let (mut room, _) = tidewire::ClientBuilder::new(format!("ws://{}/rooms/s", srv.addr))
        .connect()
        .await
        .unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) },
        0
    );
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    let code = loop {
        match room.recv().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code.0),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn presence_join_and_leave_events_with_users() {
    let config = temp_file("presence.toml", "[namespaces.quiet]\npresence = false\n");
    let srv = serve(&[
        "--config",
        config.to_str().unwrap(),
        "--auth-hmac-secret",
        SECRET,
        "--auth-anonymous",
    ]);
    let mut p = Vec::new();
    let mut a = client(srv.addr).await;
    let r = request(
        &mut a,
        json!({"id": 1, "op": "subscribe", "channel": "chat:room"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true);
    let own = next_json(&mut a).await;
    let me = own["join"]["client"].clone();
    assert!(me.is_string(), "own join first: {own}");
    let t = hs256(json!({"sub": "zoe", "exp": now() + 60, "info": {"color": "teal"}}));
    let mut b = client_q(srv.addr, &format!("?token={t}")).await;
    let r = request(
        &mut b,
        json!({"id": 1, "op": "subscribe", "channel": "chat:room"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true);
    let join = next_json(&mut a).await;
    assert_eq!(join["channel"], "chat:room", "{join}");
    assert_eq!(join["join"]["user"], "zoe", "{join}");
    assert_eq!(join["join"]["info"]["color"], "teal", "{join}");
    let bob_id = join["join"]["client"].clone();
    let r = request(
        &mut a,
        json!({"id": 2, "op": "presence", "channel": "chat:room"}),
        &mut p,
    )
    .await;
    let mut ids: Vec<Value> = r["result"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].clone())
        .collect();
    ids.sort_by_key(|v| v.to_string());
    let mut want = vec![me.clone(), bob_id.clone()];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(ids, want);
    // An abrupt disconnect is a leave too.
    drop(b);
    let leave = next_json(&mut a).await;
    assert_eq!(leave["leave"]["client"], bob_id, "{leave}");
    assert_eq!(leave["leave"]["user"], "zoe", "{leave}");
    // Namespaces without presence refuse the op and send no events.
    let r = request(
        &mut a,
        json!({"id": 3, "op": "subscribe", "channel": "quiet:x"}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true);
    let r = request(
        &mut a,
        json!({"id": 4, "op": "presence", "channel": "quiet:x"}),
        &mut p,
    )
    .await;
    assert_eq!(r["error"]["code"], 110, "{r}");
    assert!(p.iter().all(|v| v["channel"] != "quiet:x"), "{p:?}");
}

#[test]
fn heartbeat_pings_and_closes_silent_connections() {
    let srv = serve(&["--ping-interval", "300ms", "--idle-timeout", "1s"]);
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(upgrade_request(srv.addr, "/rooms/hb", "").as_bytes())
        .unwrap();
    let start = std::time::Instant::now();
    // Read everything until the server closes; never answer its pings.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let elapsed = start.elapsed();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let frames = &got[head_end..];
    assert_eq!(frames[0], 0x89, "a ping first: {frames:?}");
    // The close frame: 0x88, length, code 1011.
    let close = frames
        .windows(2)
        .position(|w| w[0] == 0x88)
        .expect("a close frame");
    let code = u16::from_be_bytes([frames[close + 2], frames[close + 3]]);
    assert_eq!(code, 1011);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_when_its_token_expires() {
    let srv = serve(&["--auth-hmac-secret", SECRET]);
    let mut ws = client(srv.addr).await;
    let mut p = Vec::new();
    let t = hs256(json!({"sub": "ann", "exp": now() + 2}));
    let r = request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let start = std::time::Instant::now();
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (4001, "unauthorized: token expired")
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // A fresh token sent in time keeps the connection open.
    let mut ws = client(srv.addr).await;
    let t = hs256(json!({"sub": "ann", "exp": now() + 2}));
    request(
        &mut ws,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut p,
    )
    .await;
    let fresh = hs256(json!({"sub": "ann", "exp": now() + 600}));
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "connect", "token": fresh}),
        &mut p,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = request(&mut ws, json!({"id": 3, "op": "ping"}), &mut p).await;
    assert_eq!(r["ok"], true, "still open: {r}");
}
