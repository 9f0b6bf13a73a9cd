//! The `tidewire.v1` channel protocol of the Tidewire hub (`docs/protocol.md`) as types.
//!
//! One home for the wire format, used by the server (`tidewire-hub`), the Rust client
//! (`tidewire-hub-client`), the benchmarks and the tests:
//!
//! - what a client sends: [`Request`], read with [`parse_request`], which refuses anything
//!   the document does not allow with the right [`ErrorCode`] (an unknown `op` is 102, a
//!   wrongly typed field 101) and keeps the request's [`RequestId`] byte for byte;
//! - what the server sends: replies ([`Reply`], written with [`encode_ok`],
//!   [`encode_error`] and [`encode_publications_result`]) and pushes ([`Push`], written with
//!   [`write_publication`] and [`write_presence`]), read back with
//!   [`ServerMessage::parse`];
//! - the codes: [`ErrorCode`] (`error.code` of a reply) and [`CloseCode`] with
//!   [`close_action`] (for any close code: reconnect, reconnect with a new token, or stop).
//!
//! Hostile input is the normal case on a server, so nothing here builds a
//! `serde_json::Value` tree from what a peer sent: publication `data` and `connect`'s `info`
//! stay raw JSON ([`RawValue`]), checked to be one JSON value and copied as they came.
//!
//! ```
//! use tidewire_hub_proto::{encode_error, encode_ok, parse_request, ErrorCode, Request, StreamPosition};
//!
//! let (id, request) = parse_request(r#"{"id":12345678901234567890123,"op":"publish","channel":"news","data":{"n": 1}}"#)?;
//! let Request::Publish { channel, data, .. } = request else { unreachable!() };
//! assert_eq!((channel.as_str(), data.get()), ("news", r#"{"n": 1}"#));
//! let position = StreamPosition { offset: 46, epoch: "7f3a".into() };
//! assert_eq!(
//!     encode_ok(&id, &position),
//!     r#"{"id":12345678901234567890123,"ok":true,"result":{"offset":46,"epoch":"7f3a"}}"#
//! );
//!
//! let refused = parse_request(r#"{"id":2,"op":"subscribe","channel":"news","since":[1,"x"]}"#).unwrap_err();
//! assert_eq!(refused.code(), ErrorCode::BAD_REQUEST);
//! assert_eq!(refused.reply(), encode_error(refused.id(), ErrorCode::BAD_REQUEST, "since must be {offset, epoch}"));
//! # Ok::<(), tidewire_hub_proto::RequestError>(())
//! ```
//!
//! Not here: sockets, WebSocket frames, the engine. serde and serde_json only.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![warn(missing_docs)]

mod code;
mod push;
mod reply;
mod request;

pub use code::{close_action, CloseAction, CloseCode, ErrorCode};
pub use push::{
    write_presence, write_publication, MessageError, Presence, Publication, Push, ServerMessage,
};
pub use reply::{
    encode_error, encode_ok, encode_publications_result, ConnectResult, Empty, ErrorBody,
    HistoryResult, PresenceResult, Reply, RpcResult, SubscribeResult,
};
pub use request::{
    parse_request, Request, RequestError, RequestId, MAX_IDEMPOTENCY_KEY, MAX_METHOD,
};
pub use serde_json::value::RawValue;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The subprotocol name, offered by clients and selected by the server.
pub const PROTOCOL: &str = "tidewire.v1";

/// A place in a channel's stream: the offset of the last publication seen and the epoch of
/// the history it belongs to. On the wire `{"offset": 41, "epoch": "7f3a9c0de1b24a55"}`:
/// only that object shape is read (an array such as `[41, "7f3a"]` is refused).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StreamPosition {
    /// Offset of the last publication (0 before the first one).
    pub offset: u64,
    /// Generation of the channel's history.
    pub epoch: String,
}

impl<'de> Deserialize<'de> for StreamPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Position;
        impl<'de> Visitor<'de> for Position {
            type Value = StreamPosition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object {\"offset\": integer, \"epoch\": string}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamPosition, A::Error> {
                let (mut offset, mut epoch) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "offset" if offset.is_some() => {
                            return Err(de::Error::duplicate_field("offset"))
                        }
                        "offset" => offset = Some(map.next_value::<u64>()?),
                        "epoch" if epoch.is_some() => {
                            return Err(de::Error::duplicate_field("epoch"))
                        }
                        "epoch" => epoch = Some(map.next_value::<String>()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(StreamPosition {
                    offset: offset.ok_or_else(|| de::Error::missing_field("offset"))?,
                    epoch: epoch.ok_or_else(|| de::Error::missing_field("epoch"))?,
                })
            }
        }
        d.deserialize_map(Position)
    }
}

