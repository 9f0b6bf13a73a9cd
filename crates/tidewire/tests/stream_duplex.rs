//! The async layer over an in-memory duplex pipe: handshake, echo, close from either side,
//! split halves in two tasks, heartbeat, write batching.

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tidewire::{
    ClientBuilder, CloseCode, CloseFrame, Message, Options, ServerBuilder, WebSocketStream,
};
use tokio::io::DuplexStream;

async fn pair_with(
    server: ServerBuilder,
    client: ClientBuilder,
) -> (
    WebSocketStream<DuplexStream>,
    WebSocketStream<DuplexStream>,
    http::Response<()>,
) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server_task = tokio::spawn(async move { server.accept(a).await });
    let (c, resp) = client.connect_on(b).await.expect("client handshake");
    let s = server_task.await.unwrap().expect("server handshake");
    (s, c, resp)
}

async fn pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (s, c, _) = pair_with(ServerBuilder::new(), ClientBuilder::new("ws://test/")).await;
    (s, c)
}

#[tokio::test]
async fn echo_text_and_binary_of_every_length_encoding() {
    let (mut s, mut c) = pair().await;
    let server = tokio::spawn(async move {
        while let Some(Ok(m)) = s.recv().await {
            if m.is_data() {
                s.send(m).await.unwrap();
            }
        }
    });
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
        let text: String = "é€x".chars().cycle().take(len / 2).collect();
        c.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(c.recv().await.unwrap().unwrap(), Message::text(text));
        let bin: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
        c.send(Message::binary(bin.clone())).await.unwrap();
        assert_eq!(c.recv().await.unwrap().unwrap(), Message::binary(bin));
    }
    c.close(None).await.unwrap();
    assert_eq!(
        c.connection().close_received(),
        Some(&Some(CloseFrame::new(CloseCode::NORMAL, "")))
    );
    server.await.unwrap();
}

#[tokio::test]
async fn server_initiated_close_completes_on_both_sides() {
    let (mut s, mut c) = pair().await;
    let client = tokio::spawn(async move {
        let mut got = None;
        while let Some(m) = c.recv().await {
            if let Message::Close(f) = m.unwrap() {
                got = f;
            }
        }
        got
    });
    s.close(Some(CloseFrame::new(CloseCode(4001), "bye")))
        .await
        .unwrap();
    assert_eq!(
        client.await.unwrap(),
        Some(CloseFrame::new(CloseCode(4001), "bye"))
    );
    assert_eq!(
        s.connection().close_received(),
        Some(&Some(CloseFrame::new(CloseCode(4001), "")))
    );
    // After the end, sending is an error that says so.
    assert!(s.send(Message::text("late")).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn subprotocol_negotiated_by_server_preference() {
    let server = ServerBuilder::new().protocols(["superchat", "chat"]);
    let client = ClientBuilder::new("ws://test/").protocols(["chat", "superchat"]);
    let (_s, _c, resp) = pair_with(server, client).await;
    assert_eq!(resp.headers()["sec-websocket-protocol"], "superchat");
}

#[tokio::test]
async fn split_halves_work_from_two_tasks() {
    let (s, mut c) = pair().await;
    let (mut sink, mut stream) = s.split();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(m)) = stream.next().await {
            if m.is_data() {
                n += 1;
            }
        }
        n
    });
    let writer = tokio::spawn(async move {
        for i in 0..100 {
            sink.send(Message::text(format!("s{i}"))).await.unwrap();
        }
        sink
    });
    for i in 0..100 {
        c.send(Message::text(format!("c{i}"))).await.unwrap();
    }
    let mut got = 0;
    while got < 100 {
        if c.recv().await.unwrap().unwrap().is_data() {
            got += 1;
        }
    }
    let _sink = writer.await.unwrap();
    c.close(None).await.unwrap();
    assert_eq!(reader.await.unwrap(), 100);
}

#[tokio::test]
async fn batched_messages_arrive_in_order() {
    let (mut s, mut c) = pair().await;
    for i in 0..1000 {
        s.queue(Message::text(format!("{i}"))).unwrap();
    }
    s.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(
            c.recv().await.unwrap().unwrap(),
            Message::text(format!("{i}"))
        );
    }
}

#[tokio::test]
async fn heartbeat_pings_a_quiet_peer_and_drops_a_silent_one() {
    let opts = Options::default().heartbeat(Duration::from_millis(50), Duration::from_millis(300));
    let (mut s, mut c, _) = pair_with(
        ServerBuilder::new().options(opts),
        ClientBuilder::new("ws://t/"),
    )
    .await;
    // The client reads (and so answers pings): the server keeps the connection.
    let client = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, c.recv()).await {
            if let Ok(Message::Ping(_)) = m {
                pings += 1;
            }
        }
        // Now go silent: stop reading, so no pong goes back.
        tokio::time::sleep(Duration::from_millis(800)).await;
        (pings, c)
    });
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.recv().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("server gave up in time");
    let err = r.expect("ends with an error");
    assert!(err.is_timeout(), "{err}");
    let (pings, _c) = client.await.unwrap();
    assert!(pings >= 3, "pings: {pings}");
}

#[tokio::test]
async fn origin_check_refuses_with_403() {
    let server = ServerBuilder::new().origin_check(|o, _| o == Some("https://good.example"));
    let (a, b) = tokio::io::duplex(1 << 16);
    let st = tokio::spawn(async move { server.accept(a).await });
    let err = ClientBuilder::new("ws://test/")
        .origin("https://evil.example")
        .connect_on(b)
        .await
        .unwrap_err();
    assert!(err.is_handshake(), "{err}");
    assert!(err.to_string().contains("403"), "{err}");
    assert!(st.await.unwrap().is_err());
}

#[tokio::test]
async fn recv_is_cancellation_safe_in_select() {
    // A timer that fires constantly cancels recv() mid-message; nothing may be lost or
    // duplicated, including messages split across many small writes.
    let (mut s, mut c) = pair().await;
    let sender = tokio::spawn(async move {
        for i in 0..2000u32 {
            c.send(Message::binary(i.to_be_bytes().repeat(300)))
                .await
                .unwrap();
        }
        c.close(None).await.unwrap();
    });
    let mut next = 0u32;
    let mut ticks = 0u32;
    let mut interval = tokio::time::interval(Duration::from_micros(50));
    loop {
        tokio::select! {
            m = s.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(b, bytes::Bytes::from(next.to_be_bytes().repeat(300)));
                    next += 1;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
                None => break,
            },
            _ = interval.tick() => ticks += 1,
        }
    }
    assert_eq!(next, 2000);
    assert!(ticks > 0);
    sender.await.unwrap();
}
