//! Tidewire: a fast, conformant WebSocket (RFC 6455) server and client on tokio.
//!
//! ```no_run
//! # async fn run() -> tidewire::Result<()> {
//! // Server: accept on any AsyncRead + AsyncWrite.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! let (tcp, _) = listener.accept().await?;
//! let mut ws = tidewire::accept(tcp).await?;
//! while let Some(msg) = ws.recv().await {
//!     let msg = msg?;
//!     if msg.is_data() {
//!         ws.send(msg).await?;
//!     }
//! }
//! // Client.
//! let (mut ws, _response) = tidewire::connect("ws://127.0.0.1:9001/").await?;
//! ws.send(tidewire::Message::text("hello")).await?;
//! # Ok(()) }
//! ```
//!
//! [`ReconnectingClient`] ([`reconnect`]) connects again by itself after a disconnect,
//! with backoff and a heartbeat, and reports each step as an event.
//!
//! The protocol itself lives in the sans-I/O crate [`tidewire_proto`], re-exported as
//! [`proto`]; this crate drives it over tokio.

#![warn(missing_docs)]

mod accept;
mod connect;
mod error;
#[cfg(feature = "http2")]
pub mod http2;
#[cfg(feature = "http3")]
pub mod http3;
pub mod listener;
pub mod proxy;
pub mod reconnect;
mod stream;
mod transport;
#[cfg(feature = "upgrade")]
pub mod upgrade;

pub use accept::{accept, Reject, Response, ServerBuilder};
pub use connect::{connect, ClientBuilder, WsUrl};
pub use error::{Error, Result};
#[cfg(feature = "http2")]
pub use http2::Http2;
pub use listener::Listener;
pub use proxy::Proxy;
pub use reconnect::ReconnectingClient;
pub use stream::{Heartbeat, Options, WebSocketStream};
pub use transport::{alpn_protocols, MaybeTlsStream};
#[cfg(feature = "tls")]
pub use transport::{
    client_config_with_roots, default_client_config, native_root_store, root_store_from_pem,
    server_config_from_pem, webpki_client_config,
};

pub use tidewire_proto as proto;
pub use tidewire_proto::{
    CloseCode, CloseFrame, Config, DeflateConfig, Limits, Message, PreparedMessage, Role, Utf8Bytes,
};
#[cfg(feature = "tls")]
pub use {rustls, tokio_rustls};
