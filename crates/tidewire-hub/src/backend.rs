//! Calls to the application backend (`[backend]`, docs/backend.md): the hub asks it who a
//! connection is (`connect`, from the handshake's cookies and headers), whether a client may
//! subscribe or publish (and what to publish), and forwards clients' `rpc` requests to it.
//!
//! Each call is a JSON POST to `URL/CALL`; the backend answers 200 with `{"result": ...}`
//! or `{"error": {"code"?, "message"}}`. An answer that is not that (another status, not
//! JSON, too slow, no connection) is the backend being unavailable: the client gets error
//! 112 (retryable) with what went wrong, never a hang. How the call travels is a
//! [`Transport`] (HTTP here; the seam for gRPC).

use crate::config::BackendConfig;
use crate::http_client;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tidewire_hub_proto::ErrorCode;

/// Largest answer taken from the backend.
const MAX_ANSWER: usize = 1 << 20;

/// The calls, in the order of the metrics' arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Connect,
    Subscribe,
    Publish,
    Rpc,
    Events,
}

impl Call {
    pub(crate) const ALL: [Call; 5] = [
        Call::Connect,
        Call::Subscribe,
        Call::Publish,
        Call::Rpc,
        Call::Events,
    ];

    /// The path under the backend's URL, and the `call` label of the metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Call::Connect => "connect",
            Call::Subscribe => "subscribe",
            Call::Publish => "publish",
            Call::Rpc => "rpc",
            Call::Events => "events",
        }
    }
}

/// How a call turned out (the `outcome` label): allowed, denied by the backend, or failed
/// (the backend unavailable, slow, or answering outside the protocol).
#[derive(Debug, Default)]
pub(crate) struct CallStats {
    pub(crate) allowed: [AtomicU64; 5],
    pub(crate) denied: [AtomicU64; 5],
    pub(crate) failed: [AtomicU64; 5],
    pub(crate) nanos: [AtomicU64; 5],
}

/// Why a call did not give a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The backend said no: its `message`, and its `code` when it gave one.
    Denied { code: Option<u32>, message: String },
    /// The backend could not be asked, did not answer in time, or answered outside the
    /// protocol: what went wrong, for people.
    Unavailable(String),
}

impl Failure {
    /// The `tidewire.v1` error for the client: a denial keeps the backend's code when it is
    /// an application's (1000 or more), 104 otherwise; unavailable is 112.
    pub(crate) fn error(&self) -> (ErrorCode, String) {
        match self {
            Failure::Denied { code, message } => (
                ErrorCode(code.filter(|c| *c >= 1000).unwrap_or(104)),
                message.clone(),
            ),
            Failure::Unavailable(why) => (
                ErrorCode::UNAVAILABLE,
                format!("backend unavailable: {why}"),
            ),
        }
    }
}

/// Boxed future of a transport.
pub(crate) type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + 'a>>;

/// How a call reaches the backend: the JSON body out, the JSON answer back.
pub(crate) trait Transport: Send + Sync + fmt::Debug + 'static {
    fn call(&self, call: Call, body: Bytes) -> CallFuture<'_>;
}

/// JSON over HTTP: `POST URL/CALL`, connections kept alive.
#[derive(Debug)]
pub(crate) struct Http {
    base: String,
    timeout: Duration,
    pool: http_client::Pool,
}

impl Http {
    pub(crate) fn new(base: &str, timeout: Duration) -> Http {
        Http {
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            pool: http_client::Pool::default(),
        }
    }
}

impl Transport for Http {
    fn call(&self, call: Call, body: Bytes) -> CallFuture<'_> {
        Box::pin(async move {
            let url = format!("{}/{}", self.base, call.name());
            let req = http_client::Request {
                method: http::Method::POST,
                url: &url,
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                )],
                body: Some(body),
                timeout: self.timeout,
                max_body: MAX_ANSWER,
            };
            let r = self
                .pool
                .send(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if r.status != 200 {
                return Err(format!("{url} answered HTTP {}", r.status));
            }
            Ok(r.body)
        })
    }
}

