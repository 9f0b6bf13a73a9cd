//! The HTTP API for backends: `POST /api/publish` with `Authorization: apikey KEY`.

use crate::hub::Hub;
use crate::metrics::Refusal;
use crate::node::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize)]
struct ApiPublish {
    channel: String,
    /// Kept as the bytes sent (checked, never expanded into a tree).
    data: Box<serde_json::value::RawValue>,
    /// Publishes at most once (docs/protocol.md, `publish`).
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `POST /api/publish` with `Authorization: apikey KEY` and `{"channel":C,"data":ANY}`:
/// publishes from a backend (price feeds, notifications). Answers `{"offset","epoch"}`.
pub(crate) async fn api_publish(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorize(&hub, &headers) {
        return refused;
    }
    let req: ApiPublish = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            hub.metrics.refused(Refusal::ApiBadRequest);
            return (
                StatusCode::BAD_REQUEST,
                format!("bad request: expected {{\"channel\":C,\"data\":ANY}}: {e}\n"),
            )
                .into_response();
        }
    };
    let key = req.idempotency_key.as_deref();
    if key.is_some_and(|k| k.is_empty() || k.len() > tidewire_hub_proto::MAX_IDEMPOTENCY_KEY) {
        hub.metrics.refused(Refusal::ApiBadRequest);
        return (
            StatusCode::BAD_REQUEST,
            "bad request: idempotency_key must be 1 to 128 bytes\n",
        )
            .into_response();
    }
    let start = Instant::now();
    match hub
        .node
        .publish_once(&req.channel, Json::from(req.data), key)
        .await
    {
        Ok(p) => {
            hub.metrics.publish_latency(start.elapsed());
            hub.metrics.publications.fetch_add(1, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, "application/json")],
                // The `publish` result of tidewire.v1: `{"offset":O,"epoch":E}`.
                serde_json::to_string(&p).unwrap_or_default(),
            )
                .into_response()
        }
        // The server holds as many channels as it may: not the request's fault.
        Err(e) if e.is_too_many_channels() => {
            hub.metrics.refused(Refusal::MaxChannels);
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
        // The engine is down or slow: retry (with the same idempotency_key).
        Err(e) if e.is_temporary() => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("temporarily unavailable, retry with the same idempotency_key: {e}\n"),
        )
            .into_response(),
        Err(e) => {
            hub.metrics.refused(Refusal::ApiBadRequest);
            (StatusCode::BAD_REQUEST, format!("bad request: {e}\n")).into_response()
        }
    }
}

/// Checks `Authorization: apikey KEY`; the refusal to send otherwise.
// The refusal is sent as it is, once per refused request: not worth a box.
#[allow(clippy::result_large_err)]
pub(crate) fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), Response> {
    let Some(key) = &hub.config.api_key else {
        hub.metrics.refused(Refusal::ApiAuth);
        return Err((
            StatusCode::FORBIDDEN,
            "the HTTP API is off: set api.key in the configuration\n",
        )
            .into_response());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        hub.metrics.refused(Refusal::ApiAuth);
        return Err((
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: apikey KEY\n",
        )
            .into_response());
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
