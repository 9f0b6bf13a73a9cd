//! `tidewire serve` over HTTP/2 (RFC 8441): WebSockets as streams of one connection (h2c
//! and TLS by ALPN), beside HTTP/1.1 clients in the same channels and rooms, refusals with
//! their reasons, `/metrics` by HTTP version, and `--no-http2`.

mod common;

use common::hub::{metric, next_json, request, serve};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tidewire::{ClientBuilder, Http2, Message};

type Ws = common::hub::Ws;

async fn channel_client(url: &str, mode: Http2) -> (Ws, http::Version) {
    let (ws, resp) = ClientBuilder::new(url)
        .protocols(["tidewire.v1"])
        .http2(mode)
        .connect()
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "tidewire.v1");
    (ws, resp.version())
}

fn connection_of(ws: &Ws) -> Option<u64> {
    match ws.get_ref() {
        tidewire::MaybeTlsStream::Http2(s) => Some(s.connection_id()),
        _ => None,
    }
}

#[tokio::test]
async fn channels_work_over_h2c_beside_http1_and_metrics_tell_them_apart() {
    let server = serve(&[]);
    let addr = server.addr;
    let url = format!("ws://{addr}/ws");
    let (mut sub2, v1) = channel_client(&url, Http2::Only).await;
    let (mut pub2, v2) = channel_client(&url, Http2::Only).await;
    let (mut sub1, v3) = channel_client(&url, Http2::Off).await;
    assert_eq!(
        (v1, v2, v3),
        (
            http::Version::HTTP_2,
            http::Version::HTTP_2,
            http::Version::HTTP_11
        )
    );
    assert_eq!(connection_of(&sub2), connection_of(&pub2));
    assert!(connection_of(&sub2).is_some() && connection_of(&sub1).is_none());
    let mut pushed = Vec::new();
    for ws in [&mut sub2, &mut sub1] {
        let reply = request(
            ws,
            json!({"id": 1, "op": "subscribe", "channel": "h2news"}),
            &mut pushed,
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let reply = request(
        &mut pub2,
        json!({"id": 2, "op": "publish", "channel": "h2news", "data": {"text": "over one stream"}}),
        &mut pushed,
    )
    .await;
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    for ws in [&mut sub2, &mut sub1] {
        loop {
            let push = next_json(ws).await;
            if push.get("offset").is_some() {
                assert_eq!(push["data"]["text"], "over one stream", "{push}");
                break;
            }
        }
    }
    assert_eq!(
        metric(addr, "tidewire_websocket_handshakes_total{http=\"2\"}"),
        2.0
    );
    assert_eq!(
        metric(addr, "tidewire_websocket_handshakes_total{http=\"1.1\"}"),
        1.0
    );
    assert_eq!(metric(addr, "tidewire_http2_connections"), 1.0);

    // A refusal over HTTP/2: the status and the one-line reason, as over HTTP/1.1.
    let err = ClientBuilder::new(&url)
        .protocols(["tidewire.v1"])
        .http2(Http2::Only)
        .origin("https://evil.example")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403), "{err}");
    let body = err.http_body().unwrap_or("");
    assert!(body.contains("origin not allowed"), "{body}");
    // The shared connection still carries its WebSockets.
    let reply = request(
        &mut sub2,
        json!({"id": 3, "op": "history", "channel": "h2news", "limit": 5}),
        &mut pushed,
    )
    .await;
    assert_eq!(reply["id"], 3, "{reply}");
    assert!(reply.get("error").is_none(), "{reply}");

    // Plain requests over HTTP/2 too (curl with prior knowledge).
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "--http2-prior-knowledge"])
        .arg(format!("http://{addr}/healthz"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    drop((sub2, pub2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(addr, "tidewire_http2_connections") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTP/2 connection did not close after its last WebSocket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn certificate(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
    (c.cert.pem(), cert, key)
}

async fn room_client(url: &str, cert_pem: &str, mode: Http2) -> (Ws, http::Response<()>) {
    let roots = tidewire::root_store_from_pem(cert_pem.as_bytes()).unwrap();
    let tls = Arc::new(tidewire::client_config_with_roots(roots));
    ClientBuilder::new(url)
        .tls_config(tls)
        .protocols(["chat", "superchat"])
        .http2(mode)
        .connect()
        .await
        .unwrap()
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[tokio::test]
async fn wss_rooms_go_over_http2_by_alpn_and_over_http1_with_no_http2() {
    let dir = std::env::temp_dir().join(format!("tidewire-serve-h2-{}", std::process::id()));
    let (pem, cert, key) = certificate(&dir);
    let tls_args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = serve(&tls_args);
    let url = format!("wss://localhost:{}/rooms/h2", server.addr.port());
    // The default client: HTTP/2, since the server offers it.
    let (mut a, resp) = room_client(&url, &pem, Http2::Auto).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let (mut b, resp) = room_client(&url, &pem, Http2::Off).await;
    assert_eq!(resp.status(), 101);
    a.send(Message::text("from h2")).await.unwrap();
    assert_eq!(next_text(&mut b).await, "from h2");
    b.send(Message::text("from 1.1")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "from 1.1");
    // The room heartbeat of the tutorial, over HTTP/2.
    a.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "pong");
    drop(server);

    let mut args = tls_args.to_vec();
    args.push("--no-http2");
    let server = serve(&args);
    let url = format!("wss://localhost:{}/rooms/h1", server.addr.port());
    let (mut c, resp) = room_client(&url, &pem, Http2::Auto).await;
    assert_eq!(resp.status(), 101, "--no-http2: HTTP/1.1");
    c.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_text(&mut c).await, "pong");
    let roots = tidewire::root_store_from_pem(pem.as_bytes()).unwrap();
    let err = ClientBuilder::new(&url)
        .tls_config(Arc::new(tidewire::client_config_with_roots(roots)))
        .http2(Http2::Only)
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not select h2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_reconnecting_client_comes_back_over_http2_after_a_restart() {
    use tidewire::reconnect::{Backoff, Event, ReconnectingClient};
    let mut server = Some(serve(&[]));
    let addr = server.as_ref().map(|s| s.addr).unwrap();
    let mut restarted = None;
    let mut client = ReconnectingClient::builder(format!("ws://{addr}/rooms/h2again"))
        .client(|c| c.http2(Http2::Only).protocols(["chat"]))
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(300),
        ))
        .connect();
    let mut connected = Vec::new();
    while connected.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(15), client.next_event())
            .await
            .expect("an event within 15 s")
            .expect("the client gave up");
        if let Event::Connected(c) = event {
            connected.push((c.connection, c.response.version()));
            if connected.len() == 1 {
                // Killed: the HTTP/2 connection (and the WebSocket on it) goes away; the
                // same address again.
                server = None;
                let (child, addr) = common::spawn_at("serve", &addr.to_string(), &[]);
                restarted = Some(common::hub::Serve { child, addr });
            }
        }
    }
    assert_eq!(
        connected,
        vec![(1, http::Version::HTTP_2), (2, http::Version::HTTP_2)]
    );
    drop((server, restarted));
}
