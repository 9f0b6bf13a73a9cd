//! What the server pushes without being asked, and reading anything the server sends.
//!
//! A publication `{"channel":C,"offset":O,"epoch":E,"data":ANY}`, a presence event
//! `{"channel":C,"join":CLIENT}` / `{"channel":C,"leave":CLIENT}`, or a subscription made
//! or ended by the server (its API, for the backend) `{"channel":C,"subscribed":POSITION}`
//! / `{"channel":C,"unsubscribed":{}}`. The server writes them
//! with [`write_publication`] and [`write_presence`], once per event whatever the number of
//! subscribers; clients read them with [`ServerMessage::parse`], which tells them from
//! replies (a reply has an `id`, a push never does).

use crate::reply::{Empty, ErrorBody, Reply};
use crate::request::RequestId;
use crate::{push_json_str, to_json, ClientInfo, Members, StreamPosition};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// A publication on a channel, with its data raw as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    /// The channel.
    pub channel: String,
    /// Its offset: strictly increasing by 1 within an epoch.
    pub offset: u64,
    /// The epoch of the channel's history.
    pub epoch: String,
    /// The JSON value published, as it was published.
    pub data: Box<RawValue>,
}

/// A presence event's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// `join`: a client subscribed.
    Join,
    /// `leave`: a client's subscription ended.
    Leave,
}

/// A pushed message.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Push {
    /// A publication on a subscribed channel.
    Publication(Publication),
    /// A client joined a channel whose namespace has presence.
    Join {
        /// The channel.
        channel: String,
        /// Who.
        #[serde(rename = "join")]
        client: ClientInfo,
    },
    /// A client left.
    Leave {
        /// The channel.
        channel: String,
        /// Who.
        #[serde(rename = "leave")]
        client: ClientInfo,
    },
    /// The server subscribed this connection to a channel (the server API): its
    /// publications after `position` follow.
    Subscribed {
        /// The channel.
        channel: String,
        /// Where the subscription starts.
        #[serde(rename = "subscribed")]
        position: StreamPosition,
    },
    /// The server ended this connection's subscription to a channel.
    Unsubscribed {
        /// The channel.
        channel: String,
        /// Always `{}`.
        #[serde(rename = "unsubscribed")]
        empty: Empty,
    },
}

impl Push {
    /// The channel.
    pub fn channel(&self) -> &str {
        match self {
            Push::Publication(p) => &p.channel,
            Push::Join { channel, .. }
            | Push::Leave { channel, .. }
            | Push::Subscribed { channel, .. }
            | Push::Unsubscribed { channel, .. } => channel,
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        match self {
            Push::Publication(p) => {
                write_publication(&mut out, &p.channel, p.offset, &p.epoch, p.data.get())
            }
            Push::Join { channel, client } => {
                write_presence(&mut out, channel, Presence::Join, client)
            }
            Push::Leave { channel, client } => {
                write_presence(&mut out, channel, Presence::Leave, client)
            }
            Push::Subscribed { .. } | Push::Unsubscribed { .. } => out = to_json(self),
        }
        out
    }
}

/// Appends a publication's wire form to `out`:
/// `{"channel":C,"offset":O,"epoch":E,"data":DATA}`.
///
/// `data` must be one JSON value (as [`crate::Request::Publish`] holds it, or as checked when
/// it was published): it is copied as is, not parsed again.
pub fn write_publication(out: &mut String, channel: &str, offset: u64, epoch: &str, data: &str) {
    out.reserve(channel.len() + epoch.len() + data.len() + 48);
    out.push_str("{\"channel\":");
    push_json_str(out, channel);
    out.push_str(",\"offset\":");
    out.push_str(&offset.to_string());
    out.push_str(",\"epoch\":");
    push_json_str(out, epoch);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
}

/// Appends a presence event's wire form to `out`: `{"channel":C,"join":CLIENT}` or
/// `{"channel":C,"leave":CLIENT}`.
pub fn write_presence(out: &mut String, channel: &str, kind: Presence, client: &ClientInfo) {
    out.push_str("{\"channel\":");
    push_json_str(out, channel);
    out.push_str(match kind {
        Presence::Join => ",\"join\":",
        Presence::Leave => ",\"leave\":",
    });
    out.push_str(&to_json(client));
    out.push('}');
}

/// Anything the server sends on `/ws`.
#[derive(Debug)]
pub enum ServerMessage {
    /// The answer to a request.
    Reply(Reply),
    /// A publication or presence event.
    Push(Push),
}

/// Why a server message could not be read.
#[derive(Debug, Clone)]
pub struct MessageError(String);

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MessageError {}

fn member<T: serde::de::DeserializeOwned>(
    raw: Option<&RawValue>,
    what: &str,
) -> Result<T, MessageError> {
    let raw = raw.ok_or_else(|| MessageError(format!("no {what}")))?;
    serde_json::from_str(raw.get()).map_err(|e| MessageError(format!("bad {what}: {e}")))
}

impl ServerMessage {
    /// The reply, if this is one.
    pub fn into_reply(self) -> Option<Reply> {
        match self {
            ServerMessage::Reply(r) => Some(r),
            ServerMessage::Push(_) => None,
        }
    }

    /// The push, if this is one.
    pub fn into_push(self) -> Option<Push> {
        match self {
            ServerMessage::Push(p) => Some(p),
            ServerMessage::Reply(_) => None,
        }
    }

