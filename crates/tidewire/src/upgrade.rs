//! Serving WebSocket upgrades from hyper, and from axum with the `axum` feature.
//!
//! The request was already parsed by hyper, so only the header checks of RFC 6455 §4.2.1
//! run here (the same ones as [`accept`](crate::accept)), followed by hyper's upgrade
//! mechanism. Refusals carry the same statuses and reasons as the standalone server.
//!
//! Over HTTP/2 (RFC 8441), a WebSocket is an extended CONNECT with `:protocol websocket`
//! on a stream of a shared connection, answered `200` without `Sec-WebSocket-Accept`;
//! the same functions accept it when hyper's HTTP/2 server was built with
//! `enable_connect_protocol()` (and, with axum, the route takes CONNECT as well as GET:
//! `get(h).connect(h)`, or `any(h)`). Everything after the handshake is the same. Over
//! HTTP/3 (RFC 9220, feature `http3`) likewise, with [`crate::http3::serve_connection`]
//! as the server.

use crate::accept::ServerBuilder;
use crate::error::{Error, Result};
use crate::stream::{Options, WebSocketStream};
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tidewire_proto::handshake::server::{
    select_subprotocol, validate_extended_connect, validate_headers, write_response, RequestFields,
};
use tidewire_proto::handshake::HandshakeError;
use tidewire_proto::Role;

/// The transport of an upgraded connection: what hyper hands over (an HTTP/1.1
/// connection, or a stream of an HTTP/2 one), or a stream of an HTTP/3 connection.
#[derive(Debug)]
pub struct Upgraded(UpgradedIo);

#[derive(Debug)]
enum UpgradedIo {
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
    #[cfg(feature = "http3")]
    Http3(Box<crate::http3::H3Stream>),
}

impl Upgraded {
    /// hyper's upgraded connection, when hyper handed it over (HTTP/1.1 and HTTP/2): to
    /// take the original transport back out of it with `downcast`.
    pub fn into_hyper(self) -> std::result::Result<hyper::upgrade::Upgraded, Upgraded> {
        match self.0 {
            UpgradedIo::Hyper(io) => Ok(io.into_inner()),
            #[allow(unreachable_patterns)]
            other => Err(Upgraded(other)),
        }
    }
}

macro_rules! upgraded_io {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().0 {
            UpgradedIo::Hyper($s) => $e,
            #[cfg(feature = "http3")]
            UpgradedIo::Http3($s) => $e,
        }
    };
}

