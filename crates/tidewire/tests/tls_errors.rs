//! `wss://` certificates that must be refused, each with an error that says why: expired,
//! self-signed (an authority not trusted here), for another host; and one from a private
//! CA accepted once its root is given.

mod common;

use common::certs::{wss_server, Ca};
use std::sync::Arc;
use tidewire::ClientBuilder;

fn trusting(ca: &Ca) -> Arc<tidewire::rustls::ClientConfig> {
    let roots = tidewire::root_store_from_pem(ca.pem().as_bytes()).unwrap();
    Arc::new(tidewire::client_config_with_roots(roots))
}

async fn refusal(port: u16, config: Option<Arc<tidewire::rustls::ClientConfig>>) -> String {
    let mut b = ClientBuilder::new(format!("wss://localhost:{port}/"));
    if let Some(c) = config {
        b = b.tls_config(c);
    }
    let e = b.connect().await.unwrap_err();
    assert!(e.is_tls(), "{e}");
    e.to_string()
}

#[tokio::test]
async fn refused_certificates_say_why() {
    let ca = Ca::new();
    // Valid, from the private CA: accepted with its root, refused without it.
    let (cert, key) = ca.leaf(&["localhost"], 2020, 2099);
    let good = wss_server(&cert, &key).await;
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{good}/"))
        .tls_config(trusting(&ca))
        .connect()
        .await
        .unwrap();
    ws.close(None).await.unwrap();
    let e = refusal(good, None).await;
    assert!(e.contains("not signed by an authority trusted here"), "{e}");
    // Expired.
    let (cert, key) = ca.leaf(&["localhost"], 2019, 2020);
    let expired = wss_server(&cert, &key).await;
    let e = refusal(expired, Some(trusting(&ca))).await;
    assert!(
        e.contains("the certificate of localhost expired on 2020-01-01"),
        "{e}"
    );
    // Not yet valid.
    let (cert, key) = ca.leaf(&["localhost"], 2090, 2099);
    let early = wss_server(&cert, &key).await;
    let e = refusal(early, Some(trusting(&ca))).await;
    assert!(e.contains("is not valid before 2090-01-01"), "{e}");
    // Another host's.
    let (cert, key) = ca.leaf(&["api.example.com", "www.example.com"], 2020, 2099);
    let other = wss_server(&cert, &key).await;
    let e = refusal(other, Some(trusting(&ca))).await;
    assert!(e.contains("the certificate is not for localhost"), "{e}");
    assert!(e.contains("api.example.com"), "{e}");
    // Self-signed.
    let own = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let selfsigned = wss_server(&own.cert.pem(), &own.key_pair.serialize_pem()).await;
    let e = refusal(selfsigned, None).await;
    assert!(e.contains("self-signed, or a private CA"), "{e}");
}
