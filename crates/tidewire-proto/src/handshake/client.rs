//! The client's side of the opening handshake (RFC 6455 §4.1).
//!
//! [`write_request`] produces the request head from a [`ClientRequest`] (the key comes from
//! [`generate_key`](super::generate_key) with the caller's random bytes);
//! [`parse_response`] reads the server's answer and checks it against the client
//! requirements of §4.1.
//!
//! Partial input is not an error: `Ok(None)` until the head is complete.
//!
//! Not here: URL parsing, redirects, proxies, deciding whether the extensions the server
//! accepted are ones the client offered (the caller knows its offer).

use super::{
    extensions_in, has_token, head_len, header_map, push_extra, push_header, push_sanitized,
    single_value, Extension, HandshakeError,
};
use http::header::{
    CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, StatusCode, Version};

/// What goes into the client's request.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// The `Host` value: the host, plus `:port` when not the scheme's default (§4.1 item 4).
    pub host: &'a str,
    /// The request target, such as `/chat?room=1` (§4.1 item 3). Empty means `/`.
    pub path_and_query: &'a str,
    /// The `Sec-WebSocket-Key`, from [`generate_key`](super::generate_key).
    pub key: &'a str,
    /// Subprotocols to offer, by preference; none sends no `Sec-WebSocket-Protocol`.
    pub protocols: &'a [String],
    /// A formatted `Sec-WebSocket-Extensions` offer
    /// ([`format_extensions`](super::format_extensions)).
    pub extensions: Option<&'a str>,
    /// The `Origin` to send (§4.1 item 8: browsers must, other clients may).
    pub origin: Option<&'a str>,
    /// Further header fields (cookies, authorization). Fields written from the other
    /// members are skipped here.
    pub headers: &'a HeaderMap,
}

/// Writes the request head (§4.1 items 1–12). CR, LF and NUL are dropped from the given
/// strings (and space too from the request target) so they cannot split the head.
pub fn write_request(req: &ClientRequest<'_>, dst: &mut Vec<u8>) {
    // §4.1 item 2: "The method of the request MUST be GET, and the HTTP version MUST be at
    // least 1.1."
    dst.extend_from_slice(b"GET ");
    match req.path_and_query {
        "" => dst.push(b'/'),
        target => dst.extend(
            target
                .bytes()
                .filter(|b| !b.is_ascii_whitespace() && *b != 0),
        ),
    }
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    // §4.1 item 4: "The request MUST contain a |Host| header field".
    push_header(dst, "Host", req.host.as_bytes());
    // §4.1 items 5 and 6: "an |Upgrade| header field whose value MUST include the
    // "websocket" keyword", "a |Connection| header field whose value MUST include the
    // "Upgrade" token".
    push_header(dst, "Upgrade", b"websocket");
    push_header(dst, "Connection", b"Upgrade");
    // §4.1 item 7: "a header field with the name |Sec-WebSocket-Key|".
    push_header(dst, "Sec-WebSocket-Key", req.key.as_bytes());
    // §4.1 item 9: "a header field with the name |Sec-WebSocket-Version|. The value of
    // this header field MUST be 13."
    push_header(dst, "Sec-WebSocket-Version", b"13");
    // §4.1 item 10: "Optionally, a header field with the name |Sec-WebSocket-Protocol|"
    // listing subprotocols "ordered by preference".
    if !req.protocols.is_empty() {
        dst.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        for (i, protocol) in req.protocols.iter().enumerate() {
            if i > 0 {
                dst.extend_from_slice(b", ");
            }
            push_sanitized(dst, protocol.as_bytes());
        }
        dst.extend_from_slice(b"\r\n");
    }
    // §4.1 item 11: "Optionally, a header field with the name |Sec-WebSocket-Extensions|".
    if let Some(extensions) = req.extensions {
        push_header(dst, "Sec-WebSocket-Extensions", extensions.as_bytes());
    }
    // §4.1 item 8: "|Origin| header field". The `origin` field wins; without it, an Origin
    // among the extra headers is sent as given (it used to be dropped without a word).
    if let Some(origin) = req.origin {
        push_header(dst, "Origin", origin.as_bytes());
    }
    let written = [
        HOST,
        UPGRADE,
        CONNECTION,
        SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_VERSION,
        SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_EXTENSIONS,
        ORIGIN,
    ];
    let written = if req.origin.is_some() {
        &written[..]
    } else {
        &written[..written.len() - 1]
    };
    push_extra(dst, req.headers, written);
    dst.extend_from_slice(b"\r\n");
}

