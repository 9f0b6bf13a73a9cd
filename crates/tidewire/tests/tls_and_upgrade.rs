//! `wss://` with a private CA, and upgrades served from an axum router.

mod common;

use tidewire::{ClientBuilder, Message};

#[tokio::test]
async fn wss_with_a_custom_root() {
    let (port, config) = common::proxies::wss_echo().await;
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
    use tidewire::ServerBuilder;
    use tokio::net::TcpListener;

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
