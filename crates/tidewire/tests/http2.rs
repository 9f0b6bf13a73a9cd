//! WebSocket over HTTP/2 (RFC 8441) between Tidewire's client and server: h2c and TLS,
//! several WebSockets sharing one connection, the fallback to HTTP/1.1 where the server's
//! HTTP/2 has no extended CONNECT, refusals with their reasons, and fairness between the
//! streams of one connection when one of them is not read.

mod common;

use common::certs::Ca;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, Http2, Message, ServerBuilder};
use tokio::net::TcpListener;

/// An echo server speaking HTTP/2 in clear only (h2c, prior knowledge), through
/// `tidewire::upgrade::serve_http2`: its port, and a counter of TCP connections accepted.
async fn h2c_echo(server: ServerBuilder) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    listen(move |tcp| tidewire::upgrade::serve_http2(tcp, server.clone(), echo)).await
}

/// A listener on 127.0.0.1 that runs `serve` in a task for each connection: its port, and
/// a counter of the TCP connections accepted.
async fn listen<F, Fut>(serve: F) -> (u16, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let serving = serve(tcp);
            tokio::spawn(async move {
                let _ = serving.await;
            });
        }
    });
    (port, accepted)
}

async fn echo<S>(mut ws: tidewire::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(m)) = ws.recv().await {
        if m.is_data() && ws.send(m).await.is_err() {
            break;
        }
    }
}

type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

/// The HTTP/2 connections under `sockets` (panics on one that is not over HTTP/2).
fn connections_of(sockets: &[Ws]) -> std::collections::BTreeSet<u64> {
    sockets
        .iter()
        .map(|ws| match ws.get_ref() {
            tidewire::MaybeTlsStream::Http2(s) => s.connection_id(),
            other => panic!("not over HTTP/2: {other:?}"),
        })
        .collect()
}

fn tls_acceptor(ca: &Ca, alpn: &[&[u8]]) -> tidewire::tokio_rustls::TlsAcceptor {
    let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"], 2020, 2090);
    let config = tidewire::server_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tidewire::tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn client_tls(ca: &Ca) -> Arc<tidewire::rustls::ClientConfig> {
    let roots = tidewire::root_store_from_pem(ca.pem().as_bytes()).unwrap();
    Arc::new(tidewire::client_config_with_roots(roots))
}

#[tokio::test]
async fn h2c_echoes_every_kind_of_message_with_deflate_and_subprotocol() {
    let server = ServerBuilder::new()
        .protocols(["superchat", "chat"])
        .compression(Some(tidewire::DeflateConfig::default()));
    let (port, _) = h2c_echo(server).await;
    let (mut ws, response) = ClientBuilder::new(format!("ws://127.0.0.1:{port}/echo"))
        .http2(Http2::Only)
        .protocols(["chat", "superchat"])
        .compression(Some(tidewire::DeflateConfig::default()))
        .connect()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("sec-websocket-accept").is_none());
    assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
    let ext = response.headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap();
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    // Sizes across every length encoding, and over the stream and connection windows.
    for size in [0usize, 1, 125, 126, 65_535, 65_536, 3 << 20] {
        let text = "é".repeat(size / 2);
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.recv().await.unwrap().unwrap();
        assert_eq!(back, Message::text(text), "text of {size} bytes");
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
        ws.send(Message::binary(bytes.clone())).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(bytes));
    }
    ws.send(Message::Ping(b"over h2"[..].into())).await.unwrap();
    match ws.recv().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"over h2"),
        other => panic!("expected the pong, got {other:?}"),
    }
    // The close handshake completes (the server's close frame, then the end of the
    // stream) well within the close timeout.
    let start = Instant::now();
    ws.close(Some(tidewire::CloseFrame::new(
        tidewire::CloseCode::NORMAL,
        "bye",
    )))
    .await
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(!matches!(ws.recv().await, Some(Ok(_))));
}

