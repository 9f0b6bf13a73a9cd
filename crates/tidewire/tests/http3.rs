//! WebSocket over HTTP/3 (RFC 9220) between Tidewire's client and server, on QUIC: the
//! echo of every size with deflate and subprotocols, ping and close; several WebSockets on
//! one QUIC connection; refusals with their reasons; a plain request served by the same
//! router; and the wire itself, checked with requests and frames written by hand (QPACK,
//! HTTP/3 frames and a masked WebSocket frame), including a server whose SETTINGS do not
//! allow extended CONNECT.

#![cfg(all(feature = "http3", feature = "axum"))]

mod common;

use axum::routing::get;
use axum::Router;
use common::certs::Ca;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidewire::http3::quinn;
use tidewire::upgrade::WebSocketUpgrade;
use tidewire::{ClientBuilder, CloseCode, CloseFrame, Message, ServerBuilder};

/// A QUIC server endpoint on 127.0.0.1 with a certificate from a new CA (ALPN h3), and a
/// client TLS configuration that trusts that CA.
fn h3_endpoint() -> (quinn::Endpoint, Arc<tidewire::rustls::ClientConfig>) {
    let ca = Ca::new();
    let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"], 2020, 2090);
    let tls = tidewire::server_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let config = tidewire::http3::server_config(&tls).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let roots = tidewire::root_store_from_pem(ca.pem().as_bytes()).unwrap();
    (
        endpoint,
        Arc::new(tidewire::client_config_with_roots(roots)),
    )
}

/// An HTTP/3 server on 127.0.0.1 serving `router` through `tidewire::http3`: its address,
/// and a client TLS configuration that trusts it.
async fn h3_server(router: Router) -> (SocketAddr, Arc<tidewire::rustls::ClientConfig>) {
    let (endpoint, tls) = h3_endpoint();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(tidewire::http3::serve_connection(incoming, service));
        }
    });
    (addr, tls)
}

/// `/echo` sends every data message back; `/who` says which HTTP version it was asked in.
fn echo_router(server: ServerBuilder) -> Router {
    let echo = move |ws: WebSocketUpgrade| {
        let server = server.clone();
        async move {
            ws.server(server).on_upgrade(|mut socket| async move {
                while let Some(Ok(m)) = socket.recv().await {
                    if m.is_data() && socket.send(m).await.is_err() {
                        break;
                    }
                }
            })
        }
    };
    Router::new()
        .route("/echo", get(echo.clone()).connect(echo))
        .route(
            "/who",
            get(|req: http::Request<axum::body::Body>| async move {
                format!(
                    "{:?} {}\n",
                    req.version(),
                    req.headers()["host"].to_str().unwrap()
                )
            })
            .post(|body: String| async move { format!("got {} bytes\n", body.len()) }),
        )
}

fn client(
    addr: SocketAddr,
    path: &str,
    tls: &Arc<tidewire::rustls::ClientConfig>,
) -> ClientBuilder {
    ClientBuilder::new(format!("wss://127.0.0.1:{}{path}", addr.port()))
        .tls_config(tls.clone())
        .http3(true)
        .proxy(tidewire::Proxy::none())
}

type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

fn connection_of(ws: &Ws) -> u64 {
    match ws.get_ref() {
        tidewire::MaybeTlsStream::Http3(s) => s.connection_id(),
        other => panic!("not over HTTP/3: {other:?}"),
    }
}

