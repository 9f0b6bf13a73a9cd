//! The server's side of the opening handshake, bytes in and results out (RFC 6455 §4.2).

mod common;

use common::{head, parse_at_every_split};
use http::{HeaderMap, StatusCode};
use tidewire_proto::handshake::{
    accept_key, parse_request, select_subprotocol, write_rejection, write_response, Extension,
    HandshakeError, ServerRequest,
};
use tidewire_proto::Limits;

/// The §1.3 example request, with `extra` header lines appended.
fn request_with(extra: &str) -> Vec<u8> {
    format!(
        "GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Version: 13\r\n\
        {extra}\r\n"
    )
    .into_bytes()
}

const HOST: &str = "Host: h";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const VERSION: &str = "Sec-WebSocket-Version: 13";

/// Parses `input` whole and at every split point, with default limits.
fn parse(input: &[u8]) -> Result<Option<(ServerRequest, usize)>, HandshakeError> {
    parse_with(input, &Limits::default())
}

fn parse_with(
    input: &[u8],
    limits: &Limits,
) -> Result<Option<(ServerRequest, usize)>, HandshakeError> {
    parse_at_every_split(input, |b| parse_request(b, limits))
}

fn accepted(input: &[u8]) -> ServerRequest {
    match parse(input) {
        Ok(Some((req, len))) => {
            assert_eq!(len, input.len());
            req
        }
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Asserts the request is rejected with `error` and its status, at every split point.
fn rejected(input: &[u8], error: HandshakeError, status: u16) {
    rejected_with(input, &Limits::default(), error, status);
}

fn rejected_with(input: &[u8], limits: &Limits, error: HandshakeError, status: u16) {
    match parse_with(input, limits) {
        Err(e) => {
            assert_eq!(e, error, "{}", String::from_utf8_lossy(input));
            assert_eq!(e.status(), status, "{e:?}");
        }
        Ok(other) => panic!("expected {error:?}, got {other:?}"),
    }
}

// §1.3, §4.2.1: the example request.

#[test]
fn rfc_example_request() {
    let req = accepted(&request_with("Sec-WebSocket-Protocol: chat, superchat\r\n"));
    assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(
        accept_key(req.key.as_bytes()),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(req.protocols, ["chat", "superchat"]);
    assert_eq!(req.origin.as_deref(), Some("http://example.com"));
    assert!(req.extensions.is_empty());
    assert_eq!(req.request.method(), http::Method::GET);
    assert_eq!(req.request.version(), http::Version::HTTP_11);
    assert_eq!(req.request.uri().path(), "/chat");
}

#[test]
fn bytes_after_the_head_are_not_consumed() {
    let head = request_with("");
    let mut input = head.clone();
    input.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    let (_, len) = parse_request(&input, &Limits::default()).unwrap().unwrap();
    assert_eq!(len, head.len());
}

#[test]
fn application_headers_are_kept() {
    let req = accepted(&request_with(
        "Cookie: a=1\r\nCookie: b=2\r\nAuthorization: Bearer t\r\n",
    ));
    let headers = req.request.headers();
    let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(headers["authorization"], "Bearer t");
    assert_eq!(req.request.uri(), "/chat");
}

#[test]
fn query_string_is_kept() {
    let req = accepted(&head(
        "GET /chat?room=1&x=%20 HTTP/1.1",
        &[HOST, UPGRADE, CONNECTION, KEY, VERSION],
    ));
    assert_eq!(req.request.uri().query(), Some("room=1&x=%20"));
    assert_eq!(req.origin, None);
}

// §4.2.1: header names and the Upgrade/Connection tokens are case-insensitive, and both
// fields are comma-separated lists.

#[test]
fn case_insensitive_names_and_tokens() {
    accepted(&head(
        "GET / HTTP/1.1",
        &[
            "host: h",
            "UPGRADE: WebSocket",
            "connection: UPGRADE",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "SEC-WEBSOCKET-VERSION: 13",
        ],
    ));
}

#[test]
fn comma_lists_in_upgrade_and_connection() {
    accepted(&head(
        "GET / HTTP/1.1",
        &[
            HOST,
            "Upgrade: h2c ,  websocket",
            "Connection: keep-alive, Upgrade",
            KEY,
            VERSION,
        ],
    ));
    // The token may also come in a second line of the same field.
    accepted(&head(
        "GET / HTTP/1.1",
        &[
            HOST,
            UPGRADE,
            "Connection: keep-alive",
            "Connection: upgrade",
            KEY,
            VERSION,
        ],
    ));
}

#[test]
fn whitespace_around_values_is_ignored() {
    let req = accepted(&head(
        "GET / HTTP/1.1",
        &[
            HOST,
            UPGRADE,
            CONNECTION,
            "Sec-WebSocket-Key: \t dGhlIHNhbXBsZSBub25jZQ==  ",
            "Sec-WebSocket-Version:13 ",
        ],
    ));
    assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
}

// §4.2.1 item 8: subprotocols from every line, comma-separated and trimmed.

#[test]
fn protocols_across_lines() {
    let req = accepted(&request_with(
        "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol:  superchat ,, v2.json \r\n",
    ));
    assert_eq!(req.protocols, ["chat", "superchat", "v2.json"]);
}

#[test]
fn subprotocol_chosen_by_server_preference() {
    let req = accepted(&request_with("Sec-WebSocket-Protocol: chat, superchat\r\n"));
    assert_eq!(
        select_subprotocol(&req.protocols, &["superchat", "chat"]),
        Some("superchat")
    );
    assert_eq!(
        select_subprotocol(&req.protocols, &["other", "chat"]),
        Some("chat")
    );
    assert_eq!(select_subprotocol(&req.protocols, &["other"]), None);
}

// §4.2.1 item 9, §9.1.

#[test]
fn extensions_offered() {
    let req = accepted(&request_with(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, \
        permessage-deflate; server_max_window_bits=\"10\"\r\n\
        Sec-WebSocket-Extensions: x-other\r\n",
    ));
    let names: Vec<_> = req.extensions.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["permessage-deflate", "permessage-deflate", "x-other"]
    );
    assert_eq!(
        req.extensions[0],
        Extension {
            name: "permessage-deflate".into(),
            params: vec![("client_max_window_bits".into(), None)],
        }
    );
    assert_eq!(
        req.extensions[1].params,
        [("server_max_window_bits".to_string(), Some("10".to_string()))]
    );
}

// Every rejection path, with its status (§4.2.1 items 1-6 in order, then §4.2.2).

/// (request line, header lines, error, status). Each case breaks one requirement of a
/// request that is otherwise valid. One line a case, so not left to rustfmt.
#[rustfmt::skip]
fn rejection_cases() -> Vec<(&'static str, Vec<&'static str>, HandshakeError, u16)> {
    use HandshakeError::*;
    let get = "GET / HTTP/1.1";
    let with_key = |key| vec![HOST, UPGRADE, CONNECTION, key, VERSION];
    let with_version = |version| vec![HOST, UPGRADE, CONNECTION, KEY, version];
    vec![
        // Item 1: "An HTTP/1.1 or higher GET request". Methods are case-sensitive.
        ("POST / HTTP/1.1", with_key(KEY), MethodNotAllowed, 405),
        ("get / HTTP/1.1", with_key(KEY), MethodNotAllowed, 405),
        ("GET / HTTP/1.0", with_key(KEY), UnsupportedHttpVersion, 400),
        // Item 2: Host, exactly once.
        (get, vec![UPGRADE, CONNECTION, KEY, VERSION], InvalidHost, 400),
        (get, vec![HOST, HOST, UPGRADE, CONNECTION, KEY, VERSION], InvalidHost, 400),
        // Item 3: Upgrade with the token websocket.
        (get, vec![HOST, CONNECTION, KEY, VERSION], InvalidUpgrade, 400),
        (get, vec![HOST, "Upgrade: h2c", CONNECTION, KEY, VERSION], InvalidUpgrade, 400),
        (get, vec![HOST, "Upgrade: websockets", CONNECTION, KEY, VERSION], InvalidUpgrade, 400),
        // Item 4: Connection with the token upgrade.
        (get, vec![HOST, UPGRADE, KEY, VERSION], InvalidConnection, 400),
        (get, vec![HOST, UPGRADE, "Connection: keep-alive, upgrades", KEY, VERSION], InvalidConnection, 400),
        // Item 5: one key, the base64 of 16 bytes.
        (get, vec![HOST, UPGRADE, CONNECTION, VERSION], MissingKey, 400),
        (get, vec![HOST, UPGRADE, CONNECTION, KEY, KEY, VERSION], DuplicateKey, 400),
        (get, with_key("Sec-WebSocket-Key: not base64!"), InvalidKey, 400),
        (get, with_key("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"), InvalidKey, 400), // no padding
        (get, with_key("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j"), InvalidKey, 400), // 15 bytes
        (get, with_key("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZSE="), InvalidKey, 400), // 17 bytes
        (get, with_key("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR=="), InvalidKey, 400), // trailing bits
        (get, with_key("Sec-WebSocket-Key:"), InvalidKey, 400),
        // Item 6: version 13, else 426 (§4.2.2).
        (get, vec![HOST, UPGRADE, CONNECTION, KEY], UnsupportedVersion, 426),
        (get, with_version("Sec-WebSocket-Version: 8"), UnsupportedVersion, 426),
        (get, with_version("Sec-WebSocket-Version: 13, 8"), UnsupportedVersion, 426),
        (get, with_version("Sec-WebSocket-Version: 013"), UnsupportedVersion, 426),
        (get, with_version("Sec-WebSocket-Version:"), UnsupportedVersion, 426),
        (get, vec![HOST, UPGRADE, CONNECTION, KEY, VERSION, VERSION], UnsupportedVersion, 426),
        // An old (hybi-00) client without a key still learns which version we speak.
        (get, vec![HOST, UPGRADE, CONNECTION, "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5"], UnsupportedVersion, 426),
    ]
}

#[test]
fn rejection_paths() {
    for (request_line, lines, error, status) in rejection_cases() {
        rejected(&head(request_line, &lines), error, status);
    }
}

// §4.2.1 items 7-9: the optional fields, each added to the otherwise valid §1.3 request.
#[test]
fn rejection_paths_in_optional_fields() {
    use HandshakeError::*;
    for (line, error) in [
        // Items 8 and 10: tokens only.
        ("Sec-WebSocket-Protocol: chat, super chat", InvalidProtocol),
        ("Sec-WebSocket-Protocol: chat;v=1", InvalidProtocol),
        ("Sec-WebSocket-Protocol: \"chat\"", InvalidProtocol),
        // Item 9, §9.1.
        (
            "Sec-WebSocket-Extensions: permessage-deflate;",
            InvalidExtensions,
        ),
        (
            "Sec-WebSocket-Extensions: permessage-deflate; a=\"b c\"",
            InvalidExtensions,
        ),
        ("Sec-WebSocket-Extensions: a b", InvalidExtensions),
        // Item 7: a second Origin.
        ("Origin: http://evil.example", InvalidOrigin),
    ] {
        rejected(&request_with(&format!("{line}\r\n")), error, 400);
    }
}

#[test]
fn rejects_malformed_http() {
    for bad in [
        &b"GET /chat HTTP/1.1\r\nHost server\r\n\r\n"[..],
        b"GET /chat HTTP/2.0\r\nHost: h\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /chat HTTP/1.1\r\nHost: h\r\n bad-fold\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",
    ] {
        rejected(bad, HandshakeError::MalformedHttp, 400);
    }
}

// The limits on what a client can make the server hold.

#[test]
fn too_many_headers_is_431() {
    let limits = Limits::default().max_headers(5);
    let input = head(
        "GET / HTTP/1.1",
        &[HOST, UPGRADE, CONNECTION, KEY, VERSION, "Cookie: a=b"],
    );
    rejected_with(&input, &limits, HandshakeError::TooManyHeaders, 431);
    let exact = head("GET / HTTP/1.1", &[HOST, UPGRADE, CONNECTION, KEY, VERSION]);
    assert!(matches!(parse_with(&exact, &limits), Ok(Some(_))));
}

#[test]
fn head_over_the_size_limit_is_431() {
    let input = request_with("");
    // A head of exactly the limit is accepted, one byte over is not, however it arrives.
    let fits = Limits::default().max_handshake_size(input.len());
    assert!(matches!(parse_with(&input, &fits), Ok(Some(_))));
    let tight = Limits::default().max_handshake_size(input.len() - 1);
    rejected_with(&input, &tight, HandshakeError::TooLarge, 431);
    // Incomplete input below the limit is "need more"; at the limit, an error.
    assert!(matches!(
        parse_request(&input[..input.len() - 2], &tight),
        Ok(None)
    ));
    assert_eq!(
        parse_request(&input[..input.len() - 1], &tight).unwrap_err(),
        HandshakeError::TooLarge
    );
}

#[test]
fn endless_header_hits_the_default_limit() {
    let mut input = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
    input.resize(16 << 10, b'a');
    let err = parse_request(&input, &Limits::default()).unwrap_err();
    assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(matches!(
        parse_request(&input[..1000], &Limits::default()),
        Ok(None)
    ));
}

// §4.2.2: the server's answers.

#[test]
fn response_to_the_rfc_example() {
    let req = accepted(&request_with("Sec-WebSocket-Protocol: chat, superchat\r\n"));
    let protocol = select_subprotocol(&req.protocols, &["chat"]);
    let mut extra = HeaderMap::new();
    extra.insert("set-cookie", "session=1".parse().unwrap());
    let mut out = Vec::new();
    write_response(
        &req.key,
        protocol,
        Some("permessage-deflate"),
        &extra,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        Sec-WebSocket-Protocol: chat\r\n\
        Sec-WebSocket-Extensions: permessage-deflate\r\n\
        set-cookie: session=1\r\n\r\n"
    );
}

#[test]
fn rejection_for_every_status() {
    let cases = [
        (HandshakeError::MalformedHttp, "400 Bad Request"),
        (HandshakeError::OriginNotAllowed, "403 Forbidden"),
        (HandshakeError::MethodNotAllowed, "405 Method Not Allowed"),
        (HandshakeError::UnsupportedVersion, "426 Upgrade Required"),
        (
            HandshakeError::TooLarge,
            "431 Request Header Fields Too Large",
        ),
    ];
    for (error, status_line) in cases {
        let mut out = Vec::new();
        write_rejection(error.status(), error.reason(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let body = format!("{}\n", error.reason());
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(rest, body);
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some(&*format!("HTTP/1.1 {status_line}")));
        let fields: Vec<_> = lines.collect();
        assert!(fields.contains(&"Content-Type: text/plain; charset=utf-8"));
        assert!(fields.contains(&&*format!("Content-Length: {}", body.len())));
        assert!(fields.contains(&"Connection: close"));
        assert_eq!(
            fields.contains(&"Sec-WebSocket-Version: 13"),
            error == HandshakeError::UnsupportedVersion
        );
        assert_eq!(
            fields.contains(&"Allow: GET"),
            error == HandshakeError::MethodNotAllowed
        );
    }
}
