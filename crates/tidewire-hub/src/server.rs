//! The HTTP side of `tidewire serve`: the routes, the listener (plain or TLS, reloaded on
//! SIGHUP), request-head timeouts, and graceful shutdown. What each route does is in its own
//! module: `admission`, `room_endpoint`, `channels`, `api`, `pages`, `admin`; how many connections
//! may be in their HTTP phase and how large a head may be, in `http_phase`.

use crate::api::{api_call, api_openapi};
use crate::channel_endpoint::channel_upgrade;
use crate::config::{HubConfig, TlsFiles};
use crate::http_phase::{answer_and_close, read_head, Head, HttpSlot, Prefixed};
use crate::hub::Hub;
use crate::log_text;
use crate::metrics::Refusal;
use crate::room_endpoint::room_upgrade;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The routes of the hub.
pub fn router(hub: Arc<Hub>) -> Router {
    let mut router = Router::new();
    if hub.config.demo {
        router = crate::pages::routes(router);
    }
    router = crate::admin::routes(router, hub.admin.is_some());
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/cluster", get(crate::api::api_cluster))
        .route("/metrics", get(metrics))
        // CONNECT too: over HTTP/2 a WebSocket is an extended CONNECT (RFC 8441).
        .route("/rooms/{room}", get(room_upgrade).connect(room_upgrade))
        .route("/ws", get(channel_upgrade).connect(channel_upgrade))
        .route("/sse", get(crate::sse::sse))
        .route("/publish", post(crate::sse::publish))
        .route("/api/openapi.json", get(api_openapi))
        .route("/api/{method}", post(api_call))
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

/// 200 while the engine answers; 503 with the reason when it does not (within 5 s of a
/// Redis that refuses or hangs: its prober's 2 s timeout, every second).
async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    let health = hub.node.broker().health();
    match health.reason() {
        None => "ok\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("engine unavailable: {why}\n"),
        )
            .into_response(),
    }
}

/// For load balancers: 503 while draining (no new WebSockets here) or while the engine is
/// unavailable; 200 otherwise.
async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    if hub.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    healthz(State(hub)).await
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    match hub.metrics_text() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("/metrics: prometheus-client could not encode a value");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the metrics could not be encoded\n",
            )
                .into_response()
        }
    }
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

/// How often the refusals for `limits.max_http_connections` may be logged.
const BUSY_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts and serves HTTP/1.1 (with upgrades; over TLS when `tls` is set) until `signal`
/// resolves; then stops accepting and lets the HTTP connections in flight finish, for at
/// most 5 s (upgraded WebSocket connections are the hub's, closed by its shutdown watch).
/// Beyond `limits.max_http_connections` connections in their HTTP phase, a new one is
/// answered 503 and closed.
async fn serve_http(
    mut listener: tidewire::Listener,
    hub: Arc<Hub>,
    app: Router,
    tls: Option<SharedAcceptor>,
    signal: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    // The first head of a connection is bounded by `read_head`; these bound the heads that
    // follow on a keep-alive connection the same way (hyper answers 431), and the read
    // buffer (a request body is read through it, a buffer at a time).
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(crate::http_phase::MAX_HEAD)
        .max_headers(crate::http_phase::MAX_HEADERS)
        .max_buf_size(crate::http_phase::MAX_HEAD);
    // The library's HTTP/2 server: extended CONNECT allowed, fixed windows per stream and
    // per connection, pings, heads bounded as over HTTP/1.1 (`tidewire::Limits`, whose
    // bounds `http_phase` shares).
    let h2 = hub.config.http2.then(tidewire::upgrade::http2_builder);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut last_busy_warning: Option<std::time::Instant> = None;
    tokio::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut signal => break,
        };
        let acceptor = tls.as_ref().map(|shared| match shared.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        });
        let Some(slot) = HttpSlot::take(&hub) else {
            hub.metrics.refused(Refusal::HttpConnections);
            if last_busy_warning.is_none_or(|t| t.elapsed() >= BUSY_WARN_EVERY) {
                last_busy_warning = Some(std::time::Instant::now());
                tracing::warn!(
                    "{} connections are in their HTTP phase (limits.max_http_connections): answering new ones 503 (see tidewire_refused_total on /metrics)",
                    hub.config.max_http_connections
                );
            }
            tokio::spawn(refuse_busy(tcp, acceptor));
            continue;
        };
        let http = Protocols {
            http1: http.clone(),
            http2: h2.clone(),
            app: app.clone(),
        };
        let closing = closing_rx.clone();
        match acceptor {
            None => {
                tokio::spawn(serve_one(http, tcp, closing, peer, slot));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    // The TLS handshake is bounded like a request head: a silent client
                    // must not hold its descriptor.
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            if let Some(h2) = http.http2 {
                                serve_h2(h2, tls, http.app, closing, peer, slot).await
                            }
                        }
                        Ok(Ok(tls)) => serve_one(http, tls, closing, peer, slot).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {}", log_text::peer(&e))
                        }
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

