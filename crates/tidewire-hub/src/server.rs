//! The HTTP side of `tidewire serve`: routes, admission (capacity, origin, token), the
//! WebSocket endpoints, the HTTP publish API, metrics and graceful shutdown.

use crate::auth::{AuthConfig, AuthError, Identity};
use crate::engine::{Engine, MemoryEngine, NamespaceConfig, NamespaceOptions};
use crate::metrics::{Gauges, HandshakeFailure, Metrics};
use crate::rooms::Rooms;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::upgrade::{WebSocketUpgrade, WebSocketUpgradeRejection};
use tidewire::{
    CloseCode, CloseFrame, DeflateConfig, Message, Options, PreparedMessage, ServerBuilder,
};
use tokio::sync::{broadcast, watch};

/// Log output of the `tidewire` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Settings of the hub. `Default` is the embedded configuration `tidewire serve` runs with;
/// [`HubConfig::load_file`] reads a TOML file over it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Log output (used by the binary). Default human.
    pub log_format: LogFormat,
    /// Origins allowed besides the server's own host (`https://app.example.com`), or `*`
    /// for any. Requests without `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Serve the demo pages at `/` and run the demo ticker (a price tick on `live:ticks`
    /// every 100 ms). Default true.
    pub demo: bool,
    /// Send a room message back to its sender too. Default false.
    pub echo_to_sender: bool,
    /// Subprotocols rooms speak, most preferred first: the first of these that a client
    /// offers in `Sec-WebSocket-Protocol` is selected. A client that offers only others is
    /// refused with 400 and a reason (RFC 6455 would let the server answer without the
    /// header, which browsers fail with a bare 1006); one that offers none is accepted.
    /// Rooms relay messages whatever the name, so any list works. Default `chat`,
    /// `superchat` (the tutorial's `new WebSocket(url, ["chat", "superchat"])`).
    pub room_protocols: Vec<String>,
    /// Application heartbeats in rooms: a text message equal to one of these (ignoring
    /// ASCII case and surrounding whitespace) is answered to its sender alone with
    /// [`HubConfig::room_heartbeat_reply`] and never broadcast, so a page that sends a
    /// text heartbeat does not spam the room. Empty: every message is broadcast.
    /// Default `ping`, `heartbeat`. (The server pings every connection itself, and
    /// browsers answer pings on their own: a page needs no heartbeat of its own.)
    pub room_heartbeat: Vec<String>,
    /// The answer to a room heartbeat, empty for none. Default `pong`.
    pub room_heartbeat_reply: String,
    /// How many messages a room member may fall behind before it is disconnected as a
    /// slow consumer. Default 1024.
    pub room_buffer: usize,
    /// Server pings: interval and the silence after which a connection is closed.
    /// Default 20 s and 60 s.
    pub ping_interval: Duration,
    /// See [`HubConfig::ping_interval`].
    pub idle_timeout: Duration,
    /// Largest message accepted from a client. Default 1 MiB.
    pub max_message_size: usize,
    /// WebSocket connections held at once (rooms and channels); beyond it upgrades get
    /// 503. Default 100,000.
    pub max_connections: usize,
    /// Publications per second one connection may make (token bucket), 0 for no limit.
    /// Default 100.
    pub publish_rate: f64,
    /// Bucket size of the publish rate limit. Default 200.
    pub publish_burst: u32,
    /// Events of a channel a `/ws` subscriber may fall behind (not yet written to its
    /// socket) before it is a slow consumer. Default 4096.
    pub send_queue: usize,
    /// Bytes a connection may have waiting for its socket before it is a slow consumer.
    /// Default 4 MiB.
    pub send_buffer: usize,
    /// Channels one connection may subscribe to. Default 1000.
    pub max_subscriptions: usize,
    /// permessage-deflate policy, `None` for off. Default on, without server context
    /// takeover, so that a broadcast is compressed once for all members.
    pub compression: Option<DeflateConfig>,
    /// Token checking; `None` (the default) for anonymous access.
    pub auth: Option<AuthConfig>,
    /// Key for `POST /api/publish` (`Authorization: apikey KEY`); the API is off without it.
    pub api_key: Option<String>,
    /// Namespaces. Default: see [`default_namespaces`].
    pub namespaces: NamespaceConfig,
    /// Serve `https://` and `wss://` with this certificate chain and key (PEM files), read
    /// at start and again on SIGHUP; `None` (the default) for plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of a TLS server: read at start, and again on each SIGHUP (a renewed
