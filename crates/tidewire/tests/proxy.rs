//! `ws://` and `wss://` through an HTTP CONNECT proxy and a SOCKS5 proxy (written for the
//! tests: `common::proxies`), with and without credentials, and the errors when a proxy
//! refuses. The environment variables: `proxy_env.rs` (a process of its own).

mod common;

use common::proxies::{http_proxy, socks5_proxy, ws_echo, wss_echo};
use tidewire::{ClientBuilder, Message, Proxy};

async fn echo_through(
    url: &str,
    proxy: &str,
    tls: Option<std::sync::Arc<tidewire::rustls::ClientConfig>>,
) -> tidewire::Result<()> {
    let mut b = ClientBuilder::new(url).proxy(Proxy::parse(proxy)?);
    if let Some(tls) = tls {
        b = b.tls_config(tls);
    }
    let (mut ws, _) = b.connect().await?;
    ws.send(Message::text("through the proxy")).await?;
    assert_eq!(
        ws.recv().await.unwrap()?,
        Message::text("through the proxy")
    );
    ws.close(None).await?;
    Ok(())
}

#[tokio::test]
async fn ws_and_wss_through_an_http_connect_proxy() {
    let plain = ws_echo().await;
    let (secure, tls) = wss_echo().await;
    let p = http_proxy(None).await;
    let proxy = format!("http://127.0.0.1:{}", p.port);
    echo_through(&format!("ws://localhost:{plain}/"), &proxy, None)
        .await
        .unwrap();
    echo_through(&format!("wss://localhost:{secure}/"), &proxy, Some(tls))
        .await
        .unwrap();
    assert_eq!(
        *p.targets.lock().unwrap(),
        [format!("localhost:{plain}"), format!("localhost:{secure}")]
    );
}

#[tokio::test]
async fn an_http_proxy_with_basic_auth() {
    let (secure, tls) = wss_echo().await;
    let p = http_proxy(Some(("ann", "s3cret:x"))).await;
    let url = format!("wss://localhost:{secure}/");
    // Reserved characters percent-encoded in the URL.
    let good = format!("http://ann:s3cret%3Ax@127.0.0.1:{}", p.port);
    echo_through(&url, &good, Some(tls.clone())).await.unwrap();
    let e = echo_through(
        &url,
        &format!("http://127.0.0.1:{}", p.port),
        Some(tls.clone()),
    )
    .await
    .unwrap_err();
    assert!(e.is_proxy(), "{e}");
    assert!(e.to_string().contains("requires authentication"), "{e}");
    let e = echo_through(
        &url,
        &format!("http://ann:wrong@127.0.0.1:{}", p.port),
        Some(tls),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    // The password is never shown.
    assert!(!e.to_string().contains("wrong"), "{e}");
}

#[tokio::test]
async fn socks5_with_remote_and_local_name_resolution() {
    let plain = ws_echo().await;
    let (secure, tls) = wss_echo().await;
    let p = socks5_proxy(None).await;
    // socks5h: the proxy gets the name; socks5: the address resolved here.
    echo_through(
        &format!("wss://localhost:{secure}/"),
        &format!("socks5h://127.0.0.1:{}", p.port),
        Some(tls),
    )
    .await
    .unwrap();
    echo_through(
        &format!("ws://localhost:{plain}/"),
        &format!("socks5://127.0.0.1:{}", p.port),
        None,
    )
    .await
    .unwrap();
    let targets = p.targets.lock().unwrap().clone();
    assert_eq!(targets[0], format!("localhost:{secure}"));
    assert!(
        targets[1] == format!("127.0.0.1:{plain}") || targets[1] == format!("::1:{plain}"),
        "{targets:?}"
    );
}

#[tokio::test]
async fn socks5_with_a_user_and_password() {
    let (secure, tls) = wss_echo().await;
    let p = socks5_proxy(Some(("bob", "pw"))).await;
    let url = format!("wss://localhost:{secure}/");
    echo_through(
        &url,
        &format!("socks5h://bob:pw@127.0.0.1:{}", p.port),
        Some(tls.clone()),
    )
    .await
    .unwrap();
    let e = echo_through(
        &url,
        &format!("socks5h://bob:no@127.0.0.1:{}", p.port),
        Some(tls.clone()),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("refused the user and password"),
        "{e}"
    );
    let e = echo_through(&url, &format!("socks5h://127.0.0.1:{}", p.port), Some(tls))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("requires authentication"), "{e}");
}

#[tokio::test]
async fn a_proxy_that_is_down_or_cannot_reach_the_server_is_named() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = echo_through(
        "ws://localhost:1/",
        &format!("http://127.0.0.1:{dead}"),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.is_proxy(), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("http://127.0.0.1:{dead}: cannot connect")),
        "{e}"
    );
    let p = socks5_proxy(None).await;
    let e = echo_through(
        &format!("ws://127.0.0.1:{dead}/"),
        &format!("socks5://127.0.0.1:{}", p.port),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("connection refused (SOCKS5 reply 5)"),
        "{e}"
    );
    let h = http_proxy(None).await;
    let e = echo_through(
        &format!("ws://127.0.0.1:{dead}/"),
        &format!("http://127.0.0.1:{}", h.port),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("502"), "{e}");
}
