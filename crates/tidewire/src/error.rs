//! The one error type of the async layer.
//!
//! Opaque on purpose: match on the predicates ([`Error::is_closed`], [`Error::is_timeout`],
//! [`Error::close_code`], ...) rather than on text. `Display` is for people and may change.

use std::fmt;
use std::io;
use tidewire_proto::handshake::HandshakeError;
use tidewire_proto::{CloseCode, ProtocolError, UsageError};

/// An error from a WebSocket connection or handshake.
pub struct Error {
    kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Io(io::Error),
    Protocol(ProtocolError),
    Handshake(HandshakeError),
    /// The server answered the handshake with an HTTP status other than 101, this
    /// (first line of the) body and this `Retry-After`.
    Refused(HandshakeError, String, Option<std::time::Duration>),
    Usage(UsageError),
    /// The connection is closed; nothing more can be sent or received.
    Closed,
    /// A timer expired: handshake, close handshake or heartbeat.
    Timeout(&'static str),
    /// A reconnecting client is between connections.
    NotConnected,
    /// The URL given to `connect` is not a usable ws:// or wss:// URL: "URL: what is
    /// wrong".
    Url(String),
    /// A proxy could not be used (its URL, or it refused the tunnel): what went wrong,
    /// naming the proxy (without its password), and whether retrying cannot help (a bad
    /// proxy URL, credentials refused).
    Proxy(String, bool),
    /// A WebSocket over HTTP/2 was required ([`Http2::Only`](crate::Http2)) and the
    /// server does not allow it: "AUTHORITY: why".
    #[cfg(feature = "http2")]
    Http2(String),
    /// A WebSocket over HTTP/3 was asked for ([`ClientBuilder::http3`](crate::ClientBuilder::http3))
    /// and cannot be had: "AUTHORITY: why".
    #[cfg(feature = "http3")]
    Http3(String),
    /// The TLS layer failed.
    #[cfg(feature = "tls")]
    Tls(io::Error),
    /// The server's certificate was refused: why, for people, and the TLS error.
    #[cfg(feature = "tls")]
    Certificate(String, io::Error),
    /// The TLS handshake failed in a way that says the server does not speak TLS at all
    /// (it answered in plain text, or closed): this explanation, and the TLS error.
    #[cfg(feature = "tls")]
    NotTls(String, io::Error),
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error { kind }
    }

    /// The connection was already closed (send or receive after the end).
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// A handshake, close or heartbeat timer expired.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// The peer broke the protocol after the handshake.
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, Kind::Protocol(_))
    }

    /// The opening handshake failed.
    pub fn is_handshake(&self) -> bool {
        matches!(self.kind, Kind::Handshake(_) | Kind::Refused(..))
    }

    /// A [`ReconnectingClient`](crate::ReconnectingClient) is between connections: the
    /// message was not sent. Send it again after the next `Connected` event.
    pub fn is_not_connected(&self) -> bool {
        matches!(self.kind, Kind::NotConnected)
    }

    /// The URL was not a usable `ws://` or `wss://` URL.
    pub fn is_url(&self) -> bool {
        matches!(self.kind, Kind::Url(_))
    }

    /// The proxy could not be used: its URL is wrong, it is unreachable, or it refused
    /// the tunnel ([`Proxy`](crate::Proxy)).
    pub fn is_proxy(&self) -> bool {
        matches!(self.kind, Kind::Proxy(..))
    }

    /// A proxy error that retrying cannot mend: a bad proxy URL, credentials refused.
    pub(crate) fn is_proxy_for_good(&self) -> bool {
        matches!(self.kind, Kind::Proxy(_, true))
    }

    /// The HTTP status of a refused handshake (the server answered something other than
    /// 101 Switching Protocols).
    pub fn http_status(&self) -> Option<u16> {
        match self.handshake_error() {
            Some(HandshakeError::Status(code, _)) => Some(*code),
            _ => None,
        }
    }

    /// The first line of the body of a refused handshake, where the server sent one
    /// (servers often put the reason there: `origin not allowed`, `no route for /x`).
    pub fn http_body(&self) -> Option<&str> {
        match &self.kind {
            Kind::Refused(_, body, _) if !body.is_empty() => Some(body),
            _ => None,
        }
    }

    /// How long a server that refused the handshake asked the client to wait before
    /// trying again (`Retry-After: SECONDS`, typically with 503 or 429).
    /// [`ReconnectingClient`](crate::ReconnectingClient) waits at least this long, up to
    /// its backoff's cap.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.kind {
            Kind::Refused(_, _, after) => after,
            _ => None,
        }
    }

    /// The TLS handshake of a `wss://` connection failed (a certificate that does not
    /// verify, a server that does not speak TLS, ...).
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            matches!(
                self.kind,
                Kind::Tls(_) | Kind::NotTls(..) | Kind::Certificate(..)
            )
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// The transport failed.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io(_))
    }

    /// The protocol violation, if that is what this is.
    pub fn protocol_error(&self) -> Option<ProtocolError> {
        match self.kind {
            Kind::Protocol(e) => Some(e),
            _ => None,
        }
    }

    /// The handshake failure, if that is what this is.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match &self.kind {
            Kind::Handshake(e) | Kind::Refused(e, ..) => Some(e),
            _ => None,
        }
    }

    /// The close code this error put (or would put) on the wire, if any.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self.kind {
            Kind::Protocol(e) => Some(e.close_code()),
            Kind::Timeout(_) | Kind::Io(_) => Some(CloseCode::ABNORMAL),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Io(e) => write!(f, "I/O error: {e}"),
            Kind::Protocol(e) => write!(f, "protocol error: {e} (close code {})", e.close_code()),
            Kind::Handshake(e) => write!(f, "handshake failed: {e}"),
            Kind::Refused(e, body, _) if body.is_empty() => write!(f, "handshake failed: {e}"),
            Kind::Refused(e, body, _) => write!(f, "handshake failed: {e} ({body})"),
            Kind::Usage(e) => write!(f, "{e}"),
            Kind::Closed => f.write_str("connection closed"),
            Kind::Timeout(what) => write!(f, "{what} timed out"),
            Kind::NotConnected => f.write_str("not connected (reconnecting)"),
            Kind::Url(msg) => write!(f, "invalid URL {msg}"),
            Kind::Proxy(msg, _) => write!(f, "proxy: {msg}"),
            #[cfg(feature = "http2")]
            Kind::Http2(msg) => write!(f, "WebSocket over HTTP/2 not possible: {msg}"),
            #[cfg(feature = "http3")]
            Kind::Http3(msg) => write!(f, "WebSocket over HTTP/3 not possible: {msg}"),
            #[cfg(feature = "tls")]
            Kind::Tls(e) => write!(f, "TLS error: {e}"),
            #[cfg(feature = "tls")]
            Kind::NotTls(why, _) => write!(f, "TLS handshake failed: {why}"),
            #[cfg(feature = "tls")]
            Kind::Certificate(why, _) => write!(f, "TLS: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Io(e) => Some(e),
            Kind::Protocol(e) => Some(e),
            Kind::Handshake(e) | Kind::Refused(e, ..) => Some(e),
            Kind::Usage(e) => Some(e),
            #[cfg(feature = "tls")]
            Kind::Tls(e) | Kind::NotTls(_, e) | Kind::Certificate(_, e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::new(Kind::Io(e))
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::new(Kind::Protocol(e))
    }
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        Error::new(Kind::Handshake(e))
    }
}

impl From<UsageError> for Error {
    fn from(e: UsageError) -> Self {
        Error::new(Kind::Usage(e))
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
