//! The Tidewire real-time server as a library.
//!
//! This first part serves raw rooms: at `ws://HOST/rooms/{room}` every text or binary
//! message a client sends is broadcast to the other clients in that room, which is all the
//! plain browser chat of the tutorial needs (`new WebSocket(url)` and `send(text)`). The
//! channel protocol, history, presence and auth build on the same router; [`engine`] holds
//! their storage and fan-out (offsets, epochs, history, recovery, presence, namespaces).

mod channels;
pub mod engine;
mod rooms;
mod server;

pub use engine::{Engine, MemoryEngine, NamespaceConfig, NamespaceOptions};
pub use rooms::Rooms;
pub use server::{router, serve, Hub, HubConfig};