/// A server's valid 101 response.
#[derive(Debug)]
pub struct ServerResponse {
    /// Status (101), version and every header field, repeats kept (cookies set by the
    /// server, for instance).
    pub response: http::Response<()>,
    /// The subprotocol the server selected, always one the client offered.
    pub protocol: Option<String>,
    /// The extensions the server accepted, in order. The caller must fail the connection
    /// if any is one it did not offer (§4.1 item 5 of the response checks).
    pub extensions: Vec<Extension>,
}

/// Parses and validates the server's response head at the start of `buf` (§4.1, the
/// checks after "the client MUST validate the server's response as follows").
///
/// `key` is the `Sec-WebSocket-Key` that was sent, `offered_protocols` the subprotocols
/// offered. `Ok(None)`: not complete yet, call again with more bytes; past
/// `limits.max_handshake_size` bytes without a complete head it is
/// [`HandshakeError::TooLarge`]. `Ok(Some((response, len)))`: the head took `len` bytes
/// and whatever follows is already WebSocket frames. A status other than 101 is
/// [`HandshakeError::Status`] with the code and reason phrase, reported once the whole
/// head has arrived.
pub fn parse_response(
    buf: &[u8],
    key: &str,
    offered_protocols: &[String],
    limits: &crate::Limits,
) -> Result<Option<(ServerResponse, usize)>, HandshakeError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut parsed = httparse::Response::new(&mut fields);
    let Some(len) = head_len(parsed.parse(buf), buf.len(), limits)? else {
        return Ok(None);
    };
    // §4.1 item 1: "If the status code received from the server is not 101, the client
    // handles the response per HTTP procedures."
    let code = parsed.code.ok_or(HandshakeError::MalformedHttp)?;
    if code != 101 {
        let reason = parsed.reason.unwrap_or("").to_string();
        return Err(HandshakeError::Status(code, reason));
    }
    if parsed.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let headers = header_map(parsed.headers)?;

    // §4.1 item 2: "If the response lacks an |Upgrade| header field or the |Upgrade|
    // header field contains a value that is not an ASCII case-insensitive match for the
    // value "websocket", the client MUST _Fail the WebSocket Connection_."
    if !has_token(&headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::InvalidUpgrade);
    }
    // §4.1 item 3: "If the response lacks a |Connection| header field or the |Connection|
    // header field doesn't contain a token that is an ASCII case-insensitive match for the
    // value "Upgrade", the client MUST _Fail the WebSocket Connection_."
    if !has_token(&headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::InvalidConnection);
    }
    // §4.1 item 4: "If the response lacks a |Sec-WebSocket-Accept| header field or the
    // |Sec-WebSocket-Accept| contains a value other than the base64-encoded SHA-1 of the
    // concatenation of the |Sec-WebSocket-Key| (as a string, not base64-decoded) with the
    // string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ... the client MUST _Fail_".
    match single_value(&headers, &SEC_WEBSOCKET_ACCEPT) {
        Ok(Some(accept)) if accept == super::accept_key(key.as_bytes()).as_bytes() => {}
        _ => return Err(HandshakeError::InvalidAccept),
    }
    let (protocol, extensions) = selected_fields(&headers, offered_protocols)?;

    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = headers;
    Ok(Some((
        ServerResponse {
            response,
            protocol,
            extensions,
        },
        len,
    )))
}

/// Checks the headers of a server's `200` to an extended CONNECT (RFC 8441 §5: a
/// WebSocket over HTTP/2, where "the Sec-WebSocket-Key and Sec-WebSocket-Accept header
/// fields are not used"): the subprotocol and the extensions, as §4.1 items 5 and 6 check
/// them over HTTP/1.1. The status is the caller's to check (any 2xx is a success, §5).
pub fn check_extended_connect_response(
    headers: &HeaderMap,
    offered_protocols: &[String],
) -> Result<(Option<String>, Vec<Extension>), HandshakeError> {
    selected_fields(headers, offered_protocols)
}

