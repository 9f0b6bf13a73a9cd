//! The HTTP side of `tidewire serve`: routes, WebSocket endpoints, graceful shutdown.

use crate::engine::{MemoryEngine, NamespaceConfig, NamespaceOptions};
use crate::rooms::Rooms;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidewire::upgrade::WebSocketUpgrade;
use tidewire::{CloseCode, CloseFrame, DeflateConfig, Options, PreparedMessage, ServerBuilder};
use tokio::sync::{broadcast, watch};

/// Settings of the hub.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Send a room message back to its sender too. Default false.
    pub echo_to_sender: bool,
    /// How many messages a room member may fall behind before it is disconnected as a
    /// slow consumer. Default 1024.
    pub room_buffer: usize,
    /// Server pings: interval and the silence after which a connection is closed.
    /// Default 20 s and 60 s.
    pub ping_interval: Duration,
    /// See [`HubConfig::ping_interval`].
    pub idle_timeout: Duration,
    /// Largest message accepted from a client. Default 1 MiB.
    pub max_message_size: usize,
    /// permessage-deflate policy, `None` for off. Default on, without server context
    /// takeover, so that a room message is compressed once for all members.
    pub compression: Option<DeflateConfig>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            echo_to_sender: false,
            room_buffer: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 1 << 20,
            compression: Some(DeflateConfig::default().server_no_context_takeover(true)),
        }
    }
}

/// Shared state of a running hub.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    rooms: Rooms,
    server: ServerBuilder,
    next_id: AtomicU64,
    active: AtomicUsize,
    shutdown: watch::Receiver<bool>,
    engine: Arc<MemoryEngine>,
    channel_server: ServerBuilder,
}

impl Hub {
    /// Number of open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// The routes of the hub.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/rooms/{room}", get(room_upgrade))
        .route("/ws", get(channel_upgrade))
        .fallback(|uri: Uri| async move {
            (
                StatusCode::NOT_FOUND,
                format!("404 Not Found: no route for {}\n", uri.path()),
            )
        })
        .with_state(hub)
}

async fn room_upgrade(
    State(hub): State<Arc<Hub>>,
    Path(room): Path<String>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    if room.is_empty() || room.len() > 200 {
        return (
            StatusCode::BAD_REQUEST,
            "room name must be 1 to 200 bytes\n",
        )
            .into_response();
    }
    // Join before the 101 goes out: a message sent to the room right after the client's
    // handshake completes must reach it. The membership leaves the room when dropped,
    // whether or not the upgrade completes.
    let (tx, rx) = hub.rooms.join(&room);
    let membership = Membership {
        hub: hub.clone(),
        room,
        rx: Some(rx),
    };
    let hub2 = hub.clone();
    ws.server(hub.server.clone())
        .on_upgrade(move |socket| room_member(hub2, membership, tx, socket))
}

async fn channel_upgrade(
    State(hub): State<Arc<Hub>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    let hub2 = hub.clone();
    ws.server(hub.channel_server.clone())
        .on_upgrade(move |socket| async move {
            let id = hub2.next_id.fetch_add(1, Ordering::Relaxed);
            hub2.active.fetch_add(1, Ordering::Relaxed);
            let client_id = format!("c-{id:x}");
            crate::channels::serve_connection(
                hub2.engine.clone(),
                client_id,
                socket,
                hub2.shutdown.clone(),
            )
            .await;
            hub2.active.fetch_sub(1, Ordering::Relaxed);
        })
}

/// A room member's receiver; leaves the room when dropped.
struct Membership {
    hub: Arc<Hub>,
    room: String,
    rx: Option<broadcast::Receiver<crate::rooms::RoomMessage>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.rooms.leave(&self.room);
    }
}

async fn room_member(
    hub: Arc<Hub>,
    mut membership: Membership,
    tx: broadcast::Sender<crate::rooms::RoomMessage>,
    mut ws: tidewire::WebSocketStream<tidewire::upgrade::Upgraded>,
) {
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    hub.active.fetch_add(1, Ordering::Relaxed);
    let room = membership.room.clone();
    let Some(mut rx) = membership.rx.take() else {
        return;
    };
    let mut shutdown = hub.shutdown.clone();
    let echo = hub.config.echo_to_sender;
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(m)) => {
                    if let Some(prepared) = PreparedMessage::new(m) {
                        // No receivers besides ourselves is fine: the room may be empty.
                        let _ = tx.send((id, Arc::new(prepared)));
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(id, %room, "connection ended: {e}");
                    break;
                }
                None => break,
            },
            got = rx.recv() => match got {
                Ok((from, m)) => {
                    if (from != id || echo) && ws.queue_prepared(&m).is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let reason = format!("slow consumer: {n} messages dropped");
                    let _ = ws.close(Some(CloseFrame::new(CloseCode::POLICY_VIOLATION, reason))).await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = shutdown.changed() => {
                let frame = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
                let _ = ws.close(Some(frame)).await;
                break;
            }
        }
    }
    drop(rx);
    drop(membership);
    hub.active.fetch_sub(1, Ordering::Relaxed);
}

/// Runs the hub until `shutdown` resolves, then closes every WebSocket with 1001, waits
/// (at most 5 s) for them to finish, and returns.
pub async fn serve(
    config: HubConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = tidewire::Limits::default()
        .max_message_size(config.max_message_size)
        .max_frame_size(config.max_message_size);
    let options = Options::default()
        .limits(limits)
        .heartbeat(config.ping_interval, config.idle_timeout);
    let namespaces =
        NamespaceConfig::new().default_namespace(NamespaceOptions::default().presence(true));
    let server = ServerBuilder::new()
        .options(options)
        .compression(config.compression);
    let hub = Arc::new(Hub {
        rooms: Rooms::new(config.room_buffer),
        channel_server: server.clone().protocols(["tidewire.v1"]),
        server,
        engine: Arc::new(MemoryEngine::new(namespaces)),
        config,
        next_id: AtomicU64::new(1),
        active: AtomicUsize::new(0),
        shutdown: stop_rx,
    });
    println!("tidewire serve listening on http://{local}/ (rooms at ws://{local}/rooms/NAME, channels at ws://{local}/ws)");
    let sweeper = hub.engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            sweeper.sweep(std::time::Instant::now());
        }
    });
    let app = router(hub.clone());
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing WebSocket connections with 1001");
        let _ = stop_tx.send(true);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
