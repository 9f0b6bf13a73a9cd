//! The opening handshake (RFC 6455 §4). Filled in by the handshake work.
