//! The opening handshake (RFC 6455 §4): the HTTP/1.1 Upgrade exchange before any frame.
//!
//! Server side ([`server`]): [`parse_request`] reads a request head from the start of a
//! buffer, validates it against §4.2.1 and hands back an [`http::Request`] plus the
//! WebSocket fields; [`write_response`] and [`write_rejection`] produce the answer bytes.
//! Client side ([`client`]): [`write_request`] produces the request, [`parse_response`]
//! validates the server's answer against §4.1.
//!
//! Partial input is not an error: both parsers answer `Ok(None)` until the head is
//! complete, consume nothing, and give the same result however the bytes were split. The
//! head is bounded by [`Limits::max_handshake_size`](crate::Limits::max_handshake_size) and
//! [`Limits::max_headers`](crate::Limits::max_headers). Bytes after the head already belong
//! to the WebSocket stream, so the parsers report how many bytes the head took.
//!
//! No I/O, no clock, no randomness: the client's key comes from [`generate_key`] fed with
//! random bytes from the caller.
//!
//! Not here: permessage-deflate negotiation (which only reads the parsed [`Extension`]s),
//! origin policy (the application reads [`ServerRequest::origin`]), redirects.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, StatusCode};
use sha1::{Digest, Sha1};
use std::fmt;

pub mod client;
pub mod extensions;
pub mod server;

pub use client::{parse_response, write_request, ClientRequest, ServerResponse};
pub use extensions::{format_extensions, parse_extensions, Extension};
pub use server::{
    parse_request, select_subprotocol, write_rejection, write_response, ServerRequest,
};

/// The GUID appended to the client's key (§1.3, §4.2.2 item 5.4).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (§4.2.2 item 5.4):
/// "concatenate ... with the string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ... take the
/// SHA-1 hash of this concatenated value ... base64-encoded".
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// A `Sec-WebSocket-Key` from 16 random bytes supplied by the caller (§4.1 item 7:
/// "a randomly selected 16-byte value that has been base64-encoded").
pub fn generate_key(random: [u8; 16]) -> String {
    STANDARD.encode(random)
}

/// Why a handshake failed. One variant per failure.
///
/// [`status`](HandshakeError::status) is the one place that decides the HTTP status a
/// server answers with, and [`reason`](HandshakeError::reason) the one-line body; pass both
/// to [`write_rejection`], which adds the headers a status requires (426 gets
/// `Sec-WebSocket-Version: 13`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head was not complete within `Limits::max_handshake_size` bytes. 431.
    TooLarge,
    /// More header fields than `Limits::max_headers`. 431.
    TooManyHeaders,
    /// Not a well-formed HTTP/1.x head (request line, status line, header syntax). 400.
    MalformedHttp,
    /// A request method other than GET (§4.2.1 item 1). 405.
    MethodNotAllowed,
    /// HTTP/1.0: the handshake needs HTTP/1.1 (§4.2.1 item 1, §4.1). 400.
    UnsupportedHttpVersion,
    /// No `Host` header, or more than one (§4.2.1 item 2). 400.
    InvalidHost,
    /// `Upgrade` missing or without the token `websocket` (§4.2.1 item 3, §4.1). 400.
    InvalidUpgrade,
    /// `Connection` missing or without the token `upgrade` (§4.2.1 item 4, §4.1). 400.
    InvalidConnection,
    /// No `Sec-WebSocket-Key` (§4.2.1 item 5). 400.
    MissingKey,
    /// More than one `Sec-WebSocket-Key` (§11.3.1: "MUST NOT appear more than once"). 400.
    DuplicateKey,
    /// A `Sec-WebSocket-Key` that is not the base64 of exactly 16 bytes (§4.2.1 item 5). 400.
    InvalidKey,
    /// `Sec-WebSocket-Version` missing or not 13 (§4.2.1 item 6, §4.2.2). 426; the
    /// rejection must carry `Sec-WebSocket-Version: 13`, which [`write_rejection`] adds.
    UnsupportedVersion,
    /// A `Sec-WebSocket-Protocol` that is not a comma-separated list of tokens (§4.1
    /// item 10), or, from a server, more than one value. 400.
    InvalidProtocol,
    /// A `Sec-WebSocket-Extensions` value outside the §9.1 grammar. 400.
    InvalidExtensions,
    /// An `Origin` that is repeated or not visible ASCII (§4.2.1 item 7, RFC 6454). 400.
    InvalidOrigin,
    /// The application refuses the request's origin (§4.2.2 item 4 "403 Forbidden").
    /// Never returned by the parsers; there for the accepting layer. 403.
    OriginNotAllowed,
    /// The server answered with a status other than 101 (§4.1: "If the status code
    /// received from the server is not 101, the client handles the response per HTTP"):
    /// the status code and reason phrase. Client side only. 502.
    Status(u16, String),
    /// `Sec-WebSocket-Accept` missing, repeated or not the accept key of our key (§4.1
    /// item 4). Client side only. 502.
    InvalidAccept,
    /// The server selected a subprotocol the client did not offer (§4.1 item 6). Client
    /// side only. 502.
    UnofferedProtocol,
    /// The server accepted an extension the client did not offer (§9.1). Client side
    /// only. 502.
    UnofferedExtension,
    /// The peer closed the connection before the handshake was complete. 400.
    ConnectionClosed,
    /// Over HTTP/2, a CONNECT without `:protocol` `websocket` (RFC 8441 §4), or a server
    /// that does not allow extended CONNECT (no `SETTINGS_ENABLE_CONNECT_PROTOCOL`). 400.
    InvalidConnectProtocol,
    /// The application refused the request with this HTTP status (an auth hook, a
    /// policy). The status is what was answered.
    Rejected(u16),
}

