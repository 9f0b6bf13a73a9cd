//! Incremental parsing and encoding of frame headers (RFC 6455 §5.2).
//!
//! Give [`FrameHeader::parse`] any prefix of the stream. Until a whole header is buffered
//! it reports "need more" (`Ok(None)`) and consumes nothing. The checks that need only the
//! header (reserved opcodes, control frame rules, minimal length encoding) happen here;
//! checks that need connection state (masking direction, RSV bits claimed by an extension,
//! size limits) happen in [`crate::connection`]. No allocation, no I/O.
//!
//! Not here: unmasking ([`crate::mask`]), reassembly ([`crate::connection`]).

use crate::error::ProtocolError;

/// The 4-bit frame opcode (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: first frame of a UTF-8 text message.
    Text = 0x1,
    /// 0x2: first frame of a binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl Opcode {
    /// Decodes the low nibble; reserved values are a protocol error.
    pub fn from_u8(v: u8) -> Result<Opcode, ProtocolError> {
        Ok(match v {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            // §5.2: "%x3-7 are reserved for further non-control frames",
            // "%xB-F are reserved for further control frames".
            _ => return Err(ProtocolError::ReservedOpcode),
        })
    }

    /// Close, ping and pong (§5.5): the opcodes with the high bit set.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// RSV1 (claimed by permessage-deflate: "compressed").
    pub rsv1: bool,
    /// RSV2, claimed by no extension we implement.
    pub rsv2: bool,
    /// RSV3, claimed by no extension we implement.
    pub rsv3: bool,
    /// The opcode.
    pub opcode: Opcode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

/// Largest possible header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

impl FrameHeader {
    /// A header for a single unfragmented frame.
    pub fn new(opcode: Opcode, payload_len: u64, mask: Option<[u8; 4]>) -> Self {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len,
        }
    }

    /// Parses a header from the start of `buf`. Returns the header and its length in
    /// bytes, or `Ok(None)` when `buf` does not hold a whole header yet.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let opcode = Opcode::from_u8(b0 & 0x0f)?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        // §5.5: "All control frames MUST have a payload length of 125 bytes or less and
        // MUST NOT be fragmented."
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if len7 > 125 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
                // §5.2: "the minimal number of bytes MUST be used to encode the length".
                if n < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (n, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(b);
                // §5.2: "the most significant bit MUST be 0".
                if n >> 63 != 0 || n <= 0xffff {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Length of the encoded header.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        let len = match self.payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        len + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Writes the header in its minimal encoding into `dst` and returns its length.
    #[inline]
    pub fn encode(&self, dst: &mut [u8; MAX_HEADER_LEN]) -> usize {
        dst[0] = (self.fin as u8) << 7
            | (self.rsv1 as u8) << 6
            | (self.rsv2 as u8) << 5
            | (self.rsv3 as u8) << 4
            | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            n @ 0..=125 => {
                dst[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xffff => {
                dst[1] = mask_bit | 126;
                dst[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                dst[1] = mask_bit | 127;
                dst[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            dst[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(h: FrameHeader) {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut buf);
        assert_eq!(n, h.encoded_len());
        assert_eq!(FrameHeader::parse(&buf[..n]).unwrap(), Some((h, n)));
        for cut in 0..n {
            assert_eq!(
                FrameHeader::parse(&buf[..cut]).unwrap(),
                None,
                "prefix {cut}"
            );
        }
    }

    #[test]
    fn three_length_encodings_roundtrip() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000, 1 << 40, (1 << 63) - 1] {
            roundtrip(FrameHeader::new(Opcode::Binary, len, None));
            roundtrip(FrameHeader::new(Opcode::Text, len, Some([1, 2, 3, 4])));
        }
    }

    #[test]
    fn rejects_non_minimal_lengths() {
        assert_eq!(
            FrameHeader::parse(&[0x82, 126, 0, 125]),
            Err(ProtocolError::NonMinimalLength)
        );
        let mut b = [0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(FrameHeader::parse(&b), Err(ProtocolError::NonMinimalLength));
        b = [0x82, 127, 0x80, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(FrameHeader::parse(&b), Err(ProtocolError::NonMinimalLength));
    }

    #[test]
    fn rejects_reserved_opcodes_and_bad_control_frames() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0]),
                Err(ProtocolError::ReservedOpcode)
            );
        }
        assert_eq!(
            FrameHeader::parse(&[0x09, 0]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 126]),
            Err(ProtocolError::ControlFrameTooLong)
        );
    }
}
