//! What an HTTP/3 peer sends before any WebSocket byte (RFC 9114, RFC 9204, RFC 9220): a
//! request head (QPACK without a dynamic table, Huffman included, then the checks of the
//! pseudo-headers), and a control stream's frames and SETTINGS. Never panics, and a
//! decoded field section encodes back to the same fields. The first byte picks which.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => tidewire::http3::fuzzing::request_head(rest),
        Some((_, rest)) => tidewire::http3::fuzzing::control(rest),
        None => {}
    }
});
