//! What the echo and connections modes send.
//!
//! - `alpha`: 'a'..'z' repeated, the same bytes in every message (the historical default).
//! - `json`: deterministic JSON-like market-data records whose numbers vary per record and
//!   per message, cut to the size. Compressible about like real traffic (5–7× with
//!   deflate), neither all-equal nor random, so permessage-deflate has honest work to do.
//!   The bytes are the same as `benches/peers/loadgen --payload json` makes for the same
//!   size and message number, so the two generators load a server alike.
//!
//! A connection cycles through `cycle(...)` in order. For `json` the cycle holds at least
//! 128 KiB of distinct messages (16 to 8192 of them): no message repeats inside deflate's
//! 32 KiB window, so neither side compresses against an identical earlier copy.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Payload {
    /// 'a'..'z' repeated; every message the same.
    Alpha,
    /// JSON-like records that vary per message (compressible like real data).
    Json,
}

impl Payload {
    pub fn name(self) -> &'static str {
        match self {
            Payload::Alpha => "alpha",
            Payload::Json => "json",
        }
    }

    /// The messages of one connection's cycle, as plain bytes.
    pub fn cycle(self, size: usize) -> Vec<Vec<u8>> {
        match self {
            Payload::Alpha => vec![alpha(size)],
            Payload::Json => {
                let k = (128 * 1024usize).div_ceil(size.max(1)).clamp(16, 8192);
                (0..k as u64).map(|i| json(size, i)).collect()
            }
        }
    }
}

/// 'a'..'z' repeated, `size` bytes.
pub fn alpha(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Message number `seed` of the json payload: records
/// `{"id":..,"price":..,"qty":..,"side":..,"symbol":..,"venue":..,"ts":..},` after a `[`,
/// cut to `size` bytes. ASCII, so valid as a text message too.
pub fn json(size: usize, seed: u64) -> Vec<u8> {
    const SYMBOLS: [&str; 8] = ["ABC", "XYZ", "MSFT", "AAPL", "GOOG", "TSLA", "NVDA", "AMZN"];
    const VENUES: [&str; 4] = ["XNAS", "XNYS", "BATS", "ARCX"];
    let mut out = Vec::with_capacity(size + 160);
    out.push(b'[');
    // xorshift64, seeded per message.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut record = 0u64;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cents = 10_000 + x % 90_000;
        let side = if (x >> 40) & 1 == 0 { "buy" } else { "sell" };
        let line = format!(
            "{{\"id\":{},\"price\":{}.{:02},\"qty\":{},\"side\":\"{side}\",\"symbol\":\"{}\",\
             \"venue\":\"{}\",\"ts\":{}}},",
            seed * 1000 + record,
            cents / 100,
            cents % 100,
            1 + (x >> 20) % 500,
            SYMBOLS[((x >> 8) % 8) as usize],
            VENUES[((x >> 30) % 4) as usize],
            1_700_000_000_000u64 + seed * 37 + record * 3,
        );
        out.extend_from_slice(line.as_bytes());
        record += 1;
    }
    out.truncate(size);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_repeats_the_alphabet() {
        assert_eq!(alpha(28), b"abcdefghijklmnopqrstuvwxyzab");
        assert!(alpha(0).is_empty());
        assert_eq!(Payload::Alpha.cycle(5), vec![b"abcde".to_vec()]);
    }

    #[test]
    fn json_records_vary_per_message_and_have_the_size() {
        let a = json(300, 0);
        assert_eq!(a.len(), 300);
        assert!(
            a.starts_with(b"[{\"id\":0,\"price\":"),
            "{}",
            String::from_utf8_lossy(&a)
        );
        assert!(a.is_ascii());
        let text = String::from_utf8(a.clone()).unwrap();
        for key in [
            "\"qty\":",
            "\"side\":",
            "\"symbol\":",
            "\"venue\":",
            "\"ts\":17000",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        // Deterministic, and different for another message number.
        assert_eq!(json(300, 0), a);
        assert_ne!(json(300, 1), a);
        assert!(json(300, 1).starts_with(b"[{\"id\":1000,"));
        assert_eq!(json(0, 3).len(), 0);
        assert_eq!(json(1, 3), b"[");
    }

    #[test]
    fn json_cycle_covers_128_kib_of_distinct_messages() {
        for (size, count) in [(20, 6554), (1024, 128), (16384, 16), (65536, 16), (1, 8192)] {
            let c = Payload::Json.cycle(size);
            assert_eq!(c.len(), count, "size {size}");
            assert!(c.iter().all(|m| m.len() == size));
        }
        let c = Payload::Json.cycle(1024);
        let distinct: std::collections::HashSet<&Vec<u8>> = c.iter().collect();
        assert_eq!(distinct.len(), c.len());
    }
}
