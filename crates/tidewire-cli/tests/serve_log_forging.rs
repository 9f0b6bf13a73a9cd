//! Issue 15, defect 3 (log forging): peer-supplied text (room and channel names, origins,
//! user agents, close reasons) never starts a line of `tidewire serve`'s log, nor puts raw
//! control, bidi or line-separator characters into it, in the human and the JSON format.
//! <https://tidewire.dev/issues/15>

mod common;

use common::hub::{client, close_of, request, upgrade_request};
use common::{frame, read_head, spawn_logged_env, LogLines};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tidewire::{CloseCode, CloseFrame, Message};

/// A forged line: a newline, then what the start of a real `ERROR` line looks like.
const FORGED: &str = "\n2026-12-02T00:00:00.000000Z ERROR tidewire_hub: forged";
/// The same, percent-encoded for a URL path, with a bidi override (U+202E) and a line
/// separator (U+2028) after it.
const FORGED_PATH: &str =
    "x%0A2026-12-02T00:00:00.000000Z%20ERROR%20tidewire_hub:%20forged%E2%80%AE%E2%80%A8%1B[31m";
/// What may not appear raw in any log line.
fn suspicious(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Sends an upgrade request for `path` that the hub refuses, and reads the refusal.
fn refused(addr: SocketAddr, path: &str, extra: &str) {
    refused_head(addr, &upgrade_request(addr, path, extra));
}

fn refused_head(addr: SocketAddr, head: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let (status, head) = read_head(&mut s);
    assert!((400..500).contains(&status), "{head}");
}

/// Sends every forged input the hub may log, then shuts the server down.
async fn forge(addr: SocketAddr) {
    // A room name (percent-decoded by the router) and a close reason from a room member.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(upgrade_request(addr, &format!("/rooms/{FORGED_PATH}"), "").as_bytes())
        .unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    let mut reason = 1000u16.to_be_bytes().to_vec();
    reason.extend_from_slice("bye\n2026-12-02T00:00:00Z ERROR x \u{202e}".as_bytes());
    s.write_all(&frame(true, 0x8, &reason, Some([1, 2, 3, 4])))
        .unwrap();
    drop(s);
    // A room name that is refused (too long).
    let long = format!("/rooms/{}", FORGED_PATH.repeat(8));
    refused(addr, &long, "");
    // An origin and a user agent (refused: 403), with the bytes a header may carry, and
    // an origin of 8,000 characters.
    let evil = "http://evil\u{2028}2026-12-02T00:00:00.000000Z ERROR forged\u{202e}";
    let headers = format!("Origin: {evil}\r\nUser-Agent: agent\u{2029}ERROR forged\r\n");
    refused(addr, "/rooms/lobby", &headers);
    let huge = format!("Origin: http://{}.example\r\n", "o".repeat(8000));
    refused(addr, "/rooms/lobby", &huge);
    // A subprotocol refused on /ws.
    let head = upgrade_request(addr, "/ws", "Sec-WebSocket-Protocol: x\u{202e}y\r\n");
    refused_head(
        addr,
        &head.replace("Sec-WebSocket-Protocol: tidewire.v1\r\n", ""),
    );
    // A room member that does not read, named with a bidi override and a line separator,
    // disconnected as a slow consumer (logged at info with the room's name).
    let slow_room = "/rooms/slow%E2%80%AEroom%E2%80%A8%0AERROR%20forged";
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(upgrade_request(addr, slow_room, "").as_bytes())
        .unwrap();
    assert_eq!(read_head(&mut slow).0, 101);
    let (mut talker, _) = tidewire::connect(&format!("ws://{addr}{slow_room}"))
        .await
        .unwrap();
    for _ in 0..100 {
        if talker
            .send(Message::text("x".repeat(60_000)))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(talker);
    // Channel names on /ws, and a close reason from a channel client.
    let mut ws = client(addr).await;
    let mut pushed = Vec::new();
    for (id, channel) in [FORGED, "chat:\u{202e}\u{2028}x", "nope:\nERROR forged"]
        .into_iter()
        .enumerate()
    {
        let reply = request(
            &mut ws,
            json!({"id": id, "op": "subscribe", "channel": channel}),
            &mut pushed,
        )
        .await;
        assert!(reply.get("id").is_some(), "{reply}");
        let _ = request(
            &mut ws,
            json!({"id": id + 100, "op": "publish", "channel": channel, "data": {"x": channel}}),
            &mut pushed,
        )
        .await;
    }
    ws.close(Some(CloseFrame::new(
        CloseCode(4999),
        "bye\n2026-12-02T00:00:00Z ERROR forged\u{202e}",
    )))
    .await
    .ok();
    // A client that ends with a protocol error after a forged text.
    let mut ws = client(addr).await;
    ws.send(Message::text(format!("{{\"id\":1,\"{FORGED}\":{{}}}}")))
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), close_of(&mut ws)).await;
}

async fn log_of(format: &str) -> Vec<String> {
    let (mut child, addr) = spawn_logged_env(
        "serve",
        &[
            "--log-format",
            format,
            "--room-buffer",
            "4",
            "--send-buffer",
            "65536",
        ],
        &[("TIDEWIRE_LOG", "debug"), ("NO_COLOR", "1")],
    );
    let log = LogLines::collect(&mut child);
    forge(addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SIGTERM: the shutdown lines are written too.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(200));
    let lines = log.lines();
    let all = lines.join("\n");
    // The forged texts were logged (escaped), not dropped, the slow consumer's line too,
    // and no line is longer than its bounded peer texts make it.
    assert!(
        all.contains("forged") && all.contains("slow consumer"),
        "{all}"
    );
    for line in &lines {
        assert!(
            line.len() < 2000,
            "a long line ({} bytes): {line}",
            line.len()
        );
    }
    lines
}

/// `2026-12-02T14:06:33.776776Z  INFO target: ...`
fn human_prefix(line: &str) -> bool {
    let b = line.as_bytes();
    let stamp = b.len() > 28
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && line[..28].contains('Z');
    let rest = line
        .split_once("Z ")
        .map(|(_, r)| r.trim_start())
        .unwrap_or("");
    stamp
        && ["TRACE ", "DEBUG ", "INFO ", "WARN ", "ERROR "]
            .iter()
            .any(|l| rest.starts_with(l))
}

#[tokio::test]
async fn issue_15_peer_text_cannot_forge_human_log_lines() {
    let lines = log_of("human").await;
    let all = lines.join("\n");
    for line in &lines {
        assert!(
            human_prefix(line),
            "a line without the prefix:\n{line}\n\nlog:\n{all}"
        );
        assert!(
            !line.chars().any(suspicious),
            "raw control/bidi character:\n{line:?}"
        );
    }
}

#[tokio::test]
async fn issue_15_peer_text_cannot_forge_json_log_lines() {
    let lines = log_of("json").await;
    let all = lines.join("\n");
    fn check(v: &Value, line: &str) {
        match v {
            Value::String(s) => {
                assert!(
                    !s.chars().any(suspicious),
                    "raw control/bidi in a value: {line}"
                )
            }
            Value::Array(a) => a.iter().for_each(|v| check(v, line)),
            Value::Object(o) => o.values().for_each(|v| check(v, line)),
            _ => {}
        }
    }
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{line}\n\nlog:\n{all}"));
        assert!(
            v.is_object() && v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        check(&v, line);
    }
}