    /// Reads one message from the server. A reply is anything with an `id`; it must have
    /// `"ok": true` and a `result`, or an `error`. A push has a `channel` and either an
    /// `offset` (a publication: `epoch` and `data` too), a `join`, a `leave`, a
    /// `subscribed` or an `unsubscribed`.
    pub fn parse(text: &str) -> Result<ServerMessage, MessageError> {
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(MessageError("not a JSON object".into()));
        }
        let m: Members<'_> =
            serde_json::from_str(text).map_err(|e| MessageError(format!("not JSON: {e}")))?;
        if let Some(id) = m.id {
            let id = RequestId::from(id.to_owned());
            let outcome = match (m.ok.map(RawValue::get), m.result, m.error) {
                (Some("true"), Some(result), _) => Ok(result.to_owned()),
                (_, _, Some(_)) => Err(member::<ErrorBody>(m.error, "error")?),
                _ => return Err(MessageError("a reply without result or error".into())),
            };
            return Ok(ServerMessage::Reply(Reply { id, outcome }));
        }
        let channel: String = member(m.channel, "channel")?;
        let push = if m.offset.is_some() {
            Push::Publication(Publication {
                channel,
                offset: member(m.offset, "offset")?,
                epoch: member(m.epoch, "epoch")?,
                data: m
                    .data
                    .ok_or_else(|| MessageError("no data".into()))?
                    .to_owned(),
            })
        } else if m.join.is_some() {
            Push::Join {
                channel,
                client: member(m.join, "join")?,
            }
        } else if m.leave.is_some() {
            Push::Leave {
                channel,
                client: member(m.leave, "leave")?,
            }
        } else if m.subscribed.is_some() {
            Push::Subscribed {
                channel,
                position: member(m.subscribed, "subscribed")?,
            }
        } else if m.unsubscribed.is_some() {
            Push::Unsubscribed {
                channel,
                empty: Empty {},
            }
        } else {
            return Err(MessageError("neither a reply nor a push".into()));
        };
        Ok(ServerMessage::Push(push))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::push;

    #[test]
    fn server_side_subscriptions_round_trip() {
        let sub = Push::Subscribed {
            channel: "news".into(),
            position: StreamPosition {
                offset: 7,
                epoch: "e1".into(),
            },
        };
        let text = sub.to_json();
        assert_eq!(
            text,
            r#"{"channel":"news","subscribed":{"offset":7,"epoch":"e1"}}"#
        );
        match push(&text) {
            Push::Subscribed { channel, position } => {
                assert_eq!((channel.as_str(), position.offset), ("news", 7));
            }
            other => panic!("{other:?}"),
        }
        let unsub = Push::Unsubscribed {
            channel: "news".into(),
            empty: Empty {},
        };
        assert_eq!(unsub.to_json(), r#"{"channel":"news","unsubscribed":{}}"#);
        assert!(matches!(push(&unsub.to_json()), Push::Unsubscribed { .. }));
    }

    #[test]
    fn publications_round_trip_with_raw_data() {
        let mut text = String::new();
        write_publication(
            &mut text,
            "chat:\"a\"",
            46,
            "7f3a",
            r#"{"text":"hi", "n": 1.50}"#,
        );
        assert_eq!(
            text,
            r#"{"channel":"chat:\"a\"","offset":46,"epoch":"7f3a","data":{"text":"hi", "n": 1.50}}"#
        );
        match push(&text) {
            Push::Publication(p) => {
                assert_eq!(
                    (p.channel.as_str(), p.offset, p.epoch.as_str()),
                    ("chat:\"a\"", 46, "7f3a")
                );
                assert_eq!(p.data.get(), r#"{"text":"hi", "n": 1.50}"#);
                assert_eq!(Push::Publication(p.clone()).to_json(), text);
                assert_eq!(serde_json::to_string(&p).unwrap(), text);
            }
            p => panic!("{p:?}"),
        }
        let p = push(r#"{"channel":"c","offset":1,"epoch":"e","data":null}"#);
        assert!(matches!(p, Push::Publication(ref p) if p.data.get() == "null"));
        assert_eq!(p.channel(), "c");
    }

    #[test]
    fn presence_events_round_trip() {
        let mut client = ClientInfo::new("c-77aa");
        client.user_id = Some("bob".into());
        for (kind, key) in [(Presence::Join, "join"), (Presence::Leave, "leave")] {
            let mut text = String::new();
            write_presence(&mut text, "chat:lobby", kind, &client);
            assert_eq!(
                text,
                format!(
                    r#"{{"channel":"chat:lobby","{key}":{{"client":"c-77aa","user":"bob","info":null}}}}"#
                )
            );
            let p = push(&text);
            assert_eq!(serde_json::to_string(&p).unwrap(), text);
            assert_eq!(p.to_json(), text);
            match (kind, p) {
                (Presence::Join, Push::Join { client: c, .. })
                | (Presence::Leave, Push::Leave { client: c, .. }) => assert_eq!(c, client),
                (_, p) => panic!("{p:?}"),
            }
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "[]",
            "nope",
            r#"{"channel":"c"}"#,
            r#"{"channel":"c","offset":"1","epoch":"e","data":1}"#,
            r#"{"channel":"c","offset":1,"data":1}"#,
            r#"{"channel":"c","offset":1,"epoch":"e"}"#,
            r#"{"channel":7,"offset":1,"epoch":"e","data":1}"#,
            r#"{"channel":"c","join":{"user":"u"}}"#,
            r#"{"offset":1,"epoch":"e","data":1}"#,
            r#"{"id":1}"#,
            r#"{"id":1,"ok":false,"result":{}}"#,
            r#"{"id":1,"error":{"message":"no code"}}"#,
        ] {
            assert!(ServerMessage::parse(bad).is_err(), "{bad}");
        }
    }
}
