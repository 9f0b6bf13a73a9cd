//! What a client sends: one JSON object per text message, `{"id": ANY, "op": OP, ...}`.
//!
//! [`parse_request`] reads it in one pass over the text: every member is first taken as raw
//! JSON (checked, not built into a tree; members it does not know are skipped), then the
//! members `op` needs are read with their documented types. A refusal says which error code
//! the reply carries and keeps the `id` when one could be read, so that a malformed request
//! still gets its answer.

use crate::code::ErrorCode;
use crate::{to_json, Members, StreamPosition};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A request's `id`, kept as the raw JSON the client sent and echoed byte for byte in the
/// reply (`12345678901234567890123` stays that, `1.0` stays `1.0`). `null` when the request
/// had none.
#[derive(Clone, Default)]
pub struct RequestId(Option<Box<RawValue>>);

impl RequestId {
    /// No id: `null` in the reply.
    pub fn null() -> Self {
        RequestId(None)
    }

    /// The raw JSON text of the id (`"null"` when there was none).
    pub fn get(&self) -> &str {
        self.0.as_deref().map_or("null", RawValue::get)
    }

    /// The id as an integer, when it is one (the client's convention).
    pub fn as_u64(&self) -> Option<u64> {
        self.0.as_deref().and_then(|r| r.get().parse().ok())
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId(RawValue::from_string(n.to_string()).ok())
    }
}

impl From<Box<RawValue>> for RequestId {
    fn from(raw: Box<RawValue>) -> Self {
        RequestId((raw.get() != "null").then_some(raw))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(s),
            None => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<Box<RawValue>>::deserialize(d).map(RequestId)
    }
}

/// A request, tagged by `op` (the `id` travels beside it: [`parse_request`],
/// [`Request::encode`]). Exactly the members `docs/protocol.md` documents.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// `connect`: authenticate (where auth is on) and say who this client is.
    Connect {
        /// A JWT; `None` without one.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Any JSON (the server takes at most 1 KiB), shown in presence unless the token
        /// has an `info` claim. Raw, as sent; `None` for absent or `null`.
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Box<RawValue>>,
    },
    /// `subscribe`, with `since` to resume after the last position seen.
    Subscribe {
        /// The channel.
        channel: String,
        /// Resume after this position (`{offset, epoch}`).
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `publish`.
    Publish {
        /// The channel.
        channel: String,
        /// Any one JSON value (`null` too), raw as sent, delivered unchanged.
        data: Box<RawValue>,
        /// Publishes at most once: a retry with the same key on the same channel (within
        /// its history TTL) is not published again and gets the first one's position.
        #[serde(skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// `history`: the newest publications.
    History {
        /// The channel.
        channel: String,
        /// How many (the server's default 100 when `None`, capped at 10,000).
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// `presence`: who is subscribed.
    Presence {
        /// The channel.
        channel: String,
    },
    /// `rpc`: a call to the application backend (where the namespace of `method` has
    /// `rpc_proxy`), answered with the backend's `data`.
    Rpc {
        /// The backend's method: `NAMESPACE:NAME`, or `NAME` in the default namespace.
        method: String,
        /// Any one JSON value, raw as sent (`null` when absent).
        data: Box<RawValue>,
    },
    /// `ping`: the application heartbeat.
    Ping,
}

impl Request {
    /// The `op` of this request.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Connect { .. } => "connect",
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Publish { .. } => "publish",
            Request::History { .. } => "history",
            Request::Presence { .. } => "presence",
            Request::Rpc { .. } => "rpc",
            Request::Ping => "ping",
        }
    }

    /// The channel, for the ops that have one.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Request::Subscribe { channel, .. }
            | Request::Unsubscribe { channel }
            | Request::Publish { channel, .. }
            | Request::History { channel, .. }
            | Request::Presence { channel } => Some(channel),
            Request::Connect { .. } | Request::Rpc { .. } | Request::Ping => None,
        }
    }

    /// The request as one JSON object with its `id` first: the text message to send.
    pub fn encode(&self, id: &RequestId) -> String {
        let body = to_json(self);
        // `body` is an object (`{"op":...}`): put the id in front of its members.
        let mut out = String::with_capacity(body.len() + id.get().len() + 7);
        out.push_str("{\"id\":");
        out.push_str(id.get());
        out.push(',');
        out.push_str(body.get(1..).unwrap_or("}"));
        out
    }
}

