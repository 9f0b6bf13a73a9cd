//! The client side: `ws://` and `wss://` URLs, TCP, TLS (rustls) and the opening handshake.

use crate::error::{Error, Kind, Result};
use crate::stream::{Options, WebSocketStream};
use crate::transport::MaybeTlsStream;
use bytes::{Buf, BytesMut};
use tidewire_proto::handshake::client::{parse_response, write_request, ClientRequest};
use tidewire_proto::handshake::{generate_key, HandshakeError};
use tidewire_proto::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// True for `wss://`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80 or 443).
    pub port: u16,
    /// Path and query, at least "/".
    pub path_and_query: String,
}

impl WsUrl {
    /// Parses a URL. Accepts `ws`, `wss`, and `http`/`https` as their aliases.
    pub fn parse(url: &str) -> Result<WsUrl> {
        let bad = |m: &str| Error::new(Kind::Url(format!("{m}: {url}")));
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        // RFC 3986 §3.1: "schemes are case-insensitive".
        let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
        let tls = match scheme.as_deref() {
            Some("ws") | Some("http") => false,
            Some("wss") | Some("https") => true,
            Some(_) => return Err(bad("scheme must be ws:// or wss://")),
            None => return Err(bad("missing scheme (ws:// or wss://)")),
        };
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let path_and_query = if path_and_query.starts_with('/') {
            path_and_query.to_owned()
        } else {
            format!("/{path_and_query}")
        };
        Ok(WsUrl {
            tls,
            host,
            port,
            path_and_query,
        })
    }

    /// The `Host` header value: the host, with the port when it is not the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Connects to a `ws://` or `wss://` URL with default settings.
pub async fn connect(
    url: &str,
) -> Result<(
    WebSocketStream<MaybeTlsStream<TcpStream>>,
    http::Response<()>,
)> {
    ClientBuilder::new(url).connect().await
}

/// Builds a client connection.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    pub(crate) options: Options,
    protocols: Vec<String>,
    headers: http::HeaderMap,
    origin: Option<String>,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientBuilder {
    /// A client for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            options: Options::default(),
            protocols: Vec::new(),
            headers: http::HeaderMap::new(),
            origin: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The URL this builder connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sets stream options (limits, heartbeat, timeouts).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Sets the protocol configuration (limits, auto-pong, fragmentation).
    pub fn config(mut self, config: tidewire_proto::Config) -> Self {
        self.options.config = config;
        self
    }

    /// Offers permessage-deflate with these parameters (`None`: no offer, the default).
    pub fn compression(mut self, offer: Option<tidewire_proto::DeflateConfig>) -> Self {
        self.options.config.compression = offer;
        self
    }

    /// Subprotocols to offer, most preferred first (`Sec-WebSocket-Protocol`).
    pub fn protocols<I, T>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a request header (cookies, authorization).
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Uses this rustls configuration for `wss://` (custom roots, client certificates).
    /// Default: the webpki root certificates.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Opens TCP (and TLS for `wss://`) and runs the handshake.
    pub async fn connect(
        &self,
    ) -> Result<(
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        http::Response<()>,
    )> {
        let url = WsUrl::parse(&self.url)?;
        let timeout = self.options.handshake_timeout;
        let fut = async {
            let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
            tcp.set_nodelay(true)?;
            let io = if url.tls {
                #[cfg(feature = "tls")]
                {
                    crate::transport::tls_connect(tcp, &url.host, self.tls.clone()).await?
                }
                #[cfg(not(feature = "tls"))]
                {
                    return Err(Error::new(Kind::Url(
                        "wss:// needs the `tls` feature".into(),
                    )));
                }
            } else {
                MaybeTlsStream::Plain(tcp)
            };
            self.handshake(io, &url).await
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(Kind::Timeout("handshake"))),
        }
    }

