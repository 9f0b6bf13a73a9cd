//! `tidewire serve --http3` (RFC 9220): channels and rooms over QUIC beside HTTP/1.1 and
//! HTTP/2 clients in the same channels, `/metrics` by HTTP version, the reconnecting
//! client back over HTTP/3 after a restart, `tidewire connect --http3`, and the flag's
//! misuse named.

#![cfg(feature = "http3")]

mod common;

use common::hub::{next_json, request, serve};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tidewire::{ClientBuilder, Http2, Message};

type Ws = common::hub::Ws;

struct Tls {
    pem: String,
    dir: std::path::PathBuf,
}

impl Tls {
    fn new(name: &str) -> Tls {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("tidewire-h3-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), c.key_pair.serialize_pem()).unwrap();
        Tls {
            pem: c.cert.pem(),
            dir,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.dir.join("cert.pem").display().to_string(),
            "--tls-key".into(),
            self.dir.join("key.pem").display().to_string(),
            "--http3".into(),
        ]
    }

    fn client(&self) -> Arc<tidewire::rustls::ClientConfig> {
        let roots = tidewire::root_store_from_pem(self.pem.as_bytes()).unwrap();
        Arc::new(tidewire::client_config_with_roots(roots))
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A metric's value, read over HTTPS with curl (the server's certificate is trusted by
/// `--cacert`).
fn metric(tls: &Tls, port: u16, name: &str) -> f64 {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(tls.dir.join("cert.pem"))
        .arg(format!("https://localhost:{port}/metrics"))
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in:\n{page}"))
}

fn connection_of(ws: &Ws) -> Option<u64> {
    match ws.get_ref() {
        tidewire::MaybeTlsStream::Http3(s) => Some(s.connection_id()),
        _ => None,
    }
}

#[tokio::test]
async fn channels_and_rooms_over_http3_beside_http1_and_http2() {
    let tls = Tls::new("channels");
    let args = tls.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = serve(&args);
    let port = server.addr.port();
    let url = format!("wss://localhost:{port}/ws");
    // One TLS configuration: WebSockets share a QUIC connection per host and configuration.
    let config = tls.client();
    let connect = |h3: bool, h2: Http2| {
        let builder = ClientBuilder::new(&url)
            .tls_config(config.clone())
            .protocols(["tidewire.v1"])
            .http3(h3)
            .http2(h2);
        async move { builder.connect().await }
    };
    let (mut sub3, r1) = connect(true, Http2::Off).await.unwrap();
    let (mut pub3, r2) = connect(true, Http2::Off).await.unwrap();
    let (mut sub1, r3) = connect(false, Http2::Off).await.unwrap();
    let (mut sub2, r4) = connect(false, Http2::Only).await.unwrap();
    assert_eq!(
        [r1.version(), r2.version(), r3.version(), r4.version()],
        [
            http::Version::HTTP_3,
            http::Version::HTTP_3,
            http::Version::HTTP_11,
            http::Version::HTTP_2
        ]
    );
    assert_eq!(r1.status(), 200);
    assert_eq!(r1.headers()["sec-websocket-protocol"], "tidewire.v1");
    assert!(r1.headers().get("sec-websocket-accept").is_none());
    assert_eq!(
        connection_of(&sub3),
        connection_of(&pub3),
        "one QUIC connection"
    );
    let mut pushed = Vec::new();
    for ws in [&mut sub3, &mut sub1, &mut sub2] {
        let reply = request(
            ws,
            json!({"id": 1, "op": "subscribe", "channel": "h3news"}),
            &mut pushed,
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let reply = request(
        &mut pub3,
        json!({"id": 2, "op": "publish", "channel": "h3news", "data": {"n": 1}}),
        &mut pushed,
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    for ws in [&mut sub3, &mut sub1, &mut sub2] {
        // Presence joins come first, then the publication.
        let push = loop {
            let push = next_json(ws).await;
            if !push["data"].is_null() {
                break push;
            }
        };
        assert_eq!(push["channel"], "h3news", "{push}");
        assert_eq!(push["data"]["n"], 1, "{push}");
    }
    // The tutorial's room, its subprotocols and heartbeat, over HTTP/3.
    let (mut room, resp) = ClientBuilder::new(format!("wss://localhost:{port}/rooms/lobby"))
        .tls_config(config.clone())
        .protocols(["chat", "superchat"])
        .http3(true)
        .connect()
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    room.send(Message::text("ping")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), room.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "pong"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        metric(
            &tls,
            port,
            "tidewire_websocket_handshakes_total{http=\"3\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &tls,
            port,
            "tidewire_websocket_handshakes_total{http=\"2\"}"
        ),
        1.0
    );
    // curl's own request was HTTP/1.1 or HTTP/2; the WebSockets' one QUIC connection:
    assert_eq!(metric(&tls, port, "tidewire_http3_connections"), 1.0);
    for mut ws in [sub3, pub3, room] {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
    }
    drop((sub1, sub2));
    // The client closed its QUIC connection with its last WebSocket; the server saw it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&tls, port, "tidewire_http3_connections") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTP/3 connection did not close after its last WebSocket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_reconnecting_client_comes_back_over_http3_after_a_restart() {
    use tidewire::reconnect::{Backoff, Event, ReconnectingClient};
    let tls = Tls::new("restart");
    let args = tls.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Some(serve(&args));
    let addr = server.as_ref().map(|s| s.addr).unwrap();
    let mut restarted = None;
    let config = tls.client();
    let mut client =
        ReconnectingClient::builder(format!("wss://localhost:{}/rooms/h3again", addr.port()))
            // A killed server sends no CONNECTION_CLOSE (and the restarted one cannot reset
            // the old connection): the heartbeat is how the client learns it is gone.
            .client(move |c| c.tls_config(config).http3(true).protocols(["chat"]))
            .heartbeat(Duration::from_millis(300), Duration::from_millis(900))
            .backoff(Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(300),
            ))
            .connect();
    let mut connected = Vec::new();
    while connected.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), client.next_event())
            .await
            .expect("an event within 20 s")
            .expect("the client gave up");
        if let Event::Connected(c) = event {
            connected.push((c.connection, c.response.version()));
            if connected.len() == 1 {
                // Killed: no CONNECTION_CLOSE reaches the client; it learns from the
                // heartbeat or QUIC's idle timeout, or (here) from the restarted server
                // refusing the old connection's packets.
                server = None;
                let (child, addr) = common::spawn_at("serve", &addr.to_string(), &args);
                restarted = Some(common::hub::Serve { child, addr });
            }
        }
    }
    assert_eq!(
        connected,
        vec![(1, http::Version::HTTP_3), (2, http::Version::HTTP_3)]
    );
    drop((server, restarted));
}

#[tokio::test]
async fn tidewire_connect_speaks_http3_and_the_flags_misuse_is_named() {
    let tls = Tls::new("connect");
    let args = tls.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = serve(&args);
    let port = server.addr.port();
    let ca = tls.dir.join("cert.pem");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
            .args([
                "connect",
                "--http3",
                "--subprotocol",
                "chat",
                "--once",
                "--ca-file",
            ])
            .arg(&ca)
            .arg(format!("wss://localhost:{port}/rooms/cli3"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stdout.trim(), "pong", "{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        metric(
            &tls,
            port,
            "tidewire_websocket_handshakes_total{http=\"3\"}"
        ),
        1.0
    );
    // It told the server it was leaving before it exited (the QUIC close left in time).
    assert_eq!(metric(&tls, port, "tidewire_http3_connections"), 0.0);

    // --http3 without a certificate: refused at start, naming the flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["serve", "--listen", "127.0.0.1:0", "--http3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--http3") && stderr.contains("tls"),
        "{stderr}"
    );
    // tidewire connect --http3 with ws://.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["connect", "--http3", "ws://127.0.0.1:9/ws"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--http3") && stderr.contains("wss://"),
        "{stderr}"
    );
}
