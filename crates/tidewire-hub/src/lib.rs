//! The Tidewire real-time server as a library: what `tidewire serve` runs.
//!
//! - Raw rooms at `ws://HOST/rooms/{room}`: every text or binary message a client sends is
//!   broadcast to the other clients in the room, which is all the plain browser chat of the
//!   tutorial needs (`new WebSocket(url)` and `send(text)`).
//! - The `tidewire.v1` channel protocol at `ws://HOST/ws` (docs/protocol.md): channels with
//!   offsets and epochs, history, gap-free resume, presence, namespaces, JWT auth, limits.
//! - `/healthz`, `/metrics` (Prometheus), the server API for backends (`POST /api/METHOD`,
//!   described at `/api/openapi.json`: docs/api.md), the demo pages, and the admin page at
//!   `/admin` when an admin password is set (docs/admin.md).
//!
//! The wire format is the `tidewire-hub-proto` crate's; the other side, a `tidewire.v1`
//! client that reconnects, resubscribes with `since` and reports what could not be
//! recovered, is the `tidewire-hub-client` crate (which does not depend on this one).
//!
//! [`node`] is this process's side of the channels (local subscribers, fan-out, recovery,
//! presence) over the [`engine`]: a [`Broker`] and a [`PresenceStore`], chosen at run time.
//! [`HubConfig`] is the configuration, readable from TOML ([`HubConfig::load_file`]).

mod admin;
mod admission;
mod api;
pub mod auth;
mod backend;
mod channel_endpoint;
mod channels;
mod config;
mod connection;
mod control;
pub mod engine;
mod hooks;
mod http_client;
mod http_phase;
mod hub;
mod limits;
mod log_budget;
pub mod log_text;
mod metrics;
pub mod node;
mod pages;
mod room_endpoint;
mod rooms;
mod server;
mod sessions;
mod sse;

pub use auth::{AuthConfig, AuthError, Identity};
pub use config::{
    check_engine, default_namespaces, parse_duration, redact_url, BackendConfig, ConfigError,
    HubConfig, LogFormat, TlsFiles, DEFAULT_FILE, HOOK_EVENTS,
};
pub use engine::{Broker, MemoryBroker, MemoryPresence, PresenceStore};
pub use hub::Hub;
pub use log_text::peer;
pub use metrics::Metrics;
pub use node::{NamespaceConfig, NamespaceOptions, Node, NodeOptions};
pub use rooms::Rooms;
pub use server::{router, serve};

/// Locks `m`, taking the data of a poisoned lock as it is (a panic elsewhere must not
/// take every later caller down with it).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