/// certificate takes effect for new connections; connections already open keep theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Reads both files into a TLS acceptor; the error names the file at fault.
    pub fn load(&self) -> std::io::Result<tidewire::tokio_rustls::TlsAcceptor> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        let (cert, key) = (read(&self.cert)?, read(&self.key)?);
        let config = tidewire::server_config_from_pem(&cert, &key).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "invalid certificate or key ({}, {}): {e}",
                    self.cert.display(),
                    self.key.display()
                ),
            )
        })?;
        Ok(tidewire::tokio_rustls::TlsAcceptor::from(config))
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Human,
            allowed_origins: Vec::new(),
            demo: true,
            echo_to_sender: false,
            room_protocols: vec!["chat".into(), "superchat".into()],
            room_heartbeat: vec!["ping".into(), "heartbeat".into()],
            room_heartbeat_reply: "pong".into(),
            room_buffer: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 1 << 20,
            max_connections: 100_000,
            publish_rate: 100.0,
            publish_burst: 200,
            send_queue: 4096,
            send_buffer: 4 << 20,
            max_subscriptions: 1000,
            compression: Some(DeflateConfig::default().server_no_context_takeover(true)),
            auth: None,
            api_key: None,
            namespaces: default_namespaces(),
            tls: None,
        }
    }
}

/// The embedded namespaces, which the demo pages use:
/// - the default one and `chat`: the last 1,000 publications for 10 minutes, presence on;
/// - `typing`: typing indicators, no history, no presence;
/// - `board`: whiteboard strokes, the last 10,000 for an hour (late joiners redraw from
///   history), presence on;
/// - `live`: server-published data (the demo ticker), clients may not publish, the last 600
///   (a minute of ticks) for 10 minutes, no presence.
pub fn default_namespaces() -> NamespaceConfig {
    let base = NamespaceOptions::default();
    NamespaceConfig::new()
        .default_namespace(base.clone().presence(true))
        .namespace("chat", base.clone().presence(true))
        .namespace("typing", base.clone().history_size(0))
        .namespace(
            "board",
            base.clone()
                .presence(true)
                .history_size(10_000)
                .history_ttl(Duration::from_secs(3600)),
        )
        .namespace("live", base.publish(false).history_size(600))
}

/// Shared state of a running hub.
#[derive(Debug)]
pub struct Hub {
    pub(crate) config: HubConfig,
    rooms: Rooms,
    room_server: ServerBuilder,
    channel_server: ServerBuilder,
    next_id: AtomicU64,
    room_conns: AtomicUsize,
    channel_conns: AtomicUsize,
    pub(crate) subscribers: AtomicUsize,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) engine: Arc<MemoryEngine>,
    pub(crate) metrics: Metrics,
    /// The budget of refusal log lines.
    refusal_log: std::sync::Mutex<RefusalLog>,
    /// The listener's count of clients refused for want of descriptors (set by `serve`).
    refused: std::sync::OnceLock<tidewire::listener::RefusedCounter>,
}

impl Hub {
    /// A hub with `config` whose connections close when `shutdown` turns true.
    pub fn new(config: HubConfig, shutdown: watch::Receiver<bool>) -> Arc<Hub> {
        let limits = tidewire::Limits::default()
            .max_message_size(config.max_message_size)
            .max_frame_size(config.max_message_size);
        let options = Options::default()
            .limits(limits)
            .heartbeat(config.ping_interval, config.idle_timeout);
        let server = ServerBuilder::new()
            .options(options)
            .compression(config.compression);
        Arc::new(Hub {
            rooms: Rooms::new(config.room_buffer),
            channel_server: server.clone().protocols([CHANNEL_PROTOCOL]),
            room_server: server.protocols(config.room_protocols.iter().cloned()),
            engine: Arc::new(
                MemoryEngine::new(config.namespaces.clone()).subscriber_buffer(config.send_queue),
            ),
            config,
            next_id: AtomicU64::new(1),
            room_conns: AtomicUsize::new(0),
            channel_conns: AtomicUsize::new(0),
            subscribers: AtomicUsize::new(0),
            shutdown,
            metrics: Metrics::default(),
            refusal_log: std::sync::Mutex::new(RefusalLog::new()),
            refused: std::sync::OnceLock::new(),
        })
    }

