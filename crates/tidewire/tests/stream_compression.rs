//! permessage-deflate through the async layer: negotiation outcomes, round trips in both
//! directions under each parameter set, per-message opt-out, and prepared broadcasts.

use tidewire::proto::deflate::DeflateConfig;
use tidewire::{ClientBuilder, Message, PreparedMessage, ServerBuilder, WebSocketStream};
use tokio::io::DuplexStream;

async fn pair(
    server: Option<DeflateConfig>,
    client: Option<DeflateConfig>,
) -> (
    WebSocketStream<DuplexStream>,
    WebSocketStream<DuplexStream>,
    http::Response<()>,
) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let st = tokio::spawn(async move { ServerBuilder::new().compression(server).accept(a).await });
    let (c, resp) = ClientBuilder::new("ws://t/")
        .compression(client)
        .connect_on(b)
        .await
        .unwrap();
    (st.await.unwrap().unwrap(), c, resp)
}

fn json_like(n: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"symbol\":\"TDW\",\"price\":{}.25,\"note\":\"héllo €\"}},",
            100 + i % 7
        ));
        i += 1;
    }
    s.truncate(
        s.char_indices()
            .take_while(|(j, _)| *j < n)
            .last()
            .map_or(0, |(j, c)| j + c.len_utf8()),
    );
    s
}

#[tokio::test]
async fn negotiated_round_trips_under_every_parameter_set() {
    let configs = [
        DeflateConfig::default(),
        DeflateConfig::default().server_no_context_takeover(true),
        DeflateConfig::default().client_no_context_takeover(true),
        DeflateConfig::default()
            .server_max_window_bits(9)
            .client_max_window_bits(10),
        DeflateConfig::default()
            .server_max_window_bits(8)
            .client_max_window_bits(8),
        DeflateConfig::default().level(9).threshold(0),
    ];
    for cfg in configs {
        let (mut s, mut c, resp) = pair(Some(cfg), Some(DeflateConfig::default())).await;
        let ext = resp.headers()["sec-websocket-extensions"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ext.starts_with("permessage-deflate"), "{ext}");
        assert!(s.compression().is_some() && c.compression().is_some());
        let server = tokio::spawn(async move {
            while let Some(Ok(m)) = s.recv().await {
                if m.is_data() {
                    s.send(m).await.unwrap();
                }
            }
        });
        for n in [0, 10, 100, 5000, 200_000, 3 << 20] {
            let text = json_like(n);
            c.send(Message::text(text.clone())).await.unwrap();
            let got = c
                .recv()
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{ext} {n}: {e}"));
            assert_eq!(got, Message::text(text), "{ext} {n}");
            let bin: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            c.send(Message::binary(bin.clone())).await.unwrap();
            assert_eq!(
                c.recv().await.unwrap().unwrap(),
                Message::binary(bin),
                "{ext} {n}"
            );
        }
        c.close(None).await.unwrap();
        server.await.unwrap();
    }
}

#[tokio::test]
async fn declined_when_either_side_does_not_want_it() {
    let (_s, c, resp) = pair(None, Some(DeflateConfig::default())).await;
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    assert!(c.compression().is_none());
    let (s, _c, _) = pair(Some(DeflateConfig::default()), None).await;
    assert!(s.compression().is_none());
}

#[tokio::test]
async fn prepared_message_reaches_every_kind_of_connection() {
    let big = json_like(50_000);
    let prepared = PreparedMessage::new(Message::text(big.clone())).unwrap();
    let policies = [
        None,
        Some(DeflateConfig::default()),
        Some(DeflateConfig::default().server_no_context_takeover(true)),
        Some(
            DeflateConfig::default()
                .server_no_context_takeover(true)
                .server_max_window_bits(10),
        ),
    ];
    for policy in policies {
        let (mut s, mut c, _) = pair(policy, Some(DeflateConfig::default())).await;
        for _ in 0..3 {
            s.queue_prepared(&prepared).unwrap();
        }
        s.flush().await.unwrap();
        for _ in 0..3 {
            assert_eq!(c.recv().await.unwrap().unwrap(), Message::text(big.clone()));
        }
    }
}

#[tokio::test]
async fn uncompressed_opt_out_still_arrives() {
    let (mut s, mut c, _) = pair(
        Some(DeflateConfig::default()),
        Some(DeflateConfig::default()),
    )
    .await;
    let text = json_like(10_000);
    s.queue_uncompressed(Message::text(text.clone())).unwrap();
    s.flush().await.unwrap();
    assert_eq!(c.recv().await.unwrap().unwrap(), Message::text(text));
}