#[tokio::test]
async fn websockets_to_one_host_share_one_connection_and_it_closes_after_the_last() {
    let (port, accepted) = h2c_echo(ServerBuilder::new()).await;
    let url = format!("ws://127.0.0.1:{port}/");
    let mut sockets = Vec::new();
    for i in 0..20 {
        let (mut ws, response) = ClientBuilder::new(url.clone())
            .http2(Http2::Only)
            .connect()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        ws.send(Message::text(format!("socket {i}"))).await.unwrap();
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::text(format!("socket {i}"))
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        connections_of(&sockets).len(),
        1,
        "one connection for 20 WebSockets"
    );
    // Closing one leaves the others working.
    let mut first = sockets.remove(0);
    first.close(None).await.unwrap();
    while first.recv().await.is_some() {}
    sockets[0].send(Message::text("still here")).await.unwrap();
    assert_eq!(
        sockets[0].recv().await.unwrap().unwrap(),
        Message::text("still here")
    );
    drop(sockets);
    drop(first);
    // The pool lets the connection go with its last WebSocket: a new one dials again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut ws, _) = ClientBuilder::new(url)
        .http2(Http2::Only)
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("again"));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A TLS server: ALPN `alpn`; on `h2` it serves `h2_server` (with or without extended
/// CONNECT), on anything else a plain HTTP/1.1 WebSocket echo. Its port and a counter of
/// TCP connections.
async fn tls_server(
    acceptor: tidewire::tokio_rustls::TlsAcceptor,
    connect_protocol: bool,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    listen(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                if let Ok(ws) = ServerBuilder::new().accept(tls).await {
                    echo(ws).await;
                }
            } else if connect_protocol {
                let _ = tidewire::upgrade::serve_http2(tls, ServerBuilder::new(), echo).await;
            } else {
                // A plain HTTP/2 site: no SETTINGS_ENABLE_CONNECT_PROTOCOL.
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::from(
                        "a web page\n",
                    )))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn wss_uses_http2_when_the_server_offers_it_and_http1_otherwise() {
    let ca = Ca::new();
    let tls = client_tls(&ca);
    // h2 with extended CONNECT: HTTP/2, by default.
    let (port, _) = tls_server(tls_acceptor(&ca, &[b"h2", b"http/1.1"]), true).await;
    let (mut ws, response) = ClientBuilder::new(format!("wss://127.0.0.1:{port}/"))
        .tls_config(tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("over h2"));
    // http2(Off): HTTP/1.1 on the same server.
    let (mut ws, response) = ClientBuilder::new(format!("wss://127.0.0.1:{port}/"))
        .tls_config(tls.clone())
        .http2(Http2::Off)
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("over 1.1")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("over 1.1"));
    // A server that selects http/1.1 by ALPN: the same connection goes on over HTTP/1.1.
    let (port, accepted) = tls_server(tls_acceptor(&ca, &[b"http/1.1"]), true).await;
    let (mut ws, response) = ClientBuilder::new(format!("wss://127.0.0.1:{port}/"))
        .tls_config(tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("alpn http/1.1")).await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Message::text("alpn http/1.1")
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Http2::Only against it: a clear error.
    let err = ClientBuilder::new(format!("wss://127.0.0.1:{port}/"))
        .tls_config(tls)
        .http2(Http2::Only)
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not select h2"), "{err}");
}

#[tokio::test]
async fn an_http2_server_without_extended_connect_gets_http1_and_is_remembered() {
    let ca = Ca::new();
    let tls = client_tls(&ca);
    let (port, accepted) = tls_server(tls_acceptor(&ca, &[b"h2", b"http/1.1"]), false).await;
    let url = format!("wss://localhost:{port}/");
    let (mut ws, response) = ClientBuilder::new(url.clone())
        .tls_config(tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        101,
        "HTTP/1.1 after the h2 connection said no"
    );
    ws.send(Message::text("fell back")).await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Message::text("fell back")
    );
    // The h2 connection, then the HTTP/1.1 one.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Remembered: the next connect goes straight to HTTP/1.1 (one connection more).
    let (_ws, response) = ClientBuilder::new(url.clone())
        .tls_config(tls.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Required: an error that says why.
    let err = ClientBuilder::new(url)
        .tls_config(tls)
        .http2(Http2::Only)
        .connect()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"),
        "{err}"
    );
}

