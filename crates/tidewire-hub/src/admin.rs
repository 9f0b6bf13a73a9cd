//! The admin page at `/admin` (docs/admin.md): the nodes, connections and channels of the
//! cluster with live counts, a live tail of a channel, a publish form, and disconnect,
//! block and unblock of a user. Off (404, saying how to turn it on) unless an admin
//! password is set (`--admin-password`, `TIDEWIRE_ADMIN_PASSWORD`, `[admin] password`).
//!
//! Sessions keep no state on the server. Logging in with the password sets a cookie
//! holding an expiry, a random part and an HMAC-SHA256 of both, keyed by PBKDF2 of the
//! password: every node
//! of a cluster with the same password accepts it, and changing the password ends every
//! session. Failed logins wait half a second and share a bucket of 10 tries, refilled one
//! every 6 s, for the whole node: past it a login gets 429 without the password being
//! checked.
//!
//! What the page shows and does goes through the server API's methods (`api::call`), so
//! it reaches every node as the API does. State-changing calls are `POST`s that need the
//! session cookie (`SameSite=Strict`), a request from the page's own origin when the
//! browser says which, and the header `X-Tidewire-Csrf` with the session's token (from
//! `GET /admin/api/session`), which another site's page can neither read nor send.
//!
//! The live tail (`GET /admin/tail?channel=C`, a WebSocket) is a quiet subscription
//! ([`Node::subscribe_quietly`](crate::node::Node::subscribe_quietly)): it receives the
//! channel's publications and presence events like any subscriber, but is not in its
//! presence nor in the subscriber counts.
//!
//! Not here: the methods themselves (`api`), the page (`web/admin.html`, `admin.js`,
//! `admin.css`).

use crate::admission::{origin_allowed, query_param};
use crate::engine::{ClientInfo, HistoryQuery, StreamPosition};
use crate::hub::Hub;
use crate::log_text::peer;
use crate::node::Outbox;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde_json::{json, Value};
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewire::upgrade::{WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{CloseCode, CloseFrame, Message, Options, ServerBuilder, WebSocketStream};
use tidewire_hub_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};

/// The shortest admin password, in characters.
pub(crate) const MIN_PASSWORD: usize = 12;
/// How long a session lasts.
const SESSION_FOR: Duration = Duration::from_secs(12 * 3600);
/// How far in the future a session's expiry may lie beyond [`SESSION_FOR`]: the clock of
/// the node that issued it may be ahead of this one's.
const CLOCK_SKEW: u64 = 300;
const COOKIE: &str = "tidewire_admin";
/// The header that carries the session's CSRF token on state-changing calls.
pub(crate) const CSRF_HEADER: &str = "x-tidewire-csrf";
/// PBKDF2 rounds that make the session key from the password: a stolen cookie costs this
/// many HMACs per guess of the password.
const PBKDF2_ROUNDS: NonZeroU32 = NonZeroU32::new(100_000).expect("not zero");
const SESSION_SALT: &[u8] = b"tidewire admin session v1";
/// Failed logins: at most this many at once, and one more every [`LOGIN_REFILL`].
const LOGIN_BURST: f64 = 10.0;
const LOGIN_REFILL: Duration = Duration::from_secs(6);
/// How long a wrong password waits for its answer.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);
/// The largest login form.
const MAX_LOGIN_BODY: usize = 4096;
/// Channels listed on the page at most (those with the most subscribers).
const OVERVIEW_CHANNELS: usize = 100;
/// Events a tail may have waiting for the browser before it is closed (4000) and reopened
/// by the page from where it was.
const TAIL_QUEUE: usize = 1024;
/// The largest message the page may send on a tail (it sends none).
const TAIL_MAX_MESSAGE: usize = 4096;
/// Longest a tail waits for the browser to take one message.
const TAIL_SEND_TIMEOUT: Duration = Duration::from_secs(10);

