//! `tidewire serve --tls-cert --tls-key` serves https:// and wss://, and SIGHUP reloads the
//! certificate for new connections without dropping the open ones (issue 13).

mod common;

use std::sync::Arc;
use std::time::Duration;
use tidewire::{ClientBuilder, Message};

type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

/// A self-signed certificate for localhost: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

async fn connect_trusting(url: &str, cert_pem: &str) -> Result<Ws, tidewire::Error> {
    let roots = tidewire::root_store_from_pem(cert_pem.as_bytes()).unwrap();
    let tls = Arc::new(tidewire::client_config_with_roots(roots));
    let (ws, _) = ClientBuilder::new(url)
        .tls_config(tls)
        .protocols(["chat"])
        .connect()
        .await?;
    Ok(ws)
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("no message within 10 s")
        .expect("ended")
        .expect("error")
}

#[tokio::test]
async fn serves_wss_and_reloads_the_certificate_on_sighup() {
    let dir = std::env::temp_dir().join(format!("tidewire-serve-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (old_cert, old_key) = certificate();
    std::fs::write(&cert_path, &old_cert).unwrap();
    std::fs::write(&key_path, &old_key).unwrap();

    let (child, addr) = common::spawn(
        "serve",
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let server = common::Server { child, addr };
    let url = format!("wss://localhost:{}/rooms/tls", server.addr.port());
    let mut before = connect_trusting(&url, &old_cert).await.unwrap();

    // Renew: new files, then SIGHUP.
    let (new_cert, new_key) = certificate();
    std::fs::write(&cert_path, &new_cert).unwrap();
    std::fs::write(&key_path, &new_key).unwrap();
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = loop {
        match connect_trusting(&url, &new_cert).await {
            Ok(ws) => break ws,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the new certificate was not served after SIGHUP: {e}"),
        }
    };
    // New connections get the new certificate only.
    let e = connect_trusting(&url, &old_cert).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // The connection opened before the reload still works, both ways.
    before.send(Message::text("from before")).await.unwrap();
    assert_eq!(next(&mut after).await, Message::text("from before"));
    after.send(Message::text("from after")).await.unwrap();
    assert_eq!(next(&mut before).await, Message::text("from after"));

    // A broken file on reload keeps the certificate in force.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect_trusting(&url, &new_cert).await.unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_tls_files_are_refused_at_start_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("/nonexistent/cert.pem"),
        "{stderr}"
    );
}
