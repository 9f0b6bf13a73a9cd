//! The platform's trust store is used by default: a private CA named by `SSL_CERT_FILE`
//! (how the store is found on Linux) is trusted without any `tls_config`. A process of its
//! own: the default configuration is read once per process, after the variable is set.

mod common;

use common::certs::{wss_server, Ca};
use tidewire::{ClientBuilder, Message};

#[tokio::test]
async fn a_ca_in_the_platform_store_is_trusted() {
    let ca = Ca::new();
    let dir = std::env::temp_dir().join(format!("tidewire-roots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("ca.pem");
    std::fs::write(&bundle, ca.pem()).unwrap();
    // The only test of this process: nothing else reads the environment meanwhile.
    std::env::set_var("SSL_CERT_FILE", &bundle);
    std::env::remove_var("SSL_CERT_DIR");
    let (cert, key) = ca.leaf(&["localhost"], 2020, 2099);
    let port = wss_server(&cert, &key).await;
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}/"))
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("trusted")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("trusted"));
    // The built-in webpki roots alone do not know it.
    let e = ClientBuilder::new(format!("wss://localhost:{port}/"))
        .tls_config(tidewire::webpki_client_config())
        .connect()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not signed by an authority trusted here"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
