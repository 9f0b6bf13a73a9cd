//! Who may open a WebSocket, decided before the 101: capacity (`max_connections`), the
//! browser's origin, the URL token and the subprotocols. A refusal is an HTTP status with a
//! one-line reason, counted on `/metrics` and logged at `info` (rate-limited, peer text
//! escaped).

use crate::auth::{AuthError, Identity};
use crate::config::HubConfig;
use crate::hub::{Hub, CHANNEL_PROTOCOL};
use crate::log_text::peer;
use crate::metrics::HandshakeFailure;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tidewire::upgrade::WebSocketUpgradeRejection;

/// Which endpoint a connection belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Rooms,
    Channels,
}

/// A connection counted against `max_connections` from admission (before the 101) until
/// it ends, whether or not the upgrade completes.
pub(crate) struct Slot {
    hub: Arc<Hub>,
    endpoint: Endpoint,
}

impl Slot {
    fn counter(&self) -> &AtomicUsize {
        match self.endpoint {
            Endpoint::Rooms => &self.hub.room_conns,
            Endpoint::Channels => &self.hub.channel_conns,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}

/// What admission found out about a connection.
pub(crate) struct Admitted {
    pub slot: Slot,
    /// The identity from `?token=`, if one was given and verified.
    pub identity: Option<Identity>,
}

/// Answers a refused upgrade with `status` and `reason`, counts it, and logs it at `info`
/// with the client's origin, within the hub's `refusal_log` budget (20 lines per 10 s).
/// Peer-supplied text is escaped in the log, so it cannot forge a log line.
pub(crate) fn refuse(
    hub: &Hub,
    why: HandshakeFailure,
    status: StatusCode,
    reason: String,
    headers: &HeaderMap,
) -> Box<Response> {
    note_refusal(hub, why, status, &reason, headers);
    let mut response = (status, format!("{reason}\n")).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Clients that honour it (tidewire's ReconnectingClient does) spread out their
        // retries instead of coming back at once.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("5"));
    }
    Box::new(response)
}

/// Counts a refused upgrade and logs it (see [`refuse`]).
pub(crate) fn note_refusal(
    hub: &Hub,
    why: HandshakeFailure,
    status: StatusCode,
    reason: &str,
    headers: &HeaderMap,
) {
    hub.metrics.handshake_failed(why);
    if matches!(why, HandshakeFailure::Auth) {
        hub.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
    let window = hub.refusal_log.window();
    let (log, dropped) = match hub.refusal_log.lock() {
        Ok(mut budget) => budget.admit(Instant::now()),
        Err(_) => (true, 0),
    };
    if dropped > 0 {
        tracing::info!(
            "{dropped} more refused handshakes were not logged in the last {} s (see tidewire_handshake_failures_total on /metrics)",
            window.as_secs()
        );
    }
    if log {
        let text = |name| {
            headers
                .get(name)
                .map_or("-".into(), |v| String::from_utf8_lossy(v.as_bytes()))
        };
        tracing::info!(
            status = status.as_u16(),
            origin = peer(text(header::ORIGIN)).to_string(),
            user_agent = peer(text(header::USER_AGENT)).to_string(),
            "handshake refused: {}",
            peer(reason)
        );
    }
}

/// The value of `name` in a query string (percent-decoding `%XX` and `+`).
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = v.as_bytes();
            let mut out = Vec::with_capacity(v.len());
            let mut i = 0;
            while i < v.len() {
                match v[i] {
                    b'%' if i + 2 < v.len() => {
                        let hex = std::str::from_utf8(&v[i + 1..i + 3]).ok();
                        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                            Some(b) => {
                                out.push(b);
                                i += 3;
                                continue;
                            }
                            None => out.push(b'%'),
                        }
                    }
                    b'+' => out.push(b' '),
                    b => out.push(b),
                }
                i += 1;
            }
            return String::from_utf8(out).ok();
        }
    }
    None
}

/// Whether `origin` may open a WebSocket here: the server's own host (the `Host` header),
/// or one of `allowed_origins` (`*` for any).
pub(crate) fn origin_allowed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    match host {
        Some(h) => !authority.is_empty() && authority.eq_ignore_ascii_case(h),
        None => false,
    }
}

