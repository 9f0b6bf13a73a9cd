//! The server API (`POST /api/METHOD`, docs/api.md) against a real `tidewire serve` on the
//! memory engine: every method, what the connections it is about see, and its errors.
//! (Across two nodes on Redis: `cluster_redis.rs`, `the_server_api_reaches_every_node`.)

mod common;

use common::hub::{api_call, client, client_q, close_of, next_json, request, serve, Serve, Ws};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const SECRET: &str = "server-api-test-secret-of-32-chars-or-more";
const KEY: &str = "server-api-test-key-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub`, expiring `exp` seconds from now, issued at `iat`.
fn token(sub: &str, exp: u64, iat: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + exp, "iat": iat}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn hub() -> Serve {
    serve(&[
        "--api-key",
        KEY,
        "--auth-hmac-secret",
        SECRET,
        "--auth-anonymous",
        "--publish-rate",
        "0",
        "--subscribe-rate",
        "0",
    ])
}

/// `POST /api/METHOD` with the API key: (status, body as JSON).
pub fn api(addr: SocketAddr, method: &str, body: &str) -> (u16, Value) {
    api_call(addr, method, body, Some(KEY))
}

/// `api` that must succeed: its result.
fn ok(addr: SocketAddr, method: &str, body: Value) -> Value {
    let (status, v) = api(addr, method, &body.to_string());
    assert_eq!(status, 200, "{method} {body}: {v}");
    v
}

async fn user(addr: SocketAddr, sub: &str) -> Ws {
    with_token(addr, &token(sub, 3600, now())).await
}

/// A connection with `token` in its URL, once the server has listed it for the API: the
/// upgrade's answer comes before the connection's task starts, a reply after.
async fn with_token(addr: SocketAddr, token: &str) -> Ws {
    let mut ws = client_q(addr, &format!("?token={token}")).await;
    let r = request(&mut ws, json!({"id": "up", "op": "ping"}), &mut Vec::new()).await;
    assert_eq!(r["ok"], true);
    ws
}

/// The next push on `ws` (not a reply).
async fn push(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v.get("id").is_none() {
            return v;
        }
    }
}

