//! The server's answer to a request: `{"id":ID,"ok":true,"result":R}` or
//! `{"id":ID,"error":{"code":C,"message":M}}`, with the request's id as it came.
//!
//! The server writes replies with [`encode_ok`] and [`encode_error`]; results that carry
//! publications (`subscribe` with `since`, `history`) with [`encode_publications_result`],
//! which splices each publication's wire form as already encoded (once, for every
//! subscriber). Clients read a [`Reply`] (from [`crate::ServerMessage::parse`]) and its
//! result as one of the typed results below.

use crate::code::ErrorCode;
use crate::push::Publication;
use crate::request::RequestId;
use crate::{push_json_str, to_json, ClientInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `error` in an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The code ([`ErrorCode`]).
    pub code: ErrorCode,
    /// What went wrong, for people; not a stable API.
    #[serde(default)]
    pub message: String,
}

/// A reply as a client reads it.
#[derive(Debug)]
pub struct Reply {
    /// The request's id, as the client sent it.
    pub id: RequestId,
    /// `result` (raw; read it with [`Reply::result`]) or `error`.
    pub outcome: Result<Box<RawValue>, ErrorBody>,
}

impl Reply {
    /// The result read as `T` (one of the results below, [`crate::StreamPosition`] for
    /// `publish`, [`Empty`] for `unsubscribe` and `ping`). `Ok(None)` for an error reply.
    pub fn result<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        match &self.outcome {
            Ok(raw) => serde_json::from_str(raw.get()).map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// The result of `connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResult {
    /// This connection's id (as in presence).
    pub client: String,
    /// The token's `sub`; `None` without a token.
    #[serde(default)]
    pub user: Option<String>,
    /// The protocol version, `tidewire.v1`.
    #[serde(default)]
    pub version: String,
}

/// The result of `rpc`: the backend's answer.
#[derive(Debug, Serialize)]
pub struct RpcResult<'a> {
    /// Any one JSON value (`null` when the backend gave none).
    #[serde(borrow)]
    pub data: &'a serde_json::value::RawValue,
}

/// The result of `subscribe`: the channel's position, and with `since` whether the gap
/// was filled and the publications that fill it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// The channel's offset: the next publication has `offset + 1`.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: String,
    /// With `since` only: whether `publications` holds exactly what was missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With `since` only: the publications after `since.offset`, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publications: Option<Vec<Publication>>,
}

/// The result of `history`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryResult {
    /// The channel's offset (0 for a channel that does not exist).
    pub offset: u64,
    /// The channel's epoch (empty for a channel that does not exist).
    pub epoch: String,
    /// The newest publications, oldest first.
    pub publications: Vec<Publication>,
}

/// The result of `presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceResult {
    /// Who is subscribed.
    pub clients: Vec<ClientInfo>,
}

/// An empty result, `{}` (`unsubscribe`, `ping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `{"id":ID,"ok":true,"result":RESULT}`.
pub fn encode_ok<R: Serialize + ?Sized>(id: &RequestId, result: &R) -> String {
    let result = to_json(result);
    let mut out = String::with_capacity(result.len() + id.get().len() + 24);
    out.push_str("{\"id\":");
    out.push_str(id.get());
    out.push_str(",\"ok\":true,\"result\":");
    out.push_str(&result);
    out.push('}');
    out
}

/// `{"id":ID,"error":{"code":CODE,"message":MESSAGE}}`.
pub fn encode_error(id: &RequestId, code: ErrorCode, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + id.get().len() + 40);
    out.push_str("{\"id\":");
    out.push_str(id.get());
    out.push_str(",\"error\":{\"code\":");
    out.push_str(&code.0.to_string());
    out.push_str(",\"message\":");
    push_json_str(&mut out, message);
    out.push_str("}}");
    out
}

