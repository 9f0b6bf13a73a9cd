//! Issue 13, "the first hour of a new user": what broke when `tidewire serve` was tried by
//! hand. Each test here failed on the code before the fix.
//! - the tutorial's `["chat", "superchat"]` reaches rooms; `/ws` without `tidewire.v1` is
//!   refused with a reason (item 1);
//! - flags that cannot work are refused at start, naming the flag (item 5);
//! - refused handshakes are logged at `info`, with the origin, rate-limited (item 6);
//! - no colour codes in a log that is not a terminal (item 8);
//! - a room heartbeat is answered to its sender and never broadcast (item 9).

mod common;

use common::{spawn, spawn_logged, LogLines};
use std::process::{Command, Stdio};
use std::time::Duration;
use tidewire::{ClientBuilder, Message};

type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

async fn room(url: &str, protocols: &[&str]) -> Result<(Ws, Option<String>), tidewire::Error> {
    let (ws, resp) = ClientBuilder::new(url)
        .protocols(protocols.iter().copied())
        .connect()
        .await?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok((ws, chosen))
}

/// The next message, or None if nothing arrives within `wait`.
async fn next_within(ws: &mut Ws, wait: Duration) -> Option<Message> {
    match tokio::time::timeout(wait, ws.recv()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(other) => panic!("connection ended: {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn rooms_negotiate_the_tutorials_subprotocols_by_server_preference() {
    let (child, addr) = spawn("serve", &[]);
    // Killed when the test ends, however it ends.
    let _server = common::Server { child, addr };
    let url = format!("ws://{addr}/rooms/lobby");
    // The tutorial's page: new WebSocket(url, ["chat", "superchat"]).
    let (_, chosen) = room(&url, &["chat", "superchat"]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("chat"));
    // Server preference, not the client's order.
    let (_, chosen) = room(&url, &["superchat", "chat"]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("chat"));
    let (_, chosen) = room(&url, &["x-other", "superchat"]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("superchat"));
    // No subprotocol offered: none chosen, as before.
    let (_, chosen) = room(&url, &[]).await.unwrap();
    assert_eq!(chosen, None);
    // Only unknown ones: a clear refusal instead of a 101 the browser must fail.
    let e = room(&url, &["mqtt"]).await.unwrap_err();
    assert_eq!(e.http_status(), Some(400), "{e}");
    let body = e.http_body().unwrap_or_default();
    assert!(
        body.contains("mqtt") && body.contains("chat, superchat"),
        "{body}"
    );
}

#[tokio::test]
async fn room_subprotocols_are_configurable() {
    let dir = std::env::temp_dir().join(format!("tidewire-rooms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rooms.toml");
    std::fs::write(&file, "[rooms]\nprotocols = [\"v2.game\", \"v1.game\"]\n").unwrap();
    let (child, addr) = spawn("serve", &["--config", file.to_str().unwrap()]);
    // Killed when the test ends, however it ends.
    let _server = common::Server { child, addr };
    let url = format!("ws://{addr}/rooms/arena");
    let (_, chosen) = room(&url, &["v1.game", "v2.game"]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("v2.game"));
    let e = room(&url, &["chat"]).await.unwrap_err();
    assert_eq!(e.http_status(), Some(400), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn channels_endpoint_refuses_a_client_without_tidewire_v1() {
    let (child, addr) = spawn("serve", &[]);
    // Killed when the test ends, however it ends.
    let _server = common::Server { child, addr };
    let url = format!("ws://{addr}/ws");
    for offered in [&["chat", "superchat"][..], &[][..]] {
        let e = room(&url, offered).await.unwrap_err();
        assert_eq!(e.http_status(), Some(400), "{offered:?}: {e}");
        let body = e.http_body().unwrap_or_default();
        assert!(body.contains("tidewire.v1"), "{body}");
    }
    let (_, chosen) = room(&url, &["chat", "tidewire.v1"]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("tidewire.v1"));
}

#[tokio::test]
async fn a_room_heartbeat_is_answered_to_its_sender_and_never_broadcast() {
    let (child, addr) = spawn("serve", &[]);
    // Killed when the test ends, however it ends.
    let _server = common::Server { child, addr };
    let url = format!("ws://{addr}/rooms/hb");
    let (mut a, _) = room(&url, &["chat", "superchat"]).await.unwrap();
    let (mut b, _) = room(&url, &["chat", "superchat"]).await.unwrap();
    for beat in ["ping", "heartbeat", " HeartBeat \n", "PING"] {
        a.send(Message::text(beat)).await.unwrap();
        assert_eq!(
            next_within(&mut a, Duration::from_secs(5)).await,
            Some(Message::text("pong")),
            "{beat:?}"
        );
    }
    a.send(Message::text("ping me later")).await.unwrap();
    // The room delivers in order: had a heartbeat been broadcast, it would come first.
    assert_eq!(
        next_within(&mut b, Duration::from_secs(5)).await,
        Some(Message::text("ping me later"))
    );
    assert_eq!(next_within(&mut b, Duration::from_millis(300)).await, None);
    // Binary "ping" is data, not a heartbeat.
    a.send(Message::binary(&b"ping"[..])).await.unwrap();
    assert_eq!(
        next_within(&mut b, Duration::from_secs(5)).await,
        Some(Message::binary(&b"ping"[..]))
    );
}

/// `tidewire serve ARGS` that must refuse to start: its stderr.
fn refused_at_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("TIDEWIRE_AUTH_HMAC_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?}: the server started and was still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "{args:?} started: {stderr}"
    );
    stderr
}

#[test]
fn flags_that_cannot_work_are_refused_at_start() {
    let e = refused_at_start(&["--allowed-origins", "app.example.com"]);
    assert!(
        e.contains("--allowed-origins") && e.contains("no scheme") && e.contains("https://"),
        "{e}"
    );
    let e = refused_at_start(&["--allowed-origins", "https://ok.example,https://x/y"]);
    assert!(e.contains("--allowed-origins") && e.contains("path"), "{e}");
    let e = refused_at_start(&["--auth-anonymous"]);
    assert!(
        e.contains("--auth-anonymous") && e.contains("--auth-hmac-secret"),
        "{e}"
    );
    let e = refused_at_start(&["--max-connections", "0"]);
    assert!(
        e.contains("--max-connections") && e.contains("at least 1"),
        "{e}"
    );
    let e = refused_at_start(&["--publish-burst", "0"]);
    assert!(e.contains("--publish-burst"), "{e}");
    // Engines: a URL that names none, a cluster given with another URL, a cluster and a
    // server that do not answer (their passwords not shown).
    let e = refused_at_start(&["--engine", "postgres://db"]);
    assert!(
        e.contains("--engine") && e.contains("unknown engine"),
        "{e}"
    );
    let e = refused_at_start(&[
        "--engine",
        "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        "--engine",
        "redis://127.0.0.1:1",
    ]);
    assert!(
        e.contains("--engine") && e.contains("only engine URL"),
        "{e}"
    );
    let e = refused_at_start(&[
        "--engine",
        "redis+cluster://:hunter2@127.0.0.1:1,127.0.0.1:2",
    ]);
    assert!(e.contains("--engine") && e.contains("Redis Cluster"), "{e}");
    assert!(!e.contains("hunter2"), "the password is shown: {e}");
    let e = refused_at_start(&["--engine", "memory,redis://127.0.0.1:1"]);
    assert!(e.contains("--engine"), "{e}");
    let e = refused_at_start(&["--engine", "redis://:hunter2@127.0.0.1:1"]);
    assert!(
        e.contains("--engine") && e.contains("127.0.0.1:1") && e.contains("refused"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the password is shown: {e}");
    let e = refused_at_start(&["--engine", "redis+sentinel://127.0.0.1:1"]);
    assert!(
        e.contains("--engine") && e.contains("no master name"),
        "{e}"
    );
}

#[tokio::test]
async fn refused_handshakes_are_logged_with_origin_and_reason_and_rate_limited() {
    let (mut child, addr) = spawn_logged("serve", &[]);
    let log = LogLines::collect(&mut child);
    let url = format!("ws://{addr}/rooms/lobby");
    let e = ClientBuilder::new(&url)
        .origin("https://evil.example")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(403), "{e}");
    let lines = log.wait_for("handshake refused");
    let line = lines
        .iter()
        .find(|l| l.contains("handshake refused"))
        .unwrap_or_else(|| panic!("nothing logged: {lines:#?}"));
    assert!(
        line.contains("INFO")
            && line.contains("https://evil.example")
            && line.contains("origin not allowed")
            && line.contains("status=403"),
        "{line}"
    );
    // A flood is rate-limited: at most 20 lines per 10 s window.
    for _ in 0..40 {
        let _ = room(&format!("ws://{addr}/ws"), &["nope"])
            .await
            .unwrap_err();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged = log
        .lines()
        .iter()
        .filter(|l| l.contains("handshake refused"))
        .count();
    assert_eq!(logged, 20, "{:#?}", log.lines());
    let _ = child.kill();
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    let (mut child, addr) = spawn_logged("serve", &[]);
    let log = LogLines::collect(&mut child);
    // Something at info after the start line.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let lines = log.wait_for("handshake refused");
    let _ = child.kill();
    assert!(lines.iter().any(|l| l.contains("listening")), "{lines:#?}");
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "ANSI escapes in a piped log: {lines:#?}"
    );
}

fn tidewire(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(args)
        .env_remove("TIDEWIRE_AUTH_HMAC_SECRET")
        .env_remove("TIDEWIRE_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn genconfig_writes_a_file_that_check_config_accepts() {
    let dir = std::env::temp_dir().join(format!("tidewire-genconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tidewire.toml");
    let _ = std::fs::remove_file(&file);
    let path = file.to_str().unwrap();

    let out = tidewire(&["genconfig"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("[rooms]") && printed.contains("max_connections = 100000"));

    assert!(tidewire(&["genconfig", "--output", path]).status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), printed);
    // An existing file is kept.
    let again = tidewire(&["genconfig", "--output", path]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let check = tidewire(&["serve", "--config", path, "--check-config"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        stdout.contains(&format!("{path}: ok")) && stdout.contains("http://127.0.0.1:8080/"),
        "{stdout}"
    );

    // A bad file: exit 1, FILE:LINE: KEY: reason, and nothing listened on.
    std::fs::write(&file, "[limits]\nmax_connections = 0\n").unwrap();
    let check = tidewire(&["serve", "--config", path, "--check-config"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{path}:2: limits.max_connections")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_is_printed() {
    let out = tidewire(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("tidewire {}", env!("CARGO_PKG_VERSION"))
    );
}
