//! `tidewire serve` as a process: raw-room broadcast among three clients, the demo page,
//! /healthz, 404, and graceful shutdown on SIGTERM (close 1001, exit 0).

mod common;

use common::spawn;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use tidewire::{CloseCode, Message};

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn rooms_broadcast_pages_and_graceful_shutdown() {
    let (mut child, addr) = spawn("serve", &[]);
    assert!(http_get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    let page = http_get(addr, "/bare");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("new WebSocket"));
    for path in ["/", "/chat", "/live", "/board", "/style.css"] {
        let page = http_get(addr, path);
        assert!(page.starts_with("HTTP/1.1 200"), "{path}: {page}");
    }
    let missing = http_get(addr, "/nope");
    assert!(
        missing.starts_with("HTTP/1.1 404") && missing.contains("no route for /nope"),
        "{missing}"
    );

    let url = format!("ws://{addr}/rooms/lobby");
    let mut clients = Vec::new();
    // One member without compression, two with (the hub compresses once for both).
    for offer in [
        None,
        Some(tidewire::DeflateConfig::default()),
        Some(tidewire::DeflateConfig::default()),
    ] {
        let (ws, _) = tidewire::ClientBuilder::new(&url)
            .compression(offer)
            .connect()
            .await
            .unwrap();
        assert_eq!(ws.compression().is_some(), offer.is_some());
        clients.push(ws);
    }
    let (mut other_room, _) = tidewire::connect(&format!("ws://{addr}/rooms/elsewhere"))
        .await
        .unwrap();
    clients[0]
        .send(Message::text("hello from 0"))
        .await
        .unwrap();
    for c in clients.iter_mut().skip(1) {
        assert_eq!(
            c.recv().await.unwrap().unwrap(),
            Message::text("hello from 0")
        );
    }
    clients[2]
        .send(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    for c in clients.iter_mut().take(2) {
        assert_eq!(
            c.recv().await.unwrap().unwrap(),
            Message::binary(vec![1, 2, 3])
        );
    }
    // Nothing leaked into the other room.
    let quiet =
        tokio::time::timeout(std::time::Duration::from_millis(200), other_room.recv()).await;
    assert!(quiet.is_err(), "other room got {quiet:?}");

    // SIGTERM: every client gets 1001, the process exits 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for c in clients.iter_mut().chain(std::iter::once(&mut other_room)) {
        let mut code = None;
        while let Some(Ok(m)) = c.recv().await {
            if let Message::Close(Some(f)) = m {
                code = Some(f.code);
            }
        }
        assert_eq!(code, Some(CloseCode::GOING_AWAY));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A client that sends its first frames in the same write as its handshake (without
/// waiting for the 101): the hub reads those bytes ahead, with the request head, and must
/// hand them to the WebSocket stream in order, on rooms and on `/ws`.
#[tokio::test]
async fn frames_sent_with_the_handshake_are_not_lost() {
    let (mut child, addr) = spawn("serve", &[]);
    let (mut listener, _) = tidewire::connect(&format!("ws://{addr}/rooms/early"))
        .await
        .unwrap();
    let mut bytes = format!(
        "GET /rooms/early HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(common::masked(1, b"first"));
    bytes.extend(common::masked(1, b"second"));
    let mut early = common::connect(addr);
    early.write_all(&bytes).unwrap();
    let (status, head) = common::read_head(&mut early);
    assert_eq!(status, 101, "{head}");
    for want in ["first", "second"] {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
            .await
            .expect("the early frames reach the room");
        assert_eq!(got.unwrap().unwrap(), Message::text(want));
    }

    // On /ws: a request in the handshake's write is answered.
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tidewire.v1\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(common::masked(1, br#"{"id":7,"op":"ping"}"#));
    let mut early = common::connect(addr);
    early.write_all(&bytes).unwrap();
    let (status, head) = common::read_head(&mut early);
    assert_eq!(status, 101, "{head}");
    let (opcode, payload) = common::read_frame(&mut early).expect("a reply");
    assert_eq!(opcode, 1);
    let reply: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (reply["id"].as_u64(), reply["ok"].as_bool()),
        (Some(7), Some(true)),
        "{reply}"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