/// The reply of `history` (`recovered: None`) or of `subscribe` with `since`
/// (`recovered: Some(..)`): `{"offset":O,"epoch":E[,"recovered":B],"publications":[..]}`.
///
/// Each item of `publications` is a publication's wire form as
/// [`crate::write_publication`] wrote it, copied as is.
pub fn encode_publications_result<I, S>(
    id: &RequestId,
    offset: u64,
    epoch: &str,
    recovered: Option<bool>,
    publications: I,
) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::with_capacity(128);
    out.push_str("{\"id\":");
    out.push_str(id.get());
    out.push_str(",\"ok\":true,\"result\":{\"offset\":");
    out.push_str(&offset.to_string());
    out.push_str(",\"epoch\":");
    push_json_str(&mut out, epoch);
    if let Some(recovered) = recovered {
        out.push_str(if recovered {
            ",\"recovered\":true"
        } else {
            ",\"recovered\":false"
        });
    }
    out.push_str(",\"publications\":[");
    for (i, p) in publications.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p.as_ref());
    }
    out.push_str("]}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::reply;
    use crate::{write_publication, StreamPosition};

    #[test]
    fn ok_replies() {
        let id = RequestId::from(5);
        let position = StreamPosition {
            offset: 46,
            epoch: "7f".into(),
        };
        let text = encode_ok(&id, &position);
        assert_eq!(
            text,
            r#"{"id":5,"ok":true,"result":{"offset":46,"epoch":"7f"}}"#
        );
        let r = reply(&text);
        assert_eq!(r.id.as_u64(), Some(5));
        assert_eq!(r.result::<StreamPosition>().unwrap(), Some(position));

        let connect = ConnectResult {
            client: "c-1".into(),
            user: None,
            version: crate::PROTOCOL.into(),
        };
        let text = encode_ok(&id, &connect);
        assert_eq!(
            text,
            r#"{"id":5,"ok":true,"result":{"client":"c-1","user":null,"version":"tidewire.v1"}}"#
        );
        assert_eq!(
            reply(&text).result::<ConnectResult>().unwrap(),
            Some(connect)
        );

        let presence = PresenceResult {
            clients: vec![ClientInfo::new("c-1")],
        };
        let text = encode_ok(&id, &presence);
        assert_eq!(
            text,
            r#"{"id":5,"ok":true,"result":{"clients":[{"client":"c-1","user":null,"info":null}]}}"#
        );
        assert_eq!(
            reply(&text).result::<PresenceResult>().unwrap(),
            Some(presence)
        );
        assert_eq!(
            encode_ok(&RequestId::null(), &Empty {}),
            r#"{"id":null,"ok":true,"result":{}}"#
        );
    }

    #[test]
    fn error_replies() {
        let text = encode_error(
            &RequestId::from(7),
            ErrorCode::PERMISSION_DENIED,
            "no \"way\"\n",
        );
        assert_eq!(
            text,
            r#"{"id":7,"error":{"code":104,"message":"no \"way\"\n"}}"#
        );
        let r = reply(&text);
        assert_eq!(
            r.outcome.unwrap_err(),
            ErrorBody {
                code: ErrorCode::PERMISSION_DENIED,
                message: "no \"way\"\n".into()
            }
        );
        let r = reply(&text);
        assert_eq!(r.result::<Empty>().unwrap(), None);
    }

    #[test]
    fn publication_results_splice_encoded_publications() {
        let mut pubs = Vec::new();
        for offset in [42, 43] {
            let mut p = String::new();
            write_publication(&mut p, "chat:lobby", offset, "7f", r#"{"text":"hi"}"#);
            pubs.push(p);
        }
        let id = RequestId::from(3);
        let text = encode_publications_result(&id, 43, "7f", Some(true), &pubs);
        assert_eq!(
            text,
            concat!(
                r#"{"id":3,"ok":true,"result":{"offset":43,"epoch":"7f","recovered":true,"publications":["#,
                r#"{"channel":"chat:lobby","offset":42,"epoch":"7f","data":{"text":"hi"}},"#,
                r#"{"channel":"chat:lobby","offset":43,"epoch":"7f","data":{"text":"hi"}}]}}"#
            )
        );
        let result: SubscribeResult = reply(&text).result().unwrap().unwrap();
        assert_eq!((result.offset, result.recovered), (43, Some(true)));
        let got: Vec<u64> = result
            .publications
            .unwrap()
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(got, [42, 43]);

        let text = encode_publications_result(&id, 9, "e", Some(false), Vec::<String>::new());
        let result: SubscribeResult = reply(&text).result().unwrap().unwrap();
        assert_eq!(result.recovered, Some(false));
        assert!(result.publications.unwrap().is_empty());

        // history: no `recovered`.
        let text = encode_publications_result(&id, 0, "", None, &pubs[..1]);
        assert!(!text.contains("recovered"));
        let result: HistoryResult = reply(&text).result().unwrap().unwrap();
        assert_eq!((result.offset, result.epoch.as_str()), (0, ""));
        assert_eq!(result.publications[0].data.get(), r#"{"text":"hi"}"#);

        // A plain subscribe result has neither.
        let result: SubscribeResult =
            reply(r#"{"id":2,"ok":true,"result":{"offset":41,"epoch":"7f"}}"#)
                .result()
                .unwrap()
                .unwrap();
        assert!(result.recovered.is_none() && result.publications.is_none());
    }
}
