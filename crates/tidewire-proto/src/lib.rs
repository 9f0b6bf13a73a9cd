//! Sans-I/O WebSocket protocol: RFC 6455 framing, handshake and connection state,
//! with RFC 7692 permessage-deflate ([`deflate`]).
//!
//! Nothing here reads a socket, spawns a task or looks at a clock. Bytes come in through
//! [`Connection::receive`], messages and control events come out of it, and bytes to send
//! accumulate in the connection's output queue until the caller drains them
//! ([`Connection::transmit_chunk`], [`Connection::advance_transmit`]). The `tidewire` crate
//! drives this over tokio.
//!
//! Data flows one way: bytes → [`frame`] headers (in-place unmasking, [`mask`]) →
//! reassembly and UTF-8 validation ([`utf8`]) → [`Message`]s → application, and back:
//! application → [`Connection::send`] → framed bytes in the output queue.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod close;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use close::{CloseCode, CloseFrame};
pub use config::{Config, Limits};
pub use connection::{Connection, PreparedMessage, State};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{ProtocolError, UsageError};
pub use frame::{FrameHeader, Opcode};
pub use message::{Message, Utf8Bytes};

/// Which end of the connection this is. It decides masking (RFC 6455 §5.1): a client masks
/// every frame it sends and a server rejects unmasked frames; the reverse for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that opened the connection and sent the HTTP upgrade request.
    Client,
    /// The side that accepted the upgrade.
    Server,
}