impl HandshakeError {
    /// The HTTP status a server answers with when it rejects a request for this reason.
    /// The variants that only arise from a server's response (client side) give
    /// 502 Bad Gateway, what a proxy would say of such an upstream.
    pub fn status(&self) -> StatusCode {
        use HandshakeError::*;
        match self {
            TooLarge | TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            OriginNotAllowed => StatusCode::FORBIDDEN,
            Status(..) | InvalidAccept | UnofferedProtocol | UnofferedExtension => {
                StatusCode::BAD_GATEWAY
            }
            Rejected(code) => StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_REQUEST),
            ConnectionClosed
            | MalformedHttp
            | UnsupportedHttpVersion
            | InvalidHost
            | InvalidUpgrade
            | InvalidConnection
            | MissingKey
            | DuplicateKey
            | InvalidKey
            | InvalidProtocol
            | InvalidExtensions
            | InvalidOrigin
            | InvalidConnectProtocol => StatusCode::BAD_REQUEST,
        }
    }

    /// A one-line, static description; the body of the rejection.
    pub fn reason(&self) -> &'static str {
        use HandshakeError::*;
        match self {
            TooLarge => "handshake head too large",
            TooManyHeaders => "too many header fields",
            MalformedHttp => "malformed HTTP head",
            MethodNotAllowed => "method must be GET",
            UnsupportedHttpVersion => "HTTP/1.1 required",
            InvalidHost => "missing or repeated Host header",
            InvalidUpgrade => "Upgrade header must include websocket",
            InvalidConnection => "Connection header must include upgrade",
            MissingKey => "missing Sec-WebSocket-Key",
            DuplicateKey => "repeated Sec-WebSocket-Key",
            InvalidKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            InvalidProtocol => "invalid Sec-WebSocket-Protocol",
            InvalidExtensions => "invalid Sec-WebSocket-Extensions",
            InvalidOrigin => "invalid Origin header",
            OriginNotAllowed => "origin not allowed",
            InvalidConnectProtocol => {
                "over HTTP/2, a WebSocket is a CONNECT with :protocol websocket (RFC 8441)"
            }
            Status(..) => "server did not switch protocols",
            InvalidAccept => "missing or wrong Sec-WebSocket-Accept",
            UnofferedProtocol => "server selected a subprotocol that was not offered",
            UnofferedExtension => "server accepted an extension that was not offered",
            ConnectionClosed => "connection closed during the handshake",
            Rejected(_) => "handshake refused by the application",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Status(code, reason) if reason.is_empty() => {
                write!(f, "{}: HTTP {code}", self.reason())
            }
            HandshakeError::Status(code, reason) => {
                write!(f, "{}: HTTP {code} {reason}", self.reason())
            }
            HandshakeError::Rejected(code) => write!(f, "{}: HTTP {code}", self.reason()),
            _ => f.write_str(self.reason()),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// RFC 9110 §5.6.2: `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
/// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `token = 1*tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Strips OWS (`*( SP / HTAB )`, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The elements of a `#element` list (RFC 9110 §5.6.1) spread over every line of a
/// header, trimmed. "A recipient MUST parse and ignore a reasonable number of empty list
/// elements", so empty ones are skipped. Only for lists without quoted strings.
fn list_elements<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Whether a comma-separated header contains `token`, ASCII case-insensitively.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_elements(headers, name).any(|e| e.eq_ignore_ascii_case(token.as_bytes()))
}

