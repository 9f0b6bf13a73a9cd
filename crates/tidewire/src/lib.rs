//! Tidewire: WebSocket on tokio.
