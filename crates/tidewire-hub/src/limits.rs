//! What both WebSocket endpoints (rooms and `/ws`) apply to each connection: the publish
//! rate limit and the bounded close of a slow consumer.

use std::time::{Duration, Instant};
use tidewire::CloseFrame;

/// A token bucket: `rate` tokens per second, at most `burst` saved up. Rate 0: no limit.
/// Every connection holds one or two, so in single precision (whole tokens are exact up
/// to 2^24, far above any useful burst).
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f32,
    burst: f32,
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = burst.max(1) as f32;
        TokenBucket {
            rate: rate as f32,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Closes a slow consumer: its queued bytes may never drain, so the close handshake is
/// bounded tightly.
pub(crate) async fn close_bounded<S>(ws: &mut tidewire::WebSocketStream<S>, frame: CloseFrame)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(110)));
        assert!(!b.take(t0 + Duration::from_millis(110)));
        let mut off = TokenBucket::new(0.0, 1, t0);
        assert!((0..1000).all(|_| off.take(t0)));
    }
}