/// The answer beyond `limits.max_http_connections`.
const BUSY: &str = "server busy: too many connections in their HTTP phase (limits.max_http_connections), try again later";

/// Answers a connection beyond `limits.max_http_connections` with 503 and closes it,
/// without waiting for its request (over TLS, after a handshake of at most a second).
async fn refuse_busy(tcp: tokio::net::TcpStream, tls: Option<tidewire::tokio_rustls::TlsAcceptor>) {
    match tls {
        None => answer_and_close(tcp, StatusCode::SERVICE_UNAVAILABLE, BUSY).await,
        Some(acceptor) => {
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(1), acceptor.accept(tcp)).await
            {
                answer_and_close(tls, StatusCode::SERVICE_UNAVAILABLE, BUSY).await;
            }
        }
    }
}

/// Serves one HTTP connection (plain or TLS) until it ends or upgrades, or gracefully once
/// `closing` turns true. Its first request head is read here first (`http_phase`): one
/// over the limits is answered 431 with the reason. `slot` counts the connection against
/// `limits.max_http_connections` until this returns.
async fn serve_one<I>(
    http: Protocols,
    mut io: I,
    mut closing: watch::Receiver<bool>,
    peer: SocketAddr,
    slot: HttpSlot,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let head = tokio::select! {
        head = tokio::time::timeout(HEADER_READ_TIMEOUT, read_head(&mut io)) => head,
        // Shutting down: a connection without a whole request yet is closed, as hyper does.
        _ = closing.wait_for(|c| *c) => return,
    };
    let prefix = match head {
        Ok(Head::Read(prefix)) => prefix,
        // Over a limit (431), or the client is gone.
        Ok(head) => {
            if let Some((why, reason)) = head.refusal() {
                slot.hub().metrics.refused(why);
                tracing::debug!(%peer, "request refused with 431: {reason}");
                answer_and_close(io, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &reason).await;
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no request head within {} s", HEADER_READ_TIMEOUT.as_secs());
            return;
        }
    };
    // h2c with prior knowledge: the client opened with the HTTP/2 preface.
    if prefix.starts_with(tidewire::upgrade::HTTP2_PREFACE) {
        if let Some(h2) = http.http2 {
            serve_h2(h2, Prefixed::new(prefix, io), http.app, closing, peer, slot).await;
            return;
        }
    }
    let inner = hyper_util::service::TowerToHyperService::new(http.app);
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            hyper::service::Service::call(&inner, req)
        });
    let conn = http
        .http1
        .serve_connection(
            hyper_util::rt::TokioIo::new(Prefixed::new(prefix, io)),
            service,
        )
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
        // A later head of a keep-alive connection over the limits: hyper answered 431
        // (without telling a long head from too many fields).
        if e.is_parse_too_large() {
            slot.hub().metrics.refused(Refusal::HeadTooLarge);
        }
        tracing::debug!(%peer, "HTTP connection ended: {}", log_text::peer(&e));
    }
}