/// A connection's handshake headers for the connect call (boxed in the connection, which
/// most often has none).
#[derive(Debug)]
pub(crate) struct Handshake(pub(crate) Vec<(String, String)>);

/// The backend as the connections see it.
#[derive(Debug)]
pub(crate) struct Backend {
    transport: Box<dyn Transport>,
    /// Handshake headers forwarded in the connect call.
    pub(crate) headers: Vec<http::HeaderName>,
    pub(crate) connect: bool,
    pub(crate) stats: CallStats,
}

/// The backend's answer: a result or an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer<T> {
    result: Option<T>,
    error: Option<Denial>,
}

#[derive(Deserialize)]
struct Denial {
    code: Option<u32>,
    #[serde(default)]
    message: String,
}

/// What the connect call sends.
#[derive(Serialize)]
pub(crate) struct ConnectCall<'a> {
    pub(crate) client: &'a str,
    pub(crate) transport: &'static str,
    pub(crate) protocol: &'static str,
    /// The forwarded handshake headers: lower-case name → value (a repeated header's
    /// values joined with `, `, cookies with `; `).
    pub(crate) headers: std::collections::BTreeMap<&'a str, String>,
    /// The `info` the client sent in `connect`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) info: Option<&'a Value>,
}

/// Who the backend says the connection is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectAnswer {
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) info: Option<Value>,
    /// Channels the connection is subscribed to at once (server-side).
    #[serde(default)]
    pub(crate) channels: Vec<String>,
    /// Channel patterns of private namespaces it may use (as a token's `channels`).
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    /// Seconds since the Unix epoch when the connection expires (close 4001).
    #[serde(default)]
    pub(crate) expire_at: Option<u64>,
}

/// What the subscribe and publish calls send.
#[derive(Serialize)]
pub(crate) struct ChannelCall<'a> {
    pub(crate) client: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a RawValue>,
}

/// What the rpc call sends.
#[derive(Serialize)]
pub(crate) struct RpcCall<'a> {
    pub(crate) client: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) data: &'a RawValue,
}

/// A result with optional `data` (publish: the rewritten data; rpc: the answer).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataResult {
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

impl Backend {
    pub(crate) fn from_config(config: &BackendConfig) -> Option<Backend> {
        let url = config.url.as_deref()?;
        Some(Backend::new(
            Box::new(Http::new(url, config.timeout)),
            config,
        ))
    }

    pub(crate) fn new(transport: Box<dyn Transport>, config: &BackendConfig) -> Backend {
        Backend {
            transport,
            headers: config
                .headers
                .iter()
                .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            connect: config.connect,
            stats: CallStats::default(),
        }
    }

    /// The handshake's headers to forward in the connect call.
    pub(crate) fn forwarded(&self, headers: &http::HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for name in &self.headers {
            for v in headers.get_all(name) {
                if let Ok(v) = v.to_str() {
                    out.push((name.as_str().to_owned(), v.to_owned()));
                }
            }
        }
        out
    }