const OFF: &str = "the admin page is off: start tidewire serve with --admin-password (or TIDEWIRE_ADMIN_PASSWORD, or [admin] password in the --config file; at least 12 characters); docs/admin.md\n";

const HTML: &str = "text/html; charset=utf-8";
const PAGE: &str = include_str!("../web/admin.html");
const LOGIN: &str = include_str!("../web/admin-login.html");
/// The page's files: (name under /admin/assets/, content type, body). No secret in them.
#[rustfmt::skip]
const ASSETS: &[(&str, &str, &str)] = &[
    ("admin.js", "text/javascript; charset=utf-8", include_str!("../web/admin.js")),
    ("admin.css", "text/css; charset=utf-8", include_str!("../web/admin.css")),
    ("style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
    ("favicon.svg", "image/svg+xml", include_str!("../web/favicon.svg")),
];

/// The admin page's keys and its login limit (`Hub::admin`).
pub(crate) struct Admin {
    /// Signs and checks session tokens and CSRF tokens: PBKDF2 of the password, the same
    /// on every node with the same password.
    session_key: hmac::Key,
    /// A random key of this process, to compare a given password with the real one in
    /// constant time whatever their lengths (their HMACs are compared).
    compare_key: hmac::Key,
    password_tag: hmac::Tag,
    attempts: Mutex<Attempts>,
}

/// Never shows a key.
impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

/// The bucket of login attempts.
#[derive(Debug)]
struct Attempts {
    tokens: f64,
    last: Instant,
}

/// A valid session: its cookie value and expiry.
#[derive(Debug)]
struct Session {
    token: String,
    expires: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a session token's HMAC covers: its expiry and its random part.
fn session_message(expires: u64, nonce: &str) -> String {
    format!("tidewire-admin-session:{expires}.{nonce}")
}

impl Admin {
    /// The keys of `password` (about 100,000 HMACs: once, at start).
    pub(crate) fn new(password: &str) -> Admin {
        let mut key = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            PBKDF2_ROUNDS,
            SESSION_SALT,
            password.as_bytes(),
            &mut key,
        );
        let compare_key = hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>());
        let password_tag = hmac::sign(&compare_key, password.as_bytes());
        Admin {
            session_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            compare_key,
            password_tag,
            attempts: Mutex::new(Attempts {
                tokens: LOGIN_BURST,
                last: Instant::now(),
            }),
        }
    }

    /// Whether `given` is the password (in constant time).
    fn password_is(&self, given: &str) -> bool {
        hmac::verify(
            &self.compare_key,
            given.as_bytes(),
            self.password_tag.as_ref(),
        )
        .is_ok()
    }

    /// A new session token at `now` (seconds since the Unix epoch):
    /// `EXPIRY.NONCE.HMAC`, the nonce random, so that every session (and its CSRF token)
    /// is its own.
    fn issue(&self, now: u64) -> String {
        let expires = now + SESSION_FOR.as_secs();
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>());
        let tag = hmac::sign(
            &self.session_key,
            session_message(expires, &nonce).as_bytes(),
        );
        format!("{expires}.{nonce}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The expiry of `token` if it is a session token of this password, valid at `now`.
    fn check(&self, token: &str, now: u64) -> Option<u64> {
        let (expires, rest) = token.split_once('.')?;
        let (nonce, tag) = rest.split_once('.')?;
        if nonce.len() != 16 {
            return None;
        }
        if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        if expires <= now || expires > now + SESSION_FOR.as_secs() + CLOCK_SKEW {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let message = session_message(expires, nonce);
        hmac::verify(&self.session_key, message.as_bytes(), &tag).ok()?;
        Some(expires)
    }

    /// The CSRF token of session `token`.
    fn csrf(&self, token: &str) -> String {
        let tag = hmac::sign(&self.session_key, format!("csrf:{token}").as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    fn csrf_ok(&self, token: &str, given: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(given) else {
            return false;
        };
        hmac::verify(
            &self.session_key,
            format!("csrf:{token}").as_bytes(),
            &given,
        )
        .is_ok()
    }

    /// Takes a login attempt from the bucket, or says how long until there is one.
    fn attempt(&self, now: Instant) -> Result<(), Duration> {
        let mut a = crate::lock(&self.attempts);
        let refill =
            now.saturating_duration_since(a.last).as_secs_f64() / LOGIN_REFILL.as_secs_f64();
        a.tokens = (a.tokens + refill).min(LOGIN_BURST);
        a.last = now;
        if a.tokens >= 1.0 {
            a.tokens -= 1.0;
            Ok(())
        } else {
            Err(LOGIN_REFILL.mul_f64(1.0 - a.tokens))
        }
    }

    /// Gives back the attempt of a successful login: only failures count.
    fn succeeded(&self) {
        let mut a = crate::lock(&self.attempts);
        a.tokens = (a.tokens + 1.0).min(LOGIN_BURST);
    }

    /// The valid session among the request's cookies, if any.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let now = unix_now();
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                let Some((name, token)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name != COOKIE {
                    continue;
                }
                if let Some(expires) = self.check(token, now) {
                    return Some(Session {
                        token: token.to_owned(),
                        expires,
                    });
                }
            }
        }
        None
    }
}

/// Adds the admin routes to `router`: the page and its calls when `on`, else a 404 that
/// says how to turn it on for every path under `/admin`.
pub(crate) fn routes(router: Router<Arc<Hub>>, on: bool) -> Router<Arc<Hub>> {
    if !on {
        return router
            .route("/admin", any(off))
            .route("/admin/{*rest}", any(off));
    }
    router
        .route("/admin", get(page))
        .route("/admin/", get(|| async { redirect("/admin", None) }))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/session", get(session_info))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/{method}", post(api_call))
        .route("/admin/tail", get(tail_upgrade))
        .route("/admin/assets/{file}", get(asset))
}

async fn off() -> Response {
    (StatusCode::NOT_FOUND, OFF).into_response()
}

/// The headers of every admin page: never cached, never framed, scripts and connections
/// to this origin only.
fn page_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, HTML)], body).into_response();
    page_headers(&mut r);
    r
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The login form, with `message` (an error) above it.
fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let message = match message {
        Some(m) => format!(
            "<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>",
            escape(m)
        ),
        None => String::new(),
    };
    html(status, LOGIN.replace("{{MESSAGE}}", &message))
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    page_headers(&mut r);
    r
}

