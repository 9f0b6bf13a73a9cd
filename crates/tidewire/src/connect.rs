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
    /// Parses a URL of the form `ws://HOST[:PORT][/PATH][?QUERY]` (RFC 6455 §3), strictly:
    /// a URL that cannot mean what it says is an error naming the URL and the fault, never
    /// a connection somewhere else.
    ///
    /// - Scheme `ws` or `wss` (`http` and `https` are accepted as their aliases), in any
    ///   case; another scheme, or none, is an error.
    /// - Host: a name (ASCII letters, digits, `-`, `.`, `_`, `~`; a non-ASCII name must be
    ///   written in its `xn--` form), a dotted IPv4 address (all four numbers, 0 to 255) or
    ///   an IPv6 address in brackets (`[::1]`). Empty is an error.
    /// - Port: absent (80 for `ws`, 443 for `wss`) or a decimal number from 1 to 65535.
    ///   An empty port (`host:`), a port that is not a number, port 0 and ports above
    ///   65535 are errors.
    /// - No user information (`user:password@`): the grammar of §3 has none, and
    ///   credentials belong in a header or a token.
    /// - No fragment: "Fragment identifiers are meaningless in the context of WebSocket
    ///   URIs and MUST NOT be used on these URIs" (§3); write `#` as `%23`.
    /// - No spaces or control characters anywhere; a `%` starts a two-digit hex escape.
    ///   Characters an HTTP request line cannot carry as they are (non-ASCII, `"<>\^`{|}[]`)
    ///   are percent-encoded in the path and query, as browsers do.
    pub fn parse(url: &str) -> Result<WsUrl> {
        parse_ws_url(url).map_err(|what| Error::new(Kind::Url(format!("{}: {what}", shown(url)))))
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

    /// `HOST:PORT` (IPv6 in brackets), for messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `url` as it may be shown in an error: a password in user information is masked.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// [`WsUrl::parse`]; the error says what is wrong.
fn parse_ws_url(url: &str) -> std::result::Result<WsUrl, String> {
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(match c {
            ' ' => "contains a space (write it as %20)".into(),
            c => format!(
                "contains the character {c:?} (whitespace and control characters are not allowed)"
            ),
        });
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("missing scheme: the URL must start with ws:// or wss://".into());
    };
    // RFC 3986 §3.1: "schemes are case-insensitive".
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => false,
        "wss" | "https" => true,
        "" => return Err("missing scheme: the URL must start with ws:// or wss://".into()),
        other => return Err(format!("unknown scheme {other:?}: use ws:// or wss://")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // §3: "Fragment identifiers are meaningless in the context of WebSocket URIs and MUST
    // NOT be used on these URIs."
    if tail.contains('#') {
        return Err(
            "a fragment (#...) is not allowed in a WebSocket URL (RFC 6455 §3); write # as %23"
                .into(),
        );
    }
    if authority.contains('@') {
        return Err("user information (NAME@ or NAME:PASSWORD@) is not allowed in a WebSocket URL; send credentials in a header or a token".into());
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => parse_port(p)?,
    };
    Ok(WsUrl {
        tls,
        host,
        port,
        path_and_query: path_and_query(tail)?,
    })
}

/// Splits `HOST[:PORT]` or `[IPV6][:PORT]`; checks the host.
fn split_host_port(authority: &str) -> std::result::Result<(String, Option<&str>), String> {
    if authority.is_empty() {
        return Err("missing host".into());
    }
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err("'[' without ']' around the IPv6 address".into());
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{addr}] is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{after:?} after the IPv6 address (expected :PORT)"))?,
            ),
        };
        return Ok((addr.to_owned(), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if port.is_some_and(|p| p.contains(':')) {
        return Err(
            "more than one ':' after the host (an IPv6 address goes in brackets: ws://[::1]:9001/)"
                .into(),
        );
    }
    if host.is_empty() {
        return Err("missing host".into());
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
    {
        return Err(if c.is_ascii() {
            format!("the character {c:?} is not allowed in a host name")
        } else {
            format!("the host {host:?} is not ASCII: write it in its xn-- (punycode) form")
        });
    }
    // Digits and dots only: an IPv4 address, and a whole one (getaddrinfo would read
    // "127.1" as 127.0.0.1 and "1.2.3.256" fails only later, as a lookup).
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(format!(
            "{host} is not an IPv4 address (four numbers from 0 to 255, as in 127.0.0.1)"
        ));
    }
    Ok((host.to_owned(), port))
}

/// A port: decimal digits, 1 to 65535.
fn parse_port(p: &str) -> std::result::Result<u16, String> {
    if p.is_empty() {
        return Err("empty port after ':' (leave the ':' out for the default port)".into());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number (1 to 65535)"));
    }
    match p.parse::<u16>() {
        Ok(0) => Err("port 0 is out of range (1 to 65535)".into()),
        Ok(port) => Ok(port),
        // Only digits: the one way to fail is being too large.
        Err(_) => Err(format!("port {p} is out of range (1 to 65535)")),
    }
}

/// The request target: `tail` (empty, or starting with `/` or `?`) with at least "/",
/// `%` escapes checked, and what a request line cannot carry percent-encoded.
fn path_and_query(tail: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(tail.len() + 1);
    if !tail.starts_with('/') {
        out.push('/');
    }
    let bytes = tail.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    let end = (i + 3).min(bytes.len());
                    let escape = String::from_utf8_lossy(&bytes[i..end]);
                    return Err(format!(
                        "{escape:?} is not a percent escape (% and two hex digits; write % as %25)"
                    ));
                }
                out.push('%');
            }
            // RFC 3986 pchar / query characters: unreserved, sub-delims, ':', '@', '/', '?'.
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@'
            | b'/'
            | b'?' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
        i += 1;
    }
    Ok(out)
}

