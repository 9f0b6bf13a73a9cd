//! Incremental UTF-8 validation across frames and partial frames (RFC 6455 §8.1).
//!
//! Text arrives in pieces: fragments of a message, and parts of a frame's payload as TCP
//! delivers them. [`Utf8Validator::feed`] checks each piece as it comes, carrying an
//! incomplete trailing sequence (at most 3 bytes) over to the next piece, so that the first
//! invalid byte fails the connection without waiting for the rest of the message.
//! The bulk work is done by `simdutf8`.

/// Validator state: the bytes of a code point split across pieces.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

/// The input is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no incomplete code point is pending.
    pub fn is_complete(&self) -> bool {
        self.partial_len == 0
    }

    /// Forgets any pending state (start of a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Validates the next piece. `last` marks the end of the message, where an
    /// incomplete code point is an error too.
    pub fn feed(&mut self, mut data: &[u8], last: bool) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            // Complete the pending code point from the front of `data`.
            let have = self.partial_len as usize;
            let need = utf8_len(self.partial[0]).ok_or(Utf8Error)?;
            let take = (need - have).min(data.len());
            self.partial[have..have + take].copy_from_slice(&data[..take]);
            let now = have + take;
            match simdutf8::compat::from_utf8(&self.partial[..now]) {
                Ok(_) => {
                    self.partial_len = 0;
                    data = &data[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still incomplete: `data` is exhausted.
                    self.partial_len = now as u8;
                    return if last { Err(Utf8Error) } else { Ok(()) };
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Utf8Error),
                None => {
                    // Truncated sequence at the end: keep it for the next piece.
                    let rest = &data[e.valid_up_to()..];
                    if last {
                        return Err(Utf8Error);
                    }
                    self.partial[..rest.len()].copy_from_slice(rest);
                    self.partial_len = rest.len() as u8;
                    Ok(())
                }
            },
        }
    }
}

fn utf8_len(first: u8) -> Option<usize> {
    match first {
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) {
        let expect = std::str::from_utf8(bytes).is_ok();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut v = Utf8Validator::new();
                let r = v
                    .feed(&bytes[..a], false)
                    .and_then(|_| v.feed(&bytes[a..b], false))
                    .and_then(|_| v.feed(&bytes[b..], true));
                assert_eq!(r.is_ok(), expect, "{bytes:x?} split at {a},{b}");
            }
        }
    }

    #[test]
    fn agrees_with_std_for_every_split() {
        check_all_splits("κόσμε".as_bytes());
        check_all_splits("a€𝄞z".as_bytes());
        check_all_splits(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
        ]);
        check_all_splits(&[0xf4, 0x90, 0x80, 0x80]);
        check_all_splits(&[0xf0, 0x9f, 0x98]);
        check_all_splits(&[0xc0, 0x80]);
        check_all_splits(&[0xe0, 0x80, 0x80]);
        check_all_splits(&[0x61, 0xed, 0xbf, 0xbf]);
    }

    #[test]
    fn fails_fast_before_the_end() {
        let mut v = Utf8Validator::new();
        // 0xce 0xba is κ; 0xf4 0x90 starts a code point above U+10FFFF: invalid at once.
        assert!(v.feed(&[0xce, 0xba, 0xf4, 0x90], false).is_err());
    }
}