/// Whether `ws` receives nothing for `ms`.
async fn quiet(ws: &mut Ws, ms: u64) -> bool {
    tokio::time::timeout(Duration::from_millis(ms), ws.recv())
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_broadcast_history_presence_channels_info_and_batch() {
    let srv = hub();
    let mut reader = client(srv.addr).await;
    let mut pushed = Vec::new();
    for (i, ch) in ["news", "chat:a", "chat:b"].iter().enumerate() {
        let r = request(
            &mut reader,
            json!({"id": i, "op": "subscribe", "channel": ch}),
            &mut pushed,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // publish, and its idempotency key
    let p = ok(
        srv.addr,
        "publish",
        json!({"channel": "news", "data": {"n": 1}}),
    );
    assert_eq!(p["offset"], 1);
    let k = json!({"channel": "news", "data": {"n": 2}, "idempotency_key": "k2"});
    assert_eq!(ok(srv.addr, "publish", k.clone())["offset"], 2);
    assert_eq!(ok(srv.addr, "publish", k)["offset"], 2);
    // broadcast: a result or an error per channel
    let b = ok(
        srv.addr,
        "broadcast",
        json!({"channels": ["chat:a", "chat:b", "nope:x"], "data": "hi"}),
    );
    let r = &b["responses"];
    assert_eq!(r[0]["channel"], "chat:a");
    assert_eq!(r[0]["offset"], 1);
    assert_eq!(r[1]["offset"], 1);
    assert_eq!(r[2]["error"]["code"], 103, "{b}");
    let mut got = Vec::new();
    while got.len() < 4 {
        let v = push(&mut reader).await;
        if v.get("offset").is_some() {
            got.push((v["channel"].clone(), v["data"].clone()));
        }
    }
    assert_eq!(got[0], (json!("news"), json!({"n": 1})));
    assert_eq!(got[1], (json!("news"), json!({"n": 2})));
    assert!(got.contains(&(json!("chat:a"), json!("hi"))));
    assert!(got.contains(&(json!("chat:b"), json!("hi"))));
    // history: newest, since, a since in another epoch, then removed
    let h = ok(srv.addr, "history", json!({"channel": "news", "limit": 1}));
    assert_eq!(h["offset"], 2);
    assert_eq!(h["publications"].as_array().unwrap().len(), 1);
    assert_eq!(h["publications"][0]["data"], json!({"n": 2}));
    let epoch = h["epoch"].clone();
    let since = ok(
        srv.addr,
        "history",
        json!({"channel": "news", "since": {"offset": 0, "epoch": epoch}}),
    );
    assert_eq!(since["complete"], true);
    assert_eq!(since["publications"].as_array().unwrap().len(), 2);
    let other = ok(
        srv.addr,
        "history",
        json!({"channel": "news", "since": {"offset": 0, "epoch": "other"}}),
    );
    assert_eq!(other["complete"], false);
    assert_eq!(
        ok(srv.addr, "history_remove", json!({"channel": "news"})),
        json!({})
    );
    let h = ok(srv.addr, "history", json!({"channel": "news"}));
    assert_eq!((h["offset"].clone(), h["epoch"].clone()), (json!(2), epoch));
    assert!(h["publications"].as_array().unwrap().is_empty());
    // presence: the default namespace has it
    let mut present = user(srv.addr, "ann").await;
    let r = request(
        &mut present,
        json!({"id": 1, "op": "subscribe", "channel": "news"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true);
    let p = ok(srv.addr, "presence", json!({"channel": "news"}));
    let users: Vec<&Value> = p["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["user"])
        .collect();
    assert_eq!(users.len(), 2, "{p}");
    assert!(users.contains(&&json!("ann")));
    let s = ok(srv.addr, "presence_stats", json!({"channel": "news"}));
    assert_eq!(s, json!({"clients": 2, "users": 1}));
    // channels, with a pattern
    let c = ok(srv.addr, "channels", json!({}));
    assert_eq!(c["channels"]["news"]["subscribers"], 2, "{c}");
    assert_eq!(c["channels"]["chat:a"]["subscribers"], 1);
    let c = ok(srv.addr, "channels", json!({"pattern": "chat:*"}));
    let names: Vec<&String> = c["channels"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["chat:a", "chat:b"]);
    // info
    let i = ok(srv.addr, "info", json!({}));
    assert_eq!(i["nodes"][0]["connections"], 2, "{i}");
    // batch: results and errors in order; no batch in a batch
    let b = ok(
        srv.addr,
        "batch",
        json!({"commands": [
            {"method": "publish", "params": {"channel": "news", "data": 3}},
            {"method": "nope"},
            {"method": "batch", "params": {"commands": []}},
            {"method": "presence_stats", "params": {"channel": "news"}}
        ]}),
    );
    let replies = b["replies"].as_array().unwrap();
    assert_eq!(replies[0]["result"]["offset"], 3);
    assert_eq!(replies[1]["error"]["code"], 102);
    assert_eq!(replies[2]["error"]["code"], 101);
    assert_eq!(replies[3]["result"]["clients"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_subscriptions_reach_every_connection_of_a_user() {
    let srv = hub();
    let mut tab1 = user(srv.addr, "ann").await;
    let mut tab2 = user(srv.addr, "ann").await;
    let mut other = user(srv.addr, "bob").await;
    assert_eq!(
        ok(
            srv.addr,
            "subscribe",
            json!({"user": "ann", "channel": "feed"})
        ),
        json!({})
    );
    for tab in [&mut tab1, &mut tab2] {
        let v = push(tab).await;
        assert_eq!(v["channel"], "feed");
        assert_eq!(
            v["subscribed"],
            json!({"offset": 0, "epoch": v["subscribed"]["epoch"]})
        );
    }
    ok(
        srv.addr,
        "publish",
        json!({"channel": "feed", "data": {"n": 1}}),
    );
    for tab in [&mut tab1, &mut tab2] {
        let mut v = push(tab).await;
        while v.get("join").is_some() {
            v = push(tab).await;
        }
        assert_eq!(
            (v["offset"].clone(), v["data"].clone()),
            (json!(1), json!({"n": 1}))
        );
    }
    assert!(quiet(&mut other, 300).await, "bob got something");
    // Only one connection of the user, by its client id.
    let mut pushed = Vec::new();
    let who = request(&mut tab2, json!({"id": 9, "op": "connect"}), &mut pushed).await;
    let client2 = who["result"]["client"].as_str().unwrap().to_owned();
    ok(
        srv.addr,
        "unsubscribe",
        json!({"user": "ann", "channel": "feed", "client": client2}),
    );
    let mut v = push(&mut tab2).await;
    while v.get("leave").is_some() || v.get("join").is_some() {
        v = push(&mut tab2).await;
    }
    assert_eq!(v, json!({"channel": "feed", "unsubscribed": {}}));
    ok(
        srv.addr,
        "publish",
        json!({"channel": "feed", "data": {"n": 2}}),
    );
    let mut v = push(&mut tab1).await;
    while v.get("offset").is_none() {
        v = push(&mut tab1).await;
    }
    assert_eq!(v["offset"], 2);
    // tab2 gets presence of the channel no more, nor publications.
    assert!(quiet(&mut tab2, 300).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_refresh_block_and_revoke() {
    let srv = hub();
    // disconnect: one client with a code that reconnects, then the user (4500: terminal)
    let mut tab1 = user(srv.addr, "ann").await;
    let mut tab2 = user(srv.addr, "ann").await;
    let mut pushed = Vec::new();
    let who = request(&mut tab1, json!({"id": 1, "op": "connect"}), &mut pushed).await;
    let client1 = who["result"]["client"].as_str().unwrap().to_owned();
    ok(
        srv.addr,
        "disconnect",
        json!({"user": "ann", "client": client1, "code": 4000, "reason": "move along"}),
    );
    assert_eq!(close_of(&mut tab1).await, (4000, "move along".to_owned()));
    assert!(quiet(&mut tab2, 300).await);
    ok(srv.addr, "disconnect", json!({"user": "ann"}));
    assert_eq!(
        close_of(&mut tab2).await,
        (4500, "disconnected by the server".to_owned())
    );
    // refresh: a token that expires in 2 s no longer closes the connection...
    let mut short = with_token(srv.addr, &token("cid", 2, now())).await;
    ok(
        srv.addr,
        "refresh",
        json!({"user": "cid", "expire_at": now() + 3600}),
    );
    assert!(quiet(&mut short, 3500).await, "closed despite the refresh");
    // ...and an expiry in the past closes it at once (4001: reconnect with a new token).
    ok(
        srv.addr,
        "refresh",
        json!({"user": "cid", "expire_at": now() - 1}),
    );
    assert_eq!(close_of(&mut short).await.0, 4001);
    // block: closed with 4501, refused at the upgrade and at `connect`, until unblocked
    let mut bob = user(srv.addr, "bob").await;
    ok(srv.addr, "block_user", json!({"user": "bob"}));
    assert_eq!(close_of(&mut bob).await, (4501, "blocked".to_owned()));
    let refused = tidewire::ClientBuilder::new(format!(
        "ws://{}/ws?token={}",
        srv.addr,
        token("bob", 3600, now())
    ))
    .protocols(["tidewire.v1"])
    .connect()
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    let mut anon = client(srv.addr).await;
    let t = token("bob", 3600, now());
    let r = request(
        &mut anon,
        json!({"id": 1, "op": "connect", "token": t}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("blocked"));
    assert_eq!(close_of(&mut anon).await.0, 4501);
    ok(srv.addr, "unblock_user", json!({"user": "bob"}));
    let mut bob = user(srv.addr, "bob").await;
    assert!(quiet(&mut bob, 200).await);
    // a block with an end in the past blocks nothing
    ok(
        srv.addr,
        "block_user",
        json!({"user": "eve", "until": now() - 10}),
    );
    let _eve = user(srv.addr, "eve").await;
    // revoke: a connection with a token issued before is closed; newer tokens pass
    let old = now() - 100;
    let mut dan = with_token(srv.addr, &token("dan", 3600, old)).await;
    ok(
        srv.addr,
        "revoke_tokens",
        json!({"user": "dan", "before": old + 1}),
    );
    assert_eq!(close_of(&mut dan).await, (4001, "token revoked".to_owned()));
    let stale = tidewire::ClientBuilder::new(format!(
        "ws://{}/ws?token={}",
        srv.addr,
        token("dan", 3600, old)
    ))
    .protocols(["tidewire.v1"])
    .connect()
    .await;
    assert!(stale.is_err());
    let mut dan = with_token(srv.addr, &token("dan", 3600, old + 1)).await;
    assert!(quiet(&mut dan, 200).await);
    // Without `before`: every token issued so far, one issued this very second too.
    let mut fresh = with_token(srv.addr, &token("dan", 3600, now())).await;
    ok(srv.addr, "revoke_tokens", json!({"user": "dan"}));
    assert_eq!(
        close_of(&mut fresh).await,
        (4001, "token revoked".to_owned())
    );
    assert_eq!(close_of(&mut dan).await, (4001, "token revoked".to_owned()));
}

#[tokio::test]
async fn errors_are_json_with_a_status_and_a_code() {
    let srv = hub();
    let cases: [(&str, &str, Option<&str>, u16, u64); 9] = [
        ("publish", r#"{"channel":"news","data":1}"#, None, 401, 109),
        (
            "publish",
            r#"{"channel":"news","data":1}"#,
            Some("wrong"),
            401,
            109,
        ),
        ("nope", "{}", Some(KEY), 404, 102),
        ("publish", "[1]", Some(KEY), 400, 101),
        ("publish", "{", Some(KEY), 400, 101),
        ("publish", r#"{"channel":"news"}"#, Some(KEY), 400, 101),
        (
            "publish",
            r#"{"channel":"$control","data":1}"#,
            Some(KEY),
            400,
            103,
        ),
        (
            "disconnect",
            r#"{"user":"a","code":1000}"#,
            Some(KEY),
            400,
            101,
        ),
        ("presence", r#"{"channel":"typing:x"}"#, Some(KEY), 400, 110),
    ];
    for (method, body, key, status, code) in cases {
        let (s, v) = api_call(srv.addr, method, body, key);
        assert_eq!(
            (s, v["error"]["code"].as_u64()),
            (status, Some(code)),
            "{method} {body}: {v}"
        );
        assert!(v["error"]["message"].is_string());
    }
    // The document is served, without the key.
    let doc = common::hub::http_get(srv.addr, "/api/openapi.json");
    assert!(doc.starts_with("HTTP/1.1 200"));
    let doc: Value = serde_json::from_str(doc.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    // Without an API key configured, the API is off.
    let off = serve(&[]);
    let (s, v) = api(off.addr, "info", "{}");
    assert_eq!(s, 403, "{v}");
}

/// The Rust hub client and the server API's subscribe and unsubscribe: the pushes become
/// events, and an `unsubscribe` ends the client's own subscription (its last item says
/// so; it is not subscribed again on a reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_follows_server_side_subscriptions() {
    use tidewire_hub_client::{HubClient, HubEvent, Item};
    let srv = hub();
    let client = HubClient::builder(format!("ws://{}/ws", srv.addr))
        .token(token("kim", 3600, now()))
        .connect();
    let mut news = client.subscribe("news").await.unwrap();
    let next_event = || async {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), client.next_event())
                .await
                .expect("no event within 10 s")
                .expect("client stopped");
            if matches!(
                e,
                HubEvent::ServerSubscribed { .. } | HubEvent::ServerUnsubscribed { .. }
            ) {
                return e;
            }
        }
    };
    ok(
        srv.addr,
        "subscribe",
        json!({"user": "kim", "channel": "alerts"}),
    );
    match next_event().await {
        HubEvent::ServerSubscribed { channel, .. } => assert_eq!(channel, "alerts"),
        e => panic!("{e:?}"),
    }
    ok(
        srv.addr,
        "unsubscribe",
        json!({"user": "kim", "channel": "news"}),
    );
    match next_event().await {
        HubEvent::ServerUnsubscribed { channel } => assert_eq!(channel, "news"),
        e => panic!("{e:?}"),
    }
    // Past the presence items (the default namespace has presence).
    let last = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match news.next().await {
                Some(Item::Join(_) | Item::Leave(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription did not end");
    match last {
        Some(Item::Failed(e)) => assert_eq!(e.code(), Some(105), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // A publication on news no longer reaches it.
    ok(srv.addr, "publish", json!({"channel": "news", "data": 1}));
    let more = tokio::time::timeout(Duration::from_millis(300), news.next()).await;
    assert!(matches!(more, Ok(None) | Err(_)), "{more:?}");
}