#[tokio::test]
async fn every_size_round_trips_with_deflate_and_subprotocols_then_closes_cleanly() {
    let server = ServerBuilder::new()
        .protocols(["superchat", "chat"])
        .compression(Some(tidewire::DeflateConfig::default()));
    let (addr, tls) = h3_server(echo_router(server)).await;
    for deflate in [false, true] {
        let offer = deflate.then(tidewire::DeflateConfig::default);
        let (mut ws, response) = client(addr, "/echo", &tls)
            .protocols(["chat", "superchat"])
            .compression(offer)
            .connect()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_3);
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("sec-websocket-accept").is_none());
        // The server's preference decides among the offers (RFC 6455 §4.2.2).
        assert_eq!(response.headers()["sec-websocket-protocol"], "superchat");
        assert_eq!(
            response.headers().contains_key("sec-websocket-extensions"),
            deflate,
            "{response:?}"
        );
        connection_of(&ws);
        for size in [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20, 3 << 20] {
            let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            ws.send(Message::text(text.clone())).await.unwrap();
            match ws.recv().await.unwrap().unwrap() {
                Message::Text(t) => assert_eq!(t.as_str(), text, "text of {size}"),
                other => panic!("{other:?}"),
            }
            let binary: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            ws.send(Message::binary(binary.clone())).await.unwrap();
            match ws.recv().await.unwrap().unwrap() {
                Message::Binary(b) => assert_eq!(&b[..], &binary[..], "binary of {size}"),
                other => panic!("{other:?}"),
            }
        }
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        match ws.recv().await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("{other:?}"),
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4242),
            reason: "done".into(),
        }))
        .await
        .unwrap();
        match ws.recv().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4242),
            None => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn websockets_to_one_host_share_one_quic_connection_until_the_last_closes() {
    let (addr, tls) = h3_server(echo_router(ServerBuilder::new())).await;
    // Twenty at once: the first dial is shared by the rest.
    let opened = futures_util::future::join_all(
        (0..20).map(|_| async { client(addr, "/echo", &tls).connect().await.unwrap().0 }),
    )
    .await;
    let mut sockets = opened;
    let ids: std::collections::BTreeSet<u64> = sockets.iter().map(connection_of).collect();
    assert_eq!(ids.len(), 1, "twenty WebSockets, connections {ids:?}");
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("socket {i}"))).await.unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        let m = ws.recv().await.unwrap().unwrap();
        assert_eq!(m.as_payload(), format!("socket {i}").as_bytes());
    }
    let first = *ids.iter().next().unwrap();
    // One more while they are open: the same connection.
    let (extra, _) = client(addr, "/echo", &tls).connect().await.unwrap();
    assert_eq!(connection_of(&extra), first);
    drop(extra);
    for mut ws in sockets {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
    }
    // The last one out closed the connection: the next WebSocket opens another.
    let (mut ws, _) = client(addr, "/echo", &tls).connect().await.unwrap();
    assert_ne!(connection_of(&ws), first);
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap().as_payload(), b"again");
}

#[tokio::test]
async fn past_the_servers_stream_limit_a_second_connection_takes_the_rest() {
    // The server allows 256 streams at once per connection.
    let (addr, tls) = h3_server(echo_router(ServerBuilder::new())).await;
    let mut sockets = Vec::new();
    for _ in 0..300 {
        sockets.push(client(addr, "/echo", &tls).connect().await.unwrap().0);
    }
    let mut per_connection = std::collections::BTreeMap::new();
    for ws in &sockets {
        *per_connection.entry(connection_of(ws)).or_insert(0) += 1;
    }
    let counts: Vec<i32> = per_connection.values().copied().collect();
    assert_eq!(counts, vec![256, 44], "{per_connection:?}");
    for (i, ws) in sockets.iter_mut().enumerate().step_by(37) {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            ws.recv().await.unwrap().unwrap().as_payload(),
            format!("{i}").as_bytes()
        );
    }
    // Forty of the first connection's WebSockets end: the server returns stream credit
    // once an eighth of its limit is free (quinn's rule), and new WebSockets go back there.
    let first = *per_connection.keys().next().unwrap();
    for _ in 0..40 {
        let at = sockets
            .iter()
            .position(|ws| connection_of(ws) == first)
            .unwrap();
        let mut gone = sockets.swap_remove(at);
        gone.close(None).await.unwrap();
        while let Some(Ok(_)) = gone.recv().await {}
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (ws, _) = client(addr, "/echo", &tls).connect().await.unwrap();
        let on = connection_of(&ws);
        sockets.push(ws);
        if on == first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never back on the first connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refusals_carry_their_status_and_reason_and_misuse_is_named() {
    let server =
        ServerBuilder::new().origin_check(|origin, _| origin == Some("https://good.example"));
    let (addr, tls) = h3_server(echo_router(server)).await;
    let e = client(addr, "/echo", &tls)
        .origin("https://evil.example")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), Some(403), "{e}");
    let ok = client(addr, "/echo", &tls)
        .origin("https://good.example")
        .connect()
        .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let e = client(addr, "/nowhere", &tls).connect().await.unwrap_err();
    assert_eq!(e.http_status(), Some(404), "{e}");

    // ws:// cannot be QUIC; a proxy cannot carry it; a port with no HTTP/3 times out
    // with a message that says what to check.
    let e = ClientBuilder::new(format!("ws://127.0.0.1:{}/echo", addr.port()))
        .http3(true)
        .connect()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("wss://"), "{e}");
    let e = client(addr, "/echo", &tls)
        .proxy(tidewire::Proxy::parse("http://127.0.0.1:9").unwrap())
        .connect()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("proxy"), "{e}");
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let e = ClientBuilder::new(format!(
        "wss://127.0.0.1:{}/echo",
        silent.local_addr().unwrap().port()
    ))
    .http3(true)
    .tls_config(tls.clone())
    .options(tidewire::Options::default().handshake_timeout(Duration::from_secs(2)))
    .connect()
    .await
    .unwrap_err();
    assert!(e.to_string().contains("HTTP/3"), "{e}");
    // A certificate from an authority the client does not trust.
    let e = ClientBuilder::new(format!("wss://127.0.0.1:{}/echo", addr.port()))
        .http3(true)
        .tls_config(tidewire::webpki_client_config())
        .connect()
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not signed by an authority trusted here"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// The wire, by hand.

