//! The server's side of the opening handshake (RFC 6455 §4.2).
//!
//! [`parse_request`] reads the client's request head from the start of a buffer and checks
//! it against §4.2.1; the caller then picks a subprotocol ([`select_subprotocol`]) and
//! extensions, checks the origin and whatever else it cares about (cookies, auth) in
//! [`ServerRequest::request`], and writes either [`write_response`] (101) or
//! [`write_rejection`] (4xx) to the stream.
//!
//! Partial input is not an error: `Ok(None)` until the head is complete.
//!
//! Not here: origin policy, permessage-deflate parameters, anything after the head.

use super::{
    extensions_in, has_token, head_len, header_map, is_token, list_elements, push_extra,
    push_header, single_value, Extension, HandshakeError,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{
    CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// A valid opening handshake request.
#[derive(Debug)]
pub struct ServerRequest {
    /// Method (GET), request target, version (HTTP/1.1) and every header field in order,
    /// repeats kept: where the application finds cookies, authorization and the path.
    pub request: http::Request<()>,
    /// The `Sec-WebSocket-Key` as sent, for [`write_response`].
    pub key: String,
    /// The subprotocols offered, in the client's order, from every
    /// `Sec-WebSocket-Protocol` line.
    pub protocols: Vec<String>,
    /// The extensions offered, in the client's order (§9.1).
    pub extensions: Vec<Extension>,
    /// The `Origin`, if sent (§4.2.1 item 7; browsers always send it).
    pub origin: Option<String>,
}

/// Parses and validates the request head at the start of `buf` (§4.2.1).
///
/// `Ok(None)`: the head is not complete yet; call again with more bytes (nothing is
/// consumed). Once `buf` holds `limits.max_handshake_size` bytes without a complete head
/// the answer is [`HandshakeError::TooLarge`] (431). `Ok(Some((request, len)))`: the head
/// took `len` bytes; whatever follows already belongs to the WebSocket stream.
///
/// On `Err`, answer with [`write_rejection`]`(err.status(), err.reason(), ..)` and close.
pub fn parse_request(
    buf: &[u8],
    limits: &crate::Limits,
) -> Result<Option<(ServerRequest, usize)>, HandshakeError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Request::new(&mut fields);
    let Some(len) = head_len(parsed.parse(buf), buf.len(), limits)? else {
        return Ok(None);
    };
    // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
    if parsed.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if parsed.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let uri: Uri = parsed
        .path
        .ok_or(HandshakeError::MalformedHttp)?
        .parse()
        .map_err(|_| HandshakeError::MalformedHttp)?;
    let headers = header_map(parsed.headers)?;
    let fields = validate_headers(&headers)?;

    let mut request = http::Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(Some((
        ServerRequest {
            request,
            key: fields.key,
            protocols: fields.protocols,
            extensions: fields.extensions,
            origin: fields.origin,
        },
        len,
    )))
}

/// What [`validate_headers`] extracts from the header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    /// `Sec-WebSocket-Key`, validated.
    pub key: String,
    /// Offered subprotocols, in the client's order of preference.
    pub protocols: Vec<String>,
    /// Offered extensions.
    pub extensions: Vec<Extension>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
}

/// The header checks of §4.2.1, in the order of its items, except that the version comes
/// before the key: a client of another protocol version gets 426 and the version list
/// (§4.2.2) even if its other fields differ.
///
/// Public for servers whose HTTP layer parsed the request already (hyper, axum): the
/// method and version are theirs to check.
pub fn validate_headers(headers: &HeaderMap) -> Result<RequestFields, HandshakeError> {
    // §4.2.1 item 2: "A |Host| header field containing the server's authority."
    // RFC 9112 §3.2: a request with more than one Host gets 400.
    if !matches!(single_value(headers, &HOST), Ok(Some(_))) {
        return Err(HandshakeError::InvalidHost);
    }
    // §4.2.1 item 3: "An |Upgrade| header field containing the value "websocket", treated
    // as an ASCII case-insensitive value."
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::InvalidUpgrade);
    }
    // §4.2.1 item 4: "A |Connection| header field that includes the token "Upgrade",
    // treated as an ASCII case-insensitive value."
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::InvalidConnection);
    }
    // §4.2.1 item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
    // §4.2.2: otherwise "the server MUST abort the WebSocket handshake described in this
    // section and instead send an appropriate HTTP error code (such as 426 Upgrade Required)
    // and a |Sec-WebSocket-Version| header field indicating the version(s) the server is
    // capable of understanding."
    if single_value(headers, &SEC_WEBSOCKET_VERSION) != Ok(Some(b"13")) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    // §4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded value that,
    // when decoded, is 16 bytes in length."
    let key = match single_value(headers, &SEC_WEBSOCKET_KEY) {
        Ok(Some(key)) => key,
        Ok(None) => return Err(HandshakeError::MissingKey),
        Err(()) => return Err(HandshakeError::DuplicateKey),
    };
    match STANDARD.decode(key) {
        Ok(decoded) if decoded.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    // Valid base64, so ASCII.
    let key = String::from_utf8_lossy(key).into_owned();

    let (protocols, extensions, origin) = offer_fields(headers)?;
    Ok(RequestFields {
        key,
        protocols,
        extensions,
        origin,
    })
}