    /// Number of open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.room_conns.load(Ordering::Relaxed) + self.channel_conns.load(Ordering::Relaxed)
    }

    /// The metrics page, as `GET /metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&Gauges {
            rooms_connections: self.room_conns.load(Ordering::Relaxed),
            channel_connections: self.channel_conns.load(Ordering::Relaxed),
            rooms: self.rooms.len(),
            channels: self.engine.len(),
            subscribers: self.subscribers.load(Ordering::Relaxed),
            refused_out_of_descriptors: self.refused.get().map_or(0, |c| c.get()),
        })
    }

    pub(crate) fn next_client_id(&self) -> String {
        format!("c-{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The subprotocol of `/ws` (docs/protocol.md).
const CHANNEL_PROTOCOL: &str = "tidewire.v1";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The demo pages, embedded: (path, content type, body).
#[rustfmt::skip]
const PAGES: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../web/index.html")),
    ("/chat", HTML, include_str!("../web/chat.html")),
    ("/live", HTML, include_str!("../web/live.html")),
    ("/board", HTML, include_str!("../web/board.html")),
    ("/bare", HTML, include_str!("../web/bare.html")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
    ("/demo.js", JS, include_str!("../web/demo.js")),
    // Browsers ask for /favicon.ico whatever the pages link; an SVG is fine under that name.
    ("/favicon.ico", "image/svg+xml", include_str!("../web/favicon.svg")),
    ("/favicon.svg", "image/svg+xml", include_str!("../web/favicon.svg")),
    // The browser library (clients/js compiled; `npm run web` there refreshes web/lib).
    ("/lib/index.js", JS, include_str!("../web/lib/index.js")),
    ("/lib/client.js", JS, include_str!("../web/lib/client.js")),
    ("/lib/subscription.js", JS, include_str!("../web/lib/subscription.js")),
    ("/lib/errors.js", JS, include_str!("../web/lib/errors.js")),
    ("/lib/backoff.js", JS, include_str!("../web/lib/backoff.js")),
    ("/lib/types.js", JS, include_str!("../web/lib/types.js")),
];

/// The routes of the hub.
pub fn router(hub: Arc<Hub>) -> Router {
    let mut router = Router::new();
    if hub.config.demo {
        for &(path, content_type, body) in PAGES {
            router = router.route(
                path,
                get(move || async move {
                    (
                        [
                            (header::CONTENT_TYPE, content_type),
                            (header::CACHE_CONTROL, "no-cache"),
                        ],
                        body,
                    )
                }),
            );
        }
    }
    router
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/rooms/{room}", get(room_upgrade))
        .route("/ws", get(channel_upgrade))
        .route("/api/publish", post(api_publish))
        .fallback(|uri: Uri| async move {
            (
                StatusCode::NOT_FOUND,
                format!("no route for {}\n", uri.path()),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}\n", uri.path()),
            )
        })
        .with_state(hub)
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics_text(),
    )
        .into_response()
}

/// Which endpoint a connection belongs to.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Rooms,
    Channels,
}

/// A connection counted against `max_connections` from admission (before the 101) until
/// it ends, whether or not the upgrade completes.
pub(crate) struct Slot {
    hub: Arc<Hub>,
    endpoint: Endpoint,
}