    /// [`Backend::forwarded`]'s pairs as the connect call sends them.
    pub(crate) fn header_map(
        pairs: &[(String, String)],
    ) -> std::collections::BTreeMap<&str, String> {
        let mut out: std::collections::BTreeMap<&str, String> = Default::default();
        for (name, value) in pairs {
            let sep = if name == "cookie" { "; " } else { ", " };
            out.entry(name.as_str())
                .and_modify(|v| {
                    v.push_str(sep);
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        out
    }

    /// Makes `call` with `body` and reads its result.
    pub(crate) async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        body: &impl Serialize,
    ) -> Result<T, Failure> {
        let i = call as usize;
        let started = Instant::now();
        let outcome = self.ask_inner(call, body).await;
        self.stats.nanos[i].fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        let counter = match &outcome {
            Ok(_) => &self.stats.allowed[i],
            Err(Failure::Denied { .. }) => &self.stats.denied[i],
            Err(Failure::Unavailable(why)) => {
                tracing::warn!(call = call.name(), "backend: {why}");
                &self.stats.failed[i]
            }
        };
        counter.fetch_add(1, Relaxed);
        outcome
    }

    /// Sends `body` as is (the events call): Ok when the backend answered 200.
    pub(crate) async fn send_raw(&self, call: Call, body: Vec<u8>) -> Result<(), String> {
        let i = call as usize;
        let started = Instant::now();
        let outcome = self.transport.call(call, Bytes::from(body)).await.map(drop);
        self.stats.nanos[i].fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        match &outcome {
            Ok(()) => &self.stats.allowed[i],
            Err(_) => &self.stats.failed[i],
        }
        .fetch_add(1, Relaxed);
        outcome
    }

    async fn ask_inner<T: serde::de::DeserializeOwned>(
        &self,
        call: Call,
        body: &impl Serialize,
    ) -> Result<T, Failure> {
        let body = serde_json::to_vec(body)
            .map_err(|e| Failure::Unavailable(format!("cannot encode the call: {e}")))?;
        let answer = self
            .transport
            .call(call, Bytes::from(body))
            .await
            .map_err(Failure::Unavailable)?;
        read_answer(call, &answer)
    }
}

/// Reads `{"result": T}` or `{"error": {...}}`.
fn read_answer<T: serde::de::DeserializeOwned>(call: Call, body: &[u8]) -> Result<T, Failure> {
    let outside = |why: String| {
        Failure::Unavailable(format!(
            "the {} call's answer is not {{\"result\": ...}} or {{\"error\": {{\"message\": ...}}}}: {why}",
            call.name()
        ))
    };
    let answer: Answer<T> = serde_json::from_slice(body).map_err(|e| outside(e.to_string()))?;
    match (answer.result, answer.error) {
        (_, Some(d)) => Err(Failure::Denied {
            code: d.code,
            message: if d.message.is_empty() {
                format!("denied by the backend's {} call", call.name())
            } else {
                d.message
            },
        }),
        (Some(r), None) => Ok(r),
        (None, None) => Err(outside("neither result nor error".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        let r: DataResult = read_answer(Call::Publish, br#"{"result":{"data":{"x":1}}}"#).unwrap();
        assert_eq!(r.data.unwrap().get(), r#"{"x":1}"#);
        let r: DataResult = read_answer(Call::Publish, br#"{"result":{}}"#).unwrap();
        assert!(r.data.is_none());
        let e =
            read_answer::<DataResult>(Call::Publish, br#"{"error":{"message":"no"}}"#).unwrap_err();
        assert_eq!(
            e,
            Failure::Denied {
                code: None,
                message: "no".into()
            }
        );
        assert_eq!(e.error().0, ErrorCode(104));
        let e = read_answer::<DataResult>(Call::Rpc, br#"{"error":{"code":1403,"message":""}}"#)
            .unwrap_err();
        assert_eq!(
            e.error(),
            (ErrorCode(1403), "denied by the backend's rpc call".into())
        );
        // A code of the protocol's own range is not the backend's to give.
        let e = read_answer::<DataResult>(Call::Rpc, br#"{"error":{"code":109,"message":"x"}}"#)
            .unwrap_err();
        assert_eq!(e.error().0, ErrorCode(104));
        for bad in [&b"nope"[..], b"{}", b"[]", br#"{"result":{},"extra":1}"#] {
            let e = read_answer::<DataResult>(Call::Subscribe, bad).unwrap_err();
            assert!(
                matches!(&e, Failure::Unavailable(m) if m.contains("subscribe call")),
                "{e:?}"
            );
            assert_eq!(e.error().0, ErrorCode::UNAVAILABLE);
        }
        let c: ConnectAnswer = read_answer(
            Call::Connect,
            br#"{"result":{"user":"ann","channels":["user:ann"],"expire_at":5}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.user.as_str(), c.channels.len(), c.expire_at),
            ("ann", 1, Some(5))
        );
    }
}