/// The header checks of RFC 8441 §5 for a WebSocket over HTTP/2 (an extended CONNECT with
/// `:protocol` `websocket`, which the HTTP/2 layer checked): no `Upgrade`, `Connection`
/// or `Sec-WebSocket-Key` ("the Sec-WebSocket-Key and Sec-WebSocket-Accept header fields
/// are not used"); `Sec-WebSocket-Version: 13` and the optional subprotocols, extensions
/// and origin exactly as over HTTP/1.1. The returned `key` is empty.
pub fn validate_extended_connect(headers: &HeaderMap) -> Result<RequestFields, HandshakeError> {
    if single_value(headers, &SEC_WEBSOCKET_VERSION) != Ok(Some(b"13")) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let (protocols, extensions, origin) = offer_fields(headers)?;
    Ok(RequestFields {
        key: String::new(),
        protocols,
        extensions,
        origin,
    })
}

/// The optional fields of a request, the same over HTTP/1.1 and HTTP/2: subprotocols,
/// extensions, origin.
#[allow(clippy::type_complexity)]
fn offer_fields(
    headers: &HeaderMap,
) -> Result<(Vec<String>, Vec<Extension>, Option<String>), HandshakeError> {
    // §4.2.1 item 8: "Optionally, a |Sec-WebSocket-Protocol| header field, with a list of
    // values indicating which protocols the client would like to speak, ordered by
    // preference." §4.1 item 10: each "MUST ... conform to the requirements for elements
    // that comprise the value of |Sec-WebSocket-Protocol| header fields" (tokens).
    let mut protocols = Vec::new();
    for protocol in list_elements(headers, &SEC_WEBSOCKET_PROTOCOL) {
        if !is_token(protocol) {
            return Err(HandshakeError::InvalidProtocol);
        }
        protocols.push(String::from_utf8_lossy(protocol).into_owned());
    }

    // §4.2.1 item 9: "Optionally, a |Sec-WebSocket-Extensions| header field, with a list of
    // values indicating which extensions the client would like to speak."
    let extensions = extensions_in(headers)?;

    // §4.2.1 item 7: "Optionally, an |Origin| header field." One, in visible ASCII
    // (RFC 6454 §7), or the application's origin check would be ambiguous.
    let origin = match single_value(headers, &ORIGIN) {
        Ok(None) => None,
        Ok(Some(origin)) if origin.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => {
            Some(String::from_utf8_lossy(origin).into_owned())
        }
        _ => return Err(HandshakeError::InvalidOrigin),
    };

    Ok((protocols, extensions, origin))
}