fn varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=63 => out.push(v as u8),
        64..=16383 => out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes()),
        _ => out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes()),
    }
}

fn frame(out: &mut Vec<u8>, kind: u64, payload: &[u8]) {
    varint(out, kind);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// A QPACK literal field line with a literal name, no Huffman (`001 N=0 H=0 len(3)`,
/// the name, then `H=0 len(7)` and the value; lengths past the prefix continue in a
/// second byte, enough here).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 7 + 128 && value.len() < 127 + 128);
    if name.len() < 7 {
        out.push(0x20 | name.len() as u8);
    } else {
        out.extend_from_slice(&[0x27, (name.len() - 7) as u8]);
    }
    out.extend_from_slice(name.as_bytes());
    if value.len() < 127 {
        out.push(value.len() as u8);
    } else {
        out.extend_from_slice(&[0x7f, (value.len() - 127) as u8]);
    }
    out.extend_from_slice(value.as_bytes());
}

/// A raw QUIC connection with ALPN h3 and our control stream (SETTINGS, nothing in it).
async fn raw_connection(
    addr: SocketAddr,
    tls: &Arc<tidewire::rustls::ClientConfig>,
) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
    let mut rustls = (**tls).clone();
    rustls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let mut control = conn.open_uni().await.unwrap();
    let mut bytes = vec![0x00]; // control stream
    frame(&mut bytes, 0x04, &[]); // SETTINGS, empty
    control.write_all(&bytes).await.unwrap();
    (endpoint, conn, control)
}

/// Reads the server's control stream up to its SETTINGS; returns their (id, value) pairs.
async fn server_settings(conn: &quinn::Connection) -> Vec<(u64, u64)> {
    let mut recv = conn.accept_uni().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = recv.read(&mut chunk).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk[..n]);
        // type 0x00, frame type 0x04, length, payload
        if buf.len() >= 3 && buf.len() >= 3 + buf[2] as usize {
            break;
        }
    }
    assert_eq!(&buf[..2], &[0x00, 0x04], "control stream, then SETTINGS");
    let mut payload = &buf[3..3 + buf[2] as usize];
    let mut pairs = Vec::new();
    let read = |p: &mut &[u8]| {
        let len = 1usize << (p[0] >> 6);
        let mut v = u64::from(p[0] & 0x3f);
        for &b in &p[1..len] {
            v = (v << 8) | u64::from(b);
        }
        *p = &p[len..];
        v
    };
    while !payload.is_empty() {
        let id = read(&mut payload);
        let value = read(&mut payload);
        pairs.push((id, value));
    }
    pairs
}

/// One request on a new stream: a HEADERS frame with `block`, then `rest` (frames), the
/// stream finished; the answer's HEADERS payload and body.
async fn exchange(conn: &quinn::Connection, block: &[u8], rest: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut request = Vec::new();
    frame(&mut request, 0x01, block);
    request.extend_from_slice(rest);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    read_frames(&mut recv, 0).await
}