impl Slot {
    fn counter(&self) -> &AtomicUsize {
        match self.endpoint {
            Endpoint::Rooms => &self.hub.room_conns,
            Endpoint::Channels => &self.hub.channel_conns,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

/// What admission found out about a connection.
pub(crate) struct Admitted {
    pub slot: Slot,
    /// The identity from `?token=`, if one was given and verified.
    pub identity: Option<Identity>,
}

/// Refused handshakes logged at `info` per [`REFUSAL_LOG_WINDOW`]; the rest are counted
/// and summed up in one line when the next window opens, so a flood of bad clients cannot
/// flood the log.
const REFUSALS_LOGGED: u32 = 20;
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// The budget of refusal log lines (see [`REFUSALS_LOGGED`]).
#[derive(Debug)]
struct RefusalLog {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    fn new() -> Self {
        RefusalLog {
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether to log this refusal; and the refusals left unlogged in the window that
    /// just ended, if one did and some were.
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped = 0;
        if now.saturating_duration_since(self.window_start) >= REFUSAL_LOG_WINDOW {
            dropped = std::mem::take(&mut self.suppressed);
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged < REFUSALS_LOGGED {
            self.logged += 1;
            (true, dropped)
        } else {
            self.suppressed += 1;
            (false, dropped)
        }
    }
}

/// Answers a refused upgrade with `status` and `reason`, counts it, and logs it at `info`
/// with the client's origin (rate-limited: [`RefusalLog`]). Peer-supplied text is escaped
/// in the log, so it cannot forge a log line.
fn refuse(
    hub: &Hub,
    why: HandshakeFailure,
    status: StatusCode,
    reason: String,
    headers: &HeaderMap,
) -> Box<Response> {
    note_refusal(hub, why, status, &reason, headers);
    let mut response = (status, format!("{reason}\n")).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Clients that honour it (tidewire's ReconnectingClient does) spread out their
        // retries instead of coming back at once.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("5"));
    }
    Box::new(response)
}

/// Counts a refused upgrade and logs it (see [`refuse`]).
fn note_refusal(
    hub: &Hub,
    why: HandshakeFailure,
    status: StatusCode,
    reason: &str,
    headers: &HeaderMap,
) {
    hub.metrics.handshake_failed(why);
    if matches!(why, HandshakeFailure::Auth) {
        hub.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
    let (log, dropped) = match hub.refusal_log.lock() {
        Ok(mut budget) => budget.admit(Instant::now()),
        Err(_) => (true, 0),
    };
    if dropped > 0 {
        tracing::info!(
            "{dropped} more refused handshakes were not logged in the last {} s (see tidewire_handshake_failures_total on /metrics)",
            REFUSAL_LOG_WINDOW.as_secs()
        );
    }
    if log {
        let origin = headers.get(header::ORIGIN).map(|o| {
            String::from_utf8_lossy(o.as_bytes())
                .escape_debug()
                .to_string()
        });
        let agent = headers.get(header::USER_AGENT).map(|a| {
            String::from_utf8_lossy(a.as_bytes())
                .escape_debug()
                .to_string()
        });
        tracing::info!(
            status = status.as_u16(),
            origin = origin.as_deref().unwrap_or("-"),
            user_agent = agent.as_deref().unwrap_or("-"),
            "handshake refused: {}",
            reason.escape_debug()
        );
    }
}

/// The value of `name` in a query string (percent-decoding `%XX` and `+`).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = v.as_bytes();
            let mut out = Vec::with_capacity(v.len());
            let mut i = 0;
            while i < v.len() {
                match v[i] {
                    b'%' if i + 2 < v.len() => {
                        let hex = std::str::from_utf8(&v[i + 1..i + 3]).ok();
                        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            Some(b) => {
                                out.push(b);
                                i += 3;
                                continue;
                            }
                            None => out.push(b'%'),
                        }
                    }
                    b'+' => out.push(b' '),
                    b => out.push(b),
                }
                i += 1;
            }
            return String::from_utf8(out).ok();
        }
    }
    None
}

/// Whether `origin` may open a WebSocket here: the server's own host (the `Host` header),
/// or one of `allowed_origins` (`*` for any).
fn origin_allowed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    match host {
        Some(h) => !authority.is_empty() && authority.eq_ignore_ascii_case(h),
        None => false,
    }
}

/// Capacity, origin and URL token, in that order; the refusal is an HTTP status with a
/// reason.
fn admit(
    hub: &Arc<Hub>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    query: Option<&str>,
    token_required: bool,
) -> Result<Admitted, Box<Response>> {
    let slot = Slot {
        hub: hub.clone(),
        endpoint,
    };
    slot.counter().fetch_add(1, Ordering::Relaxed);
    if hub.connections() > hub.config.max_connections {
        drop(slot);
        return Err(refuse(
            hub,
            HandshakeFailure::Capacity,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "server at capacity: {} connections (limits.max_connections)",
                hub.config.max_connections
            ),
            headers,
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !origin_allowed(&hub.config.allowed_origins, origin, host) {
            return Err(refuse(
                hub,
                HandshakeFailure::Origin,
                StatusCode::FORBIDDEN,
                format!("origin not allowed: {origin} (add it to allowed_origins)"),
                headers,
            ));
        }
    }
    let identity = match (&hub.config.auth, query_param(query, "token")) {
        (None, _) => None,
        (Some(auth), Some(token)) => match auth.verify(&token) {
            Ok(id) => Some(id),
            Err(e) => {
                return Err(refuse(
                    hub,
                    HandshakeFailure::Auth,
                    StatusCode::UNAUTHORIZED,
                    format!("unauthorized: {e}"),
                    headers,
                ))
            }
        },
        (Some(auth), None) if token_required && !auth.anonymous() => {
            return Err(refuse(
                hub,
                HandshakeFailure::Auth,
                StatusCode::UNAUTHORIZED,
                format!("unauthorized: {} (pass ?token=JWT)", AuthError::Missing),
                headers,
            ))
        }
        (Some(_), None) => None,
    };
    Ok(Admitted { slot, identity })
}

fn upgrade_refused(hub: &Hub, e: WebSocketUpgradeRejection, headers: &HeaderMap) -> Response {
    note_refusal(
        hub,
        HandshakeFailure::BadRequest,
        e.0.status(),
        e.0.reason(),
        headers,
    );
    e.into_response()
}

/// Why a handshake's subprotocols are refused at `endpoint`, or `None` if they are fine.
/// Rooms select the first of `rooms.protocols` the client offers, and accept a client that
/// offers none; `/ws` needs `tidewire.v1`. RFC 6455 would let the server answer 101
/// without a subprotocol, which a browser that offered some fails with a bare 1006: a 400
/// with the reason tells the developer what to change.
fn subprotocol_refusal(config: &HubConfig, endpoint: Endpoint, offered: &[&str]) -> Option<String> {
    match endpoint {
        Endpoint::Rooms => {
            let spoken = &config.room_protocols;
            if offered.is_empty() || offered.iter().any(|p| spoken.iter().any(|s| s == p)) {
                return None;
            }
            Some(if spoken.is_empty() {
                format!(
                    "rooms speak no subprotocol: connect without Sec-WebSocket-Protocol (offered: {}; rooms.protocols)",
                    offered.join(", ")
                )
            } else {
                format!(
                    "none of the offered subprotocols ({}) is spoken here: rooms speak {} (rooms.protocols)",
                    offered.join(", "),
                    spoken.join(", ")
                )
            })
        }
        Endpoint::Channels => {
            if offered.contains(&CHANNEL_PROTOCOL) {
                return None;
            }
            let offered = if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            };
            Some(format!(
                "/ws speaks the {CHANNEL_PROTOCOL} subprotocol (docs/protocol.md): offer it in Sec-WebSocket-Protocol (offered: {offered}); raw rooms are at /rooms/NAME"
            ))
        }
    }
}

async fn room_upgrade(
    State(hub): State<Arc<Hub>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_refused(&hub, e, &headers),
    };
    if room.is_empty() || room.len() > 200 {
        return *refuse(
            &hub,
            HandshakeFailure::BadRequest,
            StatusCode::BAD_REQUEST,
            "room name must be 1 to 200 bytes".into(),
            &headers,
        );
    }
    let admitted = match admit(&hub, Endpoint::Rooms, &headers, query.as_deref(), true) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    // After admission: whether a client may connect at all is the first answer it needs.
    if let Some(reason) = subprotocol_refusal(&hub.config, Endpoint::Rooms, &ws.offered_protocols())
    {
        return *refuse(
            &hub,
            HandshakeFailure::Subprotocol,
            StatusCode::BAD_REQUEST,
            reason,
            &headers,
        );
    }
    // Join before the 101 goes out: a message sent to the room right after the client's
    // handshake completes must reach it. The membership leaves the room when dropped,
    // whether or not the upgrade completes.
    let (tx, rx) = hub.rooms.join(&room);
    let membership = Membership {
        hub: hub.clone(),
        room,
        rx: Some(rx),
        _slot: admitted.slot,
    };
    let hub2 = hub.clone();
    ws.server(hub.room_server.clone()).on_upgrade(move |ws| {
        room_member(Box::new(RoomMember {
            hub: hub2,
            membership,
            tx,
            ws,
        }))
    })
}

