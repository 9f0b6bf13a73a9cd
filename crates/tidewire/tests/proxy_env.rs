//! The proxy from the environment (the default): `http_proxy` for `ws://`, `https_proxy`
//! for `wss://`, `no_proxy`, loopback reached directly, and `Proxy::none()` ignoring them.
//! A process of its own: the variables are the process's. `echo.test` is a name only the
//! test proxies resolve (to the test's echo servers).

mod common;

use common::proxies::{http_proxy, socks5_proxy, ws_echo, wss_echo};
use tidewire::{ClientBuilder, Message, Proxy};

#[tokio::test]
async fn the_environment_names_the_proxy() {
    let plain = ws_echo().await;
    let (secure, tls) = wss_echo().await;
    let h = http_proxy(None).await;
    let s = socks5_proxy(None).await;
    // The only test of this process: nothing else reads the environment meanwhile.
    std::env::set_var("http_proxy", format!("127.0.0.1:{}", h.port));
    std::env::set_var("HTTPS_PROXY", format!("socks5h://127.0.0.1:{}", s.port));
    std::env::set_var("no_proxy", "example.invalid");
    let echo = |b: ClientBuilder| async move {
        let (mut ws, _) = b.connect().await.unwrap();
        ws.send(Message::text("x")).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("x"));
    };
    echo(ClientBuilder::new(format!("ws://echo.test:{plain}/"))).await;
    echo(ClientBuilder::new(format!("wss://echo.test:{secure}/")).tls_config(tls.clone())).await;
    assert_eq!(*h.targets.lock().unwrap(), [format!("echo.test:{plain}")]);
    assert_eq!(*s.targets.lock().unwrap(), [format!("echo.test:{secure}")]);
    // Loopback, and Proxy::none(): straight to the server.
    echo(ClientBuilder::new(format!("ws://localhost:{plain}/"))).await;
    echo(ClientBuilder::new(format!("ws://127.0.0.1:{plain}/"))).await;
    assert_eq!(h.targets.lock().unwrap().len(), 1);
    // no_proxy: straight there too (and echo.test means nothing to the resolver here).
    std::env::set_var("no_proxy", ".test");
    let e = ClientBuilder::new(format!("ws://echo.test:{plain}/"))
        .connect()
        .await
        .unwrap_err();
    assert!(!e.is_proxy(), "{e}");
    std::env::remove_var("no_proxy");
    let e = ClientBuilder::new(format!("ws://echo.test:{plain}/"))
        .proxy(Proxy::none())
        .connect()
        .await
        .unwrap_err();
    assert!(!e.is_proxy(), "{e}");
    assert_eq!(h.targets.lock().unwrap().len(), 1);
    // A proxy variable that cannot be used is an error naming it, not a direct connection.
    std::env::set_var("http_proxy", "gopher://nowhere");
    let e = ClientBuilder::new(format!("ws://echo.test:{plain}/"))
        .connect()
        .await
        .unwrap_err();
    assert!(
        e.is_proxy() && e.to_string().contains("unknown proxy scheme"),
        "{e}"
    );
}
