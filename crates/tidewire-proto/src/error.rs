//! Errors of the protocol core.
//!
//! [`ProtocolError`] is every way a peer can break RFC 6455 (and RFC 7692). Its
//! [`ProtocolError::close_code`] is the one place that decides which close code goes on the
//! wire. [`UsageError`] is caller misuse (sending after close, an invalid close code from
//! the application) and is never reported to the peer.

use crate::close::CloseCode;
use std::fmt;

/// A violation of the protocol by the peer. Static message, `Copy`, one close code each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1/2/3 set without an extension that claims the bit (§5.2).
    ReservedBitsSet,
    /// Opcode 0x3–0x7 or 0xB–0xF (§5.2).
    ReservedOpcode,
    /// A client frame without a mask (§5.1).
    UnmaskedFrame,
    /// A server frame with a mask (§5.1).
    MaskedFrame,
    /// Length not in its minimal encoding, or a 64-bit length with the top bit set (§5.2).
    NonMinimalLength,
    /// A control frame with a payload over 125 bytes (§5.5).
    ControlFrameTooLong,
    /// A fragmented control frame (§5.5).
    FragmentedControlFrame,
    /// A continuation frame with no message in progress (§5.4).
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is still open (§5.4).
    ExpectedContinuation,
    /// Text that is not valid UTF-8 (§8.1).
    InvalidUtf8,
    /// A close frame with a one-byte payload (§5.5.1).
    CloseFrameTooShort,
    /// A close code that may not appear on the wire (§7.4).
    InvalidCloseCode,
    /// A close reason that is not valid UTF-8 (§5.5.1).
    InvalidCloseReason,
    /// A frame over the configured frame size limit.
    FrameTooLarge,
    /// A message over the configured message size limit.
    MessageTooLarge,
    /// A data frame after the peer's close frame (§5.5.1).
    DataAfterClose,
    /// The compressed data could not be inflated (RFC 7692 §6.2).
    InvalidCompressedData,
    /// The transport ended without a close frame (§7.1.5: code 1006, never sent).
    UnexpectedEof,
}

impl ProtocolError {
    /// The close code to send when failing the connection for this error (§7.4.1).
    /// This is the only place that maps errors to wire codes.
    pub fn close_code(self) -> CloseCode {
        use ProtocolError::*;
        match self {
            InvalidUtf8 | InvalidCloseReason => CloseCode::INVALID_PAYLOAD,
            FrameTooLarge | MessageTooLarge => CloseCode::MESSAGE_TOO_BIG,
            UnexpectedEof => CloseCode::ABNORMAL,
            ReservedBitsSet
            | ReservedOpcode
            | UnmaskedFrame
            | MaskedFrame
            | NonMinimalLength
            | ControlFrameTooLong
            | FragmentedControlFrame
            | UnexpectedContinuation
            | ExpectedContinuation
            | CloseFrameTooShort
            | InvalidCloseCode
            | DataAfterClose
            | InvalidCompressedData => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short, static description, also used as the close reason.
    pub fn message(self) -> &'static str {
        use ProtocolError::*;
        match self {
            ReservedBitsSet => "reserved bits set without a negotiated extension",
            ReservedOpcode => "reserved opcode",
            UnmaskedFrame => "client frame not masked",
            MaskedFrame => "server frame masked",
            NonMinimalLength => "payload length not minimally encoded",
            ControlFrameTooLong => "control frame payload over 125 bytes",
            FragmentedControlFrame => "fragmented control frame",
            UnexpectedContinuation => "continuation frame without a message in progress",
            ExpectedContinuation => "new message before the previous one finished",
            InvalidUtf8 => "invalid UTF-8 in text message",
            CloseFrameTooShort => "close frame payload of one byte",
            InvalidCloseCode => "invalid close code",
            InvalidCloseReason => "close reason not valid UTF-8",
            FrameTooLarge => "frame too large",
            MessageTooLarge => "message too large",
            DataAfterClose => "frame after close",
            InvalidCompressedData => "invalid compressed data",
            UnexpectedEof => "connection closed without a close frame",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ProtocolError {}

/// Misuse of the API by the local application. Never sent to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// A data or ping frame after this side sent its close frame.
    SendAfterClose,
    /// A close code the application may not send (1005, 1006, 1015, out of range).
    InvalidCloseCode,
    /// A control payload (ping, pong, close reason plus code) over 125 bytes.
    ControlPayloadTooLong,
    /// A fragment out of order: a continuation with no message started, or a new message
    /// (or a whole one) while a fragmented one is unfinished.
    InvalidFragment,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsageError::SendAfterClose => "cannot send after the close frame was sent",
            UsageError::InvalidCloseCode => "close code may not be sent",
            UsageError::ControlPayloadTooLong => "control frame payload over 125 bytes",
            UsageError::InvalidFragment => "fragment out of order",
        })
    }
}

impl std::error::Error for UsageError {}
