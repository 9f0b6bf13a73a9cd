//! The server API for backends (docs/api.md): `POST /api/METHOD` with
//! `Authorization: apikey KEY` and a JSON object of parameters; the answer is the method's
//! JSON result (200), or `{"error":{"code":N,"message":M}}` with a 4xx or 5xx status and a
//! `tidewire.v1` error code. `GET /api/openapi.json` describes every method
//! (`openapi.json` beside this file), `GET /api/cluster` the cluster.
//!
//! Methods about connections (`disconnect`, `subscribe`, `unsubscribe`, `refresh`,
//! `block_user`, `revoke_tokens`) reach every node through `control`; the others go to the
//! node and its engine, like a client's requests.

use crate::channels::engine_code;
use crate::control::{Command, UserEvent};
use crate::engine::{HistoryQuery, StreamPosition};
use crate::hub::Hub;
use crate::metrics::Refusal;
use crate::node::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tidewire_hub_proto::{self as wire, CloseCode, ErrorCode};

/// The OpenAPI document of the server API.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// The most channels one `broadcast` publishes to, and commands one `batch` holds.
const MAX_FAN: usize = 1000;
/// `history` without a `limit`, and the largest `limit`.
const HISTORY_DEFAULT: usize = 100;
const HISTORY_MAX: usize = 10_000;
/// The longest user id the API takes, in characters.
const MAX_USER: usize = 256;
/// The longest close reason (a close frame's payload is at most 125 bytes, 2 of them the
/// code).
const MAX_REASON: usize = 123;

/// A failed call: its HTTP status, its `tidewire.v1` error code and what is wrong.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn engine(hub: &Hub, e: &crate::engine::Error) -> Self {
        let code = engine_code(&hub.metrics, e);
        let status = match code {
            ErrorCode::UNAVAILABLE | ErrorCode::LIMIT_REACHED => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"code": self.code.0, "message": self.message}})
    }

    pub(crate) fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{}\n", self.body()),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult = Result<Value, ApiError>;

/// `POST /api/{method}`.
pub(crate) async fn api_call(
    State(hub): State<Arc<Hub>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorize(&hub, &headers) {
        return *refused;
    }
    let result = match parse_object(&body) {
        Ok(params) => call(&hub, &method, params).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{v}\n"),
        )
            .into_response(),
        Err(e) => {
            if e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::NOT_FOUND {
                hub.metrics.refused(Refusal::ApiBadRequest);
            }
            e.into_response()
        }
    }
}

/// `GET /api/openapi.json`: the document (public: it holds no secret).
pub(crate) async fn api_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The request body: one JSON object (an empty body counts as `{}`).
pub(crate) fn parse_object(body: &[u8]) -> Result<&RawValue, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let raw: &RawValue = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(ApiError::bad("the body must be a JSON object"));
    }
    Ok(raw)
}

fn params<'a, T: Deserialize<'a>>(method: &str, raw: &'a RawValue) -> Result<T, ApiError> {
    serde_json::from_str(raw.get()).map_err(|e| ApiError::bad(format!("{method}: {e}")))
}

