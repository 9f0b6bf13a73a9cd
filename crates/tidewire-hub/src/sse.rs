//! The `tidewire.v1` subscription side for networks that break WebSocket: Server-Sent
//! Events at `GET /sse?channel=C[&token=JWT]` (docs/protocol.md, "Server-Sent Events").
//!
//! Each publication is an event whose `id` is `OFFSET:EPOCH` and whose data is the
//! publication as `/ws` pushes it; a browser's `EventSource` reconnects by itself and
//! sends the last id as `Last-Event-ID`, from which the subscription resumes exactly as a
//! `subscribe` with `since` does (no gap, no duplicate; `recovered: false` when history no
//! longer reaches back). The first event, `subscribed`, carries the channel's position as its
//! id too, so a reconnect before any publication resumes from there. Admission (origin,
//! token, capacity), channel rules (namespaces, private channels, `NAME#users`, the
//! backend's subscribe call) and hooks are those of `/ws`; a comment every 15 s keeps
//! proxies from closing a quiet stream. A subscriber that falls `send_queue` events behind
//! has its stream ended (it reconnects with `Last-Event-ID`).

use crate::admission::{admit, query_param, Admitted, Endpoint};
use crate::backend::{Call, ChannelCall};
use crate::channels::channel_access;
use crate::engine::{ClientInfo, StreamPosition};
use crate::hub::Hub;
use crate::log_text::peer;
use crate::node::{EventKind, Outbox};
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A comment this often keeps a quiet stream open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The HTTP status of a refusal with `tidewire.v1` error `code`, as the server API gives
/// them: 400 for a bad request or a channel that cannot exist, 403 for one not this
/// client's (or the backend's denial), 503 when the engine or the backend is unavailable
/// or the server is full, 500 for an engine failure.
fn status_of(code: tidewire_hub_proto::ErrorCode) -> StatusCode {
    use tidewire_hub_proto::ErrorCode as E;
    match code {
        E::UNKNOWN_CHANNEL | E::BAD_REQUEST | E::NOT_AVAILABLE => StatusCode::BAD_REQUEST,
        E::UNAVAILABLE | E::LIMIT_REACHED => StatusCode::SERVICE_UNAVAILABLE,
        E::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::FORBIDDEN,
    }
}

fn refused(status: StatusCode, why: impl Into<String>) -> Response {
    (status, format!("{}\n", why.into())).into_response()
}

/// `OFFSET:EPOCH`, as the stream's event ids are.
fn parse_position(s: &str) -> Option<StreamPosition> {
    let (offset, epoch) = s.trim().split_once(':')?;
    Some(StreamPosition {
        offset: offset.parse().ok()?,
        epoch: epoch.to_owned(),
    })
}