/// Why a request was refused: the error reply to send ([`RequestError::reply`]). The
/// connection stays open.
#[derive(Debug, Clone)]
pub struct RequestError {
    id: RequestId,
    op: Option<String>,
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl RequestError {
    fn new(
        id: &RequestId,
        op: Option<&str>,
        code: ErrorCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        RequestError {
            id: id.clone(),
            op: op.map(str::to_owned),
            code,
            message: message.into(),
        }
    }

    /// The request's `id`, or `null` when none could be read.
    pub fn id(&self) -> &RequestId {
        &self.id
    }

    /// The `op` when it was a string (a known op whose members are wrong, or an unknown
    /// one).
    pub fn op(&self) -> Option<&str> {
        self.op.as_deref()
    }

    /// 101 (bad request) or 102 (unknown op).
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// What is wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error reply: `{"id":ID,"error":{"code":C,"message":M}}`.
    pub fn reply(&self) -> String {
        crate::reply::encode_error(&self.id, self.code, &self.message)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {}: {}", self.code.0, self.message)
    }
}

impl std::error::Error for RequestError {}

/// A member that is absent or `null`.
fn absent(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// Longest `rpc` method name accepted, in bytes.
pub const MAX_METHOD: usize = 256;

/// Longest `idempotency_key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Reads one request (the text of one message). On success the `id` to echo and the
/// request; on failure the error reply to send, with the `id` when it could be read.
///
/// Refused with 101: text that is not one JSON object, a duplicate member, no `op` or an
/// `op` that is not a string, a required member missing (`channel`, `data`), and members of
/// the wrong type (`channel` or `token` not a string, `limit` not a non-negative integer,
/// `since` not an object `{offset, epoch}`). Refused with 102: an `op` this protocol does
/// not have. Members an op does not use are ignored.
pub fn parse_request(text: &str) -> Result<(RequestId, Request), RequestError> {
    let null = RequestId::null();
    let m = Members::read(text)
        .map_err(|message| RequestError::new(&null, None, ErrorCode::BAD_REQUEST, message))?;
    let id =
        m.id.map_or_else(RequestId::null, |r| RequestId::from(r.to_owned()));
    let bad = |op: &str, message: &'static str| {
        RequestError::new(&id, Some(op), ErrorCode::BAD_REQUEST, message)
    };
    let Some(op) = absent(m.op) else {
        return Err(RequestError::new(
            &id,
            None,
            ErrorCode::BAD_REQUEST,
            "missing op",
        ));
    };
    let Ok(op) = serde_json::from_str::<Cow<'_, str>>(op.get()) else {
        return Err(RequestError::new(
            &id,
            None,
            ErrorCode::BAD_REQUEST,
            "op must be a string",
        ));
    };
    let op = op.as_ref();
    let channel = || -> Result<String, RequestError> {
        let raw = m.channel.ok_or_else(|| bad(op, "missing channel"))?;
        typed(raw).ok_or_else(|| bad(op, "channel must be a string"))
    };
    let request = match op {
        "connect" => Request::Connect {
            token: match absent(m.token) {
                None => None,
                Some(raw) => Some(typed(raw).ok_or_else(|| bad(op, "token must be a string"))?),
            },
            info: absent(m.info).map(RawValue::to_owned),
        },
        "subscribe" => Request::Subscribe {
            channel: channel()?,
            since: match absent(m.since) {
                None => None,
                Some(raw) => {
                    Some(typed(raw).ok_or_else(|| bad(op, "since must be {offset, epoch}"))?)
                }
            },
        },
        "unsubscribe" => Request::Unsubscribe {
            channel: channel()?,
        },
        "publish" => Request::Publish {
            channel: channel()?,
            data: m.data.ok_or_else(|| bad(op, "missing data"))?.to_owned(),
            idempotency_key: match absent(m.idempotency_key) {
                None => None,
                Some(raw) => {
                    let key: String =
                        typed(raw).ok_or_else(|| bad(op, "idempotency_key must be a string"))?;
                    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                        return Err(bad(op, "idempotency_key must be 1 to 128 bytes"));
                    }
                    Some(key)
                }
            },
        },
        "history" => Request::History {
            channel: channel()?,
            limit: match absent(m.limit) {
                None => None,
                Some(raw) => Some(
                    typed(raw).ok_or_else(|| bad(op, "limit must be a non-negative integer"))?,
                ),
            },
        },
        "presence" => Request::Presence {
            channel: channel()?,
        },
        "rpc" => Request::Rpc {
            method: {
                let raw = m.method.ok_or_else(|| bad(op, "missing method"))?;
                let method: String =
                    typed(raw).ok_or_else(|| bad(op, "method must be a string"))?;
                if method.is_empty() || method.len() > MAX_METHOD {
                    return Err(bad(op, "method must be 1 to 256 bytes"));
                }
                method
            },
            data: match absent(m.data) {
                Some(raw) => raw.to_owned(),
                None => RawValue::from_string("null".into()).expect("null is JSON"),
            },
        },
        "ping" => Request::Ping,
        _ => {
            let message = format!("unknown op {}", to_json(op));
            return Err(RequestError::new(
                &id,
                Some(op),
                ErrorCode::UNKNOWN_OP,
                message,
            ));
        }
    };
    Ok((id, request))
}