/// Whether the request came from a page of this server, as far as the browser says
/// (`Origin`; requests without one are not from another site's page).
fn same_origin(headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            origin_allowed(&[], origin.to_str().unwrap_or(""), host)
        }
    }
}

/// Whether the browser reached us over TLS: ours, or a proxy's that says so.
fn secure(hub: &Hub, headers: &HeaderMap) -> bool {
    hub.config.tls.is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn cookie(hub: &Hub, headers: &HeaderMap, value: &str, max_age: u64) -> String {
    let secure = if secure(hub, headers) { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// A JSON error as the server API writes them.
fn json_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = json!({"error": {"code": code.0, "message": message}});
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response();
    page_headers(&mut r);
    r
}

fn json_ok(v: &Value) -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
        .into_response();
    page_headers(&mut r);
    r
}

fn no_session() -> Response {
    json_error(
        StatusCode::UNAUTHORIZED,
        ErrorCode::UNAUTHORIZED,
        "unauthorized: log in at /admin (the session cookie is missing, wrong or expired)",
    )
}

fn foreign_origin() -> Response {
    json_error(
        StatusCode::FORBIDDEN,
        ErrorCode::PERMISSION_DENIED,
        "forbidden: the request comes from another site's page (Origin)",
    )
}

/// `GET /admin`: the page with a session, the login form without.
async fn page(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let Some(admin) = &hub.admin else {
        return off().await;
    };
    match admin.session(&headers) {
        Some(_) => html(StatusCode::OK, PAGE.to_owned()),
        None => login_page(StatusCode::OK, None),
    }
}

/// `GET /admin/assets/{file}`.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some(&(_, content_type, body)) => {
            let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
            page_headers(&mut r);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("no admin asset {}\n", peer(&file)),
        )
            .into_response(),
    }
}