    /// Runs the handshake over a transport the caller opened (for tests, proxies, Unix
    /// sockets). The URL supplies the Host header and the path.
    pub async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> Result<(WebSocketStream<S>, http::Response<()>)> {
        let url = WsUrl::parse(&self.url)?;
        self.handshake(io, &url).await
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        url: &WsUrl,
    ) -> Result<(WebSocketStream<S>, http::Response<()>)> {
        let key = generate_key(rand::random());
        let host = url.host_header();
        let compression = self.options.config.compression;
        let offer = compression.map(|c| tidewire_proto::deflate::offer(&c));
        let req = ClientRequest {
            host: &host,
            path_and_query: &url.path_and_query,
            key: &key,
            protocols: &self.protocols,
            extensions: offer.as_deref(),
            origin: self.origin.as_deref(),
            headers: &self.headers,
        };
        let mut out = Vec::with_capacity(512);
        write_request(&req, &mut out);
        io.write_all(&out).await?;
        io.flush().await?;
        let limits = self.options.config.limits;
        let mut buf = BytesMut::with_capacity(1024);
        let (resp, consumed) = loop {
            match parse_response(&buf, &key, &self.protocols, &limits) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e @ HandshakeError::Status(..)) => {
                    let (body, retry_after) = refusal(&mut io, &mut buf).await;
                    return Err(Error::new(Kind::Refused(e, body, retry_after)));
                }
                Err(e) => return Err(e.into()),
            }
            buf.reserve(1024);
            if io.read_buf(&mut buf).await? == 0 {
                return Err(HandshakeError::ConnectionClosed.into());
            }
        };
        // §9.1: the server may only answer with extensions the client offered.
        let deflate = match compression {
            Some(c) => tidewire_proto::deflate::accept_response(&resp.extensions, &c)?,
            None if resp.extensions.is_empty() => None,
            None => return Err(HandshakeError::UnofferedExtension.into()),
        };
        buf.advance(consumed);
        let ws =
            WebSocketStream::from_raw_with_deflate(io, Role::Client, self.options, buf, deflate);
        Ok((ws, resp.response))
    }
}

/// Largest part of a refusal's body kept for the error message.
const REFUSAL_BODY_MAX: usize = 1024;

/// What a non-101 response whose head is at the start of `buf` says: the first line of
/// its body (servers put their one-line reason there) and `Retry-After` (in seconds, at
/// most a day; an HTTP date is not followed). Reads what `Content-Length` announces (at
/// most [`REFUSAL_BODY_MAX`] bytes, for at most 1 s); never fails (an unreadable body is
/// "").
async fn refusal<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
) -> (String, Option<std::time::Duration>) {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return (String::new(), None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let retry_after = header(&head, "retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|secs| std::time::Duration::from_secs(secs.min(86_400)));
    let announced = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let want = announced.unwrap_or(REFUSAL_BODY_MAX).min(REFUSAL_BODY_MAX);
    let read_rest = async {
        while buf.len() - head_end < want {
            buf.reserve(want);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // Without Content-Length, one line is all we want.
            if announced.is_none() && buf[head_end..].contains(&b'\n') {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read_rest).await;
    let end = buf.len().min(head_end + want);
    let body = String::from_utf8_lossy(&buf[head_end..end]);
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = line.chars().filter(|c| !c.is_control()).take(200).collect();
    (line, retry_after)
}

/// The value of header `name` (lower case) in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = WsUrl::parse("ws://example.com/chat?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path_and_query.as_str()),
            (false, "example.com", 80, "/chat?x=1")
        );
        let u = WsUrl::parse("wss://[::1]:9443").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path_and_query.as_str()),
            (true, "::1", 9443, "/")
        );
        assert_eq!(u.host_header(), "[::1]:9443");
        assert!(WsUrl::parse("WSS://Example.com/").is_ok_and(|u| u.tls));
        assert!(WsUrl::parse("ftp://x/").is_err());
        assert!(WsUrl::parse("not a url").is_err());
        assert!(WsUrl::parse("127.0.0.1:80").is_err());
    }
}