/// A client as presence shows it: `{"client": "c-4f1d", "user": "alice", "info": ANY}`
/// (`user` and `info` are `null` for anonymous connections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Connection id, unique per connection. `client` on the wire.
    #[serde(rename = "client")]
    pub client_id: String,
    /// Authenticated user (the token's `sub`), if any. `user` on the wire.
    #[serde(rename = "user", default)]
    pub user_id: Option<String>,
    /// Application data of the connection (the token's `info` claim, or `connect`'s `info`).
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

impl ClientInfo {
    /// An anonymous client without info.
    pub fn new(client_id: impl Into<String>) -> Self {
        ClientInfo {
            client_id: client_id.into(),
            user_id: None,
            info: None,
        }
    }
}

/// Every member a `tidewire.v1` message may have (requests, replies, pushes), raw: an absent
/// member is `None`, a member that is `null` is `Some("null")`. Other members are skipped
/// (checked to be JSON, not kept); a member given twice is refused.
#[derive(Deserialize)]
pub(crate) struct Members<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    pub id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub op: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub since: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub limit: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub token: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub info: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub ok: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub error: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub offset: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub epoch: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub join: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub leave: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub subscribed: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub unsubscribed: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub idempotency_key: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub method: Option<&'a RawValue>,
}

impl<'a> Members<'a> {
    /// The members of `text`, which must be one JSON object (a struct would also be read
    /// from an array); otherwise what is wrong, for people.
    pub(crate) fn read(text: &'a str) -> Result<Self, String> {
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => "not a JSON object".to_owned(),
                Err(e) => format!("not JSON: {e}"),
            });
        }
        serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                format!("malformed: {e}")
            } else {
                format!("not JSON: {e}")
            }
        })
    }
}

/// For `#[serde(deserialize_with)]`: a member that is there, as raw JSON.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Appends `s` to `out` as a JSON string (the escapes serde_json writes).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push_str(short);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Serializes what cannot fail to serialize (strings, maps with string keys, numbers,
/// `serde_json::Value`, raw JSON) as JSON text.
pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// Reads what the server sent, for the tests: a reply or a push, or a panic.
#[cfg(test)]
pub(crate) mod read {
    use crate::{Push, Reply, ServerMessage};

    pub(crate) fn reply(text: &str) -> Reply {
        let message = ServerMessage::parse(text).ok();
        message.and_then(ServerMessage::into_reply).expect(text)
    }

    pub(crate) fn push(text: &str) -> Push {
        let message = ServerMessage::parse(text).ok();
        message.and_then(ServerMessage::into_push).expect(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_objects_only() {
        let p: StreamPosition = serde_json::from_str(r#"{"offset":41,"epoch":"e"}"#).unwrap();
        assert_eq!(
            p,
            StreamPosition {
                offset: 41,
                epoch: "e".into()
            }
        );
        assert_eq!(to_json(&p), r#"{"offset":41,"epoch":"e"}"#);
        // Unknown members are ignored (a later version may add some).
        assert!(
            serde_json::from_str::<StreamPosition>(r#"{"epoch":"e","x":[1],"offset":0}"#).is_ok()
        );
        for bad in [
            r#"[1,"x"]"#,
            r#"{"offset":-1,"epoch":"e"}"#,
            r#"{"offset":1.5,"epoch":"e"}"#,
            r#"{"offset":"1","epoch":"e"}"#,
            r#"{"offset":1,"epoch":7}"#,
            r#"{"offset":1}"#,
            r#"{"epoch":"e"}"#,
            r#"{"offset":1,"offset":2,"epoch":"e"}"#,
            r#""1:e""#,
            "null",
        ] {
            assert!(
                serde_json::from_str::<StreamPosition>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_info_wire_form() {
        let mut c = ClientInfo::new("c1");
        assert_eq!(to_json(&c), r#"{"client":"c1","user":null,"info":null}"#);
        c.user_id = Some("u".into());
        c.info = Some(serde_json::json!({"nick": "ann"}));
        let text = to_json(&c);
        assert_eq!(text, r#"{"client":"c1","user":"u","info":{"nick":"ann"}}"#);
        assert_eq!(serde_json::from_str::<ClientInfo>(&text).unwrap(), c);
        let bare: ClientInfo = serde_json::from_str(r#"{"client":"c2"}"#).unwrap();
        assert_eq!(bare, ClientInfo::new("c2"));
    }

    #[test]
    fn json_strings_escape_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "quote\" backslash\\ slash/",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "é ✓ 🦀",
            "chat:\"a\"",
        ] {
            let mut out = String::from("x");
            push_json_str(&mut out, s);
            assert_eq!(out[1..], serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }
}
