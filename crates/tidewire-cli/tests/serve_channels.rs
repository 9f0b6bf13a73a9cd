//! The tidewire.v1 channel protocol (docs/protocol.md) against a real `tidewire serve`.

mod common;

use common::hub::{client as connect_ws, next_json, request, serve, Serve, Ws};
use serde_json::{json, Value};
use tidewire::Message;

/// A hub without a publish rate limit: these tests publish thousands of times.
fn start() -> (Serve, String) {
    let srv = serve(&["--publish-rate", "0"]);
    let addr = srv.addr.to_string();
    (srv, addr)
}

async fn client(addr: &str) -> Ws {
    connect_ws(addr.parse().unwrap()).await
}

#[tokio::test]
async fn subscribe_publish_history_presence_and_errors() {
    let srv = start();
    let (mut a, mut b) = (client(&srv.1).await, client(&srv.1).await);
    let mut pa = Vec::new();
    let mut pb = Vec::new();
    let r = request(
        &mut a,
        json!({"id": 1, "op": "subscribe", "channel": "news"}),
        &mut pa,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = request(
        &mut b,
        json!({"id": 1, "op": "subscribe", "channel": "news"}),
        &mut pb,
    )
    .await;
    assert_eq!(r["ok"], true);
    for i in 0..3 {
        let r = request(
            &mut b,
            json!({"id": 10 + i, "op": "publish", "channel": "news", "data": {"n": i}}),
            &mut pb,
        )
        .await;
        assert_eq!(r["result"]["offset"], i + 1, "{r}");
    }
    // a receives the three publications in order (and presence joins).
    let mut got = Vec::new();
    while got.len() < 3 {
        let v = if let Some(v) = pa.pop() {
            v
        } else {
            next_json(&mut a).await
        };
        if v.get("offset").is_some() {
            got.push(v["data"]["n"].as_i64().unwrap());
        }
    }
    assert_eq!(got, vec![0, 1, 2]);
    let r = request(
        &mut a,
        json!({"id": 20, "op": "history", "channel": "news", "limit": 2}),
        &mut pa,
    )
    .await;
    let offs: Vec<_> = r["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offs, vec![json!(2), json!(3)]);
    let r = request(
        &mut a,
        json!({"id": 21, "op": "presence", "channel": "news"}),
        &mut pa,
    )
    .await;
    assert_eq!(r["result"]["clients"].as_array().unwrap().len(), 2, "{r}");
    // Errors are answered and the connection stays up.
    a.send(Message::text("{not json")).await.unwrap();
    let r = next_json(&mut a).await;
    assert_eq!(r["error"]["code"], 101, "{r}");
    let r = request(&mut a, json!({"id": 22, "op": "nope"}), &mut pa).await;
    assert_eq!(r["error"]["code"], 102);
    let r = request(&mut a, json!({"id": 23, "op": "ping"}), &mut pa).await;
    assert_eq!(r["ok"], true);
    let r = request(
        &mut a,
        json!({"id": 24, "op": "subscribe", "channel": "nope:x"}),
        &mut pa,
    )
    .await;
    assert_eq!(r["error"]["code"], 103);
}

#[tokio::test]
async fn resume_after_forced_disconnects_without_gap_or_duplicate() {
    let srv = start();
    let mut publisher = client(&srv.1).await;
    let mut sub = client(&srv.1).await;
    let mut pushed = Vec::new();
    let r = request(
        &mut sub,
        json!({"id": 1, "op": "subscribe", "channel": "feed"}),
        &mut pushed,
    )
    .await;
    let epoch = r["result"]["epoch"].as_str().unwrap().to_owned();
    let total = 10_000u64;
    let pubs = tokio::spawn(async move {
        let mut p = Vec::new();
        for i in 1..=total {
            let r = request(
                &mut publisher,
                json!({"id": i, "op": "publish", "channel": "feed", "data": i}),
                &mut p,
            )
            .await;
            assert_eq!(r["result"]["offset"], i, "{r}");
        }
        publisher
    });
    // Read, drop the connection abruptly (no close frame) every 1,500 publications, and
    // resume from the last offset seen.
    let mut seen: Vec<u64> = Vec::new();
    let mut cuts = 0;
    let mut live = 0;
    let mut id = 2;
    while seen.last().copied().unwrap_or(0) < total {
        let v = next_json(&mut sub).await;
        let Some(o) = v.get("offset").and_then(Value::as_u64) else {
            continue;
        };
        seen.push(o);
        live += 1;
        if live == 1500 && o < total {
            live = 0;
            drop(sub);
            cuts += 1;
            sub = client(&srv.1).await;
            let r = request(
                &mut sub,
                json!({"id": id, "op": "subscribe", "channel": "feed", "since": {"offset": o, "epoch": epoch}}),
                &mut pushed,
            )
            .await;
            id += 1;
            assert_eq!(r["result"]["recovered"], true, "{r}");
            for p in r["result"]["publications"].as_array().unwrap() {
                seen.push(p["offset"].as_u64().unwrap());
            }
        }
    }
    let _publisher = pubs.await.unwrap();
    assert!(cuts >= 5, "{cuts} cuts");
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    // A wrong epoch is not recovered.
    let mut other = client(&srv.1).await;
    let r = request(
        &mut other,
        json!({"id": 3, "op": "subscribe", "channel": "feed", "since": {"offset": 1, "epoch": "old"}}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["result"]["recovered"], false, "{r}");
    assert_eq!(r["result"]["publications"], json!([]), "{r}");
}

/// The next text message, as sent.
async fn next_text(ws: &mut Ws) -> String {
    let fut = async {
        loop {
            match ws.recv().await.expect("stream ended").expect("error") {
                Message::Text(t) => return t.as_str().to_owned(),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), fut)
        .await
        .expect("no message within 20 s")
}

/// Requests the protocol crate refuses are refused by the server the same way, and what
/// the server writes reads back with the protocol's types: ids come back byte for byte,
/// `since` is an object or nothing, an unknown op is 102, data is delivered as published.
#[tokio::test]
async fn hostile_requests_get_the_documented_answers() {
    use tidewire_hub_proto::{ErrorCode, Push, ServerMessage, SubscribeResult};

    let srv = start();
    let mut ws = client(&srv.1).await;
    let reply = |text: &str| {
        let message = ServerMessage::parse(text).ok();
        message.and_then(ServerMessage::into_reply).expect(text)
    };
    let error_of = |text: &str| reply(text).outcome.expect_err(text).code;

    // Ids are echoed as sent, beyond what a u64 or an f64 holds.
    for id in [
        "12345678901234567890123",
        "1.0e3",
        r#"{"k":[1,"x"]}"#,
        "null",
    ] {
        ws.send(Message::text(format!(r#"{{"id":{id},"op":"ping"}}"#)))
            .await
            .unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            format!(r#"{{"id":{id},"ok":true,"result":{{}}}}"#)
        );
    }
    for (request, code) in [
        (r#"{"id":1,"op":"nope"}"#, ErrorCode::UNKNOWN_OP),
        (
            r#"{"id":2,"op":"subscribe","channel":"s","since":[1,"x"]}"#,
            ErrorCode::BAD_REQUEST,
        ),
        (
            r#"{"id":3,"op":"subscribe","channel":7}"#,
            ErrorCode::BAD_REQUEST,
        ),
        (
            r#"{"id":4,"op":"history","channel":"s","limit":-1}"#,
            ErrorCode::BAD_REQUEST,
        ),
        (
            r#"{"id":5,"op":"publish","channel":"s"}"#,
            ErrorCode::BAD_REQUEST,
        ),
        (r#"[1,"ping"]"#, ErrorCode::BAD_REQUEST),
        (
            r#"{"id":6,"op":"ping","op":"ping"}"#,
            ErrorCode::BAD_REQUEST,
        ),
    ] {
        ws.send(Message::text(request)).await.unwrap();
        let text = next_text(&mut ws).await;
        assert_eq!(error_of(&text), code, "{request} -> {text}");
    }
    // Still open: subscribe, publish raw data, get it back as it was sent.
    ws.send(Message::text(r#"{"id":7,"op":"subscribe","channel":"s"}"#))
        .await
        .unwrap();
    let sub: SubscribeResult = reply(&next_text(&mut ws).await).result().unwrap().unwrap();
    let data = r#"{"n": 1.50, "big": 12345678901234567890123, "s": "\u00e9"}"#;
    ws.send(Message::text(format!(
        r#"{{"id":8,"op":"publish","channel":"s","data":{data}}}"#
    )))
    .await
    .unwrap();
    // The reply and the publication, after the subscriber's own join event (the default
    // namespace has presence), in some order.
    let (mut acked, mut publication) = (false, None);
    while !acked || publication.is_none() {
        match ServerMessage::parse(&next_text(&mut ws).await).unwrap() {
            ServerMessage::Reply(r) => acked = r.id.as_u64() == Some(8) && r.outcome.is_ok(),
            ServerMessage::Push(Push::Publication(p)) => publication = Some(p),
            ServerMessage::Push(_) => {}
        }
    }
    let p = publication.expect("the publication");
    assert_eq!((p.offset, p.data.get()), (sub.offset + 1, data));
}