/// Runs one method (also the admin page's calls, `admin`).
pub(crate) async fn call(hub: &Arc<Hub>, method: &str, raw: &RawValue) -> ApiResult {
    match method {
        "publish" => publish(hub, params(method, raw)?).await,
        "broadcast" => broadcast(hub, params(method, raw)?).await,
        "subscribe" => subscribe(hub, params(method, raw)?, true).await,
        "unsubscribe" => subscribe(hub, params(method, raw)?, false).await,
        "disconnect" => disconnect(hub, params(method, raw)?).await,
        "refresh" => refresh(hub, params(method, raw)?).await,
        "presence" => presence(hub, params(method, raw)?, false).await,
        "presence_stats" => presence(hub, params(method, raw)?, true).await,
        "history" => history(hub, params(method, raw)?).await,
        "history_remove" => history_remove(hub, params(method, raw)?).await,
        "channels" => channels(hub, params(method, raw)?).await,
        "info" => {
            let _: NoParams = params(method, raw)?;
            info(hub).await
        }
        "block_user" => block(hub, params(method, raw)?).await,
        "unblock_user" => unblock(hub, params(method, raw)?).await,
        "revoke_tokens" => revoke(hub, params(method, raw)?).await,
        "batch" => Box::pin(batch(hub, params(method, raw)?)).await,
        _ => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::UNKNOWN_OP,
            message: format!(
                "unknown method {} (see /api/openapi.json)",
                crate::peer(method)
            ),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    channel: String,
    /// Kept as the bytes sent (checked, never expanded into a tree).
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn check_key(key: Option<&str>) -> Result<(), ApiError> {
    if key.is_some_and(|k| k.is_empty() || k.len() > wire::MAX_IDEMPOTENCY_KEY) {
        return Err(ApiError::bad("idempotency_key must be 1 to 128 bytes"));
    }
    Ok(())
}

async fn publish(hub: &Hub, p: Publish) -> ApiResult {
    check_key(p.idempotency_key.as_deref())?;
    let position = publish_one(hub, &p.channel, &p.data, p.idempotency_key.as_deref()).await?;
    Ok(json!(position))
}

async fn publish_one(
    hub: &Hub,
    channel: &str,
    data: &RawValue,
    key: Option<&str>,
) -> Result<StreamPosition, ApiError> {
    let start = Instant::now();
    let data = Json::from(data.to_owned());
    match hub.node.publish_once(channel, data, key).await {
        Ok(p) => {
            hub.metrics.publish_latency(start.elapsed());
            hub.metrics.publications.fetch_add(1, Ordering::Relaxed);
            Ok(p)
        }
        Err(e) => Err(ApiError::engine(hub, &e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    channels: Vec<String>,
    data: Box<RawValue>,
    /// Used on every channel (a key is per channel).
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// One payload to many channels: a result or an error per channel, in order.
async fn broadcast(hub: &Hub, b: Broadcast) -> ApiResult {
    if b.channels.is_empty() || b.channels.len() > MAX_FAN {
        return Err(ApiError::bad(format!(
            "broadcast: channels must hold 1 to {MAX_FAN} names"
        )));
    }
    check_key(b.idempotency_key.as_deref())?;
    let mut responses = Vec::with_capacity(b.channels.len());
    for channel in &b.channels {
        let key = b.idempotency_key.as_deref();
        responses.push(match publish_one(hub, channel, &b.data, key).await {
            Ok(p) => json!({"channel": channel, "offset": p.offset, "epoch": p.epoch}),
            Err(e) => json!({"channel": channel, "error": e.body()["error"]}),
        });
    }
    Ok(json!({ "responses": responses }))
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.chars().count() > MAX_USER {
        return Err(ApiError::bad(format!(
            "user must be 1 to {MAX_USER} characters"
        )));
    }
    Ok(())
}

fn check_channel(hub: &Hub, channel: &str) -> Result<(), ApiError> {
    hub.node
        .namespaces()
        .check(channel)
        .map(|_| ())
        .map_err(|e| ApiError::engine(hub, &e))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChannel {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

/// Server-side (un)subscription of every connection of a user, on every node.
async fn subscribe(hub: &Hub, p: UserChannel, on: bool) -> ApiResult {
    check_user(&p.user)?;
    check_channel(hub, &p.channel)?;
    let command = if on {
        Command::Subscribe {
            user: p.user,
            client: p.client,
            channel: p.channel,
        }
    } else {
        Command::Unsubscribe {
            user: p.user,
            client: p.client,
            channel: p.channel,
        }
    };
    send(hub, command).await
}

async fn send(hub: &Hub, command: Command) -> ApiResult {
    hub.control
        .send(command)
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

async fn disconnect(hub: &Hub, d: Disconnect) -> ApiResult {
    check_user(&d.user)?;
    let code = d.code.unwrap_or(CloseCode::DISCONNECTED.0);
    if !(4000..=4999).contains(&code) {
        return Err(ApiError::bad(
            "disconnect: code must be 4000-4499 (the client reconnects) or 4500-4999 (it does not)",
        ));
    }
    let reason = d
        .reason
        .unwrap_or_else(|| "disconnected by the server".to_owned());
    if reason.len() > MAX_REASON {
        return Err(ApiError::bad(format!(
            "disconnect: reason must be at most {MAX_REASON} bytes"
        )));
    }
    let command = Command::Disconnect {
        user: d.user,
        client: d.client,
        code,
        reason,
        recorded: None,
    };
    send(hub, command).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    user: String,
    #[serde(default)]
    client: Option<String>,
    /// Seconds since the Unix epoch; none: the connections no longer expire.
    #[serde(default)]
    expire_at: Option<u64>,
}

async fn refresh(hub: &Hub, r: Refresh) -> ApiResult {
    check_user(&r.user)?;
    let command = Command::Refresh {
        user: r.user,
        client: r.client,
        expire_at: r.expire_at,
    };
    send(hub, command).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnChannel {
    channel: String,
}

async fn presence(hub: &Hub, p: OnChannel, stats: bool) -> ApiResult {
    if stats {
        let s = hub
            .node
            .presence_stats(&p.channel)
            .await
            .map_err(|e| ApiError::engine(hub, &e))?;
        return Ok(json!({"clients": s.clients, "users": s.users}));
    }
    let clients = hub
        .node
        .presence(&p.channel)
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    Ok(json!({ "clients": clients }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    channel: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    since: Option<StreamPosition>,
}

/// The newest `limit` publications, or all of those after `since` (`complete: false`
/// when history no longer reaches back to it, or its epoch is not the channel's).
async fn history(hub: &Hub, h: History) -> ApiResult {
    let limit = h.limit.unwrap_or(HISTORY_DEFAULT);
    if limit > HISTORY_MAX {
        return Err(ApiError::bad(format!(
            "history: limit must be at most {HISTORY_MAX}"
        )));
    }
    let query = match h.since {
        Some(p) => HistoryQuery::Since(p),
        None => HistoryQuery::Newest(limit),
    };
    let page = hub
        .node
        .history_page(&h.channel, query)
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    let mut publications = Vec::with_capacity(page.publications.len());
    for p in &page.publications {
        let mut text = String::new();
        let data = std::str::from_utf8(&p.data).unwrap_or("null");
        wire::write_publication(&mut text, &h.channel, p.offset, &p.epoch, data);
        let v: Box<RawValue> = RawValue::from_string(text)
            .map_err(|e| ApiError::bad(format!("history: a stored publication: {e}")))?;
        publications.push(v);
    }
    Ok(json!({
        "offset": page.position.offset,
        "epoch": page.position.epoch,
        "complete": page.complete,
        "publications": publications,
    }))
}

async fn history_remove(hub: &Hub, p: OnChannel) -> ApiResult {
    hub.node
        .remove_history(&p.channel)
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Channels {
    #[serde(default)]
    pattern: Option<String>,
}

/// The channels with subscribers on any node, with their numbers of subscriptions.
async fn channels(hub: &Hub, c: Channels) -> ApiResult {
    if c.pattern.as_ref().is_some_and(|p| p.len() > 1024) {
        return Err(ApiError::bad(
            "channels: pattern must be at most 1024 bytes",
        ));
    }
    let all = hub
        .control
        .channels(c.pattern.as_deref())
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    let channels: serde_json::Map<String, Value> = all
        .into_iter()
        .map(|(name, n)| (name, json!({ "subscribers": n })))
        .collect();
    Ok(json!({ "channels": channels }))
}

/// The nodes of the cluster, as `GET /api/cluster` lists them.
async fn info(hub: &Hub) -> ApiResult {
    let broker = hub.node.broker();
    let mut nodes =
        match tokio::time::timeout(std::time::Duration::from_secs(3), broker.nodes()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(ApiError::engine(hub, &e)),
            Err(_) => {
                return Err(ApiError::engine(
                    hub,
                    &crate::engine::Error::timeout("nodes"),
                ))
            }
        };
    if !nodes.iter().any(|n| n.name == hub.node_name) {
        nodes.push(hub.status());
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(json!({ "nodes": nodes }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    user: String,
    /// Seconds since the Unix epoch; none: until unblocked.
    #[serde(default)]
    until: Option<u64>,
}

/// Blocks a user: recorded for every node, and its connections closed with 4501.
async fn block(hub: &Hub, b: Block) -> ApiResult {
    check_user(&b.user)?;
    let recorded = hub
        .control
        .record(UserEvent::Block {
            user: b.user.clone(),
            until: b.until,
        })
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    // The block goes with the close: a node applies it before it closes (so the user's
    // next upgrade there is refused even if `$users` reaches it later).
    let command = Command::Disconnect {
        user: b.user,
        client: None,
        code: CloseCode::BLOCKED.0,
        reason: "blocked".to_owned(),
        recorded: Some(recorded),
    };
    send(hub, command).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    user: String,
}

async fn unblock(hub: &Hub, u: User) -> ApiResult {
    check_user(&u.user)?;
    hub.control
        .record(UserEvent::Unblock { user: u.user })
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    user: String,
    /// Seconds since the Unix epoch; none: now.
    #[serde(default)]
    before: Option<u64>,
}

/// Refuses the user's tokens issued before a time, and closes its connections that use
/// one (4001: they reconnect with a new token).
async fn revoke(hub: &Hub, r: Revoke) -> ApiResult {
    check_user(&r.user)?;
    // By default every token issued up to now, this second included (`iat` is in whole
    // seconds: a token issued this second would otherwise survive).
    let before = r.before.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 1
    });
    let recorded = hub
        .control
        .record(UserEvent::Revoke {
            user: r.user.clone(),
            before,
        })
        .await
        .map_err(|e| ApiError::engine(hub, &e))?;
    send(
        hub,
        Command::Revoke {
            user: r.user,
            before,
            recorded: Some(recorded),
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    commands: Vec<BatchCommand<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchCommand<'a> {
    method: String,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

/// Several calls in one request, run in order; a reply per command, each a `result` or
/// an `error`.
async fn batch(hub: &Arc<Hub>, b: Batch<'_>) -> ApiResult {
    if b.commands.is_empty() || b.commands.len() > MAX_FAN {
        return Err(ApiError::bad(format!(
            "batch: commands must hold 1 to {MAX_FAN} commands"
        )));
    }
    let empty: &RawValue = serde_json::from_str("{}").map_err(|e| ApiError::bad(e.to_string()))?;
    let mut replies = Vec::with_capacity(b.commands.len());
    for c in &b.commands {
        let reply = if c.method == "batch" {
            Err(ApiError::bad("batch: a batch cannot hold a batch"))
        } else {
            let params = c.params.unwrap_or(empty);
            if params.get().starts_with('{') {
                call(hub, &c.method, params).await
            } else {
                Err(ApiError::bad("batch: params must be a JSON object"))
            }
        };
        replies.push(match reply {
            Ok(result) => json!({ "result": result }),
            Err(e) => e.body(),
        });
    }
    Ok(json!({ "replies": replies }))
}

/// `GET /api/cluster` with the API key: the nodes of the cluster (their connections,
/// subscriptions and channels), this node's name, and the engine's shards with their
/// health.
pub(crate) async fn api_cluster(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(&hub, &headers) {
        return *refused;
    }
    let nodes = match info(&hub).await {
        Ok(v) => v["nodes"].clone(),
        Err(e) => return e.into_response(),
    };
    let health = hub.node.broker().health();
    let body = json!({
        "node": hub.node_name,
        "engine": health.engine,
        "up": health.is_up(),
        "shards": health.shards,
        "nodes": nodes,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Checks `Authorization: apikey KEY`; the refusal to send otherwise.
pub(crate) fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let refuse = |status, message: &str| {
        hub.metrics.refused(Refusal::ApiAuth);
        let e = ApiError {
            status,
            code: ErrorCode::UNAUTHORIZED,
            message: message.to_owned(),
        };
        Err(Box::new(e.into_response()))
    };
    let Some(key) = &hub.config.api_key else {
        return refuse(
            StatusCode::FORBIDDEN,
            "the HTTP API is off: set api.key in the configuration",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized: send Authorization: apikey KEY",
        );
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_every_method() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for method in [
            "publish",
            "broadcast",
            "subscribe",
            "unsubscribe",
            "disconnect",
            "refresh",
            "presence",
            "presence_stats",
            "history",
            "history_remove",
            "channels",
            "info",
            "block_user",
            "unblock_user",
            "revoke_tokens",
            "batch",
        ] {
            assert!(
                paths.contains_key(&format!("/api/{method}")),
                "{method} is not in openapi.json"
            );
        }
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(parse_object(b"").is_ok());
        assert!(parse_object(b" {\"a\":1}").is_ok());
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{").is_err());
        assert!(parse_object(b"\"x\"").is_err());
    }
}
