//! Counters of a running hub, rendered at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics updated where things happen; nothing is locked on the hot path. Bytes
//! are message payload bytes (what the application sent and received), not wire bytes.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a WebSocket upgrade was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not a valid WebSocket upgrade request (headers, version, method).
    BadRequest,
    /// `Origin` not in `allowed_origins`.
    Origin,
    /// Token missing or refused.
    Auth,
    /// `limits.max_connections` reached.
    Capacity,
    /// None of the offered subprotocols is spoken by the endpoint.
    Subprotocol,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::BadRequest,
        HandshakeFailure::Origin,
        HandshakeFailure::Auth,
        HandshakeFailure::Capacity,
        HandshakeFailure::Subprotocol,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::BadRequest => "bad_request",
            HandshakeFailure::Origin => "origin",
            HandshakeFailure::Auth => "auth",
            HandshakeFailure::Capacity => "max_connections",
            HandshakeFailure::Subprotocol => "subprotocol",
        }
    }
}

/// Upper bounds of the publish latency histogram, in microseconds.
const BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// The hub's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) publications: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    handshake_failures: [AtomicU64; 5],
    publish_buckets: [AtomicU64; BUCKETS_US.len()],
    publish_count: AtomicU64,
    publish_sum_ns: AtomicU64,
}

/// Gauges read from the hub when rendering.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub rooms_connections: usize,
    pub channel_connections: usize,
    pub rooms: usize,
    pub channels: usize,
    pub subscribers: usize,
    /// Clients answered 503 by the listener because the process was out of descriptors.
    pub refused_out_of_descriptors: u64,
    /// Messages and payload bytes written from the connections' outboxes (counted by the
    /// deliverers, not here: see `engine::Deliverer`).
    pub delivered: (u64, u64),
}

impl Metrics {
    pub(crate) fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` messages of `bytes` payload bytes in total sent to clients.
    pub(crate) fn sent(&self, n: u64, bytes: u64) {
        self.messages_out.fetch_add(n, Relaxed);
        self.bytes_out.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    /// Records how long a publication took, from its request to the engine's answer.
    pub(crate) fn publish_latency(&self, d: Duration) {
        let us = d.as_micros() as u64;
        for (i, &b) in BUCKETS_US.iter().enumerate() {
            if us <= b {
                self.publish_buckets[i].fetch_add(1, Relaxed);
                break;
            }
        }
        self.publish_count.fetch_add(1, Relaxed);
        self.publish_sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    pub(crate) fn render(&self, g: &Gauges) -> String {
        let mut s = String::with_capacity(4096);
        let c = |a: &AtomicU64| a.load(Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(s, "# HELP tidewire_{name} {help}");
            let _ = writeln!(s, "# TYPE tidewire_{name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "tidewire_{name}{labels} {v}");
            }
        };
        metric(
            "connections",
            "gauge",
            "Open WebSocket connections by endpoint.",
            &[
                ("{endpoint=\"rooms\"}".into(), g.rooms_connections as u64),
                ("{endpoint=\"ws\"}".into(), g.channel_connections as u64),
            ],
        );
        metric(
            "connections_total",
            "counter",
            "WebSocket connections accepted since start.",
            &[(String::new(), c(&self.connections_total))],
        );
        metric(
            "connections_refused_total",
            "counter",
            "Clients answered 503 before any HTTP was served, by reason (open_files: the process was out of file descriptors).",
            &[(
                "{reason=\"open_files\"}".to_string(),
                g.refused_out_of_descriptors,
            )],
        );
        metric(
            "messages_received_total",
            "counter",
            "Messages received from clients.",
            &[(String::new(), c(&self.messages_in))],
        );
        metric(
            "messages_sent_total",
            "counter",
            "Messages sent to clients (replies, publications, events, room messages).",
            &[(String::new(), c(&self.messages_out) + g.delivered.0)],
        );
        metric(
            "received_bytes_total",
            "counter",
            "Payload bytes received from clients.",
            &[(String::new(), c(&self.bytes_in))],
        );
        metric(
            "sent_bytes_total",
            "counter",
            "Payload bytes sent to clients (before compression).",
            &[(String::new(), c(&self.bytes_out) + g.delivered.1)],
        );
        metric(
            "rooms",
            "gauge",
            "Raw rooms with at least one member.",
            &[(String::new(), g.rooms as u64)],
        );
        metric(
            "channels",
            "gauge",
            "Channels that exist in the engine (with subscribers or history).",
            &[(String::new(), g.channels as u64)],
        );
        metric(
            "subscribers",
            "gauge",
            "Channel subscriptions.",
            &[(String::new(), g.subscribers as u64)],
        );
        metric(
            "publications_total",
            "counter",
            "Publications accepted from clients and the HTTP API.",
            &[(String::new(), c(&self.publications))],
        );
        metric(
            "slow_consumer_disconnects_total",
            "counter",
            "Connections closed because they fell behind (close 4000, rooms and /ws).",
            &[(String::new(), c(&self.slow_consumers))],
        );
        metric(
            "rate_limited_total",
            "counter",
            "Publications refused by the per-connection rate limit.",
            &[(String::new(), c(&self.rate_limited))],
        );
        metric(
            "auth_failures_total",
            "counter",
            "Tokens refused (in the URL or in connect).",
            &[(String::new(), c(&self.auth_failures))],
        );
        let failures: Vec<(String, u64)> = HandshakeFailure::ALL
            .iter()
            .map(|&f| {
                (
                    format!("{{reason=\"{}\"}}", f.label()),
                    c(&self.handshake_failures[f as usize]),
                )
            })
            .collect();
        metric(
            "handshake_failures_total",
            "counter",
            "WebSocket upgrades refused, by reason.",
            &failures,
        );
        let _ = writeln!(
            s,
            "# HELP tidewire_publish_duration_seconds Time from a publish request to the engine's answer (history stored, subscribers' queues filled)."
        );
        let _ = writeln!(s, "# TYPE tidewire_publish_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += c(&self.publish_buckets[i]);
            let _ = writeln!(
                s,
                "tidewire_publish_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = c(&self.publish_count);
        let _ = writeln!(
            s,
            "tidewire_publish_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "tidewire_publish_duration_seconds_sum {}",
            c(&self.publish_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(s, "tidewire_publish_duration_seconds_count {count}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.handshake_failed(HandshakeFailure::Origin);
        m.received(10);
        m.publish_latency(Duration::from_micros(30));
        m.publish_latency(Duration::from_millis(1));
        let text = m.render(&Gauges {
            channel_connections: 2,
            refused_out_of_descriptors: 3,
            ..Default::default()
        });
        assert!(text.contains("tidewire_connections_refused_total{reason=\"open_files\"} 3\n"));
        assert!(text.contains("tidewire_connections{endpoint=\"ws\"} 2\n"));
        assert!(text.contains("tidewire_handshake_failures_total{reason=\"origin\"} 1\n"));
        assert!(text.contains("tidewire_received_bytes_total 10\n"));
        assert!(text.contains("tidewire_publish_duration_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(text.contains("tidewire_publish_duration_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("tidewire_publish_duration_seconds_count 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
