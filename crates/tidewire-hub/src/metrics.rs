//! Counters of a running hub, and the registry that `GET /metrics` encodes with the
//! `prometheus-client` crate in the Prometheus text format 0.0.4.
//!
//! Plain atomics updated where things happen: a message or a delivery costs one relaxed
//! `fetch_add` on a field of the hub, as before the crate came in; nothing is locked on the
//! hot path. The registry holds one [`Collector`] that reads those atomics, and the gauges
//! the hub computes ([`Gauges`]), when it is scraped. Bytes are message payload bytes (what
//! the application sent and received), not wire bytes.
//!
//! Why a collector rather than the crate's `Counter` and `Histogram`: a `Counter` is an
//! `Arc<AtomicU64>` (the same single relaxed add, but behind one more pointer, with a heap
//! allocation per series), its `Histogram` takes a mutex on every observation, and the
//! registry appends a period to each help text. The collector keeps every name, type, help
//! text and label as the hand-written page had them. One difference in the text: the
//! encoder writes the `le` bounds under 1e-4 as Go's client does (`5e-05`, was `0.00005`);
//! Prometheus parses `le` as a number and, since 3.0, stores it normalised, so the series
//! are the same.
//!
//! Why the text format 0.0.4 and not OpenMetrics: in OpenMetrics a counter's family is named
//! without `_total`, so the counter `tidewire_connections_total` and the gauge
//! `tidewire_connections` would both be the family `tidewire_connections`, which the format
//! forbids; one of them would have to be renamed.
//!
//! Adding a labelled family: one whose label values are known when scraped (per endpoint,
//! per reason) is one more [`labelled`] call in [`Scrape::encode`]. One whose label values
//! appear at run time (per namespace, per engine shard, per node) can be a
//! `prometheus_client::metrics::family::Family<Labels, Counter>` field of [`Metrics`],
//! encoded there too with `family.encode(enc.encode_descriptor(name, help, None,
//! MetricType::Counter)?)` (`name` without `_total`: the encoder appends it). Mind the
//! price on the hot path: `Family::get_or_create` hashes the label set under a read lock.
//!
//! Not here: the route and its content type (`server`), what the gauges count (`hub`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Weak;
use std::time::Duration;

pub(crate) use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

/// Why a connection was refused before its request was served, besides the refused
/// WebSocket upgrades of [`HandshakeFailure`] (the `reason` label of
/// `tidewire_refused_total`, which has those too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A request head longer than 16 KiB: 431.
    HeadTooLarge,
    /// More than 64 header fields: 431.
    TooManyHeaders,
    /// `limits.max_http_connections` reached: 503.
    HttpConnections,
    /// A subscribe beyond `limits.subscribe_rate`: error 107.
    SubscribeRate,
    /// A subscribe or publish that would pass `limits.max_channels`: error 111 (the HTTP
    /// API: 503).
    MaxChannels,
    /// `POST /api/*` without the right key, or with the API off: 401, 403.
    ApiAuth,
    /// `POST /api/*` whose body is not what the route takes: 400.
    ApiBadRequest,
}

/// Upper bounds of the publish latency histogram, in microseconds.
const BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// The hub's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_total: AtomicU64,
    /// WebSockets accepted over HTTP/1.1 (an upgraded connection each) and over HTTP/2
    /// (a stream of a shared connection, RFC 8441).
    pub(crate) handshakes_http1: AtomicU64,
    pub(crate) handshakes_http2: AtomicU64,
    pub(crate) handshakes_http3: AtomicU64,
    /// HTTP/2 connections open now.
    pub(crate) http2_connections: AtomicU64,
    /// HTTP/3 (QUIC) connections open now.
    pub(crate) http3_connections: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) publications: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    handshake_failures: [AtomicU64; 5],
    refusals: [AtomicU64; 7],
    publish_buckets: [AtomicU64; BUCKETS_US.len()],
    publish_count: AtomicU64,
    publish_sum_ns: AtomicU64,
}