/// Capacity, origin and URL token, in that order; the refusal is an HTTP status with a
/// reason.
pub(crate) fn admit(
    hub: &Arc<Hub>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    query: Option<&str>,
    token_required: bool,
) -> Result<Admitted, Box<Response>> {
    let slot = Slot {
        hub: hub.clone(),
        endpoint,
    };
    slot.counter().fetch_add(1, Ordering::Relaxed);
    if hub.draining.load(Ordering::Relaxed) {
        drop(slot);
        return Err(refuse(
            hub,
            HandshakeFailure::Capacity,
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is draining: connect to another one".to_owned(),
            headers,
        ));
    }
    if hub.connections() > hub.config.max_connections {
        drop(slot);
        return Err(refuse(
            hub,
            HandshakeFailure::Capacity,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "server at capacity: {} connections (limits.max_connections)",
                hub.config.max_connections
            ),
            headers,
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if !origin_allowed(&hub.config.allowed_origins, origin, host) {
            return Err(refuse(
                hub,
                HandshakeFailure::Origin,
                StatusCode::FORBIDDEN,
                format!("origin not allowed: {origin} (add it to allowed_origins)"),
                headers,
            ));
        }
    }
    let identity = match (&hub.config.auth, query_param(query, "token")) {
        (None, _) => None,
        (Some(auth), Some(token)) => match auth.verify(&token) {
            Ok(id) => Some(id),
            Err(e) => {
                return Err(refuse(
                    hub,
                    HandshakeFailure::Auth,
                    StatusCode::UNAUTHORIZED,
                    format!("unauthorized: {e}"),
                    headers,
                ))
            }
        },
        (Some(auth), None) if token_required && !auth.anonymous() => {
            return Err(refuse(
                hub,
                HandshakeFailure::Auth,
                StatusCode::UNAUTHORIZED,
                format!("unauthorized: {} (pass ?token=JWT)", AuthError::Missing),
                headers,
            ))
        }
        (Some(_), None) => None,
    };
    // A blocked user, or a token revoked by the server API.
    if let Some(why) = identity
        .as_ref()
        .and_then(|id| hub.control.refusal(&id.user, id.issued))
    {
        return Err(refuse(
            hub,
            HandshakeFailure::Auth,
            StatusCode::FORBIDDEN,
            format!("forbidden: {why}"),
            headers,
        ));
    }
    Ok(Admitted { slot, identity })
}

pub(crate) fn upgrade_refused(
    hub: &Hub,
    e: WebSocketUpgradeRejection,
    headers: &HeaderMap,
) -> Response {
    note_refusal(
        hub,
        HandshakeFailure::BadRequest,
        e.0.status(),
        e.0.reason(),
        headers,
    );
    e.into_response()
}

/// Why a handshake's subprotocols are refused at `endpoint`, or `None` if they are fine.
/// Rooms select the first of `rooms.protocols` the client offers, and accept a client that
/// offers none; `/ws` needs `tidewire.v1`. RFC 6455 would let the server answer 101
/// without a subprotocol, which a browser that offered some fails with a bare 1006: a 400
/// with the reason tells the developer what to change.
pub(crate) fn subprotocol_refusal(
    config: &HubConfig,
    endpoint: Endpoint,
    offered: &[&str],
) -> Option<String> {
    match endpoint {
        Endpoint::Rooms => {
            let spoken = &config.room_protocols;
            if offered.is_empty() || offered.iter().any(|p| spoken.iter().any(|s| s == p)) {
                return None;
            }
            Some(if spoken.is_empty() {
                format!(
                    "rooms speak no subprotocol: connect without Sec-WebSocket-Protocol (offered: {}; rooms.protocols)",
                    offered.join(", ")
                )
            } else {
                format!(
                    "none of the offered subprotocols ({}) is spoken here: rooms speak {} (rooms.protocols)",
                    offered.join(", "),
                    spoken.join(", ")
                )
            })
        }
        Endpoint::Channels => {
            if offered.contains(&CHANNEL_PROTOCOL) {
                return None;
            }
            let offered = if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            };
            Some(format!(
                "/ws speaks the {CHANNEL_PROTOCOL} subprotocol (docs/protocol.md): offer it in Sec-WebSocket-Protocol (offered: {offered}); raw rooms are at /rooms/NAME"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(
            &none,
            "http://127.0.0.1:8080",
            Some("127.0.0.1:8080")
        ));
        assert!(!origin_allowed(
            &none,
            "http://evil.example",
            Some("127.0.0.1:8080")
        ));
        assert!(!origin_allowed(&none, "null", Some("127.0.0.1:8080")));
        assert!(!origin_allowed(&none, "http://127.0.0.1:8080", None));
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(&list, "https://APP.example.com", Some("x")));
        assert!(!origin_allowed(
            &list,
            "https://app.example.com.evil",
            Some("x")
        ));
        assert!(origin_allowed(&["*".to_owned()], "http://any", None));
    }

    #[test]
    fn subprotocols() {
        let c = HubConfig::default();
        let refused = |e, offered: &[&str]| subprotocol_refusal(&c, e, offered);
        assert_eq!(refused(Endpoint::Rooms, &[]), None);
        assert_eq!(refused(Endpoint::Rooms, &["x", "superchat"]), None);
        let r = refused(Endpoint::Rooms, &["mqtt", "x"]).unwrap();
        assert!(
            r.contains("(mqtt, x)") && r.contains("rooms speak chat, superchat"),
            "{r}"
        );
        assert_eq!(refused(Endpoint::Channels, &["chat", "tidewire.v1"]), None);
        assert!(refused(Endpoint::Channels, &[])
            .unwrap()
            .contains("(offered: none)"));
        let none = HubConfig {
            room_protocols: vec![],
            ..HubConfig::default()
        };
        assert!(subprotocol_refusal(&none, Endpoint::Rooms, &["chat"])
            .unwrap()
            .contains("rooms speak no subprotocol"));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("a=1&token=x%2Fy+z"), "token").as_deref(),
            Some("x/y z")
        );
        assert_eq!(query_param(Some("token="), "token").as_deref(), Some(""));
        assert_eq!(query_param(Some("tokens=1"), "token"), None);
        assert_eq!(
            query_param(Some("token=%zz%4"), "token").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(query_param(None, "token"), None);
    }
}