impl tokio::io::AsyncRead for Upgraded {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        upgraded_io!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Upgraded {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        upgraded_io!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        upgraded_io!(self, s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            UpgradedIo::Hyper(s) => s.is_write_vectored(),
            #[cfg(feature = "http3")]
            UpgradedIo::Http3(_) => false,
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        upgraded_io!(self, s => std::pin::Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        upgraded_io!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

/// Where the connection comes from once the response is sent.
#[derive(Debug)]
enum Handover {
    Hyper(hyper::upgrade::OnUpgrade),
    #[cfg(feature = "http3")]
    Http3(crate::http3::OnUpgrade),
}

impl Handover {
    /// hyper's upgrade handle, or (over HTTP/3) the stream's.
    fn take(extensions: &mut http::Extensions) -> Option<Handover> {
        if let Some(on) = extensions.remove::<hyper::upgrade::OnUpgrade>() {
            return Some(Handover::Hyper(on));
        }
        #[cfg(feature = "http3")]
        if let Some(on) = extensions.remove::<crate::http3::OnUpgrade>() {
            return Some(Handover::Http3(on));
        }
        None
    }

    /// Puts it back into (another request's) extensions.
    #[cfg(feature = "axum")]
    fn put(self, extensions: &mut http::Extensions) {
        match self {
            Handover::Hyper(on) => {
                extensions.insert(on);
            }
            #[cfg(feature = "http3")]
            Handover::Http3(on) => {
                extensions.insert(on);
            }
        }
    }
}

/// An accepted upgrade whose 101 response has not been sent yet. Return the response
/// to hyper, then await [`PendingUpgrade::finish`] (typically in a spawned task).
#[derive(Debug)]
pub struct PendingUpgrade {
    on_upgrade: Handover,
    options: Options,
    protocol: Option<String>,
    deflate: Option<tidewire_proto::DeflateParams>,
    version: http::Version,
}

impl PendingUpgrade {
    /// The subprotocol selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The HTTP version the WebSocket runs over: `HTTP_11` (an upgraded connection of its
    /// own), `HTTP_2` (a stream of a shared connection, RFC 8441) or `HTTP_3` (a stream of
    /// a QUIC connection, RFC 9220, with the `http3` feature).
    pub fn http_version(&self) -> http::Version {
        self.version
    }

    /// Waits for hyper (or the HTTP/3 server) to hand over the connection.
    pub async fn finish(self) -> Result<WebSocketStream<Upgraded>> {
        let io = match self.on_upgrade {
            Handover::Hyper(on) => UpgradedIo::Hyper(TokioIo::new(
                on.await
                    .map_err(|e| Error::from(std::io::Error::other(e)))?,
            )),
            #[cfg(feature = "http3")]
            Handover::Http3(on) => UpgradedIo::Http3(Box::new(on.wait().await?)),
        };
        Ok(WebSocketStream::from_raw_with_deflate(
            Upgraded(io),
            Role::Server,
            self.options,
            BytesMut::new(),
            self.deflate,
        ))
    }
}

/// Validates a WebSocket upgrade request served by hyper and prepares the 101 response.
/// Send the response, then await [`PendingUpgrade::finish`]. On error, answer with
/// `err.status()` and `err.reason()` (and `Sec-WebSocket-Version: 13` with 426).
pub fn upgrade<B>(
    req: &mut http::Request<B>,
    server: &ServerBuilder,
) -> std::result::Result<(http::Response<()>, PendingUpgrade), HandshakeError> {
    let mut head = head_of(req.method(), req.uri(), req.version(), req.headers());
    copy_protocol(req.extensions(), &mut head.extensions);
    let view = http::Request::from_parts(head, ());
    let on_upgrade = Handover::take(req.extensions_mut());
    prepare(&view, on_upgrade, server)
}

/// [`upgrade`] on request parts, as an axum extractor sees them.
pub fn upgrade_parts(
    parts: &mut http::request::Parts,
    server: &ServerBuilder,
) -> std::result::Result<(http::Response<()>, PendingUpgrade), HandshakeError> {
    let mut head = head_of(&parts.method, &parts.uri, parts.version, &parts.headers);
    copy_protocol(&parts.extensions, &mut head.extensions);
    let view = http::Request::from_parts(head, ());
    let on_upgrade = Handover::take(&mut parts.extensions);
    prepare(&view, on_upgrade, server)
}

fn head_of(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.version_mut() = version;
    *req.headers_mut() = headers.clone();
    req.into_parts().0
}

/// Keeps the `:protocol` of an extended CONNECT (hyper's extension) with a copied head.
fn copy_protocol(from: &http::Extensions, to: &mut http::Extensions) {
    if let Some(protocol) = from.get::<hyper::ext::Protocol>() {
        to.insert(protocol.clone());
    }
}

/// The checks of the request itself, without the server's policy (origin): §4.2.1 over
/// HTTP/1.1 (a GET with `Upgrade`), RFC 8441 §4 and §5 over HTTP/2 (an extended CONNECT
/// with `:protocol websocket`, hyper's [`Protocol`](hyper::ext::Protocol) extension).
fn check_request(
    method: &http::Method,
    version: http::Version,
    extensions: &http::Extensions,
    headers: &http::HeaderMap,
) -> std::result::Result<RequestFields, HandshakeError> {
    if version == http::Version::HTTP_2 || version == http::Version::HTTP_3 {
        let protocol = extensions.get::<hyper::ext::Protocol>();
        if method != http::Method::CONNECT || protocol.map(|p| p.as_str()) != Some("websocket") {
            return Err(HandshakeError::InvalidConnectProtocol);
        }
        return validate_extended_connect(headers);
    }
    if method != http::Method::GET {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if version != http::Version::HTTP_11 {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    validate_headers(headers)
}

fn prepare(
    request: &http::Request<()>,
    on_upgrade: Option<Handover>,
    server: &ServerBuilder,
) -> std::result::Result<(http::Response<()>, PendingUpgrade), HandshakeError> {
    let fields = check_request(
        request.method(),
        request.version(),
        request.extensions(),
        request.headers(),
    )?;
    let version = request.version();
    if !server.origin_allowed(fields.origin.as_deref(), request) {
        return Err(HandshakeError::OriginNotAllowed);
    }
    // Without hyper's upgrade handle the connection cannot be taken over (a server that
    // does not support upgrades, or HTTP/2 without extended CONNECT).
    let on_upgrade = on_upgrade.ok_or(HandshakeError::UnsupportedHttpVersion)?;
    let supported: Vec<&str> = server.protocol_list().iter().map(String::as_str).collect();
    let protocol = select_subprotocol(&fields.protocols, &supported).map(str::to_owned);
    let (deflate, ext_header) = server.negotiate_deflate(&fields.extensions);
    let response = if version == http::Version::HTTP_2 || version == http::Version::HTTP_3 {
        extended_connect_response(protocol.as_deref(), ext_header.as_deref())
    } else {
        switching_protocols(&fields.key, protocol.as_deref(), ext_header.as_deref())
    };
    let pending = PendingUpgrade {
        on_upgrade,
        options: server.stream_options(),
        protocol,
        deflate,
        version,
    };
    Ok((response, pending))
}

/// RFC 8441 §5: a 2xx, with the subprotocol and extensions, and no `Sec-WebSocket-Accept`.
fn extended_connect_response(
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> http::Response<()> {
    let mut response = http::Response::new(());
    for (name, value) in [
        (http::header::SEC_WEBSOCKET_PROTOCOL, protocol),
        (http::header::SEC_WEBSOCKET_EXTENSIONS, extensions),
    ] {
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The 101 of RFC 6455 §4.2.2: the same writer as the standalone server, parsed back into
/// an `http::Response`, so both paths send identical headers.
fn switching_protocols(
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> http::Response<()> {
    let mut raw = Vec::new();
    write_response(key, protocol, extensions, &http::HeaderMap::new(), &mut raw);
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let _ = parsed.parse(&raw);
    for h in parsed.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The first bytes of an HTTP/2 connection in clear (RFC 9113 §3.4): a server that reads
/// these instead of a request line has an h2c client with prior knowledge.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one stream may hold unread on the server: a WebSocket whose messages are not read
/// takes at most this much of its connection's window.
#[cfg(feature = "http2")]
pub const HTTP2_STREAM_WINDOW: u32 = 256 << 10;

/// The receive window of a whole HTTP/2 connection on the server: 32 streams' windows.
#[cfg(feature = "http2")]
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 * HTTP2_STREAM_WINDOW;

/// hyper's HTTP/2 server as a WebSocket server wants it: extended CONNECT allowed
/// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`, RFC 8441 §3), fixed windows per stream and per
/// connection ([`HTTP2_STREAM_WINDOW`], [`HTTP2_CONNECTION_WINDOW`]) so that one stalled
/// WebSocket cannot take its neighbours' capacity, and keep-alive pings every 20 s.
#[cfg(feature = "http2")]
pub fn http2_builder() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(crate::Limits::default().max_handshake_size as u32)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    b
}

/// Serves one HTTP/2 connection (TLS after ALPN `h2`, or h2c after [`HTTP2_PREFACE`]) whose
/// streams are WebSockets (RFC 8441): each extended CONNECT that `server` accepts is
/// answered 200 and handed to `on_socket` in a task of its own; any other request gets
/// the refusal's status and reason (400 for a plain GET). Returns when the connection
/// ends.
#[cfg(feature = "http2")]
pub async fn serve_http2<I, F, Fut>(io: I, server: ServerBuilder, on_socket: F) -> Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(WebSocketStream<Upgraded>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            std::future::ready(Ok::<_, std::convert::Infallible>(answer_websocket(
                &mut req, &server, &on_socket,
            )))
        });
    http2_builder()
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| Error::from(std::io::Error::other(e)))
}

/// The answer of a server whose every request is a WebSocket (HTTP/2 and HTTP/3 streams):
/// the 2xx of an accepted extended CONNECT, whose socket then goes to `on_socket` in a
/// task of its own, or the refusal's status and reason.
#[cfg(any(feature = "http2", feature = "http3"))]
pub(crate) fn answer_websocket<B, F, Fut>(
    req: &mut http::Request<B>,
    server: &ServerBuilder,
    on_socket: &F,
) -> http::Response<String>
where
    F: Fn(WebSocketStream<Upgraded>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match upgrade(req, server) {
        Ok((response, pending)) => {
            let on_socket = on_socket.clone();
            tokio::spawn(async move {
                match pending.finish().await {
                    Ok(ws) => on_socket(ws).await,
                    Err(e) => tracing::debug!("WebSocket stream failed: {e}"),
                }
            });
            response.map(|()| String::new())
        }
        Err(e) => {
            let mut response = http::Response::new(format!("{}\n", e.reason()));
            *response.status_mut() = e.status();
            // RFC 6455 §4.4 (which RFC 8441 §5 keeps): a version the server does
            // not speak is answered with the versions it does, as over HTTP/1.1.
            if e.status() == http::StatusCode::UPGRADE_REQUIRED {
                response.headers_mut().insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    http::HeaderValue::from_static("13"),
                );
            }
            response
        }
    }
}

#[cfg(feature = "axum")]
pub use self::axum_support::{WebSocketUpgrade, WebSocketUpgradeRejection};

#[cfg(feature = "axum")]
mod axum_support {
    use super::*;
    use axum::extract::FromRequestParts;
    use axum::response::{IntoResponse, Response};

    /// An axum extractor for WebSocket upgrades, driven by Tidewire's protocol core.
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    /// use tidewire::upgrade::WebSocketUpgrade;
    /// let app: Router = Router::new().route("/ws", get(|ws: WebSocketUpgrade| async move {
    ///     ws.on_upgrade(|mut socket| async move {
    ///         while let Some(Ok(msg)) = socket.recv().await {
    ///             if msg.is_data() && socket.send(msg).await.is_err() { break; }
    ///         }
    ///     })
    /// }));
    /// ```
    #[derive(Debug)]
    pub struct WebSocketUpgrade {
        parts: http::request::Parts,
        server: ServerBuilder,
    }

    /// Why an upgrade was refused: answered with the status and a one-line reason.
    #[derive(Debug)]
    pub struct WebSocketUpgradeRejection(pub HandshakeError);

    impl IntoResponse for WebSocketUpgradeRejection {
        fn into_response(self) -> Response {
            let mut resp = (self.0.status(), format!("{}\n", self.0.reason())).into_response();
            if self.0.status() == http::StatusCode::UPGRADE_REQUIRED {
                resp.headers_mut().insert(
                    "sec-websocket-version",
                    http::HeaderValue::from_static("13"),
                );
            }
            resp
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
        type Rejection = WebSocketUpgradeRejection;

        async fn from_request_parts(
            parts: &mut http::request::Parts,
            _state: &S,
        ) -> std::result::Result<Self, Self::Rejection> {
            check_request(
                &parts.method,
                parts.version,
                &parts.extensions,
                &parts.headers,
            )
            .map_err(WebSocketUpgradeRejection)?;
            let mut own = head_of(&parts.method, &parts.uri, parts.version, &parts.headers);
            copy_protocol(&parts.extensions, &mut own.extensions);
            if let Some(on) = Handover::take(&mut parts.extensions) {
                on.put(&mut own.extensions);
            }
            Ok(WebSocketUpgrade {
                parts: own,
                server: ServerBuilder::new(),
            })
        }
    }

    /// The task of one upgraded connection. It lives as long as the connection, and a task
    /// is as large as its future's largest state for all that time, so: one pointer as
    /// its argument (an async fn keeps its arguments to the end), the wait for hyper's
    /// hand-over boxed, and nothing but the callback's future kept across the last await.
    async fn run_upgraded<F, Fut>(start: Box<(PendingUpgrade, F)>)
    where
        F: FnOnce(WebSocketStream<Upgraded>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let connection = {
            let ready = Box::pin(async move {
                let (pending, callback) = *start;
                match pending.finish().await {
                    Ok(ws) => Some((ws, callback)),
                    Err(e) => {
                        tracing::debug!("upgrade failed: {e}");
                        None
                    }
                }
            })
            .await;
            match ready {
                Some((ws, callback)) => callback(ws),
                None => return,
            }
        };
        connection.await
    }

    impl WebSocketUpgrade {
        /// The subprotocols the client offered in `Sec-WebSocket-Protocol`, in its order of
        /// preference (every header, comma-separated lists split, blanks dropped). Lets an
        /// application refuse, with a reason, a client that offers none it speaks, where
        /// RFC 6455 would answer 101 without the header (and a browser then fails with a
        /// bare 1006).
        pub fn offered_protocols(&self) -> Vec<&str> {
            self.parts
                .headers
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect()
        }

        /// The HTTP version of the request: `HTTP_11`, `HTTP_2` for a WebSocket over a
        /// stream of an HTTP/2 connection (RFC 8441), `HTTP_3` over a stream of a QUIC
        /// connection (RFC 9220).
        pub fn http_version(&self) -> http::Version {
            self.parts.version
        }

        /// Uses this server configuration (subprotocols, origin check, options).
        pub fn server(mut self, server: ServerBuilder) -> Self {
            self.server = server;
            self
        }

        /// Answers 101 and runs `callback` with the socket once hyper hands it over.
        /// A request the server configuration refuses (origin) gets its error status.
        pub fn on_upgrade<F, Fut>(mut self, callback: F) -> Response
        where
            F: FnOnce(WebSocketStream<Upgraded>) -> Fut + Send + 'static,
            Fut: std::future::Future<Output = ()> + Send + 'static,
        {
            match upgrade_parts(&mut self.parts, &self.server) {
                Ok((resp, pending)) => {
                    tokio::spawn(run_upgraded(Box::new((pending, callback))));
                    resp.map(|()| axum::body::Body::empty())
                }
                Err(e) => WebSocketUpgradeRejection(e).into_response(),
            }
        }
    }
}
