//! `wss://` with a private CA, and upgrades served from an axum router.

use std::sync::Arc;
use tidewire::{ClientBuilder, Message, ServerBuilder};
use tokio::net::TcpListener;

#[tokio::test]
async fn wss_with_a_custom_root() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.key_pair.serialize_pem();
    let server_config =
        tidewire::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let acceptor = tidewire::tokio_rustls::TlsAcceptor::from(server_config);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut ws = ServerBuilder::new().accept(tls).await.unwrap();
                while let Some(Ok(m)) = ws.recv().await {
                    if m.is_data() {
                        ws.send(m).await.unwrap();
                    }
                }
            });
        }
    });

    let roots = tidewire::root_store_from_pem(cert_pem.as_bytes()).unwrap();
    let config = Arc::new(tidewire::client_config_with_roots(roots));
    let url = format!("wss://localhost:{port}/secure");
    let (mut ws, resp) = ClientBuilder::new(&url)
        .tls_config(config)
        .connect()
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("over TLS")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("over TLS"));
    ws.close(None).await.unwrap();

    // Without the private root, the certificate is refused.
    let err = ClientBuilder::new(&url).connect().await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

/// Runs when the `axum` feature is on (it is in `cargo test --workspace`: the CLI enables it).
#[cfg(feature = "axum")]
#[tokio::test]
async fn served_from_an_axum_router() {
    use axum::{routing::get, Router};
    use tidewire::upgrade::WebSocketUpgrade;

    let app: Router = Router::new()
        .route("/", get(|| async { "plain HTTP still works" }))
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.server(ServerBuilder::new().protocols(["chat"]))
                    .on_upgrade(|mut socket| async move {
                        while let Some(Ok(m)) = socket.recv().await {
                            if m.is_data() && socket.send(m).await.is_err() {
                                break;
                            }
                        }
                    })
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (mut ws, resp) = ClientBuilder::new(format!("ws://{addr}/ws"))
        .protocols(["superchat", "chat"])
        .connect()
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    for i in 0..10 {
        ws.send(Message::binary(vec![i; 1000 * i as usize]))
            .await
            .unwrap();
        assert_eq!(
            ws.recv().await.unwrap().unwrap(),
            Message::binary(vec![i; 1000 * i as usize])
        );
    }
    ws.close(None).await.unwrap();

    // A plain GET to the WebSocket route is refused with a status and a reason.
    let err = tidewire::connect(&format!("ws://{addr}/"))
        .await
        .unwrap_err();
    assert!(err.is_handshake(), "{err}");
}
