//! The server side of the opening handshake over any `AsyncRead + AsyncWrite`.
//!
//! Reads the request head (bounded by [`Limits::max_handshake_size`](tidewire_proto::Limits)
//! and [`Options::handshake_timeout`]), validates it (RFC 6455 §4.2.1), checks the origin,
//! negotiates the subprotocol by the server's preference, lets the application look at the
//! request (cookies, auth) and add response headers or refuse, then answers 101. Every
//! refusal is an HTTP response with a status and a one-line reason, never a dropped socket.

use crate::error::{Error, Kind, Result};
use crate::stream::{Options, WebSocketStream};
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use tidewire_proto::handshake::server::{
    parse_request, select_subprotocol, write_rejection, write_response, ServerRequest,
};
use tidewire_proto::handshake::HandshakeError;
use tidewire_proto::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An application's refusal of a handshake: sent as an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The HTTP status (for example 401, 403).
    pub status: http::StatusCode,
    /// One line of text for the response body.
    pub reason: String,
}

impl Reject {
    /// A refusal with a status and a reason.
    pub fn new(status: http::StatusCode, reason: impl Into<String>) -> Self {
        Reject {
            status,
            reason: reason.into(),
        }
    }
}

/// What the server answers, adjustable by the application's callback.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// The subprotocol chosen (preset by negotiation; the callback may change it to another
    /// one the client offered, or clear it).
    pub protocol: Option<String>,
    /// Extra headers for the 101 response (for example `Set-Cookie`).
    pub headers: http::HeaderMap,
}

type OriginCheck = Arc<dyn Fn(Option<&str>, &http::Request<()>) -> bool + Send + Sync>;

/// Builds servers' handshakes. Cheap to clone; share one per listener.
#[derive(Clone, Default)]
pub struct ServerBuilder {
    options: Options,
    protocols: Vec<String>,
    origin_check: Option<OriginCheck>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("options", &self.options)
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}

/// Accepts a WebSocket connection on `io` with default settings.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> Result<WebSocketStream<S>> {
    ServerBuilder::new().accept(io).await
}

impl ServerBuilder {
    /// Default options, no subprotocols, every origin allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets stream options (limits, heartbeat, timeouts).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The subprotocols this server speaks, most preferred first. The first one of these
    /// that the client offered is selected (§4.2.2 /subprotocol/).
    pub fn protocols<I, T>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Accepts only requests for which `check(origin, request)` is true; others get 403.
    /// The `Origin` header is what browsers send; non-browser clients may omit it.
    pub fn origin_check<F>(mut self, check: F) -> Self
    where
        F: Fn(Option<&str>, &http::Request<()>) -> bool + Send + Sync + 'static,
    {
        self.origin_check = Some(Arc::new(check));
        self
    }

    pub(crate) fn origin_allowed(&self, origin: Option<&str>, req: &http::Request<()>) -> bool {
        self.origin_check
            .as_ref()
            .is_none_or(|check| check(origin, req))
    }

    /// The permessage-deflate outcome for a client's offers under our policy, and the
    /// response header that says so.
    pub(crate) fn negotiate_deflate(
        &self,
        offers: &[tidewire_proto::handshake::Extension],
    ) -> (Option<tidewire_proto::DeflateParams>, Option<String>) {
        let Some(policy) = self.options.config.compression else {
            return (None, None);
        };
        match tidewire_proto::deflate::negotiate(offers, &policy) {
            Some((params, client_window)) => {
                (Some(params), Some(params.response_header(client_window)))
            }
            None => (None, None),
        }
    }

    /// Turns permessage-deflate on with this policy (`None`: off, the default).
    pub fn compression(mut self, policy: Option<tidewire_proto::DeflateConfig>) -> Self {
        self.options.config.compression = policy;
        self
    }

    /// For the hyper upgrade (`upgrade` feature).
    #[cfg(feature = "upgrade")]
    pub(crate) fn protocol_list(&self) -> &[String] {
        &self.protocols
    }

    #[cfg(feature = "upgrade")]
    pub(crate) fn stream_options(&self) -> Options {
        self.options
    }

