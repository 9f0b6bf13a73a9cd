//! The two code tables of `docs/protocol.md`: [`ErrorCode`] (in an error reply) and
//! [`CloseCode`] (in the close frame that ends a connection), with [`close_action`], the
//! one place that decides what a client does after a close code.
//!
//! Close codes have a behaviour by range (after Centrifuge's `disconnect.go`), so that a
//! client knows what to do with a code it has never heard of:
//!
//! | range | what a client does |
//! |---|---|
//! | 1000 | stop (normal closure) |
//! | 1009 | stop (message too big: sending it again fails again) |
//! | other 1000–2999 (RFC 6455), 3000–3999 | reconnect with backoff |
//! | 4000–4499 | reconnect with backoff, except the hub's 4001 (only with a new token), 4003 and 4008 (stop) |
//! | 4500–4999 | stop (terminal conditions) |
//! | anything else (not a valid close code) | reconnect with backoff |
//!
//! 4001, 4003 and 4008 predate the ranges and keep their numbers (clients in the field know
//! them); new hub codes take a number from the range that says what they mean.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An error code (`error.code` in a reply). Open: codes this version does not know pass
/// through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// 100: the server failed (an engine error).
    pub const INTERNAL: ErrorCode = ErrorCode(100);
    /// 101: malformed JSON, not an object, a missing or wrongly typed field.
    pub const BAD_REQUEST: ErrorCode = ErrorCode(101);
    /// 102: an `op` this protocol does not have.
    pub const UNKNOWN_OP: ErrorCode = ErrorCode(102);
    /// 103: unknown channel or namespace, or an invalid channel name.
    pub const UNKNOWN_CHANNEL: ErrorCode = ErrorCode(103);
    /// 104: publishing not allowed in the namespace, or a private channel the token does
    /// not list.
    pub const PERMISSION_DENIED: ErrorCode = ErrorCode(104);
    /// 105: `unsubscribe` from a channel this connection is not subscribed to.
    pub const NOT_SUBSCRIBED: ErrorCode = ErrorCode(105);
    /// 106: `subscribe` to a channel this connection is already subscribed to.
    pub const ALREADY_SUBSCRIBED: ErrorCode = ErrorCode(106);
    /// 107: over the connection's publish or subscribe rate (`limits.publish_rate`,
    /// `limits.subscribe_rate`).
    pub const RATE_LIMITED: ErrorCode = ErrorCode(107);
    /// 108: reserved (an oversized message is closed with 1009 instead; never sent).
    pub const RESERVED_108: ErrorCode = ErrorCode(108);
    /// 109: `connect` missing, without a token, or with a token that does not verify.
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(109);
    /// 110: not available in this namespace (presence is off).
    pub const NOT_AVAILABLE: ErrorCode = ErrorCode(110);
    /// 111: too many subscriptions on this connection (`limits.max_subscriptions`), or too
    /// many channels on the server (`limits.max_channels`).
    pub const LIMIT_REACHED: ErrorCode = ErrorCode(111);
    /// 112: the engine behind the hub (Redis, NATS) did not answer in time or is
    /// unreachable: retryable. A `publish` that got it may or may not have been applied;
    /// retry it with the same `idempotency_key` to publish at most once.
    pub const UNAVAILABLE: ErrorCode = ErrorCode(112);

    /// Every code of the table, in order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::INTERNAL,
        ErrorCode::BAD_REQUEST,
        ErrorCode::UNKNOWN_OP,
        ErrorCode::UNKNOWN_CHANNEL,
        ErrorCode::PERMISSION_DENIED,
        ErrorCode::NOT_SUBSCRIBED,
        ErrorCode::ALREADY_SUBSCRIBED,
        ErrorCode::RATE_LIMITED,
        ErrorCode::RESERVED_108,
        ErrorCode::UNAUTHORIZED,
        ErrorCode::NOT_AVAILABLE,
        ErrorCode::LIMIT_REACHED,
        ErrorCode::UNAVAILABLE,
    ];

    /// What the code means, as `docs/protocol.md` says; `None` for a code not in the table.
    pub fn meaning(self) -> Option<&'static str> {
        Some(match self.0 {
            100 => "internal error",
            101 => "bad request",
            102 => "unknown op",
            103 => "unknown channel or namespace",
            104 => "permission denied",
            105 => "not subscribed",
            106 => "already subscribed",
            107 => "rate limited",
            108 => "reserved",
            109 => "unauthorized",
            110 => "not available",
            111 => "limit reached",
            112 => "temporarily unavailable",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.meaning() {
            Some(m) => write!(f, "{} ({m})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A close code the hub sends (the numbers of a WebSocket close frame; convert with `.0`).
/// Open: any `u16` passes through, and [`close_action`] says what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 4000: the client fell behind and was dropped (slow consumer): reconnect and resume
    /// with `since`.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4000);
    /// 4001: the token expired: reconnect only with a new token.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4001);
    /// 4003: unsupported data (a binary frame on `/ws`): terminal, the client is wrong.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(4003);
    /// 4008: unauthorized (no `connect`, no token, a token that does not verify):
    /// terminal, the same token would be refused again.
    pub const UNAUTHORIZED: CloseCode = CloseCode(4008);
    /// 4029: (raw rooms) over the message rate limit: reconnect with backoff, send less.
    pub const MESSAGE_RATE_LIMITED: CloseCode = CloseCode(4029);
    /// 4500: disconnected by the server (its API's `disconnect`, by default): terminal.
    pub const DISCONNECTED: CloseCode = CloseCode(4500);
    /// 4501: the user is blocked (the server API's `block_user`): terminal.
    pub const BLOCKED: CloseCode = CloseCode(4501);

    /// The hub's own codes, in order.
    pub const HUB: [CloseCode; 7] = [
        CloseCode::SLOW_CONSUMER,
        CloseCode::TOKEN_EXPIRED,
        CloseCode::UNSUPPORTED_DATA,
        CloseCode::UNAUTHORIZED,
        CloseCode::MESSAGE_RATE_LIMITED,
        CloseCode::DISCONNECTED,
        CloseCode::BLOCKED,
    ];

    /// What a client does after this code: [`close_action`].
    pub fn action(self) -> CloseAction {
        close_action(self.0)
    }
}

/// What a client does after the server closed with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect with backoff (and resume with `since`).
    Reconnect,
    /// Reconnect only with a new token (4001: the token expired).
    ReconnectWithNewToken,
    /// Do not reconnect: the same client would be closed the same way again.
    Stop,
}

/// What a client does after close code `code`, by the ranges of the table in the module
/// documentation (and `docs/protocol.md`). Defined for every `u16`.
pub fn close_action(code: u16) -> CloseAction {
    match code {
        // RFC 6455 §7.4.1: 1000 normal closure; 1009 a message too big to process.
        1000 | 1009 => CloseAction::Stop,
        // The hub's codes that predate the ranges.
        4001 => CloseAction::ReconnectWithNewToken,
        4003 | 4008 => CloseAction::Stop,
        // Private use (RFC 6455 §7.4.2): the upper half is terminal.
        4500..=4999 => CloseAction::Stop,
        // The rest of RFC 6455's codes (1001 going away, 1006 dropped, 1011 server error,
        // 1012 restart, 1013 try again later, ...), 3000–3999 and 4000–4499.
        _ => CloseAction::Reconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_the_documented_numbers() {
        let numbers: Vec<u32> = ErrorCode::ALL.iter().map(|c| c.0).collect();
        assert_eq!(numbers, (100..=112).collect::<Vec<_>>());
        assert!(ErrorCode::ALL.iter().all(|c| c.meaning().is_some()));
        assert_eq!(ErrorCode(113).meaning(), None);
        assert_eq!(ErrorCode::UNKNOWN_OP.to_string(), "102 (unknown op)");
        assert_eq!(
            serde_json::to_string(&ErrorCode::LIMIT_REACHED).unwrap(),
            "111"
        );
        assert_eq!(
            serde_json::from_str::<ErrorCode>("999").unwrap(),
            ErrorCode(999)
        );
    }

    #[test]
    fn close_actions_by_range() {
        use CloseAction::*;
        let hub: Vec<(u16, CloseAction)> =
            CloseCode::HUB.iter().map(|c| (c.0, c.action())).collect();
        assert_eq!(
            hub,
            [
                (4000, Reconnect),
                (4001, ReconnectWithNewToken),
                (4003, Stop),
                (4008, Stop),
                (4029, Reconnect),
                (4500, Stop),
                (4501, Stop)
            ]
        );
        for code in [1000, 1009, 4003, 4008, 4500, 4501, 4999] {
            assert_eq!(close_action(code), Stop, "{code}");
        }
        for code in [
            1001, 1002, 1003, 1006, 1007, 1008, 1010, 1011, 1012, 1013, 3000, 3500, 3999, 4000,
            4002, 4029, 4499, 0, 999, 5000, 65535,
        ] {
            assert_eq!(close_action(code), Reconnect, "{code}");
        }
        assert_eq!(close_action(4001), ReconnectWithNewToken);
    }
}