async fn channel_upgrade(
    State(hub): State<Arc<Hub>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_refused(&hub, e, &headers),
    };
    let admitted = match admit(&hub, Endpoint::Channels, &headers, query.as_deref(), false) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    // After admission, as for rooms.
    if let Some(reason) =
        subprotocol_refusal(&hub.config, Endpoint::Channels, &ws.offered_protocols())
    {
        return *refuse(
            &hub,
            HandshakeFailure::Subprotocol,
            StatusCode::BAD_REQUEST,
            reason,
            &headers,
        );
    }
    let hub2 = hub.clone();
    ws.server(hub.channel_server.clone()).on_upgrade(move |ws| {
        crate::channels::serve_connection(Box::new(crate::channels::Start {
            hub: hub2,
            admitted,
            ws,
        }))
    })
}

/// A room member's receiver; leaves the room when dropped.
struct Membership {
    hub: Arc<Hub>,
    room: String,
    rx: Option<broadcast::Receiver<crate::rooms::RoomMessage>>,
    _slot: Slot,
}

impl Drop for Membership {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.rooms.leave(&self.room);
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Rate 0: no limit.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Closes a slow consumer: its queued bytes may never drain, so the close handshake is
/// bounded tightly.
pub(crate) async fn close_bounded<S>(ws: &mut tidewire::WebSocketStream<S>, frame: CloseFrame)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

/// What a room member's task starts from, boxed: an async fn keeps its arguments for its
/// whole life, and this task lives as long as the connection.
struct RoomMember {
    hub: Arc<Hub>,
    membership: Membership,
    tx: broadcast::Sender<crate::rooms::RoomMessage>,
    ws: tidewire::WebSocketStream<tidewire::upgrade::Upgraded>,
}

async fn room_member(start: Box<RoomMember>) {
    let RoomMember {
        hub,
        mut membership,
        tx,
        mut ws,
    } = *start;
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    hub.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let room = membership.room.clone();
    let Some(mut rx) = membership.rx.take() else {
        return;
    };
    let mut shutdown = hub.shutdown.clone();
    let echo = hub.config.echo_to_sender;
    let mut bucket = TokenBucket::new(
        hub.config.publish_rate,
        hub.config.publish_burst,
        Instant::now(),
    );
    let send_buffer = hub.config.send_buffer;
    let metrics = &hub.metrics;
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(m)) => {
                    if !m.is_data() {
                        continue;
                    }
                    metrics.received(m.as_payload().len());
                    if is_heartbeat(&hub.config.room_heartbeat, &m) {
                        // The sender's own keepalive: answered here, never broadcast.
                        let reply = &hub.config.room_heartbeat_reply;
                        if !reply.is_empty() && ws.queue(Message::text(reply.as_str())).is_err() {
                            break;
                        }
                        continue;
                    }
                    if !bucket.take(Instant::now()) {
                        metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                        let reason = format!("rate limit: at most {} messages per second", hub.config.publish_rate);
                        Box::pin(close_bounded(&mut ws, CloseFrame::new(CloseCode(4029), reason))).await;
                        break;
                    }
                    if let Some(prepared) = PreparedMessage::new(m) {
                        // No receivers besides ourselves is fine: the room may be empty.
                        let _ = tx.send((id, Arc::new(prepared)));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(id, %room, "connection ended: {e}");
                    break;
                }
                None => break,
            },
            got = rx.recv() => match got {
                Ok((from, m)) => {
                    if from != id || echo {
                        if ws.queue_prepared(&m).is_err() {
                            break;
                        }
                        metrics.sent(1, m.payload().len() as u64);
                        if ws.connection().pending_transmit() > send_buffer {
                            metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(id, %room, "slow consumer disconnected: send buffer full");
                            let frame = CloseFrame::new(CloseCode::POLICY_VIOLATION, "slow consumer: send buffer full");
                            Box::pin(close_bounded(&mut ws, frame)).await;
                            break;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(id, %room, "slow consumer disconnected: {n} messages behind");
                    let reason = format!("slow consumer: {n} messages dropped");
                    Box::pin(close_bounded(&mut ws, CloseFrame::new(CloseCode::POLICY_VIOLATION, reason))).await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = shutdown.changed() => {
                let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
                let _ = Box::pin(ws.close(Some(frame))).await;
                break;
            }
        }
    }
    drop(rx);
    drop(membership);
}

/// Whether `m` is one of the room heartbeats: a text message equal to one of `texts`,
/// ignoring ASCII case and surrounding whitespace.
fn is_heartbeat(texts: &[String], m: &Message) -> bool {
    match m {
        Message::Text(t) => {
            let t = t.as_str().trim();
            // Short-circuit on length: chat lines are rarely heartbeat-sized.
            t.len() <= 64 && texts.iter().any(|h| h.trim().eq_ignore_ascii_case(t))
        }
        _ => false,
    }
}

#[derive(Deserialize)]
struct ApiPublish {
    channel: String,
    data: serde_json::Value,
}

/// `POST /api/publish` with `Authorization: apikey KEY` and `{"channel":C,"data":ANY}`:
/// publishes from a backend (price feeds, notifications). Answers `{"offset","epoch"}`.
async fn api_publish(State(hub): State<Arc<Hub>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = &hub.config.api_key else {
        return (
            StatusCode::FORBIDDEN,
            "the HTTP API is off: set api.key in the configuration\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: apikey KEY\n",
        )
            .into_response();
    }
    let req: ApiPublish = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad request: expected {{\"channel\":C,\"data\":ANY}}: {e}\n"),
            )
                .into_response()
        }
    };
    let start = Instant::now();
    let data = Bytes::from(req.data.to_string());
    match hub.engine.publish(&req.channel, data, start).await {
        Ok(p) => {
            hub.metrics.publish_latency(start.elapsed());
            hub.metrics.publications.fetch_add(1, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({"offset": p.offset, "epoch": p.epoch}).to_string(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")).into_response(),
    }
}

/// The demo's live data: a random-walk price on `live:ticks` every 100 ms, stopped by
/// shutdown.
async fn demo_ticker(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut price = 100.0f64;
    // A small xorshift generator: the demo needs movement, not cryptography.
    let mut state = 0x2545_f491_4f6c_dd1du64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let step = (state % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
        price = (price * (1.0 + step * 0.004)).clamp(1.0, 10_000.0);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let data = format!("{{\"symbol\":\"TWD\",\"price\":{price:.2},\"ts\":{ts}}}");
        if let Err(e) = hub
            .engine
            .publish("live:ticks", Bytes::from(data), Instant::now())
            .await
        {
            tracing::warn!("demo ticker stopped: {e}");
            return;
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Pending connections the kernel may queue before the hub accepts them (capped by
/// net.core.somaxconn). A reconnect storm after a restart arrives all at once.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long a client may take to send a request head (the first one, and each one after
/// an idle keep-alive pause). A connection that sends nothing, or a head a few bytes at a
/// time, would otherwise hold its descriptor for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS acceptor in force: replaced whole on reload, taken per new connection.
type SharedAcceptor = Arc<std::sync::RwLock<tidewire::tokio_rustls::TlsAcceptor>>;

/// Accepts and serves HTTP/1.1 (with upgrades; over TLS when `tls` is set) until `signal`
/// resolves; then stops accepting and lets the HTTP connections in flight finish, for at
/// most 5 s (upgraded WebSocket connections are the hub's, closed by its shutdown watch).
async fn serve_http(
    mut listener: tidewire::Listener,
    app: Router,
    tls: Option<SharedAcceptor>,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut signal => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let closing = closing_rx.clone();
        let http = http.clone();
        match &tls {
            None => {
                tokio::spawn(serve_one(http, tcp, service, closing, peer));
            }
            Some(shared) => {
                let acceptor = match shared.read() {
                    Ok(a) => a.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                tokio::spawn(async move {
                    // The TLS handshake is bounded like a request head: a silent client
                    // must not hold its descriptor.
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_one(http, tls, service, closing, peer).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    // Every connection task holds a receiver: `closed` resolves when the last has ended.
    drop(closing_rx);
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), closing_tx.closed()).await;
}

/// Serves one HTTP connection (plain or TLS) until it ends, or gracefully once `closing`
/// turns true.
async fn serve_one<I>(
    http: hyper::server::conn::http1::Builder,
    io: I,
    service: hyper_util::service::TowerToHyperService<Router>,
    mut closing: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { let _ = closing.wait_for(|c| *c).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
    }
}

/// Reloads the TLS files into `shared` on every SIGHUP; a file that cannot be used is
/// logged and the certificate in force kept.
#[cfg(unix)]
async fn reload_tls_on_sighup(files: TlsFiles, shared: SharedAcceptor) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, TLS reload is off: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match files.load() {
            Ok(acceptor) => {
                match shared.write() {
                    Ok(mut a) => *a = acceptor,
                    Err(poisoned) => *poisoned.into_inner() = acceptor,
                }
                tracing::info!(cert = %files.cert.display(), "SIGHUP: TLS certificate reloaded for new connections");
            }
            Err(e) => {
                tracing::error!("SIGHUP: TLS reload failed, keeping the certificate in force: {e}")
            }
        }
    }
}

/// Runs the hub until `shutdown` resolves, then closes every WebSocket with 1001, waits
/// (at most 5 s) for them to finish, and returns.
pub async fn serve(
    config: HubConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Replies and events are small writes that must leave at once, not wait for an ACK.
    // At the open-file limit, new clients get a 503 instead of a timeout.
    let listener = tidewire::Listener::new(listen(config.listen)?).nodelay(true);
    let local = listener.local_addr()?;
    let tls = match &config.tls {
        Some(files) => {
            let shared: SharedAcceptor = Arc::new(std::sync::RwLock::new(files.load()?));
            #[cfg(unix)]
            tokio::spawn(reload_tls_on_sighup(files.clone(), shared.clone()));
            Some(shared)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let hub = Hub::new(config, stop_rx);
    let _ = hub.refused.set(listener.refused());
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("tidewire serve listening on {http}://{local}/ (rooms at {ws}://{local}/rooms/NAME, channels at {ws}://{local}/ws)");
    tracing::info!(%local, tls = tls.is_some(), auth = hub.config.auth.is_some(), "listening");
    let sweeper = hub.engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweeper.sweep(Instant::now());
        }
    });
    if hub.config.demo {
        tokio::spawn(demo_ticker(hub.clone()));
    }
    let app = router(hub.clone());
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing WebSocket connections with 1001");
        let _ = stop_tx.send(true);
    };
    serve_http(listener, app, tls, signal).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(remaining = hub.connections(), "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(
            &none,
            "http://127.0.0.1:8080",
            Some("127.0.0.1:8080")
        ));
        assert!(!origin_allowed(
            &none,
            "http://evil.example",
            Some("127.0.0.1:8080")
        ));
        assert!(!origin_allowed(&none, "null", Some("127.0.0.1:8080")));
        assert!(!origin_allowed(&none, "http://127.0.0.1:8080", None));
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(&list, "https://APP.example.com", Some("x")));
        assert!(!origin_allowed(
            &list,
            "https://app.example.com.evil",
            Some("x")
        ));
        assert!(origin_allowed(&["*".to_owned()], "http://any", None));
    }

    #[test]
    fn subprotocols() {
        let c = HubConfig::default();
        let refused = |e, offered: &[&str]| subprotocol_refusal(&c, e, offered);
        assert_eq!(refused(Endpoint::Rooms, &[]), None);
        assert_eq!(refused(Endpoint::Rooms, &["x", "superchat"]), None);
        let r = refused(Endpoint::Rooms, &["mqtt", "x"]).unwrap();
        assert!(
            r.contains("(mqtt, x)") && r.contains("rooms speak chat, superchat"),
            "{r}"
        );
        assert_eq!(refused(Endpoint::Channels, &["chat", "tidewire.v1"]), None);
        assert!(refused(Endpoint::Channels, &[])
            .unwrap()
            .contains("(offered: none)"));
        let none = HubConfig {
            room_protocols: vec![],
            ..HubConfig::default()
        };
        assert!(subprotocol_refusal(&none, Endpoint::Rooms, &["chat"])
            .unwrap()
            .contains("rooms speak no subprotocol"));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&token=x%2Fy+z"), "token").as_deref(),
            Some("x/y z")
        );
        assert_eq!(query_param(Some("token="), "token").as_deref(), Some(""));
        assert_eq!(query_param(Some("tokens=1"), "token"), None);
        assert_eq!(
            query_param(Some("token=%zz%4"), "token").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn token_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(110)));
        assert!(!b.take(t0 + Duration::from_millis(110)));
        let mut off = TokenBucket::new(0.0, 1, t0);
        assert!((0..1000).all(|_| off.take(t0)));
    }
}
