//! The state a running hub shares between its connections: configuration, the room
//! registry and the channel engine, the connection counts, metrics and the shutdown watch.

use crate::config::HubConfig;
use crate::engine::{Deliverer, MemoryEngine};
use crate::log_budget::LogBudget;
use crate::metrics::{Gauges, Metrics};
use crate::rooms::Rooms;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tidewire::{Options, ServerBuilder};
use tokio::sync::watch;

/// Shared state of a running hub.
#[derive(Debug)]
pub struct Hub {
    pub(crate) config: HubConfig,
    pub(crate) rooms: Rooms,
    pub(crate) room_server: ServerBuilder,
    pub(crate) channel_server: ServerBuilder,
    pub(crate) next_id: AtomicU64,
    pub(crate) room_conns: AtomicUsize,
    pub(crate) channel_conns: AtomicUsize,
    pub(crate) subscribers: AtomicUsize,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) engine: Arc<MemoryEngine>,
    pub(crate) metrics: Metrics,
    /// Refused handshakes logged at `info`: 20 lines per 10 s, then a count.
    pub(crate) refusal_log: LogBudget,
    /// The listener's count of clients refused for want of descriptors (set by `serve`).
    pub(crate) refused: std::sync::OnceLock<tidewire::listener::RefusedCounter>,
    /// One deliverer per runtime worker, started with the first connection.
    deliverers: std::sync::OnceLock<Box<[Arc<Deliverer>]>>,
}

impl Hub {
    /// A hub with `config` whose connections close when `shutdown` turns true.
    pub fn new(config: HubConfig, shutdown: watch::Receiver<bool>) -> Arc<Hub> {
        let limits = tidewire::Limits::default()
            .max_message_size(config.max_message_size)
            .max_frame_size(config.max_message_size);
        // No heartbeat timer per connection: the deliverers ping and time out their
        // connections (`Hub::deliverer`).
        let options = Options::default().limits(limits);
        let server = ServerBuilder::new()
            .options(options)
            .compression(config.compression);
        Arc::new(Hub {
            rooms: Rooms::new(config.room_buffer),
            channel_server: server.clone().protocols([CHANNEL_PROTOCOL]),
            room_server: server.protocols(config.room_protocols.iter().cloned()),
            engine: Arc::new(MemoryEngine::new(config.namespaces.clone())),
            config,
            next_id: AtomicU64::new(1),
            room_conns: AtomicUsize::new(0),
            channel_conns: AtomicUsize::new(0),
            subscribers: AtomicUsize::new(0),
            shutdown,
            metrics: Metrics::default(),
            refusal_log: LogBudget::new(20, std::time::Duration::from_secs(10)),
            refused: std::sync::OnceLock::new(),
            deliverers: std::sync::OnceLock::new(),
        })
    }

    /// Number of open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.room_conns.load(Ordering::Relaxed) + self.channel_conns.load(Ordering::Relaxed)
    }

    /// The metrics page, as `GET /metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&Gauges {
            rooms_connections: self.room_conns.load(Ordering::Relaxed),
            channel_connections: self.channel_conns.load(Ordering::Relaxed),
            rooms: self.rooms.len(),
            channels: self.engine.len(),
            subscribers: self.subscribers.load(Ordering::Relaxed),
            refused_out_of_descriptors: self.refused.get().map_or(0, |c| c.get()),
            delivered: self.deliverers.get().map_or((0, 0), |ds| {
                ds.iter().fold((0, 0), |(n, b), d| {
                    let (dn, db) = d.sent();
                    (n + dn, b + db)
                })
            }),
        })
    }

    /// Tells every connection that the server is shutting down (each closes with 1001).
    pub(crate) fn shut_down_connections(&self) {
        for d in self.deliverers.get().into_iter().flatten() {
            d.shut_down();
        }
    }

    /// The deliverer of connection `id`: as many as the runtime has workers, so that
    /// fan-out writes spread over them. Call from inside the runtime.
    pub(crate) fn deliverer(&self, id: u64) -> Arc<Deliverer> {
        let all = self.deliverers.get_or_init(|| {
            let workers = tokio::runtime::Handle::current().metrics().num_workers();
            let heartbeat = Some((self.config.ping_interval, self.config.idle_timeout));
            (0..workers.max(1))
                .map(|_| Deliverer::with_heartbeat(heartbeat))
                .collect()
        });
        all[id as usize % all.len()].clone()
    }

    pub(crate) fn next_client_id(&self) -> String {
        format!("c-{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The subprotocol of `/ws` (docs/protocol.md).
pub(crate) const CHANNEL_PROTOCOL: &str = "tidewire.v1";
