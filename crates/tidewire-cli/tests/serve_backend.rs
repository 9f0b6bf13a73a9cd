//! Calls to the application backend (`[backend]`, docs/backend.md) and event hooks, against
//! a real `tidewire serve` on the memory engine and a real HTTP backend written for the
//! tests (`common::backend`): connect from a session cookie, subscribe allowed and denied,
//! publications rewritten and denied, an RPC round trip, the backend slow and down, and
//! hooks delivered exactly once (after deduplication) by a backend that fails every first
//! delivery. Across two nodes and a SIGKILL: `cluster_redis.rs`.

mod common;

use common::backend::{Answer, Backend, Handler};
use common::hub::{close_of, metric, next_json, request, serve, Serve, Ws};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewire::ClientBuilder;

/// A hub whose backend is at `url`, with the calls on: connect; subscribe in `vip:`,
/// publish in `mod:`, rpc in `game:`.
fn hub(url: &str, extra: &[&str]) -> Serve {
    let config = common::temp_file(
        &format!("backend-{}.toml", url.replace([':', '/', '.'], "_")),
        &format!(
            r#"
[backend]
url = "{url}"
connect = true
timeout = "500ms"

[namespaces.vip]
subscribe_proxy = true

[namespaces.mod]
publish_proxy = true

[namespaces.game]
rpc_proxy = true

[namespaces.inbox]
presence = true
"#
        ),
    );
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--publish-rate",
        "0",
        "--subscribe-rate",
        "0",
        "--no-demo",
    ];
    args.extend_from_slice(extra);
    serve(&args)
}

/// `/ws` with a `Cookie` header.
async fn with_cookie(addr: SocketAddr, cookie: &str) -> Ws {
    let (ws, _) = ClientBuilder::new(format!("ws://{addr}/ws"))
        .protocols(["tidewire.v1"])
        .header(
            http::header::COOKIE,
            http::HeaderValue::from_str(cookie).unwrap(),
        )
        .connect()
        .await
        .unwrap();
    ws
}

/// The app's rules: `session=good-USER` is USER; publications in `mod:` with "darn" are
/// starred out, with "spam" refused; `vip:secret` is refused; `game:roll` answers.
fn app() -> Handler {
    Arc::new(|path: &str, body: &Value| match path {
        "/connect" => {
            let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
            match cookie
                .split("; ")
                .find_map(|c| c.strip_prefix("session=good-"))
            {
                Some(user) => Answer::result(json!({
                    "user": user,
                    "info": {"name": user.to_uppercase()},
                    "channels": [format!("inbox:{user}")],
                })),
                None => Answer::error(None, "session expired: log in again"),
            }
        }
        "/subscribe" if body["channel"] == "vip:secret" => {
            Answer::error(Some(1403), "members only")
        }
        "/subscribe" => Answer::result(json!({})),
        "/publish" => {
            let text = body["data"]["text"].as_str().unwrap_or("");
            if text.contains("spam") {
                Answer::error(None, "no spam here")
            } else if text.contains("darn") {
                Answer::result(
                    json!({"data": {"text": text.replace("darn", "****"), "by": body["user"]}}),
                )
            } else {
                Answer::result(json!({}))
            }
        }
        "/rpc" => Answer::result(
            json!({"data": {"method": body["method"], "echo": body["data"], "user": body["user"]}}),
        ),
        _ => Answer::status(404),
    })
}

