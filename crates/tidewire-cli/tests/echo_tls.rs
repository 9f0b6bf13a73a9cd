//! `tidewire echo --tls-cert --tls-key` serves wss://, and a bad certificate path is a clear
//! error naming the flag.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tidewire::{ClientBuilder, Message};

#[tokio::test]
async fn serves_wss_with_a_private_certificate() {
    let dir = std::env::temp_dir().join(format!("tidewire-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["echo", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    assert!(line.contains("wss://"), "{line}");

    let roots = tidewire::root_store_from_pem(cert.cert.pem().as_bytes()).unwrap();
    let tls = Arc::new(tidewire::client_config_with_roots(roots));
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}/"))
        .tls_config(tls)
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("secure echo")).await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Message::text("secure echo")
    );
    ws.close(None).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_certificate_file_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
        ])
        .args(["--tls-key", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
}