/// The single value of a header that must appear once, trimmed: `Ok(None)` when absent,
/// `Err(())` when repeated.
fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a [u8]>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(trim_ows(v.as_bytes()))),
        (Some(_), Some(_)) => Err(()),
    }
}

/// Runs an httparse parse with room for `limits.max_headers` fields and applies the
/// size limit. `Ok(None)` is "need more"; `Ok(Some(len))` the length of the head.
/// The head is accepted if and only if it fits in `max_handshake_size` bytes, however the
/// input was split.
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    limits: &crate::Limits,
) -> Result<Option<usize>, HandshakeError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > limits.max_handshake_size => {
            Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered >= limits.max_handshake_size => {
            Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders),
        Err(_) => Err(HandshakeError::MalformedHttp),
    }
}

/// Every `Sec-WebSocket-Extensions` line of `headers`, parsed (§9.1).
fn extensions_in(headers: &HeaderMap) -> Result<Vec<Extension>, HandshakeError> {
    parse_extensions(
        headers
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

/// Copies parsed header fields into a [`HeaderMap`], keeping repeats and their order.
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, HandshakeError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HandshakeError::MalformedHttp)?;
        let value = http::HeaderValue::from_bytes(field.value)
            .map_err(|_| HandshakeError::MalformedHttp)?;
        map.append(name, value);
    }
    Ok(map)
}

/// Appends `bytes` minus CR, LF and NUL, so a caller's string cannot end the line early
/// and inject header fields.
fn push_sanitized(dst: &mut Vec<u8>, bytes: &[u8]) {
    dst.extend(
        bytes
            .iter()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n' | 0)),
    );
}

/// Appends `name: value\r\n`.
fn push_header(dst: &mut Vec<u8>, name: &str, value: &[u8]) {
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    push_sanitized(dst, value);
    dst.extend_from_slice(b"\r\n");
}

/// Appends the application's extra header fields, except those in `written` (which the
/// handshake writes itself, so the head cannot contradict itself).
fn push_extra(dst: &mut Vec<u8>, extra: &HeaderMap, written: &[HeaderName]) {
    for (name, value) in extra {
        if !written.contains(name) {
            push_header(dst, name.as_str(), value.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // §1.3: the worked example.
    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn generate_key_is_base64_of_16_bytes() {
        // §1.3: the example key is the base64 of "the sample nonce".
        assert_eq!(
            generate_key(*b"the sample nonce"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(generate_key([0; 16]).len(), 24);
    }

    #[test]
    fn tokens() {
        assert!(is_token(b"chat"));
        assert!(is_token(b"v1.json-rpc_x~"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a,b"));
        assert!(!is_token(b"a\"b"));
        assert!(!is_token("é".as_bytes()));
    }

    #[test]
    fn trims_ows() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
        assert_eq!(trim_ows(b""), b"");
    }

    #[test]
    fn lists_over_lines_skip_empty_elements() {
        let mut h = HeaderMap::new();
        h.append(http::header::CONNECTION, "keep-alive, , ".parse().unwrap());
        h.append(http::header::CONNECTION, " UpGrade".parse().unwrap());
        let all: Vec<_> = list_elements(&h, &http::header::CONNECTION).collect();
        assert_eq!(all, [&b"keep-alive"[..], b"UpGrade"]);
        assert!(has_token(&h, &http::header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, &http::header::CONNECTION, "close"));
    }

    #[test]
    fn statuses_and_display() {
        assert_eq!(HandshakeError::UnsupportedVersion.status(), 426);
        assert_eq!(HandshakeError::TooLarge.status(), 431);
        assert_eq!(HandshakeError::MethodNotAllowed.status(), 405);
        assert_eq!(HandshakeError::OriginNotAllowed.status(), 403);
        let e = HandshakeError::Status(403, "Forbidden".into());
        assert_eq!(
            e.to_string(),
            "server did not switch protocols: HTTP 403 Forbidden"
        );
        assert!(!HandshakeError::InvalidKey.reason().contains('\n'));
    }

    #[test]
    fn sanitizes_values() {
        let mut out = Vec::new();
        push_header(&mut out, "X", b"a\r\nInjected: 1\0");
        assert_eq!(out, b"X: aInjected: 1\r\n");
    }
}
