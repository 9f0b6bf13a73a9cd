//! permessage-deflate (RFC 7692): negotiation and the per-message codec.
//!
//! Negotiation is pure: [`negotiate`] picks the first acceptable offer from a client's
//! `Sec-WebSocket-Extensions` (server side), [`offer`] and [`accept_response`] are the client
//! side. The result is [`DeflateParams`], which the connection's [`Deflate`] codec uses.
//!
//! Memory is the cost to watch: a zlib compressor with a 15-bit window holds about 256 KiB,
//! a decompressor about 40 KiB. So streams are created on first use, and where a side does
//! not keep its context between messages ("no context takeover") it does not own a stream
//! at all: it borrows one from a small per-thread cache for the duration of one message. An
//! idle connection without context takeover therefore holds no deflate state.
//!
//! zlib cannot compress with an 8-bit window. When the peer limits us to 8 bits we accept
//! and send our messages uncompressed (RSV1 clear), which §6 allows; a window of 8 for what
//! we receive is inflated with 9 bits, which decodes anything an 8-bit window produced.

use crate::error::ProtocolError;
use crate::handshake::{Extension, HandshakeError};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compression policy (server) or offer (client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Server: always answer with `server_no_context_takeover` (our compressor starts fresh
    /// for every message: no per-connection compressor memory, and a broadcast message is
    /// compressed once for all connections). Client: request it. Default false.
    pub server_no_context_takeover: bool,
    /// Server: require `client_no_context_takeover` (no per-connection inflate state).
    /// Client: promise it. Default false.
    pub client_no_context_takeover: bool,
    /// Server: the largest window (9–15; 8 accepted, see the module docs) our compressor
    /// uses. Client: requested from the server when below 15. Default 15.
    pub server_max_window_bits: u8,
    /// Server: the largest window the client may compress with, when the client allows us
    /// to choose. Client: offered. Default 15.
    pub client_max_window_bits: u8,
    /// zlib level 0–9. Default 1: most of the size gain for a fraction of the CPU.
    pub level: u32,
    /// Messages shorter than this many bytes are sent uncompressed. Default 64.
    pub threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 1,
            threshold: 64,
        }
    }
}

impl DeflateConfig {
    /// Sets [`DeflateConfig::server_no_context_takeover`].
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }
    /// Sets [`DeflateConfig::client_no_context_takeover`].
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }
    /// Sets [`DeflateConfig::server_max_window_bits`] (clamped to 8–15).
    pub fn server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = bits.clamp(8, 15);
        self
    }
    /// Sets [`DeflateConfig::client_max_window_bits`] (clamped to 8–15).
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits.clamp(8, 15);
        self
    }
    /// Sets [`DeflateConfig::level`] (clamped to 0–9).
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }
    /// Sets [`DeflateConfig::threshold`].
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }
}