/// `raw` read as a `T`, if it is one.
fn typed<T: DeserializeOwned>(raw: &RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> (RequestId, Request) {
        parse_request(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn refused(text: &str) -> RequestError {
        match parse_request(text) {
            Ok((_, r)) => panic!("{text}: accepted as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_op_parses() {
        let (id, r) = ok(r#"{"id":1,"op":"connect","token":"JWT","info":{"nick":"ann"}}"#);
        assert_eq!(id.get(), "1");
        match r {
            Request::Connect { token, info } => {
                assert_eq!(token.as_deref(), Some("JWT"));
                assert_eq!(info.unwrap().get(), r#"{"nick":"ann"}"#);
            }
            r => panic!("{r:?}"),
        }
        let (_, r) = ok(r#"{"id":1,"op":"connect","token":null,"info":null}"#);
        assert!(matches!(
            r,
            Request::Connect {
                token: None,
                info: None
            }
        ));
        let (_, r) = ok(r#"{"op":"connect"}"#);
        assert!(matches!(
            r,
            Request::Connect {
                token: None,
                info: None
            }
        ));

        let (_, r) = ok(r#"{"id":2,"op":"subscribe","channel":"chat:lobby"}"#);
        assert!(
            matches!(r, Request::Subscribe { ref channel, since: None } if channel == "chat:lobby")
        );
        let (_, r) =
            ok(r#"{"id":3,"op":"subscribe","channel":"c","since":{"offset":41,"epoch":"7f"}}"#);
        match r {
            Request::Subscribe { since: Some(p), .. } => {
                assert_eq!((p.offset, p.epoch.as_str()), (41, "7f"))
            }
            r => panic!("{r:?}"),
        }
        let (_, r) = ok(r#"{"id":3,"op":"subscribe","channel":"c","since":null}"#);
        assert!(matches!(r, Request::Subscribe { since: None, .. }));

        let (_, r) = ok(r#"{"id":4,"op":"unsubscribe","channel":"c"}"#);
        assert!(matches!(r, Request::Unsubscribe { ref channel } if channel == "c"));

        let (_, r) =
            ok(r#"{"id":5,"op":"publish","channel":"c","data": {"text":"hi", "n":[1, 2.50]}}"#);
        match r {
            Request::Publish { channel, data, .. } => {
                assert_eq!(channel, "c");
                // Raw: as sent, spaces and number forms included.
                assert_eq!(data.get(), r#"{"text":"hi", "n":[1, 2.50]}"#);
            }
            r => panic!("{r:?}"),
        }
        let (_, r) = ok(r#"{"id":5,"op":"publish","channel":"c","data":null}"#);
        assert!(matches!(r, Request::Publish { ref data, .. } if data.get() == "null"));

        let (_, r) = ok(r#"{"id":6,"op":"history","channel":"c","limit":50}"#);
        assert!(matches!(
            r,
            Request::History {
                limit: Some(50),
                ..
            }
        ));
        let (_, r) = ok(r#"{"id":6,"op":"history","channel":"c"}"#);
        assert!(matches!(r, Request::History { limit: None, .. }));

        let (_, r) = ok(r#"{"id":7,"op":"presence","channel":"c"}"#);
        assert!(matches!(r, Request::Presence { ref channel } if channel == "c"));
        let (id, r) = ok(r#"{"op":"ping","id":8,"extra":[{"ignored":true}]}"#);
        assert!(matches!(r, Request::Ping));
        assert_eq!(id.as_u64(), Some(8));
        assert_eq!(r.op(), "ping");
    }

    #[test]
    fn ids_are_echoed_byte_for_byte() {
        for id in [
            "12345678901234567890123",
            "1.0",
            "-0",
            "1e400",
            r#""text \u00e9""#,
            r#"{"a":[1,{"b":null}]}"#,
            "null",
        ] {
            let text = format!(r#"{{"id":{id},"op":"ping"}}"#);
            let (got, _) = ok(&text);
            assert_eq!(got.get(), id);
            let reply = crate::encode_ok(&got, &crate::Empty {});
            assert_eq!(reply, format!(r#"{{"id":{id},"ok":true,"result":{{}}}}"#));
        }
        let (none, _) = ok(r#"{"op":"ping"}"#);
        assert_eq!((none.get(), none.as_u64()), ("null", None));
        // Refusals keep the id too.
        let e = refused(r#"{"id":12345678901234567890123,"op":"nope"}"#);
        assert_eq!(e.id().get(), "12345678901234567890123");
        assert!(e
            .reply()
            .starts_with(r#"{"id":12345678901234567890123,"error":"#));
    }

    #[test]
    fn rpc_takes_a_method_and_any_data() {
        let (_, r) = ok(r#"{"id":7,"op":"rpc","method":"game:move","data":{"x":1}}"#);
        match r {
            Request::Rpc { method, data } => {
                assert_eq!(method, "game:move");
                assert_eq!(data.get(), r#"{"x":1}"#);
            }
            r => panic!("{r:?}"),
        }
        let (_, r) = ok(r#"{"id":7,"op":"rpc","method":"time"}"#);
        assert!(matches!(r, Request::Rpc { ref data, .. } if data.get() == "null"));
        assert_eq!(
            refused(r#"{"id":7,"op":"rpc"}"#).message(),
            "missing method"
        );
        assert_eq!(
            refused(r#"{"id":7,"op":"rpc","method":3}"#).message(),
            "method must be a string"
        );
        let long = format!(r#"{{"op":"rpc","method":"{}"}}"#, "m".repeat(257));
        assert_eq!(refused(&long).message(), "method must be 1 to 256 bytes");
        let (id, r) = ok(r#"{"id":8,"op":"rpc","method":"m","data":[1]}"#);
        assert_eq!(
            r.encode(&id),
            r#"{"id":8,"op":"rpc","method":"m","data":[1]}"#
        );
    }

    #[test]
    fn unknown_ops_are_102() {
        for text in [
            r#"{"id":1,"op":"nope"}"#,
            r#"{"id":1,"op":"nope","channel":"c"}"#,
            r#"{"id":1,"op":"Subscribe","channel":"c"}"#,
            r#"{"id":1,"op":""}"#,
        ] {
            let e = refused(text);
            assert_eq!(e.code(), ErrorCode::UNKNOWN_OP, "{text}");
            assert_eq!(e.id().get(), "1");
        }
        let e = refused(r#"{"id":1,"op":"no\"pe"}"#);
        assert_eq!(e.op(), Some("no\"pe"));
        assert_eq!(e.message(), r#"unknown op "no\"pe""#);
    }

    #[test]
    fn malformed_requests_are_101() {
        for (text, message) in [
            ("", "not JSON"),
            ("{", "not JSON"),
            ("nope", "not JSON"),
            (r#"[1,"ping"]"#, "not a JSON object"),
            ("17", "not a JSON object"),
            (r#""op""#, "not a JSON object"),
            (r#"{"id":1}"#, "missing op"),
            (r#"{"id":1,"op":null}"#, "missing op"),
            (r#"{"id":1,"op":7}"#, "op must be a string"),
            (r#"{"id":1,"op":"subscribe"}"#, "missing channel"),
            (
                r#"{"id":1,"op":"subscribe","channel":7}"#,
                "channel must be a string",
            ),
            (
                r#"{"id":1,"op":"subscribe","channel":null}"#,
                "channel must be a string",
            ),
            (
                r#"{"id":1,"op":"subscribe","channel":"c","since":[1,"x"]}"#,
                "since must be {offset, epoch}",
            ),
            (
                r#"{"id":1,"op":"subscribe","channel":"c","since":{"offset":-1,"epoch":"x"}}"#,
                "since must be {offset, epoch}",
            ),
            (
                r#"{"id":1,"op":"subscribe","channel":"c","since":{"offset":1}}"#,
                "since must be {offset, epoch}",
            ),
            (
                r#"{"id":1,"op":"subscribe","channel":"c","since":"1:x"}"#,
                "since must be {offset, epoch}",
            ),
            (r#"{"id":1,"op":"publish","channel":"c"}"#, "missing data"),
            (
                r#"{"id":1,"op":"history","channel":"c","limit":-1}"#,
                "limit must be a non-negative integer",
            ),
            (
                r#"{"id":1,"op":"history","channel":"c","limit":1.5}"#,
                "limit must be a non-negative integer",
            ),
            (
                r#"{"id":1,"op":"history","channel":"c","limit":"5"}"#,
                "limit must be a non-negative integer",
            ),
            (
                r#"{"id":1,"op":"connect","token":5}"#,
                "token must be a string",
            ),
            (
                r#"{"id":1,"op":"unsubscribe","channel":["c"]}"#,
                "channel must be a string",
            ),
            (r#"{"id":1,"op":"presence"}"#, "missing channel"),
        ] {
            let e = refused(text);
            assert_eq!(e.code(), ErrorCode::BAD_REQUEST, "{text}");
            assert!(e.message().starts_with(message), "{text}: {}", e.message());
        }
        // No id could be read: null.
        assert_eq!(refused("{").id().get(), "null");
        assert_eq!(refused("[1]").id().get(), "null");
        // A duplicate member is refused (which of the two would count is not said).
        let e = refused(r#"{"id":1,"op":"ping","op":"presence"}"#);
        assert_eq!((e.code(), e.id().get()), (ErrorCode::BAD_REQUEST, "null"));
        // Invalid JSON inside a member the op does not even use is still invalid.
        assert_eq!(
            refused(r#"{"id":1,"op":"ping","data":[1,}"#).code(),
            ErrorCode::BAD_REQUEST
        );
        // A known op with bad members says which op it was.
        assert_eq!(
            refused(r#"{"id":1,"op":"publish","channel":1}"#).op(),
            Some("publish")
        );
    }

    #[test]
    fn requests_encode_with_the_id_first() {
        let id = RequestId::from(9);
        let cases: Vec<(Request, &str)> = vec![
            (Request::Ping, r#"{"id":9,"op":"ping"}"#),
            (
                Request::Connect {
                    token: Some("t".into()),
                    info: None,
                },
                r#"{"id":9,"op":"connect","token":"t"}"#,
            ),
            (
                Request::Subscribe {
                    channel: "c".into(),
                    since: Some(StreamPosition {
                        offset: 4,
                        epoch: "e".into(),
                    }),
                },
                r#"{"id":9,"op":"subscribe","channel":"c","since":{"offset":4,"epoch":"e"}}"#,
            ),
            (
                Request::Unsubscribe {
                    channel: "c".into(),
                },
                r#"{"id":9,"op":"unsubscribe","channel":"c"}"#,
            ),
            (
                Request::Publish {
                    channel: "c".into(),
                    data: RawValue::from_string(r#"{"n": 1}"#.into()).unwrap(),
                    idempotency_key: None,
                },
                r#"{"id":9,"op":"publish","channel":"c","data":{"n": 1}}"#,
            ),
            (
                Request::History {
                    channel: "c".into(),
                    limit: Some(2),
                },
                r#"{"id":9,"op":"history","channel":"c","limit":2}"#,
            ),
            (
                Request::Presence {
                    channel: "c".into(),
                },
                r#"{"id":9,"op":"presence","channel":"c"}"#,
            ),
        ];
        for (request, text) in cases {
            let encoded = request.encode(&id);
            assert_eq!(encoded, text);
            // And back.
            let (back_id, back) = ok(&encoded);
            assert_eq!(back_id, id);
            assert_eq!(back.op(), request.op());
            assert_eq!(back.channel(), request.channel());
        }
        assert_eq!(
            Request::Ping.encode(&RequestId::null()),
            r#"{"id":null,"op":"ping"}"#
        );
    }
}
