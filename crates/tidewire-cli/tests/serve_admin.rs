//! The admin page (`/admin`, docs/admin.md) against a real `tidewire serve`: off without a
//! password, the password's checks, the login and its limit, the session cookie, the CSRF
//! token, the calls that act on connections, and the live tail.

mod common;

use axum::http::{header, HeaderValue};
use common::hub::{client, client_q, close_of, http, request, serve, Serve, Ws};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, Message};

const PASSWORD: &str = "admin-test password 1";
const SECRET: &str = "admin-test-secret-of-32-chars-or-more!!";
const KEY: &str = "admin-test-api-key-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + 3600, "iat": now()}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn hub() -> Serve {
    serve(&[
        "--admin-password",
        PASSWORD,
        "--api-key",
        KEY,
        "--auth-hmac-secret",
        SECRET,
        "--auth-anonymous",
        "--no-demo",
    ])
}

/// A response as status, head and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The value of header `name` (lower case), if present.
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

fn send(addr: SocketAddr, method: &str, path: &str, extra: &str, body: &str) -> Answer {
    let r = http(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let (head, body) = r.split_once("\r\n\r\n").unwrap_or((&r, ""));
    Answer {
        status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn form_login(addr: SocketAddr, password: &str) -> Answer {
    let body = format!(
        "password={}",
        password
            .replace('%', "%25")
            .replace(' ', "+")
            .replace('&', "%26")
    );
    send(
        addr,
        "POST",
        "/admin/login",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        &body,
    )
}

/// Logs in; the `Cookie` header value of the session.
fn login(addr: SocketAddr) -> String {
    let a = form_login(addr, PASSWORD);
    assert_eq!(a.status, 303, "{}", a.head);
    let set = a.header("set-cookie").expect("Set-Cookie");
    set.split(';').next().unwrap().to_owned()
}

fn get(addr: SocketAddr, path: &str, cookie: &str) -> Answer {
    send(addr, "GET", path, &format!("Cookie: {cookie}\r\n"), "")
}

/// The CSRF token of the session.
fn csrf(addr: SocketAddr, cookie: &str) -> String {
    let a = get(addr, "/admin/api/session", cookie);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["csrf"].as_str().unwrap().to_owned()
}

/// `POST /admin/api/METHOD` with the session and its CSRF token.
fn admin(addr: SocketAddr, cookie: &str, csrf: &str, method: &str, body: Value) -> Answer {
    send(
        addr,
        "POST",
        &format!("/admin/api/{method}"),
        &format!(
            "Cookie: {cookie}\r\nX-Tidewire-Csrf: {csrf}\r\nContent-Type: application/json\r\n"
        ),
        &body.to_string(),
    )
}

fn ok(addr: SocketAddr, cookie: &str, csrf: &str, method: &str, body: Value) -> Value {
    let a = admin(addr, cookie, csrf, method, body.clone());
    assert_eq!(a.status, 200, "{method} {body}: {}", a.body);
    a.json()
}

fn overview(addr: SocketAddr, cookie: &str) -> Value {
    let a = get(addr, "/admin/api/overview", cookie);
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

/// Polls the overview until `check` holds (at most 5 s).
fn overview_until(
    addr: SocketAddr,
    cookie: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = overview(addr, cookie);
        if check(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "{what}: {o}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `/ws` connection of user `sub`, once the server has listed it.
async fn user(addr: SocketAddr, sub: &str) -> Ws {
    let mut ws = client_q(addr, &format!("?token={}", token(sub))).await;
    let r = request(&mut ws, json!({"id": "up", "op": "ping"}), &mut Vec::new()).await;
    assert_eq!(r["ok"], true);
    ws
}

/// Opens a tail with `cookie` (and `query` after `?`).
async fn tail(addr: SocketAddr, cookie: &str, query: &str) -> Result<Ws, tidewire::Error> {
    ClientBuilder::new(format!("ws://{addr}/admin/tail?{query}"))
        .header(header::COOKIE, HeaderValue::from_str(cookie).unwrap())
        .connect()
        .await
        .map(|(ws, _)| ws)
}

/// The next text message of a tail as JSON (within 10 s).
async fn next(ws: &mut Ws) -> Value {
    let read = async {
        loop {
            match ws.recv().await.expect("tail ended").expect("tail error") {
                Message::Text(t) => return serde_json::from_str::<Value>(&t).unwrap(),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("nothing on the tail within 10 s")
}

#[test]
fn the_page_is_off_without_a_password_and_says_how_to_turn_it_on() {
    let srv = serve(&[]);
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/api/overview"),
        ("POST", "/admin/login"),
        ("POST", "/admin/api/publish"),
        ("GET", "/admin/tail?channel=news"),
    ] {
        let a = send(srv.addr, method, path, "", "");
        assert_eq!(a.status, 404, "{method} {path}");
        for hint in [
            "--admin-password",
            "TIDEWIRE_ADMIN_PASSWORD",
            "[admin] password",
        ] {
            assert!(a.body.contains(hint), "{method} {path}: {}", a.body);
        }
    }
}

#[test]
fn a_short_password_is_refused_naming_where_it_is_set() {
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"));
        cmd.args(["serve", "--check-config"]).args(args);
        cmd.env_remove("TIDEWIRE_ADMIN_PASSWORD");
        if let Some(p) = env {
            cmd.env("TIDEWIRE_ADMIN_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["--admin-password", "eleven char"], None);
    assert!(!ok);
    assert!(
        err.contains("--admin-password") && err.contains("at least 12 characters"),
        "{err}"
    );
    let (ok, _, err) = run(&[], Some("short"));
    assert!(!ok && err.contains("--admin-password"), "{err}");
    let file = common::temp_file("admin-short.toml", "[admin]\npassword = \"short\"\n");
    let (ok, _, err) = run(&["--config", file.to_str().unwrap()], None);
    assert!(!ok);
    assert!(
        err.contains("admin-short.toml:2: admin.password: must be at least 12 characters"),
        "{err}"
    );
    let (ok, out, err) = run(&["--admin-password", "twelve chars"], None);
    assert!(ok, "{err}");
    assert!(out.contains("admin page: on, at /admin"), "{out}");
    let (ok, out, _) = run(&[], None);
    assert!(ok && out.contains("admin page: off"), "{out}");
}

#[test]
fn login_session_cookie_and_csrf() {
    let srv = hub();
    let addr = srv.addr;
    // Without a session: the login form, and no data.
    let a = send(addr, "GET", "/admin", "", "");
    assert_eq!(a.status, 200);
    assert!(a.body.contains("name=\"password\"") && !a.body.contains("admin.js"));
    assert_eq!(a.header("x-frame-options").as_deref(), Some("DENY"));
    assert!(a
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    for path in ["/admin/api/overview", "/admin/api/session"] {
        let a = send(addr, "GET", path, "", "");
        assert_eq!(a.status, 401, "{path}");
        assert_eq!(a.json()["error"]["code"], 109, "{}", a.body);
    }
    // A wrong password: 401 after a delay, no cookie.
    let t = Instant::now();
    let a = form_login(addr, "not the password");
    assert_eq!(a.status, 401);
    assert!(a.body.contains("wrong password"), "{}", a.body);
    assert!(a.header("set-cookie").is_none());
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // Not a form.
    let a = send(addr, "POST", "/admin/login", "", "{\"password\": 1}");
    assert_eq!(a.status, 400, "{}", a.body);
    // From another site's page.
    let a = send(
        addr,
        "POST",
        "/admin/login",
        "Origin: http://evil.example\r\n",
        &format!("password={}", PASSWORD.replace(' ', "+")),
    );
    assert_eq!(a.status, 403);
    // The right one: a session cookie, back to /admin.
    let a = form_login(addr, PASSWORD);
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location").as_deref(), Some("/admin"));
    let set = a.header("set-cookie").unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    // Behind a TLS proxy that says so, the cookie is Secure.
    let a = send(
        addr,
        "POST",
        "/admin/login",
        "X-Forwarded-Proto: https\r\n",
        &format!("password={}", PASSWORD.replace(' ', "+")),
    );
    assert!(a.header("set-cookie").unwrap().contains("; Secure"));
    // With the session: the page and its data.
    let a = get(addr, "/admin", &cookie);
    assert!(a.body.contains("/admin/assets/admin.js"), "{}", a.body);
    let o = overview(addr, &cookie);
    assert_eq!(o["engine"], "memory");
    assert_eq!(o["nodes"].as_array().unwrap().len(), 1, "{o}");
    // A tampered or made-up cookie is no session.
    let (name, value) = cookie.split_once('=').unwrap();
    let (exp, tag) = value.split_once('.').unwrap();
    let later = format!("{name}={}.{tag}", exp.parse::<u64>().unwrap() + 60);
    for bad in [later, format!("{name}=1.AAAA"), format!("{name}=")] {
        assert_eq!(get(addr, "/admin/api/overview", &bad).status, 401, "{bad}");
    }
    // State-changing calls need the CSRF token of the session, from the page's origin.
    let token = csrf(addr, &cookie);
    let publish = json!({"channel": "news", "data": {"n": 1}});
    let a = send(
        addr,
        "POST",
        "/admin/api/publish",
        &format!("Cookie: {cookie}\r\n"),
        &publish.to_string(),
    );
    assert_eq!(a.status, 403, "no token: {}", a.body);
    assert!(a.body.contains("X-Tidewire-Csrf"), "{}", a.body);
    assert_eq!(
        admin(addr, &cookie, "AAAA", "publish", publish.clone()).status,
        403
    );
    let other = login(addr);
    assert_eq!(
        admin(addr, &other, &token, "publish", publish.clone()).status,
        403,
        "another session's token"
    );
    let a = send(
        addr,
        "POST",
        "/admin/api/publish",
        &format!("Cookie: {cookie}\r\nX-Tidewire-Csrf: {token}\r\nOrigin: http://evil.example\r\n"),
        &publish.to_string(),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    let a = send(
        addr,
        "POST",
        "/admin/api/publish",
        &format!("X-Tidewire-Csrf: {token}\r\n"),
        &publish.to_string(),
    );
    assert_eq!(a.status, 401, "a token without the cookie");
    assert_eq!(ok(addr, &cookie, &token, "publish", publish)["offset"], 1);
    // The API's errors come through as the API writes them.
    let a = admin(addr, &cookie, &token, "nope", json!({}));
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (404, json!(102))
    );
    let a = admin(addr, &cookie, &token, "publish", json!({"channel": "news"}));
    assert_eq!(a.status, 400, "{}", a.body);
    // The page's files; logout clears the cookie.
    let a = send(addr, "GET", "/admin/assets/admin.js", "", "");
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        send(addr, "GET", "/admin/assets/nope.js", "", "").status,
        404
    );
    let a = send(
        addr,
        "POST",
        "/admin/logout",
        &format!("Cookie: {cookie}\r\n"),
        "",
    );
    assert_eq!(a.status, 200);
    assert!(a.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[test]
fn failed_logins_are_limited_per_node() {
    let srv = hub();
    let addr = srv.addr;
    // Ten wrong passwords at once take the ten tries; the next login is refused unchecked.
    let threads: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || form_login(addr, &format!("wrong password {i}")).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 401);
    }
    let a = form_login(addr, PASSWORD);
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("too many failed logins"), "{}", a.body);
    let wait: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=7).contains(&wait), "{wait}");
    // One try comes back every 6 s.
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(form_login(addr, PASSWORD).status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_publish_disconnect_and_block_through_the_page() {
    let srv = hub();
    let addr = srv.addr;
    let cookie = login(addr);
    let xsrf = csrf(addr, &cookie);
    let mut ann = user(addr, "ann").await;
    let mut pushed = Vec::new();
    let r = request(
        &mut ann,
        json!({"id": 1, "op": "subscribe", "channel": "news"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let _anon = client(addr).await;
    let o = overview_until(addr, &cookie, "two connections", |o| {
        o["nodes"][0]["connections"] == 2 && o["channels"].as_array().is_some_and(|c| !c.is_empty())
    });
    assert_eq!(o["nodes"][0]["subscriptions"], 1, "{o}");
    assert_eq!(o["channels_total"], 1);
    let news = &o["channels"][0];
    assert_eq!(
        (
            news["name"].clone(),
            news["subscribers"].clone(),
            news["offset"].clone()
        ),
        (json!("news"), json!(1), json!(0))
    );
    // Publish: ann gets it, and the offset moves.
    let p = ok(
        addr,
        &cookie,
        &xsrf,
        "publish",
        json!({"channel": "news", "data": {"from": "admin"}}),
    );
    assert_eq!(p["offset"], 1);
    let got = loop {
        let v = common::hub::next_json(&mut ann).await;
        if v.get("offset").is_some() {
            break v;
        }
    };
    assert_eq!(got["data"], json!({"from": "admin"}));
    assert_eq!(overview(addr, &cookie)["channels"][0]["offset"], 1);
    // Disconnect: closed with 4500 (or 4000 when asked).
    ok(
        addr,
        &cookie,
        &xsrf,
        "disconnect",
        json!({"user": "ann", "reason": "bye"}),
    );
    assert_eq!(close_of(&mut ann).await, (4500, "bye".to_owned()));
    let mut ann = user(addr, "ann").await;
    ok(
        addr,
        &cookie,
        &xsrf,
        "disconnect",
        json!({"user": "ann", "code": 4000}),
    );
    assert_eq!(close_of(&mut ann).await.0, 4000);
    // Block: closed with 4501, refused at the upgrade, listed; until unblocked.
    let mut ann = user(addr, "ann").await;
    ok(addr, &cookie, &xsrf, "block_user", json!({"user": "ann"}));
    assert_eq!(close_of(&mut ann).await, (4501, "blocked".to_owned()));
    let refused = ClientBuilder::new(format!("ws://{addr}/ws?token={}", token("ann")))
        .protocols(["tidewire.v1"])
        .connect()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    assert_eq!(
        overview(addr, &cookie)["blocked"],
        json!([{"user": "ann", "until": null}])
    );
    ok(addr, &cookie, &xsrf, "unblock_user", json!({"user": "ann"}));
    assert_eq!(overview(addr, &cookie)["blocked"], json!([]));
    let _ann = user(addr, "ann").await;
    let o = overview_until(addr, &cookie, "ann back, news empty", |o| {
        o["nodes"][0]["connections"] == 2 && o["channels_total"] == 0
    });
    assert_eq!(o["nodes"][0]["subscriptions"], 0, "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_shows_a_channel_live_without_being_seen() {
    let srv = hub();
    let addr = srv.addr;
    let cookie = login(addr);
    // Refusals: no session, another site, no channel, a channel of the hub's own.
    let e = tail(addr, "tidewire_admin=1.AAAA", "channel=chat:lobby")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    let e = ClientBuilder::new(format!("ws://{addr}/admin/tail?channel=chat:lobby"))
        .header(header::COOKIE, HeaderValue::from_str(&cookie).unwrap())
        .origin("http://evil.example")
        .connect()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    for q in [
        "",
        "channel=",
        "channel=%24control",
        "channel=nope:x",
        "channel=a&offset=1",
        "channel=a&offset=x&epoch=e",
    ] {
        let e = tail(addr, &cookie, q).await.unwrap_err();
        assert!(e.to_string().contains("400"), "{q}: {e}");
    }
    // A tail of chat:lobby, then a member: the tail sees its join.
    let mut t = tail(addr, &cookie, "channel=chat:lobby").await.unwrap();
    let first = next(&mut t).await;
    assert_eq!(first["tail"]["channel"], "chat:lobby", "{first}");
    assert_eq!(first["tail"]["recovered"], Value::Null);
    let epoch = first["tail"]["epoch"].as_str().unwrap().to_owned();
    let mut ann = user(addr, "ann").await;
    let mut pushed = Vec::new();
    let r = request(
        &mut ann,
        json!({"id": 1, "op": "subscribe", "channel": "chat:lobby"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true);
    let join = next(&mut t).await;
    assert_eq!(join["join"]["user"], "ann", "{join}");
    // A second tail, opened after the member: never seen by it (no join, not in presence,
    // not counted).
    let mut t2 = tail(addr, &cookie, "channel=chat:lobby").await.unwrap();
    assert_eq!(next(&mut t2).await["tail"]["offset"], 0);
    let (_, presence) =
        common::hub::api_call(addr, "presence", r#"{"channel":"chat:lobby"}"#, Some(KEY));
    assert_eq!(
        presence["clients"].as_array().unwrap().len(),
        1,
        "{presence}"
    );
    let (_, channels) = common::hub::api_call(addr, "channels", "{}", Some(KEY));
    assert_eq!(
        channels["channels"]["chat:lobby"]["subscribers"], 1,
        "{channels}"
    );
    // Publications through the API appear on both tails.
    for n in 1..=3 {
        let (status, _) = common::hub::api_call(
            addr,
            "publish",
            &json!({"channel": "chat:lobby", "data": {"n": n}}).to_string(),
            Some(KEY),
        );
        assert_eq!(status, 200);
    }
    for tail in [&mut t, &mut t2] {
        for n in 1..=3 {
            let p = next(tail).await;
            assert_eq!(
                (p["offset"].clone(), p["data"].clone()),
                (json!(n), json!({"n": n})),
                "{p}"
            );
        }
    }
    // What the member saw meanwhile: its own join, then the publications.
    loop {
        let v = common::hub::next_json(&mut ann).await;
        pushed.push(v.clone());
        if v["offset"] == 3 {
            break;
        }
    }
    let joins: Vec<&Value> = pushed.iter().filter(|v| v.get("join").is_some()).collect();
    assert_eq!(joins.len(), 1, "{pushed:?}");
    assert_eq!(joins[0]["join"]["user"], "ann");
    t2.close(None).await.unwrap();
    t.close(None).await.unwrap();
    // Reopened from offset 1: the publications after it first, then live.
    let q = format!("channel=chat:lobby&offset=1&epoch={epoch}");
    let mut t = tail(addr, &cookie, &q).await.unwrap();
    let first = next(&mut t).await;
    assert_eq!(first["tail"]["recovered"], true, "{first}");
    assert_eq!(first["tail"]["offset"], 3);
    assert_eq!(next(&mut t).await["offset"], 2);
    assert_eq!(next(&mut t).await["offset"], 3);
    // From an epoch that is not the channel's: said so, and live from now.
    let mut stale = tail(addr, &cookie, "channel=chat:lobby&offset=1&epoch=gone")
        .await
        .unwrap();
    assert_eq!(next(&mut stale).await["tail"]["recovered"], false);
    // The member leaves: the tail sees it, and the presence is empty (no tail in it).
    ann.close(None).await.unwrap();
    assert_eq!(next(&mut t).await["leave"]["user"], "ann");
    let (_, presence) =
        common::hub::api_call(addr, "presence", r#"{"channel":"chat:lobby"}"#, Some(KEY));
    assert_eq!(presence["clients"], json!([]), "{presence}");
}
