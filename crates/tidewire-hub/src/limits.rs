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

    /// Whether the bucket has refilled to its burst by `now` (nothing taken lately).
    pub(crate) fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.rate <= 0.0 || self.tokens + elapsed * self.rate >= self.burst
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

/// Token buckets by key (a user, or a client address), for requests that are not on a
/// connection (`POST /publish`). At most `max_keys` are kept: beyond, the idle ones (full
/// again) are dropped, and if none is idle the newcomers share one overflow bucket.
#[derive(Debug)]
pub(crate) struct KeyedBuckets {
    rate: f64,
    burst: u32,
    max_keys: usize,
    map: std::sync::Mutex<std::collections::HashMap<String, TokenBucket>>,
    overflow: std::sync::Mutex<TokenBucket>,
}

impl KeyedBuckets {
    pub(crate) fn new(rate: f64, burst: u32, max_keys: usize) -> Self {
        KeyedBuckets {
            rate,
            burst,
            max_keys,
            map: Default::default(),
            overflow: std::sync::Mutex::new(TokenBucket::new(rate, burst, Instant::now())),
        }
    }

    /// Takes a token of `key`'s bucket if there is one.
    pub(crate) fn take(&self, key: &str, now: Instant) -> bool {
        let mut map = crate::lock(&self.map);
        if let Some(bucket) = map.get_mut(key) {
            return bucket.take(now);
        }
        if map.len() >= self.max_keys {
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= self.max_keys {
                drop(map);
                return crate::lock(&self.overflow).take(now);
            }
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let took = bucket.take(now);
        map.insert(key.to_owned(), bucket);
        took
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
    fn keyed_buckets_limit_each_key_and_bound_the_keys() {
        let t0 = Instant::now();
        let b = KeyedBuckets::new(1.0, 2, 3);
        assert!(b.take("a", t0) && b.take("a", t0));
        assert!(!b.take("a", t0), "a's burst is spent");
        assert!(b.take("b", t0), "b has its own bucket");
        assert!(b.take("c", t0));
        // Full map, no idle bucket: newcomers share the overflow bucket (burst 2).
        assert!(b.take("d", t0) && b.take("e", t0));
        assert!(!b.take("f", t0));
        // Later, the idle buckets are dropped to make room.
        let later = t0 + Duration::from_secs(10);
        assert!(b.take("g", later));
        assert!(crate::lock(&b.map).len() <= 3);
    }

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