    /// Accepts with only the builder's policy.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> Result<WebSocketStream<S>> {
        self.accept_with(io, |_, _| Ok(())).await.map(|(ws, _)| ws)
    }

    /// Accepts, letting `callback` inspect the request and shape the response or refuse.
    /// Returns the stream and the request (headers, path, query).
    pub async fn accept_with<S, F>(
        &self,
        mut io: S,
        callback: F,
    ) -> Result<(WebSocketStream<S>, http::Request<()>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        F: FnOnce(&http::Request<()>, &mut Response) -> Result<(), Reject>,
    {
        let limits = self.options.config.limits;
        let mut buf = BytesMut::with_capacity(1024);
        let read = tokio::time::timeout(
            self.options.handshake_timeout,
            read_request(&mut io, &mut buf, &limits),
        )
        .await;
        let (req, consumed) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(ReadError::Handshake(e))) => {
                reject(&mut io, e.status(), e.reason()).await;
                return Err(e.into());
            }
            Ok(Err(ReadError::Io(e))) => return Err(e.into()),
            Err(_) => {
                reject(
                    &mut io,
                    http::StatusCode::REQUEST_TIMEOUT,
                    "handshake timed out",
                )
                .await;
                return Err(Error::new(Kind::Timeout("handshake")));
            }
        };
        if !self.origin_allowed(req.origin.as_deref(), &req.request) {
            let e = HandshakeError::OriginNotAllowed;
            reject(&mut io, e.status(), e.reason()).await;
            return Err(e.into());
        }
        let supported: Vec<&str> = self.protocols.iter().map(String::as_str).collect();
        let mut response = Response {
            protocol: select_subprotocol(&req.protocols, &supported).map(str::to_owned),
            headers: http::HeaderMap::new(),
        };
        if let Err(r) = callback(&req.request, &mut response) {
            reject(&mut io, r.status, &r.reason).await;
            return Err(HandshakeError::Rejected(r.status.as_u16()).into());
        }
        if let Some(p) = &response.protocol {
            if !req.protocols.iter().any(|o| o == p) {
                // The application picked a protocol the client never offered: the client
                // would fail the connection (§4.1), so refuse here with a clear status.
                reject(
                    &mut io,
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "server chose a subprotocol the client did not offer",
                )
                .await;
                return Err(HandshakeError::Rejected(500).into());
            }
        }
        let (deflate, ext_header) = self.negotiate_deflate(&req.extensions);
        let mut out = Vec::with_capacity(256);
        write_response(
            &req.key,
            response.protocol.as_deref(),
            ext_header.as_deref(),
            &response.headers,
            &mut out,
        );
        io.write_all(&out).await?;
        io.flush().await?;
        buf.advance(consumed);
        let ws =
            WebSocketStream::from_raw_with_deflate(io, Role::Server, self.options, buf, deflate);
        Ok((ws, req.request))
    }
}

pub(crate) enum ReadError {
    Handshake(HandshakeError),
    Io(std::io::Error),
}

/// Reads until a whole request head is buffered. Re-parses only when the end of the head
/// (`\r\n\r\n`) may have arrived, so a client trickling bytes costs linear time.
async fn read_request<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: &tidewire_proto::Limits,
) -> std::result::Result<(ServerRequest, usize), ReadError> {
    let mut scanned: usize = 0;
    loop {
        let start = scanned.saturating_sub(3);
        if buf[start..].windows(4).any(|w| w == b"\r\n\r\n")
            || buf.len() >= limits.max_handshake_size
        {
            match parse_request(buf, limits) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Handshake(e)),
            }
        }
        scanned = buf.len();
        if buf.len() >= limits.max_handshake_size {
            return Err(ReadError::Handshake(HandshakeError::TooLarge));
        }
        buf.reserve(1024);
        let n = io.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

async fn reject<S: AsyncWrite + Unpin>(io: &mut S, status: http::StatusCode, reason: &str) {
    let mut out = Vec::with_capacity(256);
    write_rejection(status, reason, &mut out);
    // The peer may already be gone; the handshake has failed either way.
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}