/// Reads a whole request stream's answer: the HEADERS payload, and the DATA payloads.
async fn read_frames(recv: &mut quinn::RecvStream, until_data: usize) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut headers = None;
    let mut data = Vec::new();
    loop {
        // Parse what is complete.
        loop {
            if buf.len() < 2 {
                break;
            }
            let kind = buf[0] as u64;
            let len_size = 1usize << (buf[1] >> 6);
            if buf.len() < 1usize + len_size {
                break;
            }
            let mut len = u64::from(buf[1] & 0x3f);
            for &b in &buf[2..1usize + len_size] {
                len = (len << 8) | u64::from(b);
            }
            let start = 1usize + len_size;
            if buf.len() < start + len as usize {
                break;
            }
            let payload = buf[start..start + len as usize].to_vec();
            buf.drain(..start + len as usize);
            match kind {
                0x01 => headers = Some(payload),
                0x00 => data.extend_from_slice(&payload),
                other => panic!("frame type {other:#x}"),
            }
        }
        if let Some(h) = headers.as_ref().filter(|_| data.len() >= until_data) {
            return (h.clone(), data);
        }
        match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut chunk)).await {
            Ok(Ok(Some(n))) => buf.extend_from_slice(&chunk[..n]),
            Ok(Ok(None)) => return (headers.expect("no HEADERS"), data),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_wire_by_hand_settings_a_plain_request_and_an_extended_connect() {
    let (addr, tls) = h3_server(echo_router(ServerBuilder::new().protocols(["chat"]))).await;
    let (_endpoint, conn, _control) = raw_connection(addr, &tls).await;
    let settings = server_settings(&conn).await;
    assert!(
        settings.contains(&(0x08, 1)),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL: {settings:?}"
    );
    assert!(
        settings.contains(&(0x01, 0)),
        "no QPACK dynamic table: {settings:?}"
    );

    // GET /who: static :method GET (17), :scheme https (23), :path by name reference
    // (1) with a Huffman-coded value ("/who"), :authority literal.
    let mut block = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23];
    // "/who" in RFC 7541's code: '/' 011000, 'w' 1111000, 'h' 100111, 'o' 00111, pad 1s.
    block.extend_from_slice(&[0x51, 0x80 | 3, 0b0110_0011, 0b1100_0100, 0b1110_0111]);
    block.extend_from_slice(&[0x50, 14]);
    block.extend_from_slice(b"localhost:4433");
    let (head, body) = exchange(&conn, &block, &[]).await;
    // :status 200 is static entry 25, indexed.
    assert_eq!(&head[..3], &[0x00, 0x00, 0xc0 | 25], "{head:?}");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "HTTP/3.0 localhost:4433\n"
    );

    // A plain CONNECT (a tunnel) is refused with a reason.
    let mut block = vec![0x00, 0x00, 0xc0 | 15, 0x50, 9];
    block.extend_from_slice(b"evil:1234");
    let (head, body) = exchange(&conn, &block, &[]).await;
    // :status 400 is static entry 67: past the 6-bit prefix, so 63 then 4.
    assert_eq!(&head[..4], &[0x00, 0x00, 0xff, 67 - 63], ":status 400");
    assert!(String::from_utf8_lossy(&body).contains("not a proxy"));

    // Extended CONNECT with :protocol websocket, then one masked text frame.
    let mut block = vec![0x00, 0x00, 0xc0 | 15, 0xc0 | 23];
    block.extend_from_slice(&[0x50, 9]);
    block.extend_from_slice(b"localhost");
    block.extend_from_slice(&[0x51, 5]);
    block.extend_from_slice(b"/echo");
    literal(&mut block, ":protocol", "websocket");
    literal(&mut block, "sec-websocket-version", "13");
    literal(&mut block, "sec-websocket-protocol", "chat");
    let mut request = Vec::new();
    frame(&mut request, 0x01, &block);
    // An unknown (reserved, "grease") frame type before DATA must be skipped: 0x21.
    frame(&mut request, 0x21, b"ignore me");
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut ws_frame = vec![0x81, 0x80 | 5];
    ws_frame.extend_from_slice(&mask);
    ws_frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame(&mut request, 0x00, &ws_frame);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    let (head, data) = read_frames(&mut recv, 7).await;
    assert_eq!(
        &head[..3],
        &[0x00, 0x00, 0xc0 | 25],
        ":status 200 first: {head:?}"
    );
    let head_text = String::from_utf8_lossy(&head);
    assert!(head_text.contains("chat"), "the subprotocol: {head_text}");
    assert!(
        !head_text.contains("accept"),
        "no Sec-WebSocket-Accept: {head_text}"
    );
    // The echo: an unmasked text frame "hello", in DATA frames.
    assert_eq!(&data[..7], &[0x81, 5, b'h', b'e', b'l', b'l', b'o']);
    conn.close(quinn::VarInt::from_u32(0x100), b"");
}

