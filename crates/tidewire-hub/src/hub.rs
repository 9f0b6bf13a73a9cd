//! The state a running hub shares between its connections: configuration, the room
//! registry and the channel engine, the connection counts, metrics and the shutdown watch.

use crate::config::HubConfig;
use crate::engine::{Broker, MemoryBroker, MemoryPresence, PresenceStore};
use crate::log_budget::LogBudget;
use crate::metrics::{self, Gauges, Metrics};
use crate::node::{Deliverer, Node, NodeOptions};
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
    /// Connections in their HTTP phase (`http_phase::HttpSlot`).
    pub(crate) http_conns: AtomicUsize,
    pub(crate) subscribers: AtomicUsize,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) node: Node,
    pub(crate) metrics: Metrics,
    /// What `GET /metrics` encodes: reads `metrics` and the gauges (`metrics::Source`) when scraped.
    registry: prometheus_client::registry::Registry,
    /// Refused handshakes logged at `info`: 20 lines per 10 s, then a count.
    pub(crate) refusal_log: LogBudget,
    /// `POST /publish`'s rate limit, by user (or client address without a token).
    pub(crate) http_publish: crate::limits::KeyedBuckets,
    /// The listener's count of clients refused for want of descriptors (set by `serve`).
    pub(crate) refused: std::sync::OnceLock<tidewire::listener::RefusedCounter>,
    /// One deliverer per runtime worker, started with the first connection.
    deliverers: std::sync::OnceLock<Box<[Arc<Deliverer>]>>,
    /// This node's name in the cluster (`--node-name`, or generated).
    pub(crate) node_name: String,
    /// Prefix of client ids with a networked engine, so that they are unique in the
    /// cluster; empty in memory.
    client_prefix: String,
    /// Seconds since the Unix epoch when the hub started.
    pub(crate) started: u64,
    /// A drain has begun: new upgrades are refused, `/readyz` answers 503.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Nodes seen alive in the cluster's registry at the last announcement.
    pub(crate) cluster_nodes: AtomicU64,
    /// This node's `/ws` connections by user, for the server API.
    pub(crate) sessions: crate::sessions::Sessions,
    /// The server API's commands to every node, blocked users, revoked tokens.
    pub(crate) control: Arc<crate::control::Control>,
    /// The admin page's keys, when it is on (`admin_password`).
    pub(crate) admin: Option<crate::admin::Admin>,
    /// The application backend's calls (`[backend]`), when it has a URL.
    pub(crate) backend: Option<Arc<crate::backend::Backend>>,
    /// Event hooks to the backend (`backend.events`), when some are sent.
    pub(crate) hooks: Option<Arc<crate::hooks::Hooks>>,
}

impl Hub {
    /// A hub with `config` on the in-memory engine, whose connections close when
    /// `shutdown` turns true.
    pub fn new(config: HubConfig, shutdown: watch::Receiver<bool>) -> Arc<Hub> {
        let broker = MemoryBroker::new()
            .max_streams(config.max_channels)
            .max_history_bytes(config.max_history_bytes);
        Self::with_engine(
            config,
            shutdown,
            Arc::new(broker),
            Arc::new(MemoryPresence::new()),
        )
    }