/// What an extended CONNECT (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3) carries besides
/// `:protocol websocket`.
#[cfg(any(feature = "http2", feature = "http3"))]
pub(crate) struct ExtendedConnect<'a> {
    pub url: &'a WsUrl,
    pub protocols: &'a [String],
    pub extensions: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
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
    proxy: crate::proxy::Proxy,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    #[cfg(feature = "http2")]
    http2: crate::http2::Http2,
    #[cfg(feature = "http3")]
    http3: bool,
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
            proxy: crate::proxy::Proxy::default(),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "http2")]
            http2: crate::http2::Http2::default(),
            #[cfg(feature = "http3")]
            http3: false,
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

    /// The proxy to go through: [`Proxy::parse`](crate::Proxy::parse) of an `http://`,
    /// `socks5://` or `socks5h://` URL, [`Proxy::none`](crate::Proxy::none), or (the
    /// default) what the environment says for the URL (`https_proxy`, `http_proxy`,
    /// `all_proxy`, `no_proxy`: the [`proxy`](crate::proxy) module).
    pub fn proxy(mut self, proxy: crate::proxy::Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// When to run the WebSocket over HTTP/2 (RFC 8441): [`Http2::Auto`](crate::Http2)
    /// by default (`wss://` to a server that allows it, sharing one connection between
    /// WebSockets to the same host; HTTP/1.1 otherwise), `Off` for HTTP/1.1 only, `Only`
    /// to require it (h2c for `ws://`). The [`http2`](crate::http2) module has the details.
    #[cfg(feature = "http2")]
    pub fn http2(mut self, mode: crate::http2::Http2) -> Self {
        self.http2 = mode;
        self
    }

    /// The HTTP/2 mode set by [`http2`](Self::http2).
    #[cfg(feature = "http2")]
    pub fn http2_mode(&self) -> crate::http2::Http2 {
        self.http2
    }

    /// Runs `wss://` WebSockets over HTTP/3 (RFC 9220, QUIC on the URL's UDP port) instead
    /// of TCP: `true` requires it (a server without HTTP/3 is an error, there is no
    /// fallback), `false` (the default) never uses it. WebSockets to the same host share
    /// one QUIC connection. The [`http3`](crate::http3) module has the details.
    #[cfg(feature = "http3")]
    pub fn http3(mut self, on: bool) -> Self {
        self.http3 = on;
        self
    }

    /// Whether [`http3`](Self::http3) is on.
    #[cfg(feature = "http3")]
    pub fn http3_enabled(&self) -> bool {
        self.http3
    }

    /// Opens TCP (and TLS for `wss://`) and runs the handshake; over HTTP/2 where
    /// [`http2`](Self::http2) says so and the server allows it (the response's version
    /// is then `HTTP_2` and its status 200).
    pub async fn connect(
        &self,
    ) -> Result<(
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        http::Response<()>,
    )> {
        let url = WsUrl::parse(&self.url)?;
        let timeout = self.options.handshake_timeout;
        let fut = async {
            #[cfg(any(feature = "http2", feature = "http3"))]
            let offer = self
                .options
                .config
                .compression
                .map(|c| tidewire_proto::deflate::offer(&c));
            #[cfg(any(feature = "http2", feature = "http3"))]
            let req = ExtendedConnect {
                url: &url,
                protocols: &self.protocols,
                extensions: offer.as_deref(),
                origin: self.origin.as_deref(),
                headers: &self.headers,
            };
            #[cfg(feature = "http3")]
            if self.http3 {
                let (stream, response) =
                    crate::http3::open(&req, self.tls.clone(), &self.proxy).await?;
                return self.finish_extended(MaybeTlsStream::Http3(stream), response);
            }
            #[cfg(feature = "http2")]
            {
                use crate::http2::Opened;
                let proxy = format!("{:?}", self.proxy);
                let dial = || crate::proxy::open(&url, &self.proxy);
                match crate::http2::open(self.http2, &req, self.tls.clone(), &proxy, dial).await? {
                    Opened::WebSocket(stream, response) => {
                        return self.finish_extended(MaybeTlsStream::Http2(stream), response);
                    }
                    Opened::Http1(io) => return self.handshake(io, &url).await,
                    Opened::NotHere => {}
                }
            }
            let tcp = crate::proxy::open(&url, &self.proxy).await?;
            let io = if url.tls {
                #[cfg(feature = "tls")]
                {
                    crate::transport::tls_connect(tcp, &url, self.tls.clone()).await?
                }
                #[cfg(not(feature = "tls"))]
                {
                    return Err(Error::new(Kind::Url(format!(
                        "{}: wss:// needs the `tls` feature of tidewire",
                        self.url
                    ))));
                }
            } else {
                MaybeTlsStream::Plain(tcp)
            };
            self.handshake(io, &url).await
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            #[cfg(feature = "http3")]
            Err(_) if self.http3 => Err(Error::new(Kind::Http3(format!(
                "{}: no answer within {} s (is HTTP/3 served on that UDP port? tidewire serve --http3)",
                url.authority(),
                timeout.as_secs_f32()
            )))),
            Err(_) => Err(Error::new(Kind::Timeout("handshake"))),
        }
    }

    /// The checks of a server's 2xx to an extended CONNECT (RFC 8441 §5, RFC 9220 §3),
    /// then the socket.
    #[cfg(any(feature = "http2", feature = "http3"))]
    #[allow(clippy::type_complexity)]
    fn finish_extended(
        &self,
        io: MaybeTlsStream<TcpStream>,
        response: http::Response<()>,
    ) -> Result<(
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        http::Response<()>,
    )> {
        let (_protocol, extensions) =
            tidewire_proto::handshake::client::check_extended_connect_response(
                response.headers(),
                &self.protocols,
            )?;
        let deflate = accepted_deflate(self.options.config.compression, &extensions)?;
        let ws = WebSocketStream::from_raw_with_deflate(
            io,
            Role::Client,
            self.options,
            BytesMut::new(),
            deflate,
        );
        Ok((ws, response))
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
        let deflate = accepted_deflate(compression, &resp.extensions)?;
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
    let retry_after = header(&head, "retry-after").and_then(retry_after_secs);
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
    (first_line(&buf[head_end..end]), retry_after)
}

/// §9.1: the server may only answer with extensions the client offered; the
/// permessage-deflate parameters it accepted, if any (over HTTP/1.1 and HTTP/2 alike).
fn accepted_deflate(
    offered: Option<tidewire_proto::DeflateConfig>,
    extensions: &[tidewire_proto::handshake::Extension],
) -> Result<Option<tidewire_proto::DeflateParams>> {
    match offered {
        Some(c) => Ok(tidewire_proto::deflate::accept_response(extensions, &c)?),
        None if extensions.is_empty() => Ok(None),
        None => Err(HandshakeError::UnofferedExtension.into()),
    }
}

/// The first non-blank line of a refusal's body, without control characters, at most
/// 200 characters: servers put their one-line reason there.
pub(crate) fn first_line(body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// A refusal of an extended CONNECT (HTTP/2, HTTP/3): its status, the first line of its
/// body, and its `Retry-After`, as an HTTP/1.1 refusal reads.
#[cfg(any(feature = "http2", feature = "http3"))]
pub(crate) fn refused(status: http::StatusCode, headers: &http::HeaderMap, body: String) -> Error {
    let retry_after = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_secs);
    let reason = status.canonical_reason().unwrap_or("").to_owned();
    Error::new(Kind::Refused(
        HandshakeError::Status(status.as_u16(), reason),
        body,
        retry_after,
    ))
}

/// A `Retry-After` in seconds (at most a day; an HTTP date is not followed).
pub(crate) fn retry_after_secs(value: &str) -> Option<std::time::Duration> {
    let secs = value.trim().parse::<u64>().ok()?;
    Some(std::time::Duration::from_secs(secs.min(86_400)))
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

    fn parsed(url: &str) -> (bool, String, u16, String) {
        let u = WsUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (u.tls, u.host, u.port, u.path_and_query)
    }

    #[test]
    fn ports_are_1_to_65535_or_the_default() {
        let p = |url| parsed(url).2;
        assert_eq!(p("ws://h/"), 80);
        assert_eq!(p("wss://h/"), 443);
        assert_eq!(p("https://h"), 443);
        assert_eq!(p("ws://h:1/"), 1);
        assert_eq!(p("ws://h:65535/"), 65535);
        assert_eq!(p("wss://h:080/"), 80);
        assert_eq!(p("ws://[::1]:9001/"), 9001);
    }

    /// Issue 13, item 4: `ws://127.0.0.1:99999/` and `ws://127.0.0.1:abc/` connected to
    /// port 80. Every malformed URL is an error that names the URL and the fault.
    #[test]
    fn issue_13_bad_urls_are_errors_naming_the_url_and_the_fault() {
        for (url, fault) in [
            ("ws://127.0.0.1:99999/", "port 99999 is out of range"),
            ("ws://127.0.0.1:65536/", "port 65536 is out of range"),
            (
                "ws://127.0.0.1:123456789012345678901234567890/",
                "out of range",
            ),
            ("ws://127.0.0.1:abc/", "port \"abc\" is not a number"),
            ("ws://127.0.0.1:+80/", "is not a number"),
            ("ws://127.0.0.1:-1/", "is not a number"),
            ("ws://127.0.0.1:0/", "port 0"),
            ("ws://127.0.0.1:/", "empty port"),
            ("ws://127.0.0.1:80:81/", "more than one ':'"),
            ("ws://::1/", "more than one ':'"),
            ("ws://[::1/", "without ']'"),
            ("ws://[::g]/", "is not an IPv6 address"),
            ("ws://[::1]x/", "after the IPv6 address"),
            ("ws://[::1]:/", "empty port"),
            ("ws:///path", "missing host"),
            ("ws://", "missing host"),
            ("ws://:80/", "missing host"),
            ("ws://?x", "missing host"),
            ("ws://user@host/", "user information"),
            ("ws://user:secret@host/", "user information"),
            ("ws://host/#frag", "fragment"),
            ("ws://host#", "fragment"),
            ("ws://host/a?b#c", "fragment"),
            ("ftp://host/", "unknown scheme \"ftp\""),
            ("://host/", "missing scheme"),
            ("host:80/", "missing scheme"),
            ("ws:/host/", "missing scheme"),
            ("ws://host/a b", "contains a space"),
            ("ws://host/a\tb", "'\\t'"),
            ("ws://ho st/", "contains a space"),
            ("ws://host/\n", "'\\n'"),
            ("ws://h%41/", "not allowed in a host name"),
            ("ws://h*st/", "not allowed in a host name"),
            ("ws://café.example/", "xn--"),
            ("ws://127.0.0.256/", "is not an IPv4 address"),
            ("ws://127.1/", "is not an IPv4 address"),
            ("ws://1.2.3.4.5/", "is not an IPv4 address"),
            ("ws://host/100%", "not a percent escape"),
            ("ws://host/%zz", "not a percent escape"),
            ("ws://host/?q=%4", "not a percent escape"),
        ] {
            let e = WsUrl::parse(url).expect_err(url);
            let text = e.to_string();
            assert!(e.is_url(), "{url}: {text}");
            assert!(text.contains(fault), "{url}: {text}");
            if !url.contains("secret") {
                assert!(text.contains(url), "{url}: {text}");
            }
        }
        // A password is not repeated in the message.
        let e = WsUrl::parse("ws://ann:hunter2@host/")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("ws://ann:***@host/"),
            "{e}"
        );
    }

    #[test]
    fn hosts_and_paths() {
        assert_eq!(
            parsed("WS://Example.COM?x=1"),
            (false, "Example.COM".into(), 80, "/?x=1".into())
        );
        assert_eq!(parsed("ws://a-b_c.~d/").1, "a-b_c.~d");
        assert_eq!(parsed("ws://[2001:db8::1]/").1, "2001:db8::1");
        assert_eq!(parsed("ws://10.0.0.1/").1, "10.0.0.1");
        // Escapes pass as they are; what a request line cannot carry is escaped.
        assert_eq!(parsed("ws://h/a%20b?c=%2F").3, "/a%20b?c=%2F");
        assert_eq!(
            parsed("ws://h/caf\u{e9}?q={\"a\"}").3,
            "/caf%C3%A9?q=%7B%22a%22%7D"
        );
        assert_eq!(
            parsed("ws://h/x:@!$&'()*+,;=-._~/?/?").3,
            "/x:@!$&'()*+,;=-._~/?/?"
        );
    }

    #[tokio::test]
    async fn a_bad_url_never_connects() {
        for url in ["ws://127.0.0.1:99999/", "ws://127.0.0.1:abc/"] {
            let e = ClientBuilder::new(url).connect().await.unwrap_err();
            assert!(e.is_url(), "{e}");
        }
    }

    /// Issue 13, item 10: `wss://` to a plain port said "received corrupt message of type
    /// InvalidContentType". It says the server may not speak TLS, and keeps the cause.
    #[tokio::test]
    async fn issue_13_wss_to_a_plain_http_port_says_it_is_not_tls() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let e = connect(&format!("wss://{addr}/")).await.unwrap_err();
        let text = e.to_string();
        assert!(e.is_tls(), "{text}");
        assert_eq!(
            text,
            format!(
                "TLS handshake failed: the server at {addr} does not seem to speak TLS (try ws://)"
            )
        );
        let io = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the TLS error is the source");
        let tls = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        assert!(
            matches!(
                tls,
                Some(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType
                ))
            ),
            "{io:?}"
        );
    }

    #[tokio::test]
    async fn wss_to_a_server_that_hangs_up_says_it_may_not_be_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut tcp, _)) = listener.accept().await {
                // Reads the ClientHello, then closes without a word.
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
            }
        });
        let e = connect(&format!("wss://{addr}/")).await.unwrap_err();
        let text = e.to_string();
        assert!(e.is_tls(), "{text}");
        assert!(text.contains(&format!("server at {addr} closed")), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
