//! What a node delivers to its subscribers: an [`Event`] on a channel, shared by all of them
//! and encoded once for all.

use crate::engine::{ClientInfo, Error, ErrorKind, Publication};
use bytes::Bytes;
use std::fmt;
use std::sync::{Arc, OnceLock};
use tidewire::{Message, PreparedMessage};
use tidewire_hub_proto as wire;

/// What happened on a channel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A publication. `data` is one JSON value (checked by the node before publishing).
    Publication {
        /// Its offset in the channel.
        offset: u64,
        /// The epoch of the channel's history.
        epoch: Arc<str>,
        /// The JSON value published, as UTF-8 bytes.
        data: Bytes,
    },
    /// A client joined the channel's presence.
    Join(ClientInfo),
    /// A client left the channel's presence.
    Leave(ClientInfo),
}

/// An event on a channel, shared by every subscriber as `Arc<Event>`.
///
/// Its wire form is serialized and framed at most once, on first use by any connection
/// ([`Event::prepared`]); history keeps the same `Arc`, so recovered publications reuse it.
pub struct Event {
    channel: Arc<str>,
    kind: EventKind,
    prepared: OnceLock<Option<PreparedMessage>>,
}

impl Event {
    /// A publication of `channel`.
    pub fn publication(channel: Arc<str>, p: Publication) -> Self {
        Event::new(
            channel,
            EventKind::Publication {
                offset: p.offset,
                epoch: p.epoch,
                data: p.data,
            },
        )
    }

    /// A new event on `channel`.
    pub fn new(channel: Arc<str>, kind: EventKind) -> Self {
        Event {
            channel,
            kind,
            prepared: OnceLock::new(),
        }
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// What happened.
    pub fn kind(&self) -> &EventKind {
        &self.kind
    }

    /// The offset, for a publication.
    pub fn offset(&self) -> Option<u64> {
        match &self.kind {
            EventKind::Publication { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The wire form: `{"channel":C,"offset":O,"epoch":E,"data":ANY}`,
    /// `{"channel":C,"join":{CLIENT}}` or `{"channel":C,"leave":{CLIENT}}`, where CLIENT is
    /// `{"client":..,"user":..,"info":..}` (`null` for an absent user or info).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        match &self.kind {
            EventKind::Publication {
                offset,
                epoch,
                data,
            } => {
                // Checked to be one JSON value in UTF-8 when it was published.
                let data = std::str::from_utf8(data).unwrap_or("null");
                wire::write_publication(&mut s, &self.channel, *offset, epoch, data);
            }
            EventKind::Join(client) => {
                wire::write_presence(&mut s, &self.channel, wire::Presence::Join, client)
            }
            EventKind::Leave(client) => {
                wire::write_presence(&mut s, &self.channel, wire::Presence::Leave, client)
            }
        }
        s
    }

    /// [`Event::to_json`] as a text message framed (and compressed) once for every
    /// connection: pass it to `send_prepared`. Built on first call; always `Some` (the
    /// `Option` is [`PreparedMessage::new`]'s, which refuses control messages only).
    pub fn prepared(&self) -> Option<&PreparedMessage> {
        self.prepared
            .get_or_init(|| PreparedMessage::new(Message::text(self.to_json())))
            .as_ref()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// One JSON value in UTF-8, checked: what a node publishes, spliced into
/// [`Event::to_json`] as is. Parsed once ([`Json::parse`]) or taken from serde_json's raw
/// value, which is checked when it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(Bytes);

impl Json {
    /// Checks `data`; fails with [`Error::is_invalid_data`] unless it is one JSON value in
    /// UTF-8.
    pub fn parse(data: impl Into<Bytes>) -> Result<Json, Error> {
        let data = data.into();
        if std::str::from_utf8(&data).is_err()
            || serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_err()
        {
            return Err(Error::new(ErrorKind::InvalidData));
        }
        Ok(Json(data))
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<Box<serde_json::value::RawValue>> for Json {
    fn from(raw: Box<serde_json::value::RawValue>) -> Self {
        // A RawValue is one JSON value, checked when it was deserialized.
        let s: Box<str> = raw.into();
        Json(Bytes::from(String::from(s)))
    }
}

impl From<&serde_json::Value> for Json {
    fn from(v: &serde_json::Value) -> Self {
        Json(Bytes::from(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_forms() {
        let ch: Arc<str> = Arc::from("chat:\"a\"");
        let publication = Event::new(
            ch.clone(),
            EventKind::Publication {
                offset: 7,
                epoch: Arc::from("e1"),
                data: Bytes::from_static(br#"{"text":"hi"}"#),
            },
        );
        assert_eq!(
            publication.to_json(),
            r#"{"channel":"chat:\"a\"","offset":7,"epoch":"e1","data":{"text":"hi"}}"#
        );
        let prepared = publication.prepared().map(|p| p.payload().clone());
        assert_eq!(prepared.as_deref(), Some(publication.to_json().as_bytes()));

        let mut client = ClientInfo::new("c1");
        client.user_id = Some("u1".into());
        let join = Event::new(ch.clone(), EventKind::Join(client.clone()));
        assert_eq!(
            join.to_json(),
            r#"{"channel":"chat:\"a\"","join":{"client":"c1","user":"u1","info":null}}"#
        );
        client.info = Some(serde_json::json!({"name": "Ann"}));
        let leave = Event::new(ch, EventKind::Leave(client));
        assert_eq!(
            leave.to_json(),
            r#"{"channel":"chat:\"a\"","leave":{"client":"c1","user":"u1","info":{"name":"Ann"}}}"#
        );
        for ev in [&publication, &join, &leave] {
            assert!(serde_json::from_str::<serde_json::Value>(&ev.to_json()).is_ok());
        }
    }

    #[test]
    fn data_must_be_json() {
        assert!(Json::parse(&br#"{"a":[1,2]}"#[..]).is_ok());
        assert!(Json::parse(&b"\"text\""[..]).is_ok());
        assert!(Json::parse(&b"12"[..]).is_ok());
        for bad in [&b""[..], b"{", b"1 2", b"\"\xff\"", b"nope"] {
            assert!(Json::parse(bad.to_vec()).unwrap_err().is_invalid_data());
        }
    }
}
