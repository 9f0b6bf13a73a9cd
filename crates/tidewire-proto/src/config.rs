//! What a peer can make us hold ([`Limits`]) and how the connection behaves ([`Config`]).

/// Bounds on what a peer can make this side buffer. Every field is finite by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame payload accepted, in bytes. Default 16 MiB: larger than any single
    /// frame a browser sends by default, small enough that one frame cannot exhaust memory.
    /// Checked from the frame header alone, before any payload is buffered. Exceeded:
    /// [`ProtocolError::FrameTooLarge`](crate::ProtocolError::FrameTooLarge), close 1009.
    pub max_frame_size: usize,
    /// Largest message accepted (after reassembly and, with permessage-deflate, after
    /// inflating), in bytes. Default 64 MiB. Exceeded:
    /// [`ProtocolError::MessageTooLarge`](crate::ProtocolError::MessageTooLarge), close 1009.
    pub max_message_size: usize,
    /// Largest HTTP request or response head during the handshake, in bytes. Default 16 KiB,
    /// enough for large cookies. Exceeded: HTTP 431 (server) or a handshake error (client).
    pub max_handshake_size: usize,
    /// Most header fields in the handshake. Default 64. Exceeded: HTTP 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            max_handshake_size: 16 << 10,
            max_headers: 64,
        }
    }
}

impl Limits {
    /// Sets [`Limits::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }
    /// Sets [`Limits::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets [`Limits::max_handshake_size`].
    pub fn max_handshake_size(mut self, bytes: usize) -> Self {
        self.max_handshake_size = bytes;
        self
    }
    /// Sets [`Limits::max_headers`].
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }
}

/// Behaviour of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Answer every ping with a pong automatically (§5.5.2). Default true. When false the
    /// application sees pings and must answer them itself.
    pub auto_pong: bool,
    /// Fragment outgoing messages into frames of at most this many payload bytes.
    /// Default `usize::MAX` (one frame per message).
    pub max_outgoing_frame_size: usize,
    /// Limits on what the peer can make us hold.
    pub limits: Limits,
    /// permessage-deflate (RFC 7692): the server's policy or the client's offer. Default
    /// `None` (off). Negotiated in the handshake; the connection gets the outcome.
    pub compression: Option<crate::DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auto_pong: true,
            max_outgoing_frame_size: usize::MAX,
            limits: Limits::default(),
            compression: None,
        }
    }
}

impl Config {
    /// Sets [`Config::auto_pong`].
    pub fn auto_pong(mut self, on: bool) -> Self {
        self.auto_pong = on;
        self
    }
    /// Sets [`Config::max_outgoing_frame_size`] (at least 1).
    pub fn max_outgoing_frame_size(mut self, bytes: usize) -> Self {
        self.max_outgoing_frame_size = bytes.max(1);
        self
    }
    /// Sets [`Config::compression`].
    pub fn compression(mut self, compression: Option<crate::DeflateConfig>) -> Self {
        self.compression = compression;
        self
    }
    /// Sets [`Config::limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}
