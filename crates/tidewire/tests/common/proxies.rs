//! Proxies and echo servers for the proxy tests: an HTTP CONNECT proxy and a SOCKS5 proxy
//! (written here, with and without credentials), each recording the targets it was asked
//! for, and `ws://` and `wss://` echo servers.

#![allow(dead_code)]

use base64::Engine;
use std::sync::{Arc, Mutex};
use tidewire::ServerBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy of the tests: its port and the targets it tunnelled to.
pub struct TestProxy {
    pub port: u16,
    pub targets: Arc<Mutex<Vec<String>>>,
}

/// The address behind a target as the proxies resolve it (`localhost` and `echo.test`,
/// a name only the proxies know, are 127.0.0.1).
async fn dial(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let host = if host == "localhost" || host == "echo.test" {
        "127.0.0.1"
    } else {
        host
    };
    TcpStream::connect((host, port)).await
}

/// An HTTP CONNECT proxy; with `auth`, `Proxy-Authorization: Basic` must carry it.
pub async fn http_proxy(auth: Option<(&str, &str)>) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let expected = auth.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let seen = targets.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (seen, expected) = (seen.clone(), expected.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let given = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| v.trim().to_owned())
                });
                if expected.is_some() && given != expected {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                seen.lock().unwrap().push(target.clone());
                let (host, port) = target.rsplit_once(':').unwrap();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let Ok(mut server) = dial(host, port.parse().unwrap()).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    TestProxy { port, targets }
}

/// A SOCKS5 proxy; with `auth`, username and password (method 2) are required. Records
/// each target as the client gave it (a name, or an address).
pub async fn socks5_proxy(auth: Option<(&str, &str)>) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
    let seen = targets.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            let (seen, auth) = (seen.clone(), auth.clone());
            tokio::spawn(async move {
                let mut hello = [0u8; 2];
                c.read_exact(&mut hello).await.unwrap();
                let mut methods = vec![0u8; hello[1] as usize];
                c.read_exact(&mut methods).await.unwrap();
                let want = if auth.is_some() { 2 } else { 0 };
                if !methods.contains(&want) {
                    let _ = c.write_all(&[5, 0xff]).await;
                    return;
                }
                c.write_all(&[5, want]).await.unwrap();
                if let Some((user, pass)) = &auth {
                    let mut v = [0u8; 2];
                    c.read_exact(&mut v).await.unwrap();
                    let mut u = vec![0u8; v[1] as usize];
                    c.read_exact(&mut u).await.unwrap();
                    let mut n = [0u8; 1];
                    c.read_exact(&mut n).await.unwrap();
                    let mut p = vec![0u8; n[0] as usize];
                    c.read_exact(&mut p).await.unwrap();
                    if u != user.as_bytes() || p != pass.as_bytes() {
                        let _ = c.write_all(&[1, 1]).await;
                        return;
                    }
                    c.write_all(&[1, 0]).await.unwrap();
                }
                let mut req = [0u8; 4];
                c.read_exact(&mut req).await.unwrap();
                let host = match req[3] {
                    1 => {
                        let mut a = [0u8; 4];
                        c.read_exact(&mut a).await.unwrap();
                        std::net::Ipv4Addr::from(a).to_string()
                    }
                    4 => {
                        let mut a = [0u8; 16];
                        c.read_exact(&mut a).await.unwrap();
                        std::net::Ipv6Addr::from(a).to_string()
                    }
                    _ => {
                        let mut n = [0u8; 1];
                        c.read_exact(&mut n).await.unwrap();
                        let mut name = vec![0u8; n[0] as usize];
                        c.read_exact(&mut name).await.unwrap();
                        String::from_utf8(name).unwrap()
                    }
                };
                let mut p = [0u8; 2];
                c.read_exact(&mut p).await.unwrap();
                let port = u16::from_be_bytes(p);
                seen.lock().unwrap().push(format!("{host}:{port}"));
                let Ok(mut server) = dial(&host, port).await else {
                    let _ = c.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                    return;
                };
                c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut c, &mut server).await;
            });
        }
    });
    TestProxy { port, targets }
}

fn echo(
    mut ws: tidewire::WebSocketStream<
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    >,
) {
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.recv().await {
            if m.is_data() && ws.send(m).await.is_err() {
                break;
            }
        }
    });
}

/// A `ws://` echo server: its port.
pub async fn ws_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if let Ok(ws) = ServerBuilder::new().accept(tcp).await {
                    echo(ws);
                }
            });
        }
    });
    port
}

/// A `wss://` echo server for `localhost` and `echo.test` with a self-signed certificate:
/// its port and a client configuration that trusts it.
pub async fn wss_echo() -> (u16, Arc<tidewire::rustls::ClientConfig>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "echo.test".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let port = super::certs::wss_server(&cert_pem, &cert.key_pair.serialize_pem()).await;
    let roots = tidewire::root_store_from_pem(cert_pem.as_bytes()).unwrap();
    (port, Arc::new(tidewire::client_config_with_roots(roots)))
}
