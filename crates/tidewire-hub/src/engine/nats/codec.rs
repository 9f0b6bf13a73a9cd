//! Names and headers: how channels, clients and nodes become NATS subject tokens, and what
//! the headers of a stored or live message say.

use super::super::{Error, ErrorKind, Publication, StreamPosition, MAX_CHANNEL_LEN};
use async_nats::jetstream::message::StreamMessage;
use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::sync::Arc;

/// Stream of the channels' history: one subject per channel.
pub(super) const HISTORY_STREAM: &str = "TIDEWIRE";
/// Subjects of [`HISTORY_STREAM`]: `tw.h.<channel token>`.
pub(super) const HISTORY_PREFIX: &str = "tw.h.";
/// Live delivery (core NATS, not stored): `tw.live.<channel token>`.
pub(super) const LIVE_PREFIX: &str = "tw.live.";
/// Stream of presence entries: `tw.p.<channel token>.<instance token>.<client token>`.
pub(super) const PRESENCE_STREAM: &str = "TIDEWIRE_PRESENCE";
pub(super) const PRESENCE_PREFIX: &str = "tw.p.";
/// Stream of the node registry (`tw.n.live.<instance token>`, one message per subject) and
/// of reaping claims (`tw.n.reap.<instance token of the dead node>`).
pub(super) const NODES_STREAM: &str = "TIDEWIRE_NODES";
pub(super) const NODES_PREFIX: &str = "tw.n.";
pub(super) const REGISTRY_PREFIX: &str = "tw.n.live.";
pub(super) const CLAIM_PREFIX: &str = "tw.n.reap.";

/// Headers of a stored message and of a live publication.
pub(super) const H_KIND: &str = "Tw-Kind";
pub(super) const H_OFFSET: &str = "Tw-Offset";
pub(super) const H_EPOCH: &str = "Tw-Epoch";
/// The stream sequence of the channel's previous stored message (0: none).
pub(super) const H_PREV: &str = "Tw-Prev";
pub(super) const H_EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
pub(super) const H_MSG_ID: &str = "Nats-Msg-Id";

/// `Tw-Kind` values: a publication, a position marker (stored: a stream created at offset 0,
/// or history removed; no data), a join and a leave (live only).
pub(super) const KIND_PUBLICATION: &str = "p";
pub(super) const KIND_MARKER: &str = "m";
pub(super) const KIND_JOIN: &str = "j";
pub(super) const KIND_LEAVE: &str = "l";

/// Checks a channel name as the node does: not empty, at most [`MAX_CHANNEL_LEN`] bytes.
pub(super) fn check_channel(channel: &str) -> Result<(), Error> {
    if channel.is_empty() || channel.len() > MAX_CHANNEL_LEN {
        return Err(Error::new(ErrorKind::InvalidChannel));
    }
    Ok(())
}

/// A subject token for any string: base64url without padding (letters, digits, `-`, `_`:
/// never `.`, `*`, `>` or white space), `_` for the empty string (which no non-empty
/// string encodes to).
pub(super) fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The string a [`token`] stands for.
#[cfg(test)]
fn untoken(t: &str) -> Option<String> {
    if t == "_" {
        return Some(String::new());
    }
    let bytes = URL_SAFE_NO_PAD.decode(t).ok()?;
    String::from_utf8(bytes).ok()
}

pub(super) fn history_subject(channel: &str) -> String {
    format!("{HISTORY_PREFIX}{}", token(channel))
}

pub(super) fn live_subject(channel: &str) -> String {
    format!("{LIVE_PREFIX}{}", token(channel))
}

pub(super) fn presence_subject(channel: &str, instance: &str, client_id: &str) -> String {
    format!(
        "{PRESENCE_PREFIX}{}.{instance}.{}",
        token(channel),
        token(client_id)
    )
}

/// A new epoch: 64 random bits as 16 hex digits (the memory broker's form).
pub(super) fn new_epoch() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

/// What a stored message of a channel says.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    /// Its stream sequence.
    pub seq: u64,
    /// The sequence of the channel's message before it (0: none).
    pub prev: u64,
    pub offset: u64,
    pub epoch: Arc<str>,
    /// A publication (else a marker: nothing before it is history).
    pub publication: bool,
    pub data: bytes::Bytes,
    /// When the server stored it, in nanoseconds since the Unix epoch.
    pub time_ns: i128,
}

impl Stored {
    pub fn parse(m: StreamMessage) -> Result<Stored, Error> {
        Stored::from_parts(
            m.sequence,
            Some(&m.headers),
            m.payload,
            m.time.unix_timestamp_nanos(),
        )
    }

    /// From a message at stream sequence `seq`, stored at `time_ns` (nanoseconds since the
    /// Unix epoch).
    pub fn from_parts(
        seq: u64,
        headers: Option<&HeaderMap>,
        data: bytes::Bytes,
        time_ns: i128,
    ) -> Result<Stored, Error> {
        let headers = headers.ok_or_else(|| bad("stored message without headers"))?;
        let kind = header(headers, H_KIND).unwrap_or("");
        let offset = number(headers, H_OFFSET)?;
        let prev = number(headers, H_PREV)?;
        let epoch = header(headers, H_EPOCH).ok_or_else(|| bad("stored message without epoch"))?;
        Ok(Stored {
            seq,
            prev,
            offset,
            epoch: Arc::from(epoch),
            publication: kind == KIND_PUBLICATION,
            time_ns,
            data,
        })
    }

    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch.to_string(),
        }
    }

    pub fn to_publication(&self) -> Publication {
        Publication {
            offset: self.offset,
            epoch: self.epoch.clone(),
            data: self.data.clone(),
        }
    }
}

pub(super) fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

pub(super) fn number(h: &HeaderMap, name: &str) -> Result<u64, Error> {
    header(h, name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("message without a valid offset header"))
}

/// Something in NATS that this engine did not write (or a newer version did): not
/// temporary.
pub(super) fn bad(what: &'static str) -> Error {
    Error::backend(what, false)
}

/// A failure of the link or the server: may succeed if tried again.
pub(super) fn temporary(e: impl std::fmt::Display) -> Error {
    Error::backend(e.to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_subject_safe() {
        for s in ["", "a", "news:sport", "a.b.*.>", "with space", "ünï ✓", "_"] {
            let t = token(s);
            assert!(!t.is_empty());
            assert!(t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert_eq!(untoken(&t).as_deref(), Some(s));
        }
        assert_eq!(untoken("not base64!"), None);
        // The health probe's subject is no channel's.
        assert_eq!(untoken("_probe"), None);
    }

    #[test]
    fn channel_names_are_checked() {
        assert!(check_channel("").unwrap_err().is_invalid_channel());
        assert!(check_channel(&"x".repeat(MAX_CHANNEL_LEN + 1))
            .unwrap_err()
            .is_invalid_channel());
        assert!(check_channel("chat:1").is_ok());
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 16);
    }
}