#[tokio::test]
async fn refusals_over_http2_carry_their_status_and_reason() {
    let server =
        ServerBuilder::new().origin_check(|origin, _| origin == Some("https://ok.example"));
    let (port, _) = h2c_echo(server).await;
    let url = format!("ws://127.0.0.1:{port}/");
    let err = ClientBuilder::new(url.clone())
        .http2(Http2::Only)
        .origin("https://evil.example")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403), "{err}");
    assert_eq!(err.http_body(), Some("origin not allowed"), "{err}");
    // The connection stays usable for the next WebSocket.
    let (mut ws, _) = ClientBuilder::new(url)
        .http2(Http2::Only)
        .origin("https://ok.example")
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("allowed")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("allowed"));
}

/// 100 WebSockets on one HTTP/2 connection; one of them sends without ever reading its
/// echoes. The other 99 must all finish their exchanges: the stalled stream holds its own
/// window, not the connection's. Prints the 99's throughput with and without the stalled
/// one (run with `--release --nocapture` for the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_websocket_does_not_stall_the_other_99_on_its_connection() {
    async fn round(port: u16, stalled: bool) -> (Duration, u64) {
        let url = format!("ws://127.0.0.1:{port}/");
        let mut sockets = Vec::new();
        for _ in 0..100 {
            let (ws, _) = ClientBuilder::new(url.clone())
                .http2(Http2::Only)
                .connect()
                .await
                .unwrap();
            sockets.push(ws);
        }
        assert_eq!(
            connections_of(&sockets).len(),
            1,
            "100 WebSockets on one connection"
        );
        common::fairness::round(sockets, stalled).await
    }
    let (port, _) = h2c_echo(ServerBuilder::new()).await;
    let (base, _) = round(port, false).await;
    let (with_stall, stuck) = round(port, true).await;
    common::fairness::report("HTTP/2", base, with_stall, stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_opened_at_once_share_the_first_ones_connection() {
    let (port, accepted) = h2c_echo(ServerBuilder::new()).await;
    let url = format!("ws://127.0.0.1:{port}/");
    let opening: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                ClientBuilder::new(url)
                    .http2(Http2::Only)
                    .connect()
                    .await
                    .unwrap()
                    .0
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for t in opening {
        sockets.push(t.await.unwrap());
    }
    assert_eq!(connections_of(&sockets).len(), 1);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    for ws in &mut sockets {
        ws.send(Message::text("together")).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("together"));
    }
}

/// An h2c echo server that sends GOAWAY (a graceful shutdown) on each connection right
/// after its first WebSocket: the connection keeps carrying that one, and refuses others.
async fn going_away_echo() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    listen(|tcp| async move {
        let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(1);
        let service = hyper::service::service_fn(move |mut req| {
            let first = first_tx.clone();
            async move {
                let (response, pending) =
                    tidewire::upgrade::upgrade(&mut req, &ServerBuilder::new()).unwrap();
                tokio::spawn(async move {
                    if let Ok(ws) = pending.finish().await {
                        echo(ws).await;
                    }
                });
                let _ = first.try_send(());
                Ok::<_, std::convert::Infallible>(response.map(|()| String::new()))
            }
        });
        let conn = tidewire::upgrade::http2_builder()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = first_rx.recv() => conn.as_mut().graceful_shutdown(),
        }
        let _ = conn.await;
    })
    .await
}

#[tokio::test]
async fn a_pooled_connection_going_away_is_replaced_for_the_next_websocket() {
    let (port, accepted) = going_away_echo().await;
    let url = format!("ws://127.0.0.1:{port}/");
    let (mut a, _) = ClientBuilder::new(url.clone())
        .http2(Http2::Only)
        .connect()
        .await
        .unwrap();
    a.send(Message::text("a")).await.unwrap();
    assert_eq!(a.recv().await.unwrap().unwrap(), Message::text("a"));
    // The server said GOAWAY after `a`: the next WebSocket gets a new connection instead
    // of an error, and `a` still works on the old one.
    let (mut b, _) = ClientBuilder::new(url)
        .http2(Http2::Only)
        .connect()
        .await
        .unwrap();
    b.send(Message::text("b")).await.unwrap();
    assert_eq!(b.recv().await.unwrap().unwrap(), Message::text("b"));
    a.send(Message::text("a again")).await.unwrap();
    assert_eq!(a.recv().await.unwrap().unwrap(), Message::text("a again"));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    let sockets = [a, b];
    assert_eq!(connections_of(&sockets).len(), 2);
}
