//! The client's side of the opening handshake, bytes in and results out (RFC 6455 §4.1).

mod common;

use common::{head, parse_at_every_split};
use http::HeaderMap;
use tidewire_proto::handshake::{
    generate_key, parse_request, parse_response, select_subprotocol, write_request, write_response,
    ClientRequest, Extension, HandshakeError, ServerResponse,
};
use tidewire_proto::Limits;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const UPGRADE: &str = "Upgrade: websocket";
const CONNECTION: &str = "Connection: Upgrade";

fn offered() -> Vec<String> {
    vec!["chat".into(), "superchat".into()]
}

fn switching(lines: &[&str]) -> Vec<u8> {
    head("HTTP/1.1 101 Switching Protocols", lines)
}

/// Parses `input` whole and at every split point, for the RFC key and `chat, superchat`.
fn parse_with(
    input: &[u8],
    limits: &Limits,
) -> Result<Option<(ServerResponse, usize)>, HandshakeError> {
    parse_at_every_split(input, |b| parse_response(b, KEY, &offered(), limits))
}

fn accepted(input: &[u8]) -> ServerResponse {
    match parse_with(input, &Limits::default()) {
        Ok(Some((resp, len))) => {
            assert_eq!(len, input.len());
            resp
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

fn failed(input: &[u8], error: HandshakeError) {
    failed_with(input, &Limits::default(), error);
}

fn failed_with(input: &[u8], limits: &Limits, error: HandshakeError) {
    match parse_with(input, limits) {
        Err(e) => assert_eq!(e, error, "{}", String::from_utf8_lossy(input)),
        Ok(other) => panic!("expected {error:?}, got {other:?}"),
    }
}

// §1.3: the example response.

#[test]
fn rfc_example_response() {
    let resp = accepted(&switching(&[
        UPGRADE,
        CONNECTION,
        ACCEPT,
        "Sec-WebSocket-Protocol: chat",
    ]));
    assert_eq!(resp.protocol.as_deref(), Some("chat"));
    assert!(resp.extensions.is_empty());
    assert_eq!(resp.response.status(), 101);
}

#[test]
fn frames_after_the_head_are_not_consumed() {
    let head = switching(&[UPGRADE, CONNECTION, ACCEPT]);
    let mut input = head.clone();
    input.extend_from_slice(b"\x81\x05Hello");
    let (resp, len) = parse_response(&input, KEY, &[], &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(len, head.len());
    assert_eq!(resp.protocol, None);
}

#[test]
fn case_insensitive_and_lists() {
    accepted(&switching(&[
        "upgrade: WebSocket",
        "CONNECTION: keep-alive, upgrade",
        "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    ]));
}

#[test]
fn server_headers_are_kept() {
    let resp = accepted(&switching(&[
        UPGRADE,
        CONNECTION,
        ACCEPT,
        "Set-Cookie: a=b",
    ]));
    assert_eq!(resp.response.headers()["set-cookie"], "a=b");
}

#[test]
fn extensions_returned_parsed() {
    let resp = accepted(&switching(&[
        UPGRADE,
        CONNECTION,
        ACCEPT,
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=\"12\"",
    ]));
    assert_eq!(
        resp.extensions,
        [Extension {
            name: "permessage-deflate".into(),
            params: vec![
                ("server_no_context_takeover".into(), None),
                ("client_max_window_bits".into(), Some("12".into())),
            ],
        }]
    );
}

// §4.1: "If the status code received from the server is not 101".

#[test]
fn other_status_reports_code_and_reason() {
    let input = head("HTTP/1.1 403 Forbidden", &["Content-Length: 0"]);
    failed(&input, HandshakeError::Status(403, "Forbidden".into()));
    let err = parse_response(&input, KEY, &[], &Limits::default()).unwrap_err();
    assert!(err.to_string().ends_with("HTTP 403 Forbidden"), "{err}");

    let input = head("HTTP/1.1 200 OK", &[]);
    failed(&input, HandshakeError::Status(200, "OK".into()));
    let input = head("HTTP/1.1 302 ", &["Location: /elsewhere"]);
    failed(&input, HandshakeError::Status(302, String::new()));
}

#[test]
fn rejects_missing_or_wrong_upgrade() {
    failed(
        &switching(&[CONNECTION, ACCEPT]),
        HandshakeError::InvalidUpgrade,
    );
    failed(
        &switching(&["Upgrade: h2c", CONNECTION, ACCEPT]),
        HandshakeError::InvalidUpgrade,
    );
}

#[test]
fn rejects_missing_or_wrong_connection() {
    failed(
        &switching(&[UPGRADE, ACCEPT]),
        HandshakeError::InvalidConnection,
    );
    failed(
        &switching(&[UPGRADE, "Connection: close", ACCEPT]),
        HandshakeError::InvalidConnection,
    );
}

#[test]
fn rejects_wrong_missing_or_repeated_accept() {
    failed(
        &switching(&[UPGRADE, CONNECTION]),
        HandshakeError::InvalidAccept,
    );
    failed(
        &switching(&[
            UPGRADE,
            CONNECTION,
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOp=",
        ]),
        HandshakeError::InvalidAccept,
    );
    // The accept of the decoded key, not of the key as sent.
    failed(
        &switching(&[
            UPGRADE,
            CONNECTION,
            "Sec-WebSocket-Accept: S3PPLMBITXAQ9KYGZZHZRBK+XOO=",
        ]),
        HandshakeError::InvalidAccept,
    );
    failed(
        &switching(&[UPGRADE, CONNECTION, ACCEPT, ACCEPT]),
        HandshakeError::InvalidAccept,
    );
    // Right accept, wrong key on our side.
    let input = switching(&[UPGRADE, CONNECTION, ACCEPT]);
    let other_key = generate_key([7; 16]);
    assert_eq!(
        parse_response(&input, &other_key, &[], &Limits::default()).unwrap_err(),
        HandshakeError::InvalidAccept
    );
}

#[test]
fn rejects_unoffered_protocol() {
    failed(
        &switching(&[
            UPGRADE,
            CONNECTION,
            ACCEPT,
            "Sec-WebSocket-Protocol: megachat",
        ]),
        HandshakeError::UnofferedProtocol,
    );
    // Subprotocols compare exactly.
    failed(
        &switching(&[UPGRADE, CONNECTION, ACCEPT, "Sec-WebSocket-Protocol: Chat"]),
        HandshakeError::UnofferedProtocol,
    );
    // Nothing offered, something selected.
    let input = switching(&[UPGRADE, CONNECTION, ACCEPT, "Sec-WebSocket-Protocol: chat"]);
    assert_eq!(
        parse_response(&input, KEY, &[], &Limits::default()).unwrap_err(),
        HandshakeError::UnofferedProtocol
    );
}

#[test]
fn rejects_more_than_one_protocol() {
    failed(
        &switching(&[
            UPGRADE,
            CONNECTION,
            ACCEPT,
            "Sec-WebSocket-Protocol: chat, superchat",
        ]),
        HandshakeError::InvalidProtocol,
    );
    failed(
        &switching(&[
            UPGRADE,
            CONNECTION,
            ACCEPT,
            "Sec-WebSocket-Protocol: chat",
            "Sec-WebSocket-Protocol: chat",
        ]),
        HandshakeError::InvalidProtocol,
    );
}

#[test]
fn rejects_bad_extensions() {
    failed(
        &switching(&[
            UPGRADE,
            CONNECTION,
            ACCEPT,
            "Sec-WebSocket-Extensions: a; b=\"\"",
        ]),
        HandshakeError::InvalidExtensions,
    );
}

#[test]
fn rejects_malformed_http() {
    failed(
        b"HTTP/1.1 101\r\nUpgrade websocket\r\n\r\n",
        HandshakeError::MalformedHttp,
    );
    failed(b"SSH-2.0-OpenSSH\r\n\r\n", HandshakeError::MalformedHttp);
    failed(
        &head(
            "HTTP/1.0 101 Switching Protocols",
            &[UPGRADE, CONNECTION, ACCEPT],
        ),
        HandshakeError::UnsupportedHttpVersion,
    );
}

#[test]
fn size_and_header_limits() {
    let input = switching(&[UPGRADE, CONNECTION, ACCEPT]);
    failed_with(
        &input,
        &Limits::default().max_handshake_size(input.len() - 1),
        HandshakeError::TooLarge,
    );
    failed_with(
        &input,
        &Limits::default().max_headers(2),
        HandshakeError::TooManyHeaders,
    );
    assert!(parse_with(&input, &Limits::default().max_handshake_size(input.len())).is_ok());
}

// Both sides together: what the client writes, the server accepts, and the reverse.

#[test]
fn client_and_server_agree() {
    let key = generate_key(*b"0123456789abcdef");
    let protocols = offered();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer t".parse().unwrap());
    let request = ClientRequest {
        host: "example.com:8080",
        path_and_query: "/ws?room=1",
        key: &key,
        protocols: &protocols,
        extensions: Some("permessage-deflate; client_max_window_bits"),
        origin: Some("https://example.com"),
        headers: &headers,
    };
    let mut wire = Vec::new();
    write_request(&request, &mut wire);

    let (req, len) = parse_request(&wire, &Limits::default()).unwrap().unwrap();
    assert_eq!(len, wire.len());
    assert_eq!(req.request.headers()["host"], "example.com:8080");
    assert_eq!(req.request.headers()["authorization"], "Bearer t");
    assert_eq!(req.request.uri(), "/ws?room=1");
    assert_eq!(req.protocols, protocols);
    assert_eq!(req.extensions[0].name, "permessage-deflate");
    assert_eq!(req.origin.as_deref(), Some("https://example.com"));

    let chosen = select_subprotocol(&req.protocols, &["superchat", "chat"]);
    let mut answer = Vec::new();
    write_response(
        &req.key,
        chosen,
        Some("permessage-deflate"),
        &HeaderMap::new(),
        &mut answer,
    );
    let (resp, len) = parse_response(&answer, &key, &protocols, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(len, answer.len());
    assert_eq!(resp.protocol.as_deref(), Some("superchat"));
    assert_eq!(resp.extensions[0].name, "permessage-deflate");
}