async fn connected(addr: SocketAddr, user: &str) -> (Ws, Vec<Value>) {
    let mut ws = with_cookie(addr, &format!("theme=dark; session=good-{user}")).await;
    let mut pushed = Vec::new();
    let r = request(&mut ws, json!({"id": 1, "op": "connect"}), &mut pushed).await;
    assert_eq!(r["result"]["user"], user, "{r}");
    (ws, pushed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_call_takes_a_session_cookie_and_refuses_a_bad_one() {
    let backend = Backend::start(app()).await;
    let srv = hub(&backend.url, &[]);
    let (mut ws, mut pushed) = connected(srv.addr, "ann").await;
    // The backend's channels are subscribed after the reply.
    while !pushed.iter().any(|p| p.get("subscribed").is_some()) {
        pushed.push(next_json(&mut ws).await);
    }
    let sub = pushed
        .iter()
        .find(|p| p.get("subscribed").is_some())
        .unwrap();
    assert_eq!(sub["channel"], "inbox:ann", "{sub}");
    // The call carried the handshake's cookie and the client's id.
    let calls = backend.bodies("/connect");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["transport"], "websocket");
    assert!(calls[0]["client"].as_str().unwrap().starts_with("c-"));
    assert_eq!(
        calls[0]["headers"]["cookie"], "theme=dark; session=good-ann",
        "{}",
        calls[0]
    );
    // Presence shows the backend's info.
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "presence", "channel": "inbox:ann"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["result"]["clients"][0]["info"]["name"], "ANN", "{r}");

    // A bad cookie: 109 with the backend's reason, then close 4008 with it.
    let mut bad = with_cookie(srv.addr, "session=stolen").await;
    let r = request(&mut bad, json!({"id": 1, "op": "connect"}), &mut Vec::new()).await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    assert_eq!(
        r["error"]["message"],
        "unauthorized: session expired: log in again"
    );
    let (code, reason) = close_of(&mut bad).await;
    assert_eq!(
        (code, reason.as_str()),
        (4008, "unauthorized: session expired: log in again")
    );

    // Nothing but connect and ping before a connect.
    let mut early = with_cookie(srv.addr, "session=good-bob").await;
    let r = request(
        &mut early,
        json!({"id": 1, "op": "subscribe", "channel": "x"}),
        &mut Vec::new(),
    )
    .await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_backend_calls_total{call=\"connect\",outcome=\"allowed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_backend_calls_total{call=\"connect\",outcome=\"denied\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_publish_calls_allow_deny_and_rewrite() {
    let backend = Backend::start(app()).await;
    let srv = hub(&backend.url, &[]);
    let (mut ws, mut pushed) = connected(srv.addr, "ann").await;
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "subscribe", "channel": "vip:secret"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["error"]["code"], 1403, "{r}");
    assert_eq!(r["error"]["message"], "members only");
    let r = request(
        &mut ws,
        json!({"id": 3, "op": "subscribe", "channel": "vip:lounge"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let asked = backend.bodies("/subscribe");
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1]["user"], "ann");
    // Namespaces without the call are not asked.
    let r = request(
        &mut ws,
        json!({"id": 4, "op": "subscribe", "channel": "mod:room"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(backend.bodies("/subscribe").len(), 2);

    let r = request(
        &mut ws,
        json!({"id": 5, "op": "publish", "channel": "mod:room", "data": {"text": "darn it"}}),
        &mut pushed,
    )
    .await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    let r = request(
        &mut ws,
        json!({"id": 6, "op": "publish", "channel": "mod:room", "data": {"text": "buy spam"}}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    assert_eq!(r["error"]["message"], "no spam here");
    let r = request(
        &mut ws,
        json!({"id": 7, "op": "publish", "channel": "mod:room", "data": {"text": "hello"}}),
        &mut pushed,
    )
    .await;
    assert!(r["result"]["offset"].is_u64(), "{r}");
    let r = request(
        &mut ws,
        json!({"id": 8, "op": "history", "channel": "mod:room"}),
        &mut pushed,
    )
    .await;
    let data: Vec<Value> = r["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(
        data,
        [
            json!({"text": "**** it", "by": "ann"}),
            json!({"text": "hello"})
        ],
        "{r}"
    );
    // The subscriber got the rewritten one live too.
    let live: Vec<&Value> = pushed.iter().filter(|p| p.get("data").is_some()).collect();
    assert_eq!(live[0]["data"]["text"], "**** it", "{pushed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trip() {
    let backend = Backend::start(app()).await;
    let srv = hub(&backend.url, &[]);
    let (mut ws, mut pushed) = connected(srv.addr, "ann").await;
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "rpc", "method": "game:roll", "data": {"dice": 2}}),
        &mut pushed,
    )
    .await;
    assert_eq!(
        r["result"]["data"],
        json!({"method": "game:roll", "echo": {"dice": 2}, "user": "ann"}),
        "{r}"
    );
    // No rpc_proxy in the default namespace; no such namespace.
    let r = request(
        &mut ws,
        json!({"id": 3, "op": "rpc", "method": "roll"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    let r = request(
        &mut ws,
        json!({"id": 4, "op": "rpc", "method": "nope:roll"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = request(&mut ws, json!({"id": 5, "op": "rpc"}), &mut pushed).await;
    assert_eq!(r["error"]["code"], 101, "{r}");

    // The Rust hub client's `rpc`, the backend's refusal with its own code included.
    let refusing: Handler = Arc::new(|path: &str, body: &Value| match path {
        "/rpc" if body["method"] == "game:cheat" => Answer::error(Some(1409), "not in this game"),
        _ => app()(path, body),
    });
    let backend = Backend::start(refusing).await;
    let srv = hub(&backend.url, &[]);
    let client = tidewire_hub_client::HubClient::builder(format!("ws://{}/ws", srv.addr))
        .reconnect(|r| {
            r.client(|c| {
                c.header(
                    http::header::COOKIE,
                    http::HeaderValue::from_static("session=good-kim"),
                )
            })
        })
        .connect();
    let answer = client.rpc("game:roll", json!([1, 2])).await.unwrap();
    assert_eq!(
        answer,
        json!({"method": "game:roll", "echo": [1, 2], "user": "kim"})
    );
    let e = client.rpc("game:cheat", json!(null)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Some(1409), Some("not in this game"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_down_backend_is_error_112_at_once() {
    // Slow: subscribe answers after 2 s, past the 500 ms timeout.
    let slow: Handler = Arc::new(|path: &str, body: &Value| match path {
        "/subscribe" => Answer::result(json!({})).after(Duration::from_secs(2)),
        _ => app()(path, body),
    });
    let backend = Backend::start(slow).await;
    let srv = hub(&backend.url, &[]);
    let (mut ws, mut pushed) = connected(srv.addr, "ann").await;
    let asked = Instant::now();
    let r = request(
        &mut ws,
        json!({"id": 2, "op": "subscribe", "channel": "vip:lounge"}),
        &mut pushed,
    )
    .await;
    let took = asked.elapsed();
    assert_eq!(r["error"]["code"], 112, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("backend unavailable:") && msg.contains("no answer within 500 ms"),
        "{msg}"
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    // The connection lives on: other requests are answered.
    let r = request(&mut ws, json!({"id": 3, "op": "ping"}), &mut pushed).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        metric(
            srv.addr,
            "tidewire_backend_calls_total{call=\"subscribe\",outcome=\"failed\"}"
        ),
        1.0
    );

    // Down: nothing listens at the URL.
    let port = common::cluster::free_port();
    let down = hub(&format!("http://127.0.0.1:{port}"), &[]);
    let mut ws = with_cookie(down.addr, "session=good-ann").await;
    let r = request(&mut ws, json!({"id": 1, "op": "connect"}), &mut Vec::new()).await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot connect"), "{msg}");
    // Try again later: the client reconnects with backoff.
    assert_eq!(
        close_of(&mut ws).await,
        (1013, "backend unavailable".to_owned())
    );
    // A backend answering outside the protocol is unavailable too, named.
    let odd = Backend::start(Arc::new(|_: &str, _: &Value| Answer::status(500))).await;
    let srv = hub(&odd.url, &[]);
    let mut ws = with_cookie(srv.addr, "session=good-ann").await;
    let r = request(&mut ws, json!({"id": 1, "op": "connect"}), &mut Vec::new()).await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("answered HTTP 500"),
        "{r}"
    );
}

/// A backend's `/events` that fails the first delivery of every event (500) and takes
/// the next; connect calls as `app`.
/// What the flaky backend saw: event ids offered, events taken, failed deliveries.
type EventLog = Arc<Mutex<(HashSet<String>, Vec<Value>, usize)>>;

fn flaky_events(log: EventLog) -> Handler {
    Arc::new(move |path: &str, body: &Value| {
        if path != "/events" {
            return app()(path, body);
        }
        let mut l = log.lock().unwrap();
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let fresh = events
            .iter()
            .any(|e| !l.0.contains(e["id"].as_str().unwrap_or("")));
        for e in &events {
            l.0.insert(e["id"].as_str().unwrap_or("").to_owned());
        }
        if fresh {
            l.2 += 1;
            return Answer::status(500);
        }
        l.1.extend(events);
        Answer::result(json!({}))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_arrive_once_each_after_failed_first_deliveries() {
    let log = Arc::new(Mutex::new((HashSet::new(), Vec::new(), 0)));
    let backend = Backend::start(flaky_events(log.clone())).await;
    let srv = hub(&backend.url, &["--backend-events", "all"]);
    let (mut ann, mut pushed) = connected(srv.addr, "ann").await;
    let ann_id = backend.bodies("/connect")[0]["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = request(
        &mut ann,
        json!({"id": 2, "op": "subscribe", "channel": "mod:room"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = request(
        &mut ann,
        json!({"id": 3, "op": "unsubscribe", "channel": "mod:room"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    ann.close(None).await.unwrap();
    // Expected: connect, subscribe inbox:ann (the backend's channel) and its occupied,
    // subscribe mod:room and occupied, unsubscribe mod:room and vacated, then at the end
    // unsubscribe inbox:ann, vacated, disconnect: 10 events.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.lock().unwrap().1.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "events: {:?}",
            log.lock().unwrap().1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, got, failures) = log.lock().unwrap().clone();
    assert!(failures >= 1, "no delivery failed");
    // Each event once after deduplication by id, and the backend got no event it had
    // not been offered before (retries carry the same ids).
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for e in &got {
        *by_id
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!((got.len(), by_id.len()), (10, 10), "{got:?}");
    assert_eq!(seen.len(), 10, "{seen:?}");
    let kinds: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["channel"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let count = |t: &str, c: &str| kinds.iter().filter(|(k, ch)| k == t && ch == c).count();
    for (t, c) in [
        ("connect", ""),
        ("disconnect", ""),
        ("subscribe", "inbox:ann"),
        ("unsubscribe", "inbox:ann"),
        ("occupied", "inbox:ann"),
        ("vacated", "inbox:ann"),
        ("subscribe", "mod:room"),
        ("unsubscribe", "mod:room"),
        ("occupied", "mod:room"),
        ("vacated", "mod:room"),
    ] {
        assert_eq!(count(t, c), 1, "{t} {c}: {kinds:?}");
    }
    let connect = got.iter().find(|e| e["type"] == "connect").unwrap();
    assert_eq!(
        (connect["client"].as_str().unwrap(), &connect["user"]),
        (ann_id.as_str(), &json!("ann"))
    );
    let disconnect = got.iter().find(|e| e["type"] == "disconnect").unwrap();
    assert_eq!(disconnect["user"], "ann", "{disconnect}");
    assert!(metric(srv.addr, "tidewire_hook_delivery_failures_total") >= 1.0);
    assert_eq!(
        metric(srv.addr, "tidewire_hook_events_delivered_total"),
        10.0
    );
}