/// What was agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server compresses every message with a fresh context.
    pub server_no_context_takeover: bool,
    /// The client compresses every message with a fresh context.
    pub client_no_context_takeover: bool,
    /// The server's compression window (LZ77 sliding window, 2^bits bytes).
    pub server_max_window_bits: u8,
    /// The client's compression window.
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` value a server answers with.
    pub fn response_header(&self, client_offered_window: bool) -> String {
        let mut s = String::from(NAME);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if client_offered_window && self.client_max_window_bits < 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }
}

/// A parsed `*_max_window_bits` value: "8" to "15", no leading zeros (§7.1.2).
fn window_bits(value: Option<&str>) -> Option<u8> {
    let v = value?;
    if v.len() > 2 || v.starts_with('0') {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

/// Server side (§5, §7): the parameters for the first offer we can accept, and whether
/// that offer carried `client_max_window_bits` (the response may only then name it).
/// Offers with unknown, repeated or invalid parameters are declined (§7, "MUST decline").
pub fn negotiate(
    extensions: &[Extension],
    config: &DeflateConfig,
) -> Option<(DeflateParams, bool)> {
    extensions
        .iter()
        .filter(|e| e.name.eq_ignore_ascii_case(NAME))
        .find_map(|offer| accept_offer(offer, config))
}

fn accept_offer(offer: &Extension, config: &DeflateConfig) -> Option<(DeflateParams, bool)> {
    let mut p = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut seen: Vec<&str> = Vec::with_capacity(4);
    let mut client_window_offered = false;
    for (name, value) in &offer.params {
        let name = name.as_str();
        // §7: "multiple extension parameters with the same name" → decline.
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return None;
        }
        seen.push(name);
        match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => p.server_no_context_takeover = true,
            "client_no_context_takeover" if value.is_none() => p.client_no_context_takeover = true,
            // §7.1.2.1: a value is required in an offer.
            "server_max_window_bits" => p.server_max_window_bits = window_bits(value.as_deref())?,
            // §7.1.2.2: no value ("any"), or a valid value.
            "client_max_window_bits" => {
                client_window_offered = true;
                if let Some(v) = value {
                    p.client_max_window_bits = window_bits(Some(v))?;
                }
            }
            _ => return None,
        }
    }
    if config.server_no_context_takeover {
        p.server_no_context_takeover = true;
    }
    if config.client_no_context_takeover {
        p.client_no_context_takeover = true;
    }
    p.server_max_window_bits = p.server_max_window_bits.min(config.server_max_window_bits);
    if client_window_offered {
        p.client_max_window_bits = p.client_max_window_bits.min(config.client_max_window_bits);
    }
    Some((p, client_window_offered))
}

/// Client side: the offer to put in `Sec-WebSocket-Extensions`.
pub fn offer(config: &DeflateConfig) -> String {
    let mut s = String::from(NAME);
    if config.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if config.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if config.server_max_window_bits < 15 {
        s.push_str(&format!(
            "; server_max_window_bits={}",
            config.server_max_window_bits
        ));
    }
    if config.client_max_window_bits < 15 {
        s.push_str(&format!(
            "; client_max_window_bits={}",
            config.client_max_window_bits
        ));
    } else {
        s.push_str("; client_max_window_bits");
    }
    s
}

/// Client side (§5.1, §7): checks the server's answer to our [`offer`]. `Ok(None)`: the
/// server declined. Anything we did not offer, or did not allow, fails the handshake.
pub fn accept_response(
    extensions: &[Extension],
    config: &DeflateConfig,
) -> Result<Option<DeflateParams>, HandshakeError> {
    let mut found = None;
    for ext in extensions {
        if !ext.name.eq_ignore_ascii_case(NAME) || found.is_some() {
            return Err(HandshakeError::UnofferedExtension);
        }
        found = Some(ext);
    }
    let Some(ext) = found else { return Ok(None) };
    let mut p = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: config.client_no_context_takeover,
        server_max_window_bits: 15,
        client_max_window_bits: config.client_max_window_bits,
    };
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in &ext.params {
        let lname = name.to_ascii_lowercase();
        if seen.contains(&lname) {
            return Err(HandshakeError::InvalidExtensions);
        }
        match lname.as_str() {
            "server_no_context_takeover" if value.is_none() => p.server_no_context_takeover = true,
            "client_no_context_takeover" if value.is_none() => p.client_no_context_takeover = true,
            "server_max_window_bits" => {
                let bits =
                    window_bits(value.as_deref()).ok_or(HandshakeError::InvalidExtensions)?;
                // §7.1.2.1: never more than we asked for.
                if bits > config.server_max_window_bits {
                    return Err(HandshakeError::InvalidExtensions);
                }
                p.server_max_window_bits = bits;
            }
            "client_max_window_bits" => {
                let bits =
                    window_bits(value.as_deref()).ok_or(HandshakeError::InvalidExtensions)?;
                if bits > config.client_max_window_bits {
                    return Err(HandshakeError::InvalidExtensions);
                }
                p.client_max_window_bits = bits;
            }
            _ => return Err(HandshakeError::InvalidExtensions),
        }
        seen.push(lname);
    }
    // We asked the server not to keep context; it must agree (§7.1.1.1).
    if config.server_no_context_takeover && !p.server_no_context_takeover {
        return Err(HandshakeError::InvalidExtensions);
    }
    Ok(Some(p))
}

thread_local! {
    /// Compressors and decompressors borrowed for one message by connections that do not
    /// keep context, keyed by (window bits, level) / window bits.
    static COMPRESSORS: RefCell<Vec<(u8, u32, Compress)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSORS: RefCell<Vec<(u8, Decompress)>> = const { RefCell::new(Vec::new()) };
}

const CACHE_MAX: usize = 4;

/// The most a `n`-byte message can grow to when deflated by any peer: zlib's conservative
/// `deflateBound` (valid for every window and memLevel; small memLevels emit many small
/// stored blocks), plus the sync-flush marker. The wire allowance for compressed frames, so
/// that limits count data rather than deflate overhead.
pub fn compressed_bound(n: u64) -> u64 {
    n + (n >> 5) + (n >> 7) + (n >> 11) + 7 + 16
}

/// Compresses one message with a fresh context: the deflate payload without the tail.
/// Used for broadcasts (compress once, send to many) and by connections without context
/// takeover. `window` must be 9–15.
pub fn compress_fresh(payload: &[u8], window: u8, level: u32) -> Vec<u8> {
    let mut c = COMPRESSORS
        .with(|c| {
            let mut c = c.borrow_mut();
            let i = c.iter().position(|(w, l, _)| *w == window && *l == level)?;
            Some(c.swap_remove(i).2)
        })
        .unwrap_or_else(|| Compress::new_with_window_bits(Compression::new(level), false, window));
    let out = run_compress(&mut c, payload);
    c.reset();
    COMPRESSORS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() < CACHE_MAX {
            cache.push((window, level, c));
        }
    });
    out
}

fn run_compress(c: &mut Compress, payload: &[u8]) -> Vec<u8> {
    // §7.2.3.6: an empty message is one empty stored block, 0x00 after the tail is removed.
    // zlib would emit nothing at all for a second sync flush without input, which the peer
    // would read as the start of a block swallowing the next message.
    if payload.is_empty() {
        return vec![0x00];
    }
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let start_in = c.total_in();
    loop {
        let consumed = (c.total_in() - start_in) as usize;
        // Errors cannot happen with Sync flush on a healthy stream; treat one as "stop".
        if c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        let consumed = (c.total_in() - start_in) as usize;
        // A sync flush is complete when all input is in and the output did not fill up.
        if consumed == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    // §7.2.1: "Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end."
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - 4);
    }
    out
}

/// The per-connection codec, built from the negotiated parameters and the local role.
pub struct Deflate {
    /// Our compression window; 8 means "send uncompressed".
    out_window: u8,
    out_fresh: bool,
    in_window: u8,
    in_fresh: bool,
    level: u32,
    threshold: usize,
    compressor: Option<Compress>,
    decompressor: Option<Decompress>,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("out_window", &self.out_window)
            .field("out_fresh", &self.out_fresh)
            .field("in_window", &self.in_window)
            .field("in_fresh", &self.in_fresh)
            .finish_non_exhaustive()
    }
}

impl Deflate {
    /// The codec for `role` under `params`, with level and threshold from `config`.
    pub fn new(role: crate::Role, params: DeflateParams, config: &DeflateConfig) -> Self {
        let (out_window, out_fresh, in_window, in_fresh) = match role {
            crate::Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
                params.client_max_window_bits,
                params.client_no_context_takeover,
            ),
            crate::Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
                params.server_max_window_bits,
                params.server_no_context_takeover,
            ),
        };
        Deflate {
            out_window,
            out_fresh,
            in_window: in_window.max(9),
            in_fresh,
            level: config.level,
            threshold: config.threshold,
            compressor: None,
            decompressor: None,
        }
    }

    /// Whether a message of `len` bytes is sent compressed.
    pub fn should_compress(&self, len: usize) -> bool {
        self.out_window >= 9 && len >= self.threshold
    }

    /// Our window when every message is compressed with a fresh context (the case where a
    /// broadcast can share one compressed copy); `None` otherwise.
    pub fn shared_window(&self) -> Option<u8> {
        (self.out_fresh && self.out_window >= 9).then_some(self.out_window)
    }

    /// Compresses one message (the caller checked [`Deflate::should_compress`]).
    pub fn compress(&mut self, payload: &[u8]) -> Vec<u8> {
        if self.out_fresh {
            return compress_fresh(payload, self.out_window, self.level);
        }
        let (level, window) = (self.level, self.out_window);
        let c = self.compressor.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(level), false, window)
        });
        run_compress(c, payload)
    }

    /// Inflates one whole message (the compressed payloads of all its frames, in order),
    /// producing at most `limit` bytes: a larger result is
    /// [`ProtocolError::MessageTooLarge`] as soon as the limit is passed, without inflating
    /// the rest (decompression bombs). Bad data is [`ProtocolError::InvalidCompressedData`].
    pub fn decompress(&mut self, input: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
        if self.in_fresh {
            let window = self.in_window;
            let mut d = DECOMPRESSORS
                .with(|c| {
                    let mut c = c.borrow_mut();
                    let i = c.iter().position(|(w, _)| *w == window)?;
                    Some(c.swap_remove(i).1)
                })
                .unwrap_or_else(|| Decompress::new_with_window_bits(false, window));
            let r = run_decompress(&mut d, input, limit);
            d.reset(false);
            DECOMPRESSORS.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() < CACHE_MAX {
                    cache.push((window, d));
                }
            });
            return r;
        }
        let window = self.in_window;
        let d = self
            .decompressor
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, window));
        let r = run_decompress(d, input, limit);
        if r.is_err() {
            // The stream is unusable after an error; the connection is failing anyway.
            self.decompressor = None;
        }
        r
    }

    /// The compression level.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Whether this codec owns zlib state right now (0 when idle without context takeover).
    pub fn owned_state(&self) -> bool {
        self.compressor.is_some() || self.decompressor.is_some()
    }
}

fn run_decompress(
    d: &mut Decompress,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let cap = input
        .len()
        .saturating_mul(3)
        .max(64)
        .min(limit.saturating_add(1));
    let mut out: Vec<u8> = Vec::with_capacity(cap.max(1));
    // §7.2.2: "Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of the payload."
    for piece in [input, &TAIL[..]] {
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                // Grow, but never past one byte over the limit: that byte proves the excess.
                let room = (limit + 1 - out.len()).min(out.capacity().max(4096));
                out.reserve_exact(room);
            }
            let (before_in, before_out) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&piece[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::InvalidCompressedData)?;
            consumed += (d.total_in() - before_in) as usize;
            if out.len() > limit {
                return Err(ProtocolError::MessageTooLarge);
            }
            if status == Status::StreamEnd {
                // A final block ended the stream (§7.2.3.3 allows BFINAL); nothing follows.
                return Ok(out);
            }
            let full = out.len() == out.capacity();
            if consumed == piece.len() && !full {
                break;
            }
            if d.total_in() == before_in && out.len() == before_out && !full {
                // No progress with room to spare: nothing more can come out of this input.
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::parse_extensions;
    use crate::Role;

    fn exts(s: &str) -> Vec<Extension> {
        parse_extensions(std::iter::once(s.as_bytes())).unwrap()
    }

    #[test]
    fn negotiates_first_acceptable_offer() {
        let c = DeflateConfig::default();
        let offers = exts("permessage-deflate; foo, permessage-deflate; server_max_window_bits=10; client_max_window_bits");
        let (p, cw) = negotiate(&offers, &c).unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits, cw),
            (10, 15, true)
        );
        assert_eq!(
            p.response_header(cw),
            "permessage-deflate; server_max_window_bits=10"
        );
        // Repeated or invalid parameters decline the offer.
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(negotiate(&exts(bad), &c), None, "{bad}");
        }
    }

    #[test]
    fn server_policy_forces_and_caps() {
        let c = DeflateConfig::default()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(12)
            .client_max_window_bits(10);
        let (p, cw) = negotiate(&exts("permessage-deflate; client_max_window_bits"), &c).unwrap();
        assert_eq!(
            p.response_header(cw),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10"
        );
        // Without client_max_window_bits in the offer, the response may not carry it.
        let (p, cw) = negotiate(&exts("permessage-deflate"), &c).unwrap();
        assert!(!p.response_header(cw).contains("client_max_window_bits"));
    }

    #[test]
    fn client_checks_the_response() {
        let c = DeflateConfig::default().server_max_window_bits(10);
        assert_eq!(
            offer(&c),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits"
        );
        let ok = accept_response(&exts("permessage-deflate; server_max_window_bits=9"), &c)
            .unwrap()
            .unwrap();
        assert_eq!(ok.server_max_window_bits, 9);
        for bad in [
            "permessage-deflate; server_max_window_bits=11",
            "permessage-deflate; x=1",
            "permessage-deflate, permessage-deflate",
            "other-extension",
        ] {
            assert!(accept_response(&exts(bad), &c).is_err(), "{bad}");
        }
        assert_eq!(accept_response(&[], &c), Ok(None));
    }

    #[test]
    fn roundtrip_with_and_without_context_takeover() {
        for fresh in [false, true] {
            let params = DeflateParams {
                server_no_context_takeover: fresh,
                client_no_context_takeover: fresh,
                server_max_window_bits: 15,
                client_max_window_bits: 11,
            };
            let cfg = DeflateConfig::default();
            let mut server = Deflate::new(Role::Server, params, &cfg);
            let mut client = Deflate::new(Role::Client, params, &cfg);
            for i in 0..20 {
                let msg = format!("{{\"n\":{i},\"text\":\"{}\"}}", "abc".repeat(i * 10));
                let c = client.compress(msg.as_bytes());
                assert_eq!(server.decompress(&c, 1 << 20).unwrap(), msg.as_bytes());
                let c = server.compress(msg.as_bytes());
                assert_eq!(client.decompress(&c, 1 << 20).unwrap(), msg.as_bytes());
            }
            assert_eq!(server.owned_state(), !fresh);
        }
    }

    #[test]
    fn empty_messages_keep_the_stream_in_sync() {
        // Regression: two empty messages in a row with context takeover, then data.
        let params = DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        let cfg = DeflateConfig::default().level(9).threshold(0);
        let mut s = Deflate::new(Role::Server, params, &cfg);
        let mut c = Deflate::new(Role::Client, params, &cfg);
        for m in ["", "", "{\"id\":0,\"s", "", "abcabcabc"] {
            let z = s.compress(m.as_bytes());
            assert_eq!(c.decompress(&z, 1 << 20).unwrap(), m.as_bytes());
        }
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let c = compress_fresh(&zeros, 15, 9);
        assert!(c.len() < 64 << 10);
        let params = DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        let mut d = Deflate::new(Role::Server, params, &DeflateConfig::default());
        assert_eq!(
            d.decompress(&c, 1 << 20),
            Err(ProtocolError::MessageTooLarge)
        );
        assert_eq!(d.decompress(&c, 10 << 20).unwrap().len(), 10 << 20);
        assert_eq!(
            d.decompress(&[0xff, 0xff, 0xff], 100),
            Err(ProtocolError::InvalidCompressedData)
        );
    }
}