/// What a new connection may be served with.
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    /// `None` with `http2 = false`.
    http2: Option<Http2Builder>,
    app: Router,
}

type Http2Builder = hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>;

/// Counts an open connection on `/metrics` (one of the gauges of HTTP/2 and HTTP/3
/// connections) while it lives.
struct OpenConnection {
    hub: Arc<Hub>,
    gauge: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicU64,
}

impl OpenConnection {
    fn new(
        hub: Arc<Hub>,
        gauge: fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicU64,
    ) -> OpenConnection {
        gauge(&hub.metrics).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection { hub, gauge }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        (self.gauge)(&self.hub.metrics).fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves one HTTP/2 connection (TLS with ALPN `h2`, or h2c) until it ends, or gracefully
/// (GOAWAY) once `closing` turns true. Its WebSockets are streams of it (RFC 8441), so
/// this task lives as long as the last of them. `slot` counts it against
/// `limits.max_http_connections` until its first request; a connection without one within
/// [`HEADER_READ_TIMEOUT`] is closed. HTTP/2 has no `Host` header: the `:authority` is
/// copied into one, so that origin checks and pages see the same request as over HTTP/1.1.
async fn serve_h2<I>(
    h2: Http2Builder,
    io: I,
    app: Router,
    mut closing: watch::Receiver<bool>,
    peer: SocketAddr,
    slot: HttpSlot,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _open = OpenConnection::new(slot.hub_arc(), |m| &m.http2_connections);
    let first = Arc::new(std::sync::Mutex::new(Some(slot)));
    let waiting = first.clone();
    let inner = hyper_util::service::TowerToHyperService::new(app);
    let service = hyper::service::service_fn(
        move |mut req: http::Request<hyper::body::Incoming>| {
            crate::lock(&first).take();
            if req.method() == http::Method::CONNECT
                && req.extensions().get::<hyper::ext::Protocol>().is_none()
            {
                // A plain CONNECT asks for a tunnel: this is not a proxy.
                let why = "CONNECT without :protocol: this server is not a proxy (a WebSocket over HTTP/2 is a CONNECT with :protocol websocket, RFC 8441)\n";
                let mut response = axum::body::Body::from(why).into_response();
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return futures_util::future::Either::Left(std::future::ready(Ok(response)));
            }
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            if !req.headers().contains_key(header::HOST) {
                let authority = req.uri().authority().map(|a| a.as_str().to_owned());
                if let Some(value) = authority.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
                    req.headers_mut().insert(header::HOST, value);
                }
            }
            futures_util::future::Either::Right(hyper::service::Service::call(&inner, req))
        },
    );
    let conn = h2.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let first_request = async {
        tokio::time::sleep(HEADER_READ_TIMEOUT).await;
        if crate::lock(&waiting).is_some() {
            return;
        }
        std::future::pending::<()>().await
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = first_request => {
            tracing::debug!(%peer, "HTTP/2: no request within {} s", HEADER_READ_TIMEOUT.as_secs());
            return;
        }
        _ = async { let _ = closing.wait_for(|c| *c).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP/2 connection ended: {}", log_text::peer(&e));
    }
}

/// Reloads the TLS files into `shared` on every SIGHUP; a file that cannot be used is
/// logged and the certificate in force kept.
#[cfg(unix)]
async fn reload_tls_on_sighup(files: TlsFiles, http2: bool, shared: SharedAcceptor) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, TLS reload is off: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match files.load_for(http2) {
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

/// Every 2 s: this node's entry in the cluster's registry (with a 6 s TTL, after which
/// the other nodes reap its presence).
async fn announce(hub: std::sync::Weak<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let status = hub.status();
        let call = hub.node.broker().announce(&status, Duration::from_secs(6));
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(reaped)) => {
                if reaped {
                    // Cut off long enough for another node to reap this one's presence
                    // (with leaves): its clients are still here, so they join again.
                    tracing::warn!("engine: this node's presence was reaped while it was cut off; adding it again");
                    hub.node.rejoin_presence().await;
                    if let Some(hooks) = &hub.hooks {
                        hooks.rejoin();
                    }
                }
                let nodes = tokio::time::timeout(Duration::from_secs(2), hub.node.broker().nodes());
                if let Ok(Ok(nodes)) = nodes.await {
                    let n = nodes.len().max(1) as u64;
                    hub.cluster_nodes
                        .store(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => tracing::warn!("engine: announcing this node failed: {e}"),
            Err(_) => tracing::warn!("engine: announcing this node took over 2 s"),
        }
    }
}

/// The drain before a stop (`drain` in the configuration): new upgrades are refused and
/// `/readyz` answers 503 at once, then the WebSockets are closed with 1012 a few at a time
/// over the drain period, so that their clients reconnect to other nodes without a
/// stampede, and resume there.
async fn drain(hub: &Arc<Hub>) {
    let period = hub.config.drain;
    hub.draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if period.is_zero() {
        return;
    }
    let total = hub.connections();
    tracing::info!(
        connections = total,
        ?period,
        "draining: closing WebSockets with 1012"
    );
    let step = Duration::from_millis(100);
    let steps = (period.as_millis() / step.as_millis()).max(1) as usize;
    let mut tick = tokio::time::interval(step);
    for i in 1..=steps {
        tick.tick().await;
        // Told so far should reach i/steps of the total.
        let due = total * i / steps - total * (i - 1) / steps;
        hub.restart_some(due);
        if hub.connections() == 0 {
            break;
        }
    }
    // Whatever connected meanwhile (none: upgrades are refused) or was missed.
    hub.restart_some(usize::MAX);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
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
            let acceptor = files.load_for(config.http2)?;
            let shared: SharedAcceptor = Arc::new(std::sync::RwLock::new(acceptor));
            #[cfg(unix)]
            tokio::spawn(reload_tls_on_sighup(
                files.clone(),
                config.http2,
                shared.clone(),
            ));
            Some(shared)
        }
        None => None,
    };
    #[cfg(feature = "http3")]
    let http3 = match (&config.tls, config.http3) {
        (Some(files), true) => Some(http3::bind(local, files)?),
        _ => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let hub = Hub::connect(config, stop_rx).await?;
    let _ = hub.refused.set(listener.refused());
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // One line: tests and scripts read the address from the first line, and may close
    // the pipe after it.
    let admin = if hub.admin.is_some() {
        format!(", admin page at {http}://{local}/admin")
    } else {
        String::new()
    };
    #[cfg(feature = "http3")]
    let admin = if http3.is_some() {
        format!("{admin}; HTTP/3 on udp/{}", local.port())
    } else {
        admin
    };
    println!("tidewire serve listening on {http}://{local}/ (rooms at {ws}://{local}/rooms/NAME, channels at {ws}://{local}/ws{admin})");
    tracing::info!(%local, tls = tls.is_some(), auth = hub.config.auth.is_some(), "listening");
    if hub.admin.is_some() && tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!("the admin page is served over plain HTTP on {local}: its password and session cookie cross the network in clear (serve it with --tls-cert, or behind a TLS proxy)");
    }
    let sweeper = hub.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweeper.node.sweep().await;
        }
    });
    tokio::spawn(announce(Arc::downgrade(&hub)));
    if hub.config.demo {
        tokio::spawn(crate::pages::demo_ticker(hub.clone()));
    }
    let app = router(hub.clone());
    #[cfg(feature = "http3")]
    if let Some(endpoint) = &http3 {
        tokio::spawn(http3::accept(
            endpoint.clone(),
            hub.clone(),
            app.clone(),
            stop_tx.subscribe(),
        ));
        #[cfg(unix)]
        if let Some(files) = hub.config.tls.clone() {
            tokio::spawn(http3::reload_on_sighup(files, endpoint.clone()));
        }
    }
    let closing = hub.clone();
    let signal = async move {
        shutdown.await;
        drain(&closing).await;
        tracing::info!("shutting down: closing WebSocket connections with 1001");
        let _ = stop_tx.send(true);
        closing.shut_down_connections();
    };
    serve_http(listener, hub.clone(), app, tls, signal).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    #[cfg(feature = "http3")]
    if let Some(endpoint) = http3 {
        // The WebSockets over HTTP/3 were closed with 1001 above; now the connections.
        endpoint.close(quinn_no_error(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    if let Some(hooks) = &hub.hooks {
        // The disconnect events of the connections just closed reach the log (and, on
        // one node, the backend) before the process ends.
        hooks.flush(Duration::from_secs(3)).await;
    }
    tracing::info!(remaining = hub.connections(), "stopped");
    Ok(())
}

#[cfg(feature = "http3")]
fn quinn_no_error() -> tidewire::http3::quinn::VarInt {
    tidewire::http3::quinn::VarInt::from_u32(0x100)
}

/// HTTP/3 beside HTTP/1.1 and HTTP/2 (`http3 = true`): the same router on the listening
/// port's UDP twin, with the same certificate.
#[cfg(feature = "http3")]
mod http3 {
    use super::*;
    use tidewire::http3::quinn;

    /// The QUIC endpoint on `addr`'s UDP port, with the TLS files' certificate.
    pub(super) fn bind(addr: SocketAddr, files: &TlsFiles) -> std::io::Result<quinn::Endpoint> {
        let config = tidewire::http3::server_config(&files.load_config()?)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        quinn::Endpoint::server(config, addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("HTTP/3: cannot listen on udp/{addr}: {e}"),
            )
        })
    }

    /// Accepts QUIC connections until the hub stops. Each is served with the hub's
    /// router; beyond `limits.max_http_connections` open HTTP/3 connections, new ones are
    /// refused at the QUIC level (the client sees CONNECTION_REFUSED).
    pub(super) async fn accept(
        endpoint: quinn::Endpoint,
        hub: Arc<Hub>,
        app: Router,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => {
                    endpoint.set_server_config(None);
                    return;
                }
            };
            let open = hub
                .metrics
                .http3_connections
                .load(std::sync::atomic::Ordering::Relaxed);
            if open >= hub.config.max_http_connections as u64 {
                hub.metrics.refused(Refusal::HttpConnections);
                incoming.refuse();
                continue;
            }
            let peer = incoming.remote_address();
            let open = OpenConnection::new(hub.clone(), |m| &m.http3_connections);
            let inner = hyper_util::service::TowerToHyperService::new(app.clone());
            let service =
                hyper::service::service_fn(move |mut req: http::Request<tidewire::http3::Body>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    hyper::service::Service::call(&inner, req)
                });
            tokio::spawn(async move {
                let _open = open;
                if let Err(e) = tidewire::http3::serve_connection(incoming, service).await {
                    tracing::debug!(%peer, "HTTP/3 connection failed: {}", log_text::peer(&e));
                }
            });
        }
    }

    /// Reloads the certificate of new QUIC connections on SIGHUP, as for TCP.
    #[cfg(unix)]
    pub(super) async fn reload_on_sighup(files: TlsFiles, endpoint: quinn::Endpoint) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            match files.load_config().and_then(|c| {
                tidewire::http3::server_config(&c).map_err(|e| std::io::Error::other(e.to_string()))
            }) {
                Ok(config) => endpoint.set_server_config(Some(config)),
                Err(e) => tracing::error!(
                    "SIGHUP: HTTP/3 TLS reload failed, keeping the certificate in force: {e}"
                ),
            }
        }
    }
}