/// Gauges the hub computes when scraped.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub rooms_connections: usize,
    pub channel_connections: usize,
    /// Connections accepted and not upgraded (yet): see `HubConfig::max_http_connections`.
    pub http_connections: usize,
    pub rooms: usize,
    pub channels: usize,
    pub subscribers: usize,
    /// Channels the engine holds by namespace (`default` for names without a colon),
    /// where the engine can tell.
    pub channels_by_namespace: Vec<(String, u64)>,
    /// Bytes held by history in this process (data and per-publication overhead).
    pub history_bytes: u64,
    /// Publications dropped from history early to stay within `limits.max_history_bytes`.
    pub history_shed: u64,
    /// Bytes waiting in connections' outboxes and their sockets.
    pub queued_bytes: u64,
    /// Clients answered 503 by the listener because the process was out of descriptors.
    pub refused_out_of_descriptors: u64,
    /// Messages and payload bytes written from the connections' outboxes (counted by the
    /// deliverers, not here: see `node::Deliverer`).
    pub delivered: (u64, u64),
    /// The engine's health and counters.
    pub engine: EngineGauges,
    /// Nodes in the cluster's registry.
    pub cluster_nodes: u64,
    /// Calls to the backend: (call, [allowed, denied, failed], seconds spent in all).
    pub backend_calls: Vec<(&'static str, [u64; 3], f64)>,
    /// Hook events delivered, failed deliveries (batches), events waiting for a retry.
    pub hooks: (u64, u64, u64),
}