    /// A hub with `config` on the engine it names (`config.engine`): memory, or connected
    /// to Redis or NATS. Fails when the engine cannot be reached (the error names it).
    pub async fn connect(
        config: HubConfig,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Arc<Hub>> {
        crate::config::check_engine(&config.engine).map_err(std::io::Error::other)?;
        let first = config.engine.first().map_or("memory", String::as_str);
        if first == "memory" {
            return Ok(Self::new(config, shutdown));
        }
        let node = config.node_name.clone().unwrap_or_else(generated_node_name);
        let shown: Vec<String> = config.engine.iter().map(|u| crate::redact_url(u)).collect();
        let failed = |e: crate::engine::Error| {
            std::io::Error::other(format!("engine {}: {e}", shown.join(",")))
        };
        if first.starts_with("redis") {
            #[cfg(feature = "redis")]
            {
                let ca = match &config.engine_ca_file {
                    Some(f) => Some(std::fs::read(f).map_err(|e| {
                        std::io::Error::other(format!("engine CA file {}: {e}", f.display()))
                    })?),
                    None => None,
                };
                let options = crate::engine::RedisOptions { ca_pem: ca };
                let engine =
                    crate::engine::RedisEngine::connect_with(&config.engine, &node, options)
                        .await
                        .map_err(failed)?;
                let mut config = config;
                config.node_name = Some(node);
                let hooks = crate::engine::RedisHookLog::new(engine.clone());
                return Ok(Self::with_engine_and_hooks(
                    config,
                    shutdown,
                    engine.clone(),
                    engine,
                    Some(hooks),
                ));
            }
            #[cfg(not(feature = "redis"))]
            {
                let _ = failed;
                return Err(std::io::Error::other(
                    "this build has no Redis engine (cargo feature `redis`)",
                ));
            }
        }
        if first.starts_with("nats") {
            #[cfg(feature = "nats")]
            {
                let engine = crate::engine::NatsEngine::connect(first, &node)
                    .await
                    .map_err(failed)?;
                let mut config = config;
                config.node_name = Some(node);
                return Ok(Self::with_engine(config, shutdown, engine.clone(), engine));
            }
        }
        let _ = failed;
        Err(std::io::Error::other(format!(
            "engine {first}: not in this build (cargo features `redis`, `nats`)"
        )))
    }

    /// A hub with `config` on `broker` and `presence`.
    pub fn with_engine(
        config: HubConfig,
        shutdown: watch::Receiver<bool>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
    ) -> Arc<Hub> {
        Self::with_engine_and_hooks(config, shutdown, broker, presence, None)
    }

    /// [`Hub::with_engine`] with the engine's log of event hooks (`None`: in memory).
    pub fn with_engine_and_hooks(
        config: HubConfig,
        shutdown: watch::Receiver<bool>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        hook_log: Option<Arc<dyn crate::engine::HookLog>>,
    ) -> Arc<Hub> {
        let limits = tidewire::Limits::default()
            .max_message_size(config.max_message_size)
            .max_frame_size(config.max_message_size);
        // No heartbeat timer per connection: the deliverers ping and time out their
        // connections (`Hub::deliverer`).
        let options = Options::default().limits(limits);
        let server = ServerBuilder::new()
            .options(options)
            .compression(config.compression);
        let networked = broker.health().engine != "memory";
        let node_name = config.node_name.clone().unwrap_or_else(generated_node_name);
        let client_prefix = if networked {
            format!("{:08x}-", rand::random::<u32>())
        } else {
            String::new()
        };
        let admin = config
            .admin_password
            .as_deref()
            .map(crate::admin::Admin::new);
        let backend = crate::backend::Backend::from_config(&config.backend).map(Arc::new);
        let http_publish =
            crate::limits::KeyedBuckets::new(config.publish_rate, config.publish_burst, 100_000);
        let hub = Arc::new_cyclic(|hub| Hub {
            admin,
            sessions: crate::sessions::Sessions::default(),
            control: crate::control::Control::new(hub.clone(), networked),
            backend: backend.clone(),
            hooks: backend.and_then(|b| {
                let log = hook_log
                    .unwrap_or_else(|| Arc::new(crate::engine::MemoryHookLog::new(&node_name)));
                crate::hooks::Hooks::start(&config.backend, &node_name, log, b)
            }),
            node_name,
            client_prefix,
            started: unix_now(),
            draining: std::sync::atomic::AtomicBool::new(false),
            cluster_nodes: AtomicU64::new(1),
            rooms: Rooms::new(config.room_buffer),
            channel_server: server.clone().protocols([CHANNEL_PROTOCOL]),
            room_server: server.protocols(config.room_protocols.iter().cloned()),
            node: Node::new(
                broker,
                presence,
                config.namespaces.clone(),
                NodeOptions::default(),
            ),
            config,
            next_id: AtomicU64::new(1),
            room_conns: AtomicUsize::new(0),
            channel_conns: AtomicUsize::new(0),
            http_conns: AtomicUsize::new(0),
            subscribers: AtomicUsize::new(0),
            shutdown,
            metrics: Metrics::default(),
            registry: metrics::registry(hub.clone()),
            refusal_log: LogBudget::new(20, std::time::Duration::from_secs(10)),
            http_publish,
            refused: std::sync::OnceLock::new(),
            deliverers: std::sync::OnceLock::new(),
        });
        hub.node
            .set_internal(Arc::new(crate::control::Events(hub.control.clone())));
        if let (Some(auth), Ok(_)) = (&hub.config.auth, tokio::runtime::Handle::try_current()) {
            auth.start();
        }
        if networked {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(hub.control.clone().start())),
                Err(_) => tracing::warn!("server API: no runtime to follow the cluster's commands"),
            }
        }
        hub
    }

    /// Number of open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.room_conns.load(Ordering::Relaxed) + self.channel_conns.load(Ordering::Relaxed)
    }

    /// The metrics page, as `GET /metrics` serves it: the Prometheus text format 0.0.4,
    /// encoded by `prometheus-client`. Fails only if the encoder refuses a value.
    pub fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        metrics::encode(&self.registry)
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
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("c-{}{n:x}", self.client_prefix)
    }

    /// This node as the cluster's registry shows it.
    pub(crate) fn status(&self) -> crate::engine::NodeStatus {
        crate::engine::NodeStatus {
            name: self.node_name.clone(),
            connections: self.connections() as u64,
            subscriptions: self.subscribers.load(Ordering::Relaxed) as u64,
            channels: self.node.channel_count() as u64,
            started: self.started,
            updated: unix_now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Tells at most `n` more connections to move to another node (1012); returns how
    /// many were told.
    pub(crate) fn restart_some(&self, n: usize) -> usize {
        let mut told = 0;
        for d in self.deliverers.get().into_iter().flatten() {
            told += d.restart_some(n - told);
            if told == n {
                break;
            }
        }
        told
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `HOST-XXXXXX`: the host name and a random part (several nodes may share a host).
fn generated_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The subprotocol of `/ws` (docs/protocol.md).
pub(crate) const CHANNEL_PROTOCOL: &str = "tidewire.v1";

impl metrics::Source for Hub {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn gauges(&self) -> Gauges {
        let broker = self.node.broker();
        Gauges {
            rooms_connections: self.room_conns.load(Ordering::Relaxed),
            channel_connections: self.channel_conns.load(Ordering::Relaxed),
            http_connections: self.http_conns.load(Ordering::Relaxed),
            rooms: self.rooms.len(),
            // What the engine holds where it can tell, else the channels this node serves.
            channels: broker
                .stream_count()
                .unwrap_or_else(|| self.node.channel_count()),
            subscribers: self.subscribers.load(Ordering::Relaxed),
            channels_by_namespace: channels_by_namespace(&**broker),
            history_bytes: broker.history_bytes().unwrap_or(0),
            history_shed: broker.history_shed().unwrap_or(0),
            queued_bytes: self
                .deliverers
                .get()
                .map_or(0, |ds| ds.iter().map(|d| d.queued()).sum()),
            refused_out_of_descriptors: self.refused.get().map_or(0, |c| c.get()),
            engine: {
                let h = broker.health();
                crate::metrics::EngineGauges {
                    up: h.is_up(),
                    reconnects: h.shards.iter().map(|s| s.reconnects).sum(),
                    latency_us: h.shards.iter().map(|s| s.latency_us).max().unwrap_or(0),
                    repairs: h.repairs,
                    lost: h.lost,
                    reaped: h.reaped,
                }
            },
            cluster_nodes: self.cluster_nodes.load(Ordering::Relaxed).max(1),
            backend_calls: self.backend.as_ref().map_or_else(Vec::new, |b| {
                let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let s = &b.stats;
                crate::backend::Call::ALL
                    .iter()
                    .map(|&call| {
                        let i = call as usize;
                        let counts = [c(&s.allowed[i]), c(&s.denied[i]), c(&s.failed[i])];
                        (call.name(), counts, c(&s.nanos[i]) as f64 / 1e9)
                    })
                    .collect()
            }),
            hooks: self.hooks.as_ref().map_or((0, 0, 0), |h| {
                let s = &h.stats;
                (
                    s.delivered.load(Ordering::Relaxed),
                    s.failures.load(Ordering::Relaxed),
                    s.retrying.load(Ordering::Relaxed),
                )
            }),
            delivered: self.deliverers.get().map_or((0, 0), |ds| {
                ds.iter().fold((0, 0), |(n, b), d| {
                    let (dn, db) = d.sent();
                    (n + dn, b + db)
                })
            }),
        }
    }
}

/// The engine's streams by namespace, sorted, `default` for names without a colon.
fn channels_by_namespace(broker: &dyn Broker) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = broker
        .streams_by_namespace()
        .unwrap_or_default()
        .into_iter()
        .map(|(ns, n)| {
            let ns = if ns.is_empty() { "default".into() } else { ns };
            (ns, n as u64)
        })
        .collect();
    all.sort();
    all
}
