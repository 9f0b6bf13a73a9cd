//! The Tidewire real-time server as a library: what `tidewire serve` runs.
//!
//! - Raw rooms at `ws://HOST/rooms/{room}`: every text or binary message a client sends is
//!   broadcast to the other clients in the room, which is all the plain browser chat of the
//!   tutorial needs (`new WebSocket(url)` and `send(text)`).
//! - The `tidewire.v1` channel protocol at `ws://HOST/ws` (docs/protocol.md): channels with
//!   offsets and epochs, history, gap-free resume, presence, namespaces, JWT auth, limits.
//! - `/healthz`, `/metrics` (Prometheus), `POST /api/publish`, the demo pages.
//!
//! [`client`] is the other side: a `tidewire.v1` client that reconnects, resubscribes with
//! `since` and reports what could not be recovered.
//!
//! [`engine`] holds storage and fan-out behind the [`Engine`] trait; [`HubConfig`] is the
//! configuration, readable from TOML ([`HubConfig::load_file`]).

mod admission;
mod api;
pub mod auth;
mod channel_endpoint;
mod channels;
pub mod client;
mod config;
mod connection;
pub mod engine;
mod hub;
mod limits;
mod log_budget;
mod metrics;
mod pages;
mod room_endpoint;
mod rooms;
mod server;

pub use auth::{AuthConfig, AuthError, Identity};
pub use config::{
    default_namespaces, parse_duration, ConfigError, HubConfig, LogFormat, TlsFiles, DEFAULT_FILE,
};
pub use engine::{Engine, MemoryEngine, NamespaceConfig, NamespaceOptions};
pub use hub::Hub;
pub use metrics::Metrics;
pub use rooms::Rooms;
pub use server::{router, serve};