impl Metrics {
    pub(crate) fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` messages of `bytes` payload bytes in total sent to clients.
    pub(crate) fn sent(&self, n: u64, bytes: u64) {
        self.messages_out.fetch_add(n, Relaxed);
        self.bytes_out.fetch_add(bytes, Relaxed);
    }

    /// Counts a WebSocket accepted over `version`.
    pub(crate) fn handshake(&self, version: http::Version) {
        let counter = if version == http::Version::HTTP_2 {
            &self.handshakes_http2
        } else if version == http::Version::HTTP_3 {
            &self.handshakes_http3
        } else {
            &self.handshakes_http1
        };
        counter.fetch_add(1, Relaxed);
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
}

/// What the collector reads when scraped: the counters and the hub's gauges.
pub(crate) trait Source: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    fn gauges(&self) -> Gauges;
}

/// The registry of a hub: every series is prefixed `tidewire_`. `source` is weak because
/// the hub owns the registry.
pub(crate) fn registry<S: Source>(source: Weak<S>) -> Registry {
    let mut registry = Registry::with_prefix("tidewire");
    registry.register_collector(Box::new(Scrape(source)));
    registry
}

/// `registry` in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
pub(crate) fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::with_capacity(4096);
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

/// Reads the counters and gauges of a [`Source`] at each scrape.
struct Scrape<S>(Weak<S>);

impl<S> fmt::Debug for Scrape<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl<S: Source> Collector for Scrape<S> {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // The hub is gone: nothing left to report.
        let Some(source) = self.0.upgrade() else {
            return Ok(());
        };
        let m = source.metrics();
        let g = source.gauges();
        let c = |a: &AtomicU64| a.load(Relaxed);
        let enc = &mut enc;
        labelled(
            enc,
            ("connections", MetricType::Gauge),
            "Open WebSocket connections by endpoint.",
            "endpoint",
            &[
                ("rooms", g.rooms_connections as u64),
                ("ws", g.channel_connections as u64),
            ],
        )?;
        counter(
            enc,
            "connections",
            "WebSocket connections accepted since start.",
            c(&m.connections_total),
        )?;
        labelled(
            enc,
            ("websocket_handshakes", MetricType::Counter),
            "WebSockets accepted, by HTTP version: 1.1 (an upgraded connection each), 2 (a stream of a shared HTTP/2 connection, RFC 8441) or 3 (a stream of a QUIC connection, RFC 9220).",
            "http",
            &[
                ("1.1", c(&m.handshakes_http1)),
                ("2", c(&m.handshakes_http2)),
                ("3", c(&m.handshakes_http3)),
            ],
        )?;
        gauge(
            enc,
            "http2_connections",
            "Open HTTP/2 connections (each may carry many WebSockets and requests).",
            c(&m.http2_connections),
        )?;
        gauge(
            enc,
            "http3_connections",
            "Open HTTP/3 connections over QUIC (each may carry many WebSockets and requests).",
            c(&m.http3_connections),
        )?;
        labelled(
            enc,
            ("connections_refused", MetricType::Counter),
            "Clients answered 503 before any HTTP was served, by reason (open_files: the process was out of file descriptors).",
            "reason",
            &[("open_files", g.refused_out_of_descriptors)],
        )?;
        gauge(
            enc,
            "http_connections",
            "Connections in their HTTP phase: accepted, not upgraded to a WebSocket (yet) nor closed (limits.max_http_connections).",
            g.http_connections as u64,
        )?;
        counter(
            enc,
            "messages_received",
            "Messages received from clients.",
            c(&m.messages_in),
        )?;
        counter(
            enc,
            "messages_sent",
            "Messages sent to clients (replies, publications, events, room messages).",
            c(&m.messages_out) + g.delivered.0,
        )?;
        counter(
            enc,
            "received_bytes",
            "Payload bytes received from clients.",
            c(&m.bytes_in),
        )?;
        counter(
            enc,
            "sent_bytes",
            "Payload bytes sent to clients (before compression).",
            c(&m.bytes_out) + g.delivered.1,
        )?;
        gauge(
            enc,
            "rooms",
            "Raw rooms with at least one member.",
            g.rooms as u64,
        )?;
        gauge(
            enc,
            "channels",
            "Channels that exist in the engine (with subscribers or history).",
            g.channels as u64,
        )?;
        gauge(
            enc,
            "subscribers",
            "Channel subscriptions.",
            g.subscribers as u64,
        )?;
        let by_namespace: Vec<(&str, u64)> = g
            .channels_by_namespace
            .iter()
            .map(|(ns, n)| (ns.as_str(), *n))
            .collect();
        labelled(
            enc,
            ("channels_by_namespace", MetricType::Gauge),
            "Channels that exist in the engine, by namespace (default: names without a colon).",
            "namespace",
            &by_namespace,
        )?;
        gauge(
            enc,
            "history_bytes",
            "Bytes held by channel history: publications' data plus the engine's overhead per kept publication.",
            g.history_bytes,
        )?;
        counter(
            enc,
            "history_shed",
            "Publications dropped from channel history early to keep it within limits.max_history_bytes (resumes past them get recovered: false).",
            g.history_shed,
        )?;
        gauge(
            enc,
            "queued_bytes",
            "Bytes waiting to be sent to clients: queued in their outboxes and waiting in their sockets.",
            g.queued_bytes,
        )?;
        counter(
            enc,
            "publications",
            "Publications accepted from clients and the HTTP API.",
            c(&m.publications),
        )?;
        counter(
            enc,
            "slow_consumer_disconnects",
            "Connections closed because they fell behind (close 4000, rooms and /ws).",
            c(&m.slow_consumers),
        )?;
        counter(
            enc,
            "rate_limited",
            "Publications refused by the per-connection rate limit.",
            c(&m.rate_limited),
        )?;
        counter(
            enc,
            "auth_failures",
            "Tokens refused (in the URL or in connect).",
            c(&m.auth_failures),
        )?;
        let failures =
            HandshakeFailure::ALL.map(|f| (f.label(), c(&m.handshake_failures[f as usize])));
        labelled(
            enc,
            ("handshake_failures", MetricType::Counter),
            "WebSocket upgrades refused, by reason.",
            "reason",
            &failures,
        )?;
        let failure = |f: HandshakeFailure| c(&m.handshake_failures[f as usize]);
        let refusal = |r: Refusal| c(&m.refusals[r as usize]);
        labelled(
            enc,
            ("refused", MetricType::Counter),
            REFUSED_HELP,
            "reason",
            &[
                ("head_too_large", refusal(Refusal::HeadTooLarge)),
                ("too_many_headers", refusal(Refusal::TooManyHeaders)),
                ("http_connections", refusal(Refusal::HttpConnections)),
                ("subscribe_rate", refusal(Refusal::SubscribeRate)),
                ("max_channels", refusal(Refusal::MaxChannels)),
                ("api_auth", refusal(Refusal::ApiAuth)),
                ("api_bad_request", refusal(Refusal::ApiBadRequest)),
                ("connections", failure(HandshakeFailure::Capacity)),
                ("open_files", g.refused_out_of_descriptors),
                ("bad_request", failure(HandshakeFailure::BadRequest)),
                ("origin", failure(HandshakeFailure::Origin)),
                ("auth", failure(HandshakeFailure::Auth)),
                ("subprotocol", failure(HandshakeFailure::Subprotocol)),
            ],
        )?;
        // Per bucket, not cumulative: the encoder adds them up and writes `+Inf` as the count.
        let buckets: [(f64, u64); BUCKETS_US.len()] =
            std::array::from_fn(|i| (BUCKETS_US[i] as f64 / 1e6, c(&m.publish_buckets[i])));
        enc.encode_descriptor(
            "publish_duration_seconds",
            "Time from a publish request to the engine's answer (history stored, subscribers' queues filled).",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            c(&m.publish_sum_ns) as f64 / 1e9,
            c(&m.publish_count),
            &buckets,
            None,
        )?;
        let e = &g.engine;
        gauge(
            enc,
            "engine_up",
            "1 while every shard of the engine answers its probes (memory: always), 0 otherwise (/healthz answers 503).",
            u64::from(e.up),
        )?;
        counter(
            enc,
            "engine_reconnects",
            "Times a link to the engine (its subscriber connection) was established again after it was lost or stalled.",
            e.reconnects,
        )?;
        enc.encode_descriptor(
            "engine_latency_seconds",
            "Round trip of the last probe of the engine (the slowest shard).",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(e.latency_us as f64 / 1e6))?;
        counter(
            enc,
            "engine_gap_repairs",
            "Gaps in a channel's live stream from the engine filled from history.",
            e.repairs,
        )?;
        counter(
            enc,
            "engine_channels_lost",
            "Times a channel's subscribers were told to resume (close 4000) because a gap could not be filled from history or the channel's epoch changed.",
            e.lost,
        )?;
        counter(
            enc,
            "presence_reaped",
            "Presence entries of dead nodes removed by this node, each with a leave event.",
            e.reaped,
        )?;
        gauge(
            enc,
            "cluster_nodes",
            "Nodes of the cluster seen alive in the engine's registry (1 with the memory engine).",
            g.cluster_nodes,
        )?;
        if !g.backend_calls.is_empty() {
            let mut family = enc.encode_descriptor(
                "backend_calls",
                "Calls to the application backend (backend.url), by call and outcome: allowed (a result), denied (the backend's error), failed (unreachable, slow, or an answer outside the protocol: the client got error 112).",
                None,
                MetricType::Counter,
            )?;
            for (call, counts, _) in &g.backend_calls {
                for (outcome, v) in ["allowed", "denied", "failed"].iter().zip(counts) {
                    let labels = [("call", *call), ("outcome", *outcome)];
                    ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = enc.encode_descriptor(
                "backend_call_seconds",
                "Time spent in calls to the application backend, by call (divide by tidewire_backend_calls_total for the mean).",
                None,
                MetricType::Counter,
            )?;
            for (call, _, secs) in &g.backend_calls {
                let labels = [("call", *call)];
                ConstCounter::new(*secs).encode(family.encode_family(&labels)?)?;
            }
            counter(
                enc,
                "hook_events_delivered",
                "Hook events this node delivered to the backend (URL/events answered 200).",
                g.hooks.0,
            )?;
            counter(
                enc,
                "hook_delivery_failures",
                "POSTs of hook events that failed (retried with backoff).",
                g.hooks.1,
            )?;
            gauge(
                enc,
                "hook_events_retrying",
                "Hook events this node holds for another delivery attempt.",
                g.hooks.2,
            )?;
        }
        Ok(())
    }
}

/// What `/metrics` shows of the engine.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EngineGauges {
    pub up: bool,
    pub reconnects: u64,
    pub latency_us: u64,
    pub repairs: u64,
    pub lost: u64,
    pub reaped: u64,
}

/// The help text of `tidewire_refused_total`: which reason is which, and which are also
/// counted in the older families (the same events, not more of them).
const REFUSED_HELP: &str = "Requests refused before they were served, by reason: head_too_large and too_many_headers (431: a head over 16 KiB or 64 header fields), http_connections (503: limits.max_http_connections), subscribe_rate (error 107: limits.subscribe_rate), max_channels (error 111, or 503 from the HTTP API: limits.max_channels), api_auth (401/403: no or a wrong API key, or the API off), api_bad_request (400: a body the API route does not take), connections (503: limits.max_connections; max_connections in tidewire_handshake_failures_total), open_files (503: out of file descriptors; as in tidewire_connections_refused_total), and the WebSocket upgrades refused for bad_request, origin, auth and subprotocol (as in tidewire_handshake_failures_total).";

/// An unlabelled counter: `name` without `_total`, which the encoder appends.
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A family with one label, a series per `(label value, value)`.
fn labelled(
    enc: &mut DescriptorEncoder,
    (name, kind): (&str, MetricType),
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, kind)?;
    for &(value, v) in series {
        let labels = [(label, value)];
        let mut series = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(series)?,
            _ => series.encode_gauge(&v)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    struct Fake(Metrics);

    impl Source for Fake {
        fn metrics(&self) -> &Metrics {
            &self.0
        }

        fn gauges(&self) -> Gauges {
            Gauges {
                rooms_connections: 1,
                channel_connections: 2,
                http_connections: 8,
                rooms: 3,
                channels: 4,
                subscribers: 5,
                channels_by_namespace: vec![("chat".into(), 3), ("default".into(), 1)],
                history_bytes: 7,
                history_shed: 9,
                queued_bytes: 8,
                refused_out_of_descriptors: 6,
                delivered: (0, 0),
                engine: EngineGauges {
                    up: true,
                    reconnects: 2,
                    latency_us: 250,
                    repairs: 3,
                    lost: 1,
                    reaped: 4,
                },
                cluster_nodes: 2,
                backend_calls: Vec::new(),
                hooks: (0, 0, 0),
            }
        }
    }

    /// A family of the page: its TYPE, its HELP and its samples (`name{labels}`, value).
    #[derive(Debug, Default)]
    struct Family {
        kind: String,
        help: String,
        samples: Vec<(String, f64)>,
    }

    /// Parses the text format 0.0.4 as a scraper would, checking that each family is
    /// declared once, with HELP then TYPE before its samples, and every value is a number.
    fn parse(text: &str) -> Vec<(String, Family)> {
        let mut families: Vec<(String, Family)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(
                    families.iter().all(|(n, _)| n != name),
                    "{name} declared twice"
                );
                let help = help.to_string();
                families.push((
                    name.to_string(),
                    Family {
                        help,
                        ..Default::default()
                    },
                ));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let (last, family) = families.last_mut().expect("TYPE before HELP");
                assert_eq!(last, name, "TYPE of another family than its HELP");
                assert!(
                    family.kind.is_empty() && family.samples.is_empty(),
                    "{line}"
                );
                family.kind = kind.to_string();
            } else {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
                let (last, family) = families.last_mut().expect("sample before HELP");
                assert!(!family.kind.is_empty(), "sample before TYPE: {line}");
                let name = series.split('{').next().unwrap();
                let suffixes: &[&str] = match family.kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                assert!(
                    suffixes.iter().any(|s| name.strip_suffix(s) == Some(last)),
                    "{line} is not in the family {last}"
                );
                family.samples.push((series.to_string(), value));
            }
        }
        families
    }

    /// Every family the hand-written page had, with its type and help text, in its order.
    const FAMILIES: [(&str, &str, &str); 32] = [
        ("tidewire_connections", "gauge", "Open WebSocket connections by endpoint."),
        ("tidewire_connections_total", "counter", "WebSocket connections accepted since start."),
        ("tidewire_websocket_handshakes_total", "counter", "WebSockets accepted, by HTTP version: 1.1 (an upgraded connection each), 2 (a stream of a shared HTTP/2 connection, RFC 8441) or 3 (a stream of a QUIC connection, RFC 9220)."),
        ("tidewire_http2_connections", "gauge", "Open HTTP/2 connections (each may carry many WebSockets and requests)."),
        ("tidewire_http3_connections", "gauge", "Open HTTP/3 connections over QUIC (each may carry many WebSockets and requests)."),
        ("tidewire_connections_refused_total", "counter", "Clients answered 503 before any HTTP was served, by reason (open_files: the process was out of file descriptors)."),
        ("tidewire_http_connections", "gauge", "Connections in their HTTP phase: accepted, not upgraded to a WebSocket (yet) nor closed (limits.max_http_connections)."),
        ("tidewire_messages_received_total", "counter", "Messages received from clients."),
        ("tidewire_messages_sent_total", "counter", "Messages sent to clients (replies, publications, events, room messages)."),
        ("tidewire_received_bytes_total", "counter", "Payload bytes received from clients."),
        ("tidewire_sent_bytes_total", "counter", "Payload bytes sent to clients (before compression)."),
        ("tidewire_rooms", "gauge", "Raw rooms with at least one member."),
        ("tidewire_channels", "gauge", "Channels that exist in the engine (with subscribers or history)."),
        ("tidewire_subscribers", "gauge", "Channel subscriptions."),
        ("tidewire_channels_by_namespace", "gauge", "Channels that exist in the engine, by namespace (default: names without a colon)."),
        ("tidewire_history_bytes", "gauge", "Bytes held by channel history: publications' data plus the engine's overhead per kept publication."),
        ("tidewire_history_shed_total", "counter", "Publications dropped from channel history early to keep it within limits.max_history_bytes (resumes past them get recovered: false)."),
        ("tidewire_queued_bytes", "gauge", "Bytes waiting to be sent to clients: queued in their outboxes and waiting in their sockets."),
        ("tidewire_publications_total", "counter", "Publications accepted from clients and the HTTP API."),
        ("tidewire_slow_consumer_disconnects_total", "counter", "Connections closed because they fell behind (close 4000, rooms and /ws)."),
        ("tidewire_rate_limited_total", "counter", "Publications refused by the per-connection rate limit."),
        ("tidewire_auth_failures_total", "counter", "Tokens refused (in the URL or in connect)."),
        ("tidewire_handshake_failures_total", "counter", "WebSocket upgrades refused, by reason."),
        ("tidewire_refused_total", "counter", REFUSED_HELP),
        ("tidewire_publish_duration_seconds", "histogram", "Time from a publish request to the engine's answer (history stored, subscribers' queues filled)."),
        ("tidewire_engine_up", "gauge", "1 while every shard of the engine answers its probes (memory: always), 0 otherwise (/healthz answers 503)."),
        ("tidewire_engine_reconnects_total", "counter", "Times a link to the engine (its subscriber connection) was established again after it was lost or stalled."),
        ("tidewire_engine_latency_seconds", "gauge", "Round trip of the last probe of the engine (the slowest shard)."),
        ("tidewire_engine_gap_repairs_total", "counter", "Gaps in a channel's live stream from the engine filled from history."),
        ("tidewire_engine_channels_lost_total", "counter", "Times a channel's subscribers were told to resume (close 4000) because a gap could not be filled from history or the channel's epoch changed."),
        ("tidewire_presence_reaped_total", "counter", "Presence entries of dead nodes removed by this node, each with a leave event."),
        ("tidewire_cluster_nodes", "gauge", "Nodes of the cluster seen alive in the engine's registry (1 with the memory engine)."),
    ];

    #[test]
    fn renders_every_family_with_the_values_of_the_atomics() {
        let hub = Arc::new(Fake(Metrics::default()));
        let registry = registry(Arc::downgrade(&hub));
        let m = &hub.0;
        m.connections_total.fetch_add(7, Relaxed);
        m.handshakes_http1.fetch_add(4, Relaxed);
        m.handshakes_http2.fetch_add(3, Relaxed);
        m.http2_connections.fetch_add(1, Relaxed);
        m.handshakes_http3.fetch_add(2, Relaxed);
        m.http3_connections.fetch_add(5, Relaxed);
        m.handshake_failed(HandshakeFailure::Origin);
        m.handshake_failed(HandshakeFailure::Capacity);
        m.handshake_failed(HandshakeFailure::Capacity);
        m.refused(Refusal::HeadTooLarge);
        m.refused(Refusal::TooManyHeaders);
        m.refused(Refusal::TooManyHeaders);
        m.refused(Refusal::HttpConnections);
        m.refused(Refusal::HttpConnections);
        m.refused(Refusal::HttpConnections);
        m.received(10);
        m.received(5);
        m.sent(3, 40);
        m.publications.fetch_add(2, Relaxed);
        m.slow_consumers.fetch_add(1, Relaxed);
        m.rate_limited.fetch_add(4, Relaxed);
        m.auth_failures.fetch_add(6, Relaxed);
        m.publish_latency(Duration::from_micros(30));
        m.publish_latency(Duration::from_millis(1));
        // Above the last bound: only in +Inf.
        m.publish_latency(Duration::from_secs(1));

        let text = encode(&registry).unwrap();
        let families = parse(&text);
        let declared: Vec<_> = families
            .iter()
            .map(|(n, f)| (n.as_str(), f.kind.as_str(), f.help.as_str()))
            .collect();
        assert_eq!(declared, FAMILIES, "{text}");

        let c = |a: &AtomicU64| a.load(Relaxed) as f64;
        let reason = |r: HandshakeFailure| c(&m.handshake_failures[r as usize]);
        let mut expected: Vec<(String, f64)> = vec![
            ("tidewire_connections{endpoint=\"rooms\"}".into(), 1.0),
            ("tidewire_connections{endpoint=\"ws\"}".into(), 2.0),
            ("tidewire_connections_total".into(), c(&m.connections_total)),
            (
                "tidewire_websocket_handshakes_total{http=\"1.1\"}".into(),
                4.0,
            ),
            (
                "tidewire_websocket_handshakes_total{http=\"2\"}".into(),
                3.0,
            ),
            (
                "tidewire_websocket_handshakes_total{http=\"3\"}".into(),
                2.0,
            ),
            ("tidewire_http2_connections".into(), 1.0),
            ("tidewire_http3_connections".into(), 5.0),
            (
                "tidewire_connections_refused_total{reason=\"open_files\"}".into(),
                6.0,
            ),
            ("tidewire_http_connections".into(), 8.0),
            ("tidewire_messages_received_total".into(), c(&m.messages_in)),
            ("tidewire_messages_sent_total".into(), c(&m.messages_out)),
            ("tidewire_received_bytes_total".into(), c(&m.bytes_in)),
            ("tidewire_sent_bytes_total".into(), c(&m.bytes_out)),
            ("tidewire_rooms".into(), 3.0),
            ("tidewire_channels".into(), 4.0),
            ("tidewire_subscribers".into(), 5.0),
            (
                "tidewire_channels_by_namespace{namespace=\"chat\"}".into(),
                3.0,
            ),
            (
                "tidewire_channels_by_namespace{namespace=\"default\"}".into(),
                1.0,
            ),
            ("tidewire_history_bytes".into(), 7.0),
            ("tidewire_history_shed_total".into(), 9.0),
            ("tidewire_queued_bytes".into(), 8.0),
            ("tidewire_publications_total".into(), c(&m.publications)),
            (
                "tidewire_slow_consumer_disconnects_total".into(),
                c(&m.slow_consumers),
            ),
            ("tidewire_rate_limited_total".into(), c(&m.rate_limited)),
            ("tidewire_auth_failures_total".into(), c(&m.auth_failures)),
        ];
        for r in HandshakeFailure::ALL {
            let series = format!(
                "tidewire_handshake_failures_total{{reason=\"{}\"}}",
                r.label()
            );
            expected.push((series, reason(r)));
        }
        for (r, v) in [
            ("head_too_large", 1.0),
            ("too_many_headers", 2.0),
            ("http_connections", 3.0),
            ("subscribe_rate", 0.0),
            ("max_channels", 0.0),
            ("api_auth", 0.0),
            ("api_bad_request", 0.0),
            ("connections", 2.0),
            ("open_files", 6.0),
            ("bad_request", 0.0),
            ("origin", 1.0),
            ("auth", 0.0),
            ("subprotocol", 0.0),
        ] {
            expected.push((format!("tidewire_refused_total{{reason=\"{r}\"}}"), v));
        }
        let samples: Vec<(String, f64)> = families
            .iter()
            .flat_map(|(_, f)| f.samples.iter().cloned())
            .collect();
        let (others, histogram) = samples.split_at(expected.len());
        assert_eq!(others, expected);
        assert_eq!(reason(HandshakeFailure::Capacity), 2.0);
        assert_eq!(c(&m.bytes_in), 15.0);

        // The histogram: the same bounds (the encoder writes those under 1e-4 as Go
        // does, `le="5e-05"`; a scraper reads a number), cumulative counts, +Inf = count.
        let le: Vec<(f64, f64)> = histogram
            .iter()
            .filter_map(|(s, v)| {
                let le = s.strip_prefix("tidewire_publish_duration_seconds_bucket{le=\"")?;
                Some((le.strip_suffix("\"}")?.parse().unwrap(), *v))
            })
            .collect();
        let mut bounds: Vec<f64> = BUCKETS_US.iter().map(|&b| b as f64 / 1e6).collect();
        bounds.push(f64::INFINITY);
        assert_eq!(le.iter().map(|&(b, _)| b).collect::<Vec<_>>(), bounds);
        let cumulative: HashMap<u64, f64> = [
            (25, 0.0),
            (50, 1.0),
            (500, 1.0),
            (1_000, 2.0),
            (250_000, 2.0),
        ]
        .into_iter()
        .collect();
        for (&(bound, count), us) in le.iter().zip(BUCKETS_US) {
            if let Some(&want) = cumulative.get(&us) {
                assert_eq!(count, want, "le={bound}");
            }
        }
        assert_eq!(le.last(), Some(&(f64::INFINITY, 3.0)));
        let tail: Vec<_> = histogram[le.len()..le.len() + 2].to_vec();
        assert_eq!(
            tail,
            [
                ("tidewire_publish_duration_seconds_sum".to_string(), 1.00103),
                (
                    "tidewire_publish_duration_seconds_count".to_string(),
                    c(&m.publish_count)
                ),
            ]
        );
        // The engine's families, from the gauges.
        let engine: Vec<_> = histogram[le.len() + 2..].to_vec();
        let want: Vec<(String, f64)> = [
            ("tidewire_engine_up", 1.0),
            ("tidewire_engine_reconnects_total", 2.0),
            ("tidewire_engine_latency_seconds", 0.00025),
            ("tidewire_engine_gap_repairs_total", 3.0),
            ("tidewire_engine_channels_lost_total", 1.0),
            ("tidewire_presence_reaped_total", 4.0),
            ("tidewire_cluster_nodes", 2.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(engine, want);
    }

    #[test]
    fn gauges_are_read_when_scraped_and_a_dropped_source_renders_nothing() {
        let hub = Arc::new(Fake(Metrics::default()));
        let registry = registry(Arc::downgrade(&hub));
        let before = encode(&registry).unwrap();
        assert!(
            before.contains("tidewire_received_bytes_total 0\n"),
            "{before}"
        );
        hub.0.received(12);
        let after = encode(&registry).unwrap();
        assert!(
            after.contains("tidewire_received_bytes_total 12\n"),
            "{after}"
        );
        drop(hub);
        assert_eq!(encode(&registry).unwrap(), "");
    }
}
