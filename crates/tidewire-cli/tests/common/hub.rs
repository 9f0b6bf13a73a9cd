//! Clients of a real `tidewire serve` speaking tidewire.v1, for the hub's tests.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;
use tidewire::{ClientBuilder, Message, WebSocketStream};

pub type Ws = WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `tidewire serve` process, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tidewire serve --listen 127.0.0.1:0 EXTRA...`.
pub fn serve(extra: &[&str]) -> Serve {
    let (child, addr) = super::spawn("serve", extra);
    Serve { child, addr }
}

/// Opens `/ws` (with `query`, e.g. `?token=...`) and checks the subprotocol.
pub async fn client_q(addr: SocketAddr, query: &str) -> Ws {
    let (ws, resp) = ClientBuilder::new(format!("ws://{addr}/ws{query}"))
        .protocols(["tidewire.v1"])
        .connect()
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "tidewire.v1");
    ws
}

pub async fn client(addr: SocketAddr) -> Ws {
    client_q(addr, "").await
}

/// The next text message as JSON; panics on a close or after 20 s, and on a message that
/// `tidewire-hub-proto` does not read as a reply or a push: every test that reads the hub
/// through here checks what the server writes against the protocol's types.
pub async fn next_json(ws: &mut Ws) -> Value {
    let fut = async {
        loop {
            match ws.recv().await.expect("stream ended").expect("error") {
                Message::Text(t) => {
                    if let Err(e) = tidewire_hub_proto::ServerMessage::parse(&t) {
                        panic!("not tidewire.v1 ({e}): {t}");
                    }
                    return serde_json::from_str(&t).unwrap();
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("no message within 20 s")
}

/// Sends a request and returns its reply, collecting pushed messages seen meanwhile.
pub async fn request(ws: &mut Ws, req: Value, pushed: &mut Vec<Value>) -> Value {
    let id = req["id"].clone();
    ws.send(Message::text(req.to_string())).await.unwrap();
    loop {
        let v = next_json(ws).await;
        if v.get("id") == Some(&id) {
            return v;
        }
        pushed.push(v);
    }
}

/// Publishes `range` on `channel` (data `{"n": N}`), 50 requests in flight at a time, and
/// checks every reply.
pub async fn publish_range(ws: &mut Ws, channel: &str, range: std::ops::Range<u64>) {
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(50) {
        for &n in chunk {
            let req =
                serde_json::json!({"id": n, "op": "publish", "channel": channel, "data": {"n": n}});
            ws.queue(Message::text(req.to_string())).unwrap();
        }
        ws.flush().await.unwrap();
        let mut replies = 0;
        while replies < chunk.len() {
            let v = next_json(ws).await;
            if v.get("id").is_some() {
                assert_eq!(v["ok"], true, "{v}");
                replies += 1;
            }
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn close_of(ws: &mut Ws) -> (u16, String) {
    let fut = async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.0, f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error instead of a close frame: {e}"),
                None => panic!("ended without a close frame"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("no close within 20 s")
}

/// `POST /api/METHOD` with `body` and, when given, the API key `key`: the status and the
/// body as JSON (`null` when it is not JSON).
pub fn api_call(addr: SocketAddr, method: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("Authorization: apikey {k}\r\n"));
    let r = http(
        addr,
        &format!(
            "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let status: u16 = r.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `GET path` over HTTP/1.1; the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends a raw HTTP request and reads the response until the server closes.
pub fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // An upgrade answer has no body and the connection stays open.
                if out.starts_with(b"HTTP/1.1 101") && out.ends_with(b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of an unlabelled metric (or a labelled one, `name{labels}`) from /metrics.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let page = http_get(addr, "/metrics");
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not in:\n{page}"))
}

/// A WebSocket upgrade request head for `path` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    // /ws speaks tidewire.v1 only, and refuses a handshake that does not offer it.
    let protocol = if path.starts_with("/ws") {
        "Sec-WebSocket-Protocol: tidewire.v1\r\n"
    } else {
        ""
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}{extra}\r\n"
    )
}

/// An HS256 JWT for `sub`, expiring in an hour, with more claims from `extra` (an object).
pub fn hs256_token(secret: &str, sub: &str, extra: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({"sub": sub, "exp": now + 3600, "iat": now});
    if let (Some(c), Value::Object(more)) = (claims.as_object_mut(), extra) {
        c.extend(more);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