/// The first subprotocol in the server's preference list (`supported`) that the client
/// offered (§4.2.2 item 5.4: "the value chosen MUST be derived from the client's
/// handshake"). Compared exactly: subprotocol names are case-sensitive.
pub fn select_subprotocol<'a>(offered: &[String], supported: &'a [&'a str]) -> Option<&'a str> {
    supported
        .iter()
        .copied()
        .find(|s| offered.iter().any(|o| o == s))
}

/// Writes the 101 response that completes the handshake (§4.2.2 item 5): status line,
/// `Upgrade`, `Connection`, `Sec-WebSocket-Accept` for `key` (the client's
/// `Sec-WebSocket-Key`, [`ServerRequest::key`]), then `Sec-WebSocket-Protocol` and
/// `Sec-WebSocket-Extensions` when given, then `extra` (minus any of the fields above).
/// CR, LF and NUL are dropped from the given strings so they cannot split the head.
pub fn write_response(
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra: &HeaderMap,
    dst: &mut Vec<u8>,
) {
    // §4.2.2 item 5.1: "A Status-Line with a 101 response code".
    dst.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    // §4.2.2 items 5.2 and 5.3: "An |Upgrade| header field with value "websocket"" and
    // "A |Connection| header field with value "Upgrade"".
    push_header(dst, "Upgrade", b"websocket");
    push_header(dst, "Connection", b"Upgrade");
    // §4.2.2 item 5.4: "A |Sec-WebSocket-Accept| header field."
    push_header(
        dst,
        "Sec-WebSocket-Accept",
        super::accept_key(key.as_bytes()).as_bytes(),
    );
    // §4.2.2 item 5.5: "Optionally, a |Sec-WebSocket-Protocol| header field".
    if let Some(protocol) = protocol {
        push_header(dst, "Sec-WebSocket-Protocol", protocol.as_bytes());
    }
    // §4.2.2 item 5.6: "Optionally, a |Sec-WebSocket-Extensions| header field".
    if let Some(extensions) = extensions {
        push_header(dst, "Sec-WebSocket-Extensions", extensions.as_bytes());
    }
    push_extra(
        dst,
        extra,
        &[
            UPGRADE,
            CONNECTION,
            SEC_WEBSOCKET_ACCEPT,
            SEC_WEBSOCKET_PROTOCOL,
            SEC_WEBSOCKET_EXTENSIONS,
        ],
    );
    dst.extend_from_slice(b"\r\n");
}

/// Writes a rejection: status line, `Content-Type: text/plain; charset=utf-8`,
/// `Content-Length`, `Connection: close`, and a body of `reason` plus a newline. A 426
/// also carries `Sec-WebSocket-Version: 13` (§4.2.2) and `Upgrade: websocket` (RFC 9110
/// §15.5.22); a 405 carries `Allow: GET` (RFC 9110 §15.5.6). Close the connection after
/// writing it.
pub fn write_rejection(status: StatusCode, reason: &str, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    push_header(dst, "Content-Type", b"text/plain; charset=utf-8");
    push_header(
        dst,
        "Content-Length",
        (reason.len() + 1).to_string().as_bytes(),
    );
    push_header(dst, "Connection", b"close");
    if status == StatusCode::UPGRADE_REQUIRED {
        push_header(dst, "Upgrade", b"websocket");
        push_header(dst, "Sec-WebSocket-Version", b"13");
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        push_header(dst, "Allow", b"GET");
    }
    dst.extend_from_slice(b"\r\n");
    dst.extend_from_slice(reason.as_bytes());
    dst.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn parses_the_rfc_example() {
        let (req, len) = parse_request(RFC_REQUEST, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, RFC_REQUEST.len());
        assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.protocols, ["chat", "superchat"]);
        assert_eq!(req.origin.as_deref(), Some("http://example.com"));
        assert_eq!(req.request.uri().path(), "/chat");
        assert_eq!(req.request.headers()[HOST], "server.example.com");
    }

    #[test]
    fn selects_by_server_preference() {
        let offered = vec!["chat".to_string(), "superchat".to_string()];
        assert_eq!(
            select_subprotocol(&offered, &["superchat", "chat"]),
            Some("superchat")
        );
        assert_eq!(
            select_subprotocol(&offered, &["chat", "superchat"]),
            Some("chat")
        );
        assert_eq!(select_subprotocol(&offered, &["CHAT"]), None);
        assert_eq!(select_subprotocol(&[], &["chat"]), None);
    }

    #[test]
    fn response_matches_rfc_example() {
        let mut out = Vec::new();
        write_response(
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some("chat"),
            None,
            &HeaderMap::new(),
            &mut out,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn extra_headers_cannot_override_handshake_fields() {
        let mut extra = HeaderMap::new();
        extra.insert("set-cookie", "a=b".parse().unwrap());
        extra.insert(SEC_WEBSOCKET_ACCEPT, "forged".parse().unwrap());
        let mut out = Vec::new();
        write_response(
            "dGhlIHNhbXBsZSBub25jZQ==",
            None,
            Some("foo"),
            &extra,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Sec-WebSocket-Extensions: foo\r\n"));
        assert!(text.contains("set-cookie: a=b\r\n"));
        assert!(!text.contains("forged"));
    }

    #[test]
    fn rejection_426_carries_version() {
        let mut out = Vec::new();
        let e = HandshakeError::UnsupportedVersion;
        write_rejection(e.status(), e.reason(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\nSec-WebSocket-Version must be 13\n"));
    }
}