pub(crate) async fn sse(
    State(hub): State<Arc<Hub>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.as_deref();
    if let (Some(auth), Some(token)) = (&hub.config.auth, query_param(query, "token")) {
        auth.refresh_for(&token).await;
    }
    let Admitted { slot, identity } = match admit(&hub, Endpoint::Channels, &headers, query, true) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let Some(channel) = query_param(query, "channel").filter(|c| !c.is_empty()) else {
        return refused(StatusCode::BAD_REQUEST, "missing ?channel=NAME");
    };
    if let Err((code, why)) = channel_access(&hub, identity.as_ref(), &channel) {
        return refused(status_of(code), format!("{}: {why}", peer(&channel)));
    }
    // Where to resume from: the EventSource's Last-Event-ID, or ?since=OFFSET:EPOCH.
    let since_text = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(query, "since"));
    let since = match since_text.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match parse_position(text) {
            Some(p) => Some(p),
            None => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID or since {text:?} is not OFFSET:EPOCH"),
                )
            }
        },
    };
    let client_id = hub.next_client_id();
    let user = identity.as_ref().map(|i| i.user.clone());
    let ns = hub.node.namespaces().for_channel(&channel).cloned();
    if let (Some(backend), true) = (&hub.backend, ns.is_some_and(|n| n.subscribe_proxy)) {
        let call = ChannelCall {
            client: &client_id,
            user: user.as_deref(),
            channel: &channel,
            data: None,
        };
        if let Err(f) = backend
            .ask::<crate::backend::DataResult>(Call::Subscribe, &call)
            .await
        {
            let (code, message) = f.error();
            return refused(status_of(code), message);
        }
    }
    let mut info = ClientInfo::new(client_id.clone());
    info.user_id = user.clone();
    info.info = identity.as_ref().and_then(|i| i.info.clone());
    let client = Arc::new(info);
    let outbox = Outbox::new(hub.config.send_queue);
    let asked = since.is_some();
    let mut sub = match hub
        .node
        .subscribe(&channel, client.clone(), since, outbox.sender())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let code = crate::channels::engine_code(&hub.metrics, &e);
            return refused(status_of(code), format!("{}: {e}", peer(&channel)));
        }
    };
    hub.subscribers.fetch_add(1, Ordering::Relaxed);
    if let Some(hooks) = &hub.hooks {
        hooks.connected(&client_id, user.as_deref());
        hooks.subscribed(&client_id, &channel);
    }
    let mut first = String::from("retry: 1000\n");
    let recovered = asked.then(|| sub.recovered());
    let head = serde_json::json!({
        "channel": channel,
        "client": client_id,
        "offset": sub.position.offset,
        "epoch": sub.position.epoch,
        "recovered": recovered,
    });
    first.push_str(&format!(
        "id: {}:{}\nevent: subscribed\ndata: {head}\n\n",
        sub.position.offset, sub.position.epoch
    ));
    for event in sub.take_recovered() {
        first.push_str(&frame(&event));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let _ = tx.try_send(Bytes::from(first));
    let subscription = sub.subscription;
    let hub2 = hub.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut shutdown = hub2.shutdown.clone();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                event = outbox.recv() => match event {
                    Ok((_, event)) => frame(&event),
                    // Fell behind: the stream ends, the client resumes with Last-Event-ID.
                    Err(_) => break,
                },
                _ = keepalive.tick() => ": keepalive\n\n".to_owned(),
                _ = tx.closed() => break,
                _ = shutdown.changed() => break,
            };
            hub2.metrics.sent(1, chunk.len() as u64);
            if tx.send(Bytes::from(chunk)).await.is_err() {
                break;
            }
        }
        hub2.subscribers.fetch_sub(1, Ordering::Relaxed);
        hub2.node.unsubscribe(subscription, &client).await;
        if let Some(hooks) = &hub2.hooks {
            hooks.disconnected(&client.client_id);
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    }));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// One event of the stream: a publication with its position as the id (the default event
/// type, `message`), or `join` / `leave`.
fn frame(event: &crate::node::Event) -> String {
    let json = event.to_json();
    match event.kind() {
        EventKind::Publication { offset, epoch, .. } => {
            format!("id: {offset}:{epoch}\ndata: {json}\n\n")
        }
        EventKind::Join(_) => format!("event: join\ndata: {json}\n\n"),
        EventKind::Leave(_) => format!("event: leave\ndata: {json}\n\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_as_event_ids_write_them() {
        let p = parse_position("41:7f3a9c").unwrap();
        assert_eq!((p.offset, p.epoch.as_str()), (41, "7f3a9c"));
        assert!(parse_position("41").is_none());
        assert!(parse_position("x:7f").is_none());
        assert_eq!(parse_position(" 0: ").unwrap().offset, 0);
    }
}

/// What `POST /publish` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpPublish {
    channel: String,
    data: Box<serde_json::value::RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn error_json(status: StatusCode, code: tidewire_hub_proto::ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code.0, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// `POST /publish`: a client's publication over plain HTTP, beside `/sse` (for networks
/// where WebSocket cannot pass). The token in `Authorization: Bearer JWT` or `?token=`;
/// the body `{"channel", "data", "idempotency_key"?}`; the same rules as `publish` on
/// `/ws` (namespaces, private channels, `NAME#users`, `publish = false`, the backend's
/// publish call). The answer: `{"offset", "epoch"}`, or `{"error": {"code", "message"}}`
/// with a status.
pub(crate) async fn publish(
    State(hub): State<Arc<Hub>>,
    RawQuery(query): RawQuery,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use tidewire_hub_proto::ErrorCode;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let token = bearer.or_else(|| query_param(query.as_deref(), "token"));
    if let (Some(auth), Some(t)) = (&hub.config.auth, &token) {
        auth.refresh_for(t).await;
    }
    // Admission reads the token from the query.
    let token_query = token.as_ref().map(|t| format!("token={t}"));
    let Admitted { slot, identity } = match admit(
        &hub,
        Endpoint::Channels,
        &headers,
        token_query.as_deref(),
        true,
    ) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let _slot = slot;
    let p: HttpPublish = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            let message =
                format!("the body is not {{\"channel\", \"data\", \"idempotency_key\"?}}: {e}");
            return error_json(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, &message);
        }
    };
    if p.idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > tidewire_hub_proto::MAX_IDEMPOTENCY_KEY)
    {
        let message = "idempotency_key must be 1 to 128 bytes";
        return error_json(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
    }
    let ns = match channel_access(&hub, identity.as_ref(), &p.channel) {
        Ok(ns) => ns,
        Err((code, why)) => return error_json(status_of(code), code, why),
    };
    if !ns.publish {
        let message = "publishing is not allowed in this namespace";
        return error_json(StatusCode::FORBIDDEN, ErrorCode::PERMISSION_DENIED, message);
    }
    // limits.publish_rate, as on a connection: per user, or per client address for
    // requests without a token.
    let who = match (&identity, &peer) {
        (Some(i), _) => format!("user:{}", i.user),
        (None, Some(axum::Extension(axum::extract::ConnectInfo(addr)))) => {
            format!("addr:{}", addr.ip())
        }
        (None, None) => "anonymous".to_owned(),
    };
    if !hub.http_publish.take(&who, std::time::Instant::now()) {
        hub.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "rate limited: at most {} publications per second (limits.publish_rate)",
            hub.config.publish_rate
        );
        let mut response = error_json(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RATE_LIMITED,
            &message,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        return response;
    }
    let mut data = p.data;
    if let (Some(backend), true) = (&hub.backend, ns.publish_proxy) {
        let user = identity.as_ref().map(|i| i.user.as_str());
        let call = ChannelCall {
            client: "",
            user,
            channel: &p.channel,
            data: Some(&data),
        };
        match backend
            .ask::<crate::backend::DataResult>(Call::Publish, &call)
            .await
        {
            Ok(r) => {
                if let Some(new) = r.data {
                    data = new;
                }
            }
            Err(f) => {
                let (code, message) = f.error();
                return error_json(status_of(code), code, &message);
            }
        }
    }
    let started = std::time::Instant::now();
    let key = p.idempotency_key.as_deref();
    match hub
        .node
        .publish_once(&p.channel, crate::node::Json::from(data), key)
        .await
    {
        Ok(position) => {
            hub.metrics.publish_latency(started.elapsed());
            hub.metrics.publications.fetch_add(1, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, "application/json")],
                format!("{}\n", serde_json::json!(position)),
            )
                .into_response()
        }
        Err(e) => {
            let code = crate::channels::engine_code(&hub.metrics, &e);
            error_json(status_of(code), code, &e.to_string())
        }
    }
}
