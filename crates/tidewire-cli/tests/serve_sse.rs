//! The Server-Sent Events fallback (`GET /sse`, docs/protocol.md) and publishing over plain
//! HTTP (`POST /publish`) against a real `tidewire serve`: a `curl -N` stream, resuming from
//! `Last-Event-ID`, and each refusal with its status and reason. Across a restart of the
//! node: `cluster_redis.rs`, `sse_resumes_across_a_restart_with_last_event_id`.

mod common;

use common::hub::{http, serve, Serve};
use serde_json::{json, Value};
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "sse-test-secret-of-32-characters-or-more";

fn token(sub: &str, channels: &[&str]) -> String {
    common::hub::hs256_token(SECRET, sub, json!({ "channels": channels }))
}

fn hub() -> Serve {
    let config = common::temp_file(
        "sse.toml",
        "[namespaces.vip]\nprivate = true\n[namespaces.news]\npresence = false\n",
    );
    serve(&[
        "--config",
        config.to_str().unwrap(),
        "--auth-hmac-secret",
        SECRET,
        "--auth-anonymous",
        "--no-demo",
    ])
}

/// `curl -N URL` (with `Last-Event-ID: ID`): its stdout lines arrive on the receiver.
fn curl(url: &str, last_id: Option<&str>) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-N", "-s", url]);
    if let Some(id) = last_id {
        cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next event: (id, event type, data as JSON).
fn next_event(rx: &mpsc::Receiver<String>) -> (Option<String>, String, Value) {
    let (mut id, mut kind) = (None, "message".to_owned());
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no event within 10 s");
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            return (id, kind, serde_json::from_str(v).unwrap());
        }
    }
}

/// `POST /publish` with `body` and, when given, a bearer token: (status, body as JSON).
fn publish(addr: SocketAddr, body: &str, bearer: Option<&str>) -> (u16, Value) {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let r = http(
        addr,
        &format!(
            "POST /publish HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let status: u16 = r.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn a_curl_stream_receives_and_resumes_from_last_event_id() {
    let srv = hub();
    let url = format!("http://{}/sse?channel=news:today", srv.addr);
    let (mut c, rx) = curl(&url, None);
    let (id, kind, head) = next_event(&rx);
    assert_eq!(kind, "subscribed", "{head}");
    assert_eq!(
        (head["offset"].as_u64(), &head["recovered"]),
        (Some(0), &Value::Null)
    );
    assert_eq!(
        id.unwrap(),
        format!("0:{}", head["epoch"].as_str().unwrap())
    );
    let ann = token("ann", &[]);
    for n in 1..=3 {
        let (status, v) = publish(
            srv.addr,
            &json!({"channel": "news:today", "data": {"n": n}}).to_string(),
            Some(&ann),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["offset"], n);
    }
    let mut last = None;
    for n in 1..=3 {
        let (id, kind, p) = next_event(&rx);
        assert_eq!(
            (kind.as_str(), &p["data"]["n"]),
            ("message", &json!(n)),
            "{p}"
        );
        assert_eq!(
            id.as_deref(),
            Some(format!("{n}:{}", head["epoch"].as_str().unwrap()).as_str())
        );
        last = id;
    }
    let _ = c.kill();
    let _ = c.wait();
    // Two more while away; the next stream resumes after the last id seen.
    for n in 4..=5 {
        let body = json!({"channel": "news:today", "data": {"n": n}}).to_string();
        assert_eq!(publish(srv.addr, &body, None).0, 200);
    }
    let (mut c, rx) = curl(&url, last.as_deref());
    let (_, kind, head2) = next_event(&rx);
    assert_eq!(
        (kind.as_str(), &head2["recovered"]),
        ("subscribed", &json!(true)),
        "{head2}"
    );
    for n in 4..=5 {
        assert_eq!(next_event(&rx).2["data"]["n"], n);
    }
    let _ = c.kill();
    let _ = c.wait();
    // A position history no longer reaches (another epoch): recovered false, said at once.
    let (mut c, rx) = curl(&format!("{url}&since=2:not-the-epoch"), None);
    assert_eq!(next_event(&rx).2["recovered"], false);
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn refusals_have_a_status_and_a_reason() {
    let srv = hub();
    let get = |path: &str| {
        http(
            srv.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                srv.addr
            ),
        )
    };
    let r = get("/sse");
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("missing ?channel=NAME"),
        "{r}"
    );
    let r = get("/sse?channel=nope:x");
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("unknown namespace"),
        "{r}"
    );
    let r = get("/sse?channel=vip:x");
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("private channel"),
        "{r}"
    );
    let r = get("/sse?channel=news:x&since=yesterday");
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("not OFFSET:EPOCH"),
        "{r}"
    );
    let r = get("/sse?channel=news:x&token=forged");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // A private channel with a token that lists it: the stream opens.
    let vip = token("ann", &["vip:*"]);
    let (mut c, rx) = curl(
        &format!("http://{}/sse?channel=vip:x&token={vip}", srv.addr),
        None,
    );
    assert_eq!(next_event(&rx).1, "subscribed");
    let (status, v) = publish(srv.addr, r#"{"channel":"vip:x","data":1}"#, Some(&vip));
    assert_eq!(status, 200, "{v}");
    assert_eq!(next_event(&rx).2["data"], 1);
    let _ = c.kill();
    let _ = c.wait();

    let (status, v) = publish(srv.addr, r#"{"channel":"vip:x","data":1}"#, None);
    assert_eq!((status, &v["error"]["code"]), (403, &json!(104)), "{v}");
    let (status, v) = publish(srv.addr, r#"{"channel":"news:x"}"#, None);
    assert_eq!((status, &v["error"]["code"]), (400, &json!(101)), "{v}");
    let (status, v) = publish(srv.addr, r#"{"channel":"$control","data":1}"#, None);
    assert_eq!((status, &v["error"]["code"]), (400, &json!(103)), "{v}");
    let (status, _) = publish(srv.addr, r#"{"channel":"news:x","data":1}"#, Some("forged"));
    assert_eq!(status, 401);
}

#[test]
fn post_publish_is_rate_limited_per_user_and_per_address() {
    let srv = serve(&[
        "--auth-hmac-secret",
        SECRET,
        "--auth-anonymous",
        "--no-demo",
        "--publish-rate",
        "1",
        "--publish-burst",
        "3",
    ]);
    let ann = token("ann", &[]);
    let bob = token("bob", &[]);
    let body = r#"{"channel":"news","data":1}"#;
    for i in 0..3 {
        let (status, v) = publish(srv.addr, body, Some(&ann));
        assert_eq!(status, 200, "publication {i}: {v}");
    }
    let (status, v) = publish(srv.addr, body, Some(&ann));
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], 107, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("limits.publish_rate"),
        "{v}"
    );
    // Another user has a bucket of their own; anonymous requests one per address.
    let (status, v) = publish(srv.addr, body, Some(&bob));
    assert_eq!(status, 200, "{v}");
    for _ in 0..3 {
        assert_eq!(publish(srv.addr, body, None).0, 200);
    }
    assert_eq!(publish(srv.addr, body, None).0, 429);
    assert!(common::hub::metric(srv.addr, "tidewire_rate_limited_total") >= 2.0);
}