#[tokio::test]
async fn a_server_whose_settings_do_not_allow_extended_connect_is_named() {
    // An HTTP/3 server written here: SETTINGS without ENABLE_CONNECT_PROTOCOL.
    let (endpoint, tls) = h3_endpoint();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                let mut control = conn.open_uni().await.unwrap();
                let mut bytes = vec![0x00];
                frame(&mut bytes, 0x04, &[0x01, 0x00]);
                control.write_all(&bytes).await.unwrap();
                conn.closed().await;
            });
        }
    });
    let e = ClientBuilder::new(format!("wss://127.0.0.1:{}/ws", addr.port()))
        .http3(true)
        .tls_config(tls)
        .connect()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("does not allow extended CONNECT"),
        "{e}"
    );
}

#[tokio::test]
async fn a_plain_request_with_a_body_is_served_by_the_same_router() {
    let (addr, tls) = h3_server(echo_router(ServerBuilder::new())).await;
    let (_endpoint, conn, _control) = raw_connection(addr, &tls).await;
    // POST /who with 100,000 bytes in three DATA frames.
    let mut block = vec![0x00, 0x00, 0xc0 | 20, 0xc0 | 23, 0x51, 4];
    block.extend_from_slice(b"/who");
    block.extend_from_slice(&[0x50, 9]);
    block.extend_from_slice(b"localhost");
    let mut data = Vec::new();
    for part in [40_000usize, 50_000, 10_000] {
        frame(&mut data, 0x00, &vec![b'x'; part]);
    }
    let (_, body) = exchange(&conn, &block, &data).await;
    assert_eq!(String::from_utf8(body).unwrap(), "got 100000 bytes\n");
}

/// 100 WebSockets on one QUIC connection; one of them sends without ever reading its
/// echoes. The other 99 must all finish their exchanges: the stalled stream holds its own
/// flow-control window, not the connection's. Prints the 99's throughput with and without
/// the stalled one (run with `--release --nocapture` for the figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_websocket_does_not_stall_the_other_99_on_its_connection() {
    async fn round(
        addr: SocketAddr,
        tls: &Arc<tidewire::rustls::ClientConfig>,
        stalled: bool,
    ) -> (Duration, u64) {
        let mut sockets = Vec::new();
        for _ in 0..100 {
            sockets.push(client(addr, "/echo", tls).connect().await.unwrap().0);
        }
        let ids: std::collections::BTreeSet<u64> = sockets.iter().map(connection_of).collect();
        assert_eq!(ids.len(), 1, "100 WebSockets on one connection");
        common::fairness::round(sockets, stalled).await
    }
    let (addr, tls) = h3_server(echo_router(ServerBuilder::new())).await;
    let (base, _) = round(addr, &tls, false).await;
    let (with_stall, stuck) = round(addr, &tls, true).await;
    common::fairness::report("QUIC", base, with_stall, stuck);
}

#[tokio::test]
async fn a_connection_without_a_request_is_closed_after_10_s() {
    let (addr, tls) = h3_server(echo_router(ServerBuilder::new())).await;
    let (_endpoint, conn, _control) = raw_connection(addr, &tls).await;
    let started = std::time::Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("closed by the server");
    match why {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x100), "H3_NO_ERROR");
            assert_eq!(&c.reason[..], b"no request");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}