/// `POST /admin/login` with the form field `password`: a session cookie and back to
/// `/admin`, or the form again with what went wrong.
async fn login(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(admin) = &hub.admin else {
        return off().await;
    };
    if !same_origin(&headers) {
        let m = "this form must be sent from the login page of this server (the request's Origin is another site)";
        return login_page(StatusCode::FORBIDDEN, Some(m));
    }
    if body.len() > MAX_LOGIN_BODY {
        let m = format!("the login form is larger than {MAX_LOGIN_BODY} bytes");
        return login_page(StatusCode::PAYLOAD_TOO_LARGE, Some(&m));
    }
    let password = std::str::from_utf8(&body)
        .ok()
        .and_then(|form| query_param(Some(form), "password"));
    let Some(password) = password else {
        let m = "send the password as the form field password (application/x-www-form-urlencoded)";
        return login_page(StatusCode::BAD_REQUEST, Some(m));
    };
    if let Err(wait) = admin.attempt(Instant::now()) {
        let secs = wait.as_secs() + 1;
        let m = format!("too many failed logins on this node: try again in {secs} s");
        let mut r = login_page(StatusCode::TOO_MANY_REQUESTS, Some(&m));
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    if !admin.password_is(&password) {
        tracing::warn!("admin page: a login with a wrong password");
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        return login_page(StatusCode::UNAUTHORIZED, Some("wrong password"));
    }
    admin.succeeded();
    tracing::info!("admin page: logged in");
    let token = admin.issue(unix_now());
    redirect(
        "/admin",
        Some(cookie(&hub, &headers, &token, SESSION_FOR.as_secs())),
    )
}

/// `POST /admin/logout`: the cookie is cleared (the token itself stays valid until it
/// expires: nothing is kept on the server).
async fn logout(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if hub.admin.is_none() {
        return off().await;
    }
    if !same_origin(&headers) {
        return foreign_origin();
    }
    let mut r = json_ok(&json!({}));
    if let Ok(c) = HeaderValue::from_str(&cookie(&hub, &headers, "", 0)) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// `GET /admin/api/session`: the CSRF token for the state-changing calls, when the session
/// ends, and this node.
async fn session_info(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let Some(admin) = &hub.admin else {
        return off().await;
    };
    let Some(s) = admin.session(&headers) else {
        return no_session();
    };
    json_ok(&json!({
        "csrf": admin.csrf(&s.token),
        "csrf_header": CSRF_HEADER,
        "expires": s.expires,
        "node": hub.node_name,
        "engine": hub.node.broker().health().engine,
    }))
}

/// The server API's result of `method` without parameters.
async fn call_plain(hub: &Arc<Hub>, method: &str) -> Result<Value, Response> {
    let empty = crate::api::parse_object(b"{}").map_err(|e| e.into_response())?;
    crate::api::call(hub, method, empty)
        .await
        .map_err(|e| e.into_response())
}

/// `GET /admin/api/overview`: the nodes (this one read now, the others as they last
/// announced themselves), the channels with the most subscribers and their positions
/// (the page derives publication rates from the offsets), the blocked users.
async fn overview(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    let Some(admin) = &hub.admin else {
        return off().await;
    };
    if admin.session(&headers).is_none() {
        return no_session();
    }
    let info = match call_plain(&hub, "info").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let here = serde_json::to_value(hub.status()).unwrap_or(Value::Null);
    let nodes: Vec<Value> = info["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| {
                    if n["name"] == here["name"] {
                        here.clone()
                    } else {
                        n.clone()
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let channels = match call_plain(&hub, "channels").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut list: Vec<(String, u64)> = channels["channels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, c)| (name.clone(), c["subscribers"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let total = list.len();
    list.truncate(OVERVIEW_CHANNELS);
    let positions = futures_util::future::join_all(
        list.iter()
            .map(|(name, _)| hub.node.history_page(name, HistoryQuery::Position)),
    )
    .await;
    let channels: Vec<Value> = list
        .into_iter()
        .zip(positions)
        .map(|((name, subscribers), position)| match position {
            Ok(page) => json!({
                "name": name,
                "subscribers": subscribers,
                "offset": page.position.offset,
                "epoch": page.position.epoch,
            }),
            Err(e) => json!({"name": name, "subscribers": subscribers, "error": e.to_string()}),
        })
        .collect();
    let blocked: Vec<Value> = hub
        .control
        .blocked()
        .into_iter()
        .map(|(user, until)| json!({"user": user, "until": until}))
        .collect();
    let health = hub.node.broker().health();
    json_ok(&json!({
        "node": hub.node_name,
        "engine": health.engine,
        "up": health.is_up(),
        "time_ms": unix_millis(),
        "nodes": nodes,
        "channels": channels,
        "channels_total": total,
        "blocked": blocked,
    }))
}

/// `POST /admin/api/{method}`: a server API method (docs/api.md) with the session and its
/// CSRF token instead of the API key.
async fn api_call(
    State(hub): State<Arc<Hub>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(admin) = &hub.admin else {
        return off().await;
    };
    let Some(s) = admin.session(&headers) else {
        return no_session();
    };
    if !same_origin(&headers) {
        return foreign_origin();
    }
    let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !given.is_some_and(|g| admin.csrf_ok(&s.token, g)) {
        return json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::PERMISSION_DENIED,
            "forbidden: send the header X-Tidewire-Csrf with the token of GET /admin/api/session",
        );
    }
    let result = match crate::api::parse_object(&body) {
        Ok(params) => crate::api::call(&hub, &method, params).await,
        Err(e) => Err(e),
    };
    // What changes something is logged at `info` (the page reads presence every 1.5 s
    // while a tail is open: reads at `debug`).
    let changes = !READS.contains(&method.as_str());
    let shown = peer(&method).to_string();
    match result {
        Ok(v) => {
            if changes {
                tracing::info!(method = shown, "admin page: API call");
            } else {
                tracing::debug!(method = shown, "admin page: API call");
            }
            json_ok(&v)
        }
        Err(e) => {
            if changes {
                tracing::info!(method = shown, "admin page: API call failed");
            } else {
                tracing::debug!(method = shown, "admin page: API call failed");
            }
            let mut r = e.into_response();
            page_headers(&mut r);
            r
        }
    }
}

/// The server API's methods that change nothing.
const READS: &[&str] = &["presence", "presence_stats", "history", "channels", "info"];

/// `GET /admin/tail?channel=C[&offset=O&epoch=E]`: a WebSocket that carries the channel's
/// events as `tidewire.v1` pushes (publications from after the position, when given),
/// after a first message `{"tail":{"channel","offset","epoch","recovered"}}`.
async fn tail_upgrade(
    State(hub): State<Arc<Hub>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(admin) = &hub.admin else {
        return off().await;
    };
    let Some(session) = admin.session(&headers) else {
        return no_session();
    };
    if !same_origin(&headers) {
        return foreign_origin();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let bad = |m: String| json_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, &m);
    let Some(channel) = query_param(query.as_deref(), "channel") else {
        return bad("give the channel: /admin/tail?channel=NAME".into());
    };
    if let Err(e) = hub.node.namespaces().check(&channel) {
        return bad(format!("channel {}: {e}", peer(&channel)));
    }
    let offset = query_param(query.as_deref(), "offset");
    let epoch = query_param(query.as_deref(), "epoch");
    let since = match (offset, epoch) {
        (None, None) => None,
        (Some(o), Some(epoch)) => match o.parse::<u64>() {
            Ok(offset) => Some(StreamPosition { offset, epoch }),
            Err(_) => return bad("offset must be a whole number".into()),
        },
        _ => return bad("give both offset and epoch, or neither".into()),
    };
    let options = Options::default()
        .heartbeat(hub.config.ping_interval, hub.config.idle_timeout)
        .limits(tidewire::Limits::default().max_message_size(TAIL_MAX_MESSAGE));
    let server = ServerBuilder::new().options(options);
    ws.server(server).on_upgrade(move |ws| {
        Box::pin(tail(
            Box::new(Tail {
                hub,
                channel,
                since,
                expires: session.expires,
            }),
            ws,
        ))
    })
}

/// What a tail starts from.
struct Tail {
    hub: Arc<Hub>,
    channel: String,
    since: Option<StreamPosition>,
    /// When the session that opened it ends (seconds since the Unix epoch).
    expires: u64,
}

/// Sends `text`, bounded by [`TAIL_SEND_TIMEOUT`]; false when the browser is gone or
/// does not read.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    text: String,
) -> bool {
    matches!(
        tokio::time::timeout(TAIL_SEND_TIMEOUT, ws.send(Message::text(text))).await,
        Ok(Ok(()))
    )
}

async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
) {
    let frame = CloseFrame::new(CloseCode(code), reason.to_owned());
    let _ = tokio::time::timeout(TAIL_SEND_TIMEOUT, ws.close(Some(frame))).await;
}

/// Runs one tail until the browser goes, the session ends, the hub shuts down, or the
/// browser falls behind (4000: the page reopens it from its last offset).
async fn tail<S: AsyncRead + AsyncWrite + Unpin>(start: Box<Tail>, mut ws: WebSocketStream<S>) {
    let Tail {
        hub,
        channel,
        since,
        expires,
    } = *start;
    let outbox = Outbox::new(TAIL_QUEUE);
    let n = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let client = Arc::new(ClientInfo::new(format!("admin-tail-{n}")));
    let asked = since.is_some();
    let mut sub = match hub
        .node
        .subscribe_quietly(&channel, client.clone(), since, outbox.sender())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let message = json!({"error": format!("cannot tail {}: {e}", peer(&channel))});
            if send(&mut ws, message.to_string()).await {
                close(&mut ws, 1011, "cannot subscribe").await;
            }
            return;
        }
    };
    tracing::debug!(
        channel = peer(&channel).to_string(),
        "admin page: tail opened"
    );
    let recovered = asked.then(|| sub.recovered());
    let first = json!({"tail": {
        "channel": channel,
        "offset": sub.position.offset,
        "epoch": sub.position.epoch,
        "recovered": recovered,
    }});
    let mut open = send(&mut ws, first.to_string()).await;
    for event in sub.take_recovered() {
        if !open {
            break;
        }
        open = send(&mut ws, event.to_json()).await;
    }
    let mut shutdown = hub.shutdown.clone();
    let left = expires.saturating_sub(unix_now());
    let session_end = tokio::time::sleep(Duration::from_secs(left));
    tokio::pin!(session_end);
    while open {
        tokio::select! {
            event = outbox.recv() => match event {
                Ok((_, event)) => open = send(&mut ws, event.to_json()).await,
                Err(_) => {
                    close(&mut ws, 4000, "the tail fell behind: reopen it").await;
                    break;
                }
            },
            message = ws.recv() => match message {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = &mut session_end => {
                close(&mut ws, 4001, "the admin session has expired: log in again").await;
                break;
            }
            _ = shutdown.changed() => {
                close(&mut ws, 1001, "server shutting down").await;
                break;
            }
        }
    }
    hub.node.unsubscribe(sub.subscription, &client).await;
    tracing::debug!(
        channel = peer(&channel).to_string(),
        "admin page: tail closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_expire_and_resist_tampering() {
        let admin = Admin::new("correct horse battery");
        let now = 1_700_000_000;
        let token = admin.issue(now);
        assert_eq!(admin.check(&token, now), Some(now + SESSION_FOR.as_secs()));
        assert!(admin
            .check(&token, now + SESSION_FOR.as_secs() - 1)
            .is_some());
        assert_ne!(admin.issue(now), token, "each session is its own");
        assert_eq!(
            admin.check(&token, now + SESSION_FOR.as_secs()),
            None,
            "expired"
        );
        // Another node with the same password accepts it; another password does not.
        assert!(Admin::new("correct horse battery")
            .check(&token, now)
            .is_some());
        assert!(Admin::new("correct horse battery!")
            .check(&token, now)
            .is_none());
        // A later expiry or another nonce with the same tag, a changed tag, garbage.
        let (exp, rest) = token.split_once('.').unwrap();
        let (nonce, tag) = rest.split_once('.').unwrap();
        let later = format!("{}.{rest}", exp.parse::<u64>().unwrap() + 1);
        assert_eq!(admin.check(&later, now), None);
        let other = format!("{exp}.{}.{tag}", "A".repeat(nonce.len()));
        assert_eq!(admin.check(&other, now), None);
        let mut bytes = tag.as_bytes().to_vec();
        bytes[0] = if bytes[0] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{exp}.{nonce}.{}", String::from_utf8(bytes).unwrap());
        assert_eq!(admin.check(&flipped, now), None);
        for junk in [
            "",
            ".",
            "x.y",
            "1.",
            exp,
            "99999999999999999999999.a",
            "-1.AAAA",
        ] {
            assert_eq!(admin.check(junk, now), None, "{junk}");
        }
        // A token made at a time far ahead of this node's clock.
        let ahead = admin.issue(now + 3600);
        assert_eq!(admin.check(&ahead, now), None);
    }

    #[test]
    fn passwords_and_csrf_tokens() {
        let admin = Admin::new("correct horse battery");
        assert!(admin.password_is("correct horse battery"));
        assert!(!admin.password_is("correct horse batter"));
        assert!(!admin.password_is(""));
        let token = admin.issue(unix_now());
        let csrf = admin.csrf(&token);
        assert!(admin.csrf_ok(&token, &csrf));
        assert!(
            !admin.csrf_ok(&admin.issue(unix_now() + 1), &csrf),
            "per session"
        );
        assert!(!admin.csrf_ok(&token, ""));
        assert!(!admin.csrf_ok(&token, "%%%"));
        assert!(!admin.csrf_ok(&token, &token));
    }

    #[test]
    fn the_session_is_read_from_the_cookies() {
        let admin = Admin::new("correct horse battery");
        let token = admin.issue(unix_now());
        let mut headers = HeaderMap::new();
        assert!(admin.session(&headers).is_none());
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=b; tidewire_admin=nope"),
        );
        assert!(admin.session(&headers).is_none());
        headers.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={token}; y=2")).unwrap(),
        );
        assert_eq!(admin.session(&headers).unwrap().token, token);
    }

    #[test]
    fn failed_logins_are_limited_and_refilled() {
        let admin = Admin::new("correct horse battery");
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(admin.attempt(t0).is_ok());
        }
        let wait = admin.attempt(t0).unwrap_err();
        assert!(wait <= LOGIN_REFILL && wait > Duration::ZERO, "{wait:?}");
        // A success gives its attempt back.
        admin.succeeded();
        assert!(admin.attempt(t0).is_ok());
        assert!(admin.attempt(t0).is_err());
        assert!(admin.attempt(t0 + LOGIN_REFILL).is_ok());
        assert!(admin.attempt(t0 + LOGIN_REFILL).is_err());
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