/// The subprotocol and extensions a server selected, the same over HTTP/1.1 and HTTP/2.
fn selected_fields(
    headers: &HeaderMap,
    offered_protocols: &[String],
) -> Result<(Option<String>, Vec<Extension>), HandshakeError> {
    // §4.1 item 5: extensions "not present in the client's handshake" fail the
    // connection; the caller knows its offer, so they are returned parsed.
    let extensions = extensions_in(headers)?;
    // §4.1 item 6: "If the response includes a |Sec-WebSocket-Protocol| header field and
    // this header field indicates the use of a subprotocol that was not present in the
    // client's handshake (the server has indicated a subprotocol not requested by the
    // client), the client MUST _Fail the WebSocket Connection_." §4.2.2: the server
    // answers with "a single value".
    let protocol = match single_value(headers, &SEC_WEBSOCKET_PROTOCOL) {
        Ok(None) => None,
        Ok(Some(chosen)) => match offered_protocols.iter().find(|o| o.as_bytes() == chosen) {
            Some(offered) => Some(offered.clone()),
            None if chosen.contains(&b',') || chosen.is_empty() => {
                return Err(HandshakeError::InvalidProtocol)
            }
            None => return Err(HandshakeError::UnofferedProtocol),
        },
        Err(()) => return Err(HandshakeError::InvalidProtocol),
    };

    Ok((protocol, extensions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn request_matches_rfc_example() {
        let protocols = ["chat".to_string(), "superchat".to_string()];
        let req = ClientRequest {
            host: "server.example.com",
            path_and_query: "/chat",
            key: KEY,
            protocols: &protocols,
            extensions: None,
            origin: Some("http://example.com"),
            headers: &HeaderMap::new(),
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        assert_eq!(
            out,
            b"GET /chat HTTP/1.1\r\n\
            Host: server.example.com\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol: chat, superchat\r\n\
            Origin: http://example.com\r\n\r\n"
        );
    }

    /// An `Origin` given as an extra header is sent when no `origin` is set (it was
    /// dropped without a word); with both, the `origin` field wins and goes out once.
    #[test]
    fn origin_as_an_extra_header() {
        let mut extra = HeaderMap::new();
        extra.insert(ORIGIN, "https://a.example".parse().unwrap());
        let req = ClientRequest {
            host: "h",
            path_and_query: "/",
            key: KEY,
            protocols: &[],
            extensions: None,
            origin: None,
            headers: &extra,
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.matches("origin: https://a.example\r\n").count(),
            1,
            "{text}"
        );

        let mut out = Vec::new();
        write_request(
            &ClientRequest {
                origin: Some("https://b.example"),
                ..req
            },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.to_ascii_lowercase().matches("origin:").count(),
            1,
            "{text}"
        );
        assert!(text.contains("Origin: https://b.example\r\n"), "{text}");
    }

    #[test]
    fn empty_path_is_root_and_target_cannot_split() {
        let mut extra = HeaderMap::new();
        extra.insert("cookie", "a=b".parse().unwrap());
        extra.insert(HOST, "evil".parse().unwrap());
        let req = ClientRequest {
            host: "h",
            path_and_query: "",
            key: KEY,
            protocols: &[],
            extensions: Some("permessage-deflate"),
            origin: None,
            headers: &extra,
        };
        let mut out = Vec::new();
        write_request(&req, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET / HTTP/1.1\r\nHost: h\r\n"));
        assert!(text.contains("Sec-WebSocket-Extensions: permessage-deflate\r\n"));
        assert!(text.contains("cookie: a=b\r\n"));
        assert!(!text.contains("evil"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));

        let mut out = Vec::new();
        write_request(
            &ClientRequest {
                path_and_query: "/a b\r\nX: y",
                ..req
            },
            &mut out,
        );
        assert!(out.starts_with(b"GET /abX:y HTTP/1.1\r\n"));
    }

    #[test]
    fn parses_the_rfc_example_response() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\
            Upgrade: websocket\r\n\
            Connection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
            Sec-WebSocket-Protocol: chat\r\n\r\n\x81\x00";
        let offered = ["chat".to_string(), "superchat".to_string()];
        let (resp, len) = parse_response(head, KEY, &offered, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, head.len() - 2);
        assert_eq!(resp.protocol.as_deref(), Some("chat"));
        assert_eq!(resp.response.status(), 101);
    }
}
