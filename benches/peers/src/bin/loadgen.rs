//! loadgen: a closed-loop WebSocket (or raw TCP) echo load generator.
//!
//! Deliberately uses NO WebSocket library: the client handshake, masking and frame
//! parsing are written out here (RFC 6455 §4.1, §5.2, §5.3), so the generator cannot
//! share a bug or a fast path with any server under test.
//!
//! Load mode: each of --conns connections keeps --inflight messages of --size bytes
//! outstanding; every echo received is timed (send start -> last echo byte) into an
//! HdrHistogram and immediately replaced by a new message. After --warmup seconds,
//! --duration seconds are measured. With --server-pid the server's on-CPU time over
//! exactly that window is read from /proc/PID/task/*/schedstat.
//!
//! Idle mode (--connections N --hold SECS): VmRSS of --server-pid before and after
//! opening N WebSocket connections -> KB per idle connection.
//!
//! Compression (--compression): permessage-deflate (RFC 7692) is offered in the
//! handshake; the negotiated parameters are honoured. Client messages are raw deflate
//! (zlib-rs via flate2, Z_SYNC_FLUSH, trailing 00 00 ff ff stripped, RSV1 set); server
//! messages with RSV1 are inflated (tail appended) with one decompressor per connection,
//! then compared byte for byte. The payloads are deterministic JSON-like records that
//! vary from message to message (--payload json, the default with --compression).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const HELP: &str = "\
loadgen: closed-loop WebSocket / raw-TCP echo load generator (no WebSocket library inside)

USAGE:
  loadgen --url ws://127.0.0.1:PORT [--conns 100] [--inflight 1] [--size 20]
          [--duration 10] [--warmup 2] [--binary|--text] [--raw]
          [--server-pid PID] [--threads 1] [--json]
          [--compression [--compression-optional]] [--payload alpha|json]
  loadgen --url ws://127.0.0.1:PORT --connections N --hold SECS --server-pid PID [--json]
          [--compression [--size 2048]]
  loadgen --url ws://127.0.0.1:PORT --selftest [--compression]

OPTIONS:
  --url URL          ws://HOST:PORT[/PATH] (for --raw, the host:port is used)
  --conns N          connections (default 100)
  --inflight N       messages outstanding per connection (default 1)
  --size BYTES       payload bytes per message (default 20)
  --duration SECS    measured window (default 10, fractions allowed)
  --warmup SECS      unmeasured warm-up after all connections are up (default 2)
  --binary | --text  opcode of the messages (default binary; text payload is ASCII)
  --raw              raw TCP: no handshake, no framing; SIZE bytes out, SIZE bytes back
  --server-pid PID   read the server's CPU time (schedstat) over the window -> CPU us/msg
  --threads N        1 = tokio current_thread (default; pin with taskset), >1 = multi-thread
  --json             one JSON object on stdout instead of the text report
  --connections N    idle mode: open N WebSocket connections (one echo each), hold them
  --hold SECS        idle mode: seconds to hold them before reading VmRSS (default 2)
  --selftest         conformance smoke test of the server: text, binary, fragmented,
                     ping->pong, 1 MiB message, close handshake (+ compressed cases
                     with --compression)
  --compression      offer permessage-deflate (with client_max_window_bits); fail if
                     the server declines. Messages are sent compressed (RSV1) within
                     the negotiated client_max_window_bits / client_no_context_takeover
                     (window 8: sent uncompressed, zlib cannot deflate with 8); replies
                     with RSV1 are inflated and checked byte for byte
  --compression-optional  with --compression: run uncompressed if the server declines
  --payload KIND     alpha: the same a..z bytes in every message (default without
                     --compression); json: deterministic JSON-like records
                     ({\"id\":..,\"price\":..,\"symbol\":..}) that vary per message,
                     cut to --size (default with --compression). In idle mode the
                     one message per connection is --size bytes of this payload
";

#[derive(Clone)]
struct Opts {
    host: String,
    port: u16,
    path: String,
    conns: usize,
    inflight: usize,
    size: usize,
    duration: f64,
    warmup: f64,
    text: bool,
    raw: bool,
    server_pid: Option<u32>,
    threads: usize,
    json: bool,
    idle: Option<usize>,
    hold: f64,
    selftest: bool,
    compression: bool,
    compression_optional: bool,
    json_payload: bool,
    size_given: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 9001,
        path: "/".into(),
        conns: 100,
        inflight: 1,
        size: 20,
        duration: 10.0,
        warmup: 2.0,
        text: false,
        raw: false,
        server_pid: None,
        threads: 1,
        json: false,
        idle: None,
        hold: 2.0,
        selftest: false,
        compression: false,
        compression_optional: false,
        json_payload: false,
        size_given: false,
    };
    let mut payload_kind: Option<String> = None;
    let mut url = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(val()?),
            "--conns" => o.conns = val()?.parse()?,
            "--inflight" => o.inflight = val()?.parse()?,
            "--size" => {
                o.size = val()?.parse()?;
                o.size_given = true;
            }
            "--duration" => o.duration = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--server-pid" => o.server_pid = Some(val()?.parse()?),
            "--threads" => o.threads = val()?.parse()?,
            "--connections" => o.idle = Some(val()?.parse()?),
            "--hold" => o.hold = val()?.parse()?,
            "--binary" => o.text = false,
            "--text" => o.text = true,
            "--raw" => o.raw = true,
            "--json" => o.json = true,
            "--selftest" => o.selftest = true,
            "--compression" => o.compression = true,
            "--compression-optional" => o.compression_optional = true,
            "--payload" => payload_kind = Some(val()?),
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a} (try --help)"),
        }
    }
    let url = url.ok_or_else(|| anyhow!("--url is required (try --help)"))?;
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| anyhow!("--url must be ws://HOST:PORT[/PATH] (wss is not supported)"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (h, p) = hostport
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--url needs an explicit port"))?;
    o.host = h.trim_start_matches('[').trim_end_matches(']').to_string();
    o.port = p.parse()?;
    o.path = path.to_string();
    o.json_payload = match payload_kind.as_deref() {
        None => o.compression,
        Some("json") => true,
        Some("alpha") => false,
        Some(k) => bail!("--payload must be alpha or json, not {k}"),
    };
    if o.compression && o.raw {
        bail!("--compression and --raw exclude each other");
    }
    if o.compression_optional && !o.compression {
        bail!("--compression-optional needs --compression");
    }
    if o.conns == 0 || o.inflight == 0 || o.threads == 0 {
        bail!("--conns, --inflight and --threads must be >= 1");
    }
    if o.idle.is_some() && o.server_pid.is_none() {
        bail!("--connections (idle mode) needs --server-pid");
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Minimal RFC 6455 client
// ---------------------------------------------------------------------------------------

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BIN: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Tiny xorshift PRNG seeded from the clock and a counter (keys and masks only need to
/// look random to the server; nothing here is security-relevant).
fn rand_u64() -> u64 {
    static CTR: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = t ^ CTR.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Build one masked client frame.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_rsv1(fin, false, opcode, payload)
}

/// Build one masked client frame, RSV1 ("compressed", RFC 7692) set if `rsv1`.
fn client_frame_rsv1(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode);
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = (rand_u64() as u32).to_ne_bytes();
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    f
}

/// One parsed server frame (servers must not mask, RFC 6455 §5.1).
struct Frame {
    fin: bool,
    /// RSV1: "this message is compressed" (only legal when permessage-deflate was
    /// negotiated, and only on the first frame of a data message).
    rsv1: bool,
    opcode: u8,
    payload: BytesMut,
    /// header + payload bytes this frame took on the wire
    wire_len: usize,
}

/// Take one complete frame off the front of `buf`, if there is one. `deflate`: whether
/// permessage-deflate was negotiated (RSV1 allowed on data frames).
fn parse_frame_ext(buf: &mut BytesMut, deflate: bool) -> Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !deflate) {
        bail!("protocol: RSV bits set without an extension");
    }
    if rsv1 && b0 & 0x0F != OP_TEXT && b0 & 0x0F != OP_BIN {
        bail!("protocol: RSV1 on a non-first or control frame");
    }
    if b1 & 0x80 != 0 {
        bail!("protocol: server frame is masked");
    }
    let (hlen, len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as u64)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (10, u64::from_be_bytes(buf[2..10].try_into().unwrap()))
        }
        n => (2, n as u64),
    };
    if len > (1 << 30) {
        bail!("protocol: frame length {len} too large");
    }
    let total = hlen + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(hlen);
    let payload = buf.split_to(len as usize);
    Ok(Some(Frame { fin: b0 & 0x80 != 0, rsv1, opcode: b0 & 0x0F, payload, wire_len: total }))
}

// ---------------------------------------------------------------------------------------
// permessage-deflate (RFC 7692)
// ---------------------------------------------------------------------------------------

/// What the server's 101 response agreed to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pmd {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<u8>,
}

impl Pmd {
    /// Window we compress with (15 if the server set no limit).
    fn client_bits(&self) -> u8 {
        self.client_max_window_bits.unwrap_or(15)
    }
    /// zlib cannot produce a raw deflate stream with an 8-bit window (it silently uses 9),
    /// so with client_max_window_bits=8 we send uncompressed messages (RFC 7692 allows it).
    fn client_compresses(&self) -> bool {
        self.client_bits() > 8
    }
    fn describe(&self) -> String {
        let mut v = vec!["permessage-deflate".to_string()];
        if self.server_no_context_takeover {
            v.push("server_no_context_takeover".into());
        }
        if self.client_no_context_takeover {
            v.push("client_no_context_takeover".into());
        }
        if let Some(b) = self.server_max_window_bits {
            v.push(format!("server_max_window_bits={b}"));
        }
        if let Some(b) = self.client_max_window_bits {
            v.push(format!("client_max_window_bits={b}"));
        }
        v.join("; ")
    }
}

/// Parse the (joined) Sec-WebSocket-Extensions response value. We offered exactly one
/// permessage-deflate with a bare client_max_window_bits, so anything else is an error.
fn parse_pmd_response(v: &str) -> Result<Pmd> {
    let exts: Vec<&str> = v.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if exts.len() != 1 {
        bail!("server accepted {} extensions ({v:?}); we offered one", exts.len());
    }
    let mut parts = exts[0].split(';').map(str::trim);
    let name = parts.next().unwrap_or("");
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        bail!("server accepted extension {name:?}, which we did not offer");
    }
    let mut p = Pmd { server_no_context_takeover: false, client_no_context_takeover: false, server_max_window_bits: None, client_max_window_bits: None };
    let mut seen = std::collections::HashSet::new();
    for param in parts.filter(|x| !x.is_empty()) {
        let (k, val) = match param.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().trim_matches('"'))),
            None => (param.to_ascii_lowercase(), None),
        };
        if !seen.insert(k.clone()) {
            bail!("duplicate permessage-deflate parameter {k}");
        }
        let bits = |val: Option<&str>| -> Result<u8> {
            let b: u8 = val.ok_or_else(|| anyhow!("{k} needs a value in a response"))?.parse().map_err(|_| anyhow!("bad {k} value {val:?}"))?;
            if !(8..=15).contains(&b) {
                bail!("{k}={b} outside 8..=15");
            }
            Ok(b)
        };
        match k.as_str() {
            "server_no_context_takeover" if val.is_none() => p.server_no_context_takeover = true,
            "client_no_context_takeover" if val.is_none() => p.client_no_context_takeover = true,
            "server_max_window_bits" => p.server_max_window_bits = Some(bits(val)?),
            "client_max_window_bits" => p.client_max_window_bits = Some(bits(val)?),
            _ => bail!("unexpected permessage-deflate parameter {param:?}"),
        }
    }
    Ok(p)
}

const DEFLATE_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Client-side compressor for one connection (one message at a time).
struct Deflater {
    c: Compress,
    no_context_takeover: bool,
}

impl Deflater {
    fn new(p: &Pmd) -> Self {
        Deflater {
            c: Compress::new_with_window_bits(Compression::default(), false, p.client_bits().max(9)),
            no_context_takeover: p.client_no_context_takeover,
        }
    }
    /// Raw deflate of one message, Z_SYNC_FLUSH, trailing 00 00 ff ff removed.
    fn compress(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 64);
        let mut inp = data;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.len().max(1024));
            }
            let before = self.c.total_in();
            self.c.compress_vec(inp, &mut out, FlushCompress::Sync)?;
            inp = &inp[(self.c.total_in() - before) as usize..];
            if inp.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if !out.ends_with(&DEFLATE_TAIL) {
            bail!("deflate output does not end with 00 00 ff ff");
        }
        out.truncate(out.len() - 4);
        if self.no_context_takeover {
            self.c.reset();
        }
        Ok(out)
    }
}

/// Client-side decompressor for one connection.
struct Inflater {
    d: Decompress,
    no_context_takeover: bool,
    out: Vec<u8>,
}

impl Inflater {
    fn new(p: &Pmd) -> Self {
        Inflater { d: Decompress::new(false), no_context_takeover: p.server_no_context_takeover, out: Vec::new() }
    }
    /// Inflate one message given as its frames' payloads; the 00 00 ff ff tail is appended
    /// here. Fails if the output would exceed `limit` bytes.
    fn inflate(&mut self, parts: &[&[u8]], limit: usize) -> Result<&[u8]> {
        self.out.clear();
        let mut ended = false;
        for part in parts.iter().copied().chain(std::iter::once(&DEFLATE_TAIL[..])) {
            let mut inp = part;
            while !ended {
                if self.out.capacity() - self.out.len() < 256 {
                    if self.out.len() > limit {
                        bail!("inflated message exceeds {limit} bytes");
                    }
                    self.out.reserve(self.out.len().max(4096));
                }
                let (in0, out0) = (self.d.total_in(), self.out.len());
                let st = self.d.decompress_vec(inp, &mut self.out, FlushDecompress::Sync)?;
                inp = &inp[(self.d.total_in() - in0) as usize..];
                if st == Status::StreamEnd {
                    // BFINAL block: the rest of the message must be empty; the next one
                    // starts a new stream.
                    ended = true;
                    break;
                }
                let spare = self.out.len() < self.out.capacity();
                if inp.is_empty() && spare {
                    break;
                }
                if self.d.total_in() == in0 && self.out.len() == out0 && spare {
                    bail!("inflate made no progress");
                }
            }
        }
        if self.out.len() > limit {
            bail!("inflated message exceeds {limit} bytes");
        }
        if ended || self.no_context_takeover {
            self.d.reset(false);
        }
        Ok(&self.out)
    }
}

/// Deterministic, realistically compressible payload: JSON-like market-data records
/// whose numbers vary with `seed` (message number) and position, cut to `size` bytes.
fn json_payload(size: usize, seed: u64) -> Vec<u8> {
    const SYMS: [&str; 8] = ["ABC", "XYZ", "MSFT", "AAPL", "GOOG", "TSLA", "NVDA", "AMZN"];
    const VENUES: [&str; 4] = ["XNAS", "XNYS", "BATS", "ARCX"];
    let mut out = Vec::with_capacity(size + 160);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut k = 0u64;
    out.push(b'[');
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let price = 10_000 + (x % 90_000);
        let rec = format!(
            "{{\"id\":{},\"price\":{}.{:02},\"qty\":{},\"side\":\"{}\",\"symbol\":\"{}\",\"venue\":\"{}\",\"ts\":{}}},",
            seed * 1000 + k,
            price / 100,
            price % 100,
            1 + (x >> 20) % 500,
            if (x >> 40) & 1 == 0 { "buy" } else { "sell" },
            SYMS[((x >> 8) % 8) as usize],
            VENUES[((x >> 30) % 4) as usize],
            1_700_000_000_000u64 + seed * 37 + k * 3,
        );
        out.extend_from_slice(rec.as_bytes());
        k += 1;
    }
    out.truncate(size);
    out
}

/// TCP connect (TCP_NODELAY) and, unless raw, the HTTP/1.1 upgrade. Returns the stream,
/// any bytes the server sent after the 101 response, and the negotiated
/// permessage-deflate parameters (None: not offered, or declined with
/// --compression-optional; declined without it is the error kind "no_deflate").
type Conn = (TcpStream, BytesMut, Option<Pmd>);
async fn connect(o: &Opts, raw: bool) -> std::result::Result<Conn, (&'static str, anyhow::Error)> {
    let s = TcpStream::connect((o.host.as_str(), o.port))
        .await
        .map_err(|e| ("connect", e.into()))?;
    s.set_nodelay(true).map_err(|e| ("connect", e.into()))?;
    let mut buf = BytesMut::with_capacity(o.size.max(4096) * 2 + 64);
    if raw {
        return Ok((s, buf, None));
    }
    let mut s = s;
    let pmd = handshake(&mut s, o, &mut buf).await.map_err(|e| ("handshake", e))?;
    if o.compression && pmd.is_none() && !o.compression_optional {
        return Err((
            "no_deflate",
            anyhow!(
                "server declined permessage-deflate (no Sec-WebSocket-Extensions in its 101 response); \
                 pass --compression-optional to run uncompressed anyway"
            ),
        ));
    }
    Ok((s, buf, pmd))
}

async fn handshake(s: &mut TcpStream, o: &Opts, buf: &mut BytesMut) -> Result<Option<Pmd>> {
    let key_bytes: [u8; 16] = {
        let a = rand_u64().to_ne_bytes();
        let b = rand_u64().to_ne_bytes();
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&a);
        k[8..].copy_from_slice(&b);
        k
    };
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let host = if o.host.contains(':') { format!("[{}]:{}", o.host, o.port) } else { format!("{}:{}", o.host, o.port) };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        o.path,
        host,
        key,
        if o.compression { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" }
    );
    s.write_all(req.as_bytes()).await?;
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("response headers too large");
        }
        if s.read_buf(buf).await? == 0 {
            bail!("EOF during handshake");
        }
    };
    let head = buf.split_to(end);
    let head = std::str::from_utf8(&head).context("non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.split(' ');
    let (ver, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !ver.starts_with("HTTP/1.") || code != "101" {
        bail!("expected 101, got {status:?}");
    }
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let want = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    let (mut up, mut conn, mut accept) = (false, false, false);
    let mut exts: Vec<String> = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "upgrade" => up = v.eq_ignore_ascii_case("websocket"),
                "connection" => conn = v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")),
                "sec-websocket-accept" => accept = v == want,
                "sec-websocket-extensions" => exts.push(v.to_string()),
                _ => {}
            }
        }
    }
    if !(up && conn && accept) {
        bail!("bad 101 headers (upgrade={up} connection={conn} accept-ok={accept})");
    }
    let exts = exts.join(", ");
    if exts.trim().is_empty() {
        return Ok(None);
    }
    if !o.compression {
        bail!("server answered Sec-WebSocket-Extensions: {exts} although none was offered");
    }
    Ok(Some(parse_pmd_response(&exts).with_context(|| format!("Sec-WebSocket-Extensions: {exts}"))?))
}

// ---------------------------------------------------------------------------------------
// Load mode
// ---------------------------------------------------------------------------------------

const PH_WARMUP: u8 = 0;
const PH_MEASURE: u8 = 1;
const PH_STOP: u8 = 2;

struct Shared {
    phase: AtomicU8,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    connected: AtomicU64,
    failed: AtomicU64,
}

struct ConnResult {
    hist: Histogram<u64>,
    msgs: u64,
    bytes: u64,
    /// wire bytes (frame headers + possibly compressed payloads) of the measured echoes
    rx_wire: u64,
    errors: BTreeMap<&'static str, u64>,
}

/// The messages every connection sends, in this order, cyclically: plaintexts and the
/// masked client frames (compressed when permessage-deflate is on). Shared by all
/// connections and built once, so the generator spends no CPU compressing per message.
///
/// With context takeover a compressed frame refers back to earlier messages of the same
/// connection. Frame 0 was compressed from a fresh context, so it refers to nothing
/// before itself, and frame i refers only to frames 0..i-1, which every connection has
/// sent just before it in the same order: replaying the cycle from the start (and again
/// after wrapping) is a valid RFC 7692 stream for the server's decompressor. The cycle is
/// long enough (>= 128 KiB of plaintext) that a message never repeats inside the 32 KiB
/// LZ77 window, so neither side compresses against an identical earlier copy.
struct Workload {
    plain: Vec<Vec<u8>>,
    wire: Vec<Vec<u8>>,
    pmd: Option<Pmd>,
}

fn build_workload(o: &Opts, pmd: Option<Pmd>) -> Result<Workload> {
    let op = if o.text { OP_TEXT } else { OP_BIN };
    let plain: Vec<Vec<u8>> = if o.json_payload {
        let k = (128 * 1024usize).div_ceil(o.size.max(1)).clamp(16, 8192);
        (0..k as u64).map(|i| json_payload(o.size, i)).collect()
    } else {
        vec![(0..o.size).map(|i| b'a' + (i % 26) as u8).collect()]
    };
    let wire = if o.raw {
        plain.clone()
    } else {
        match &pmd {
            Some(p) if p.client_compresses() => {
                let mut d = Deflater::new(p);
                plain.iter().map(|m| Ok(client_frame_rsv1(true, true, op, &d.compress(m)?))).collect::<Result<Vec<_>>>()?
            }
            _ => plain.iter().map(|m| client_frame(true, op, m)).collect(),
        }
    };
    Ok(Workload { plain, wire, pmd })
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap()
}

async fn run_conn(o: Arc<Opts>, sh: Arc<Shared>, wl: Arc<Workload>) -> ConnResult {
    let mut r = ConnResult { hist: new_hist(), msgs: 0, bytes: 0, rx_wire: 0, errors: BTreeMap::new() };
    let (s, buf) = match connect(&o, o.raw).await {
        Ok((s, b, pmd)) if pmd == wl.pmd => (s, b),
        Ok(_) => {
            // every connection must negotiate what the probe connection did
            sh.failed.fetch_add(1, Ordering::Relaxed);
            *r.errors.entry("negotiation").or_default() += 1;
            return r;
        }
        Err((kind, _e)) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            *r.errors.entry(kind).or_default() += 1;
            return r;
        }
    };
    sh.connected.fetch_add(1, Ordering::Relaxed);
    if let Err(kind) = drive(&o, &sh, s, buf, &mut r, &wl).await {
        *r.errors.entry(kind).or_default() += 1;
    }
    r
}

/// The closed loop for one connection. Reads and writes are interleaved with select!
/// on cancel-safe calls (`write`, `read_buf`), so a large message can never deadlock
/// against a server that is blocked writing its echo back to us.
async fn drive(
    o: &Opts,
    sh: &Shared,
    mut s: TcpStream,
    mut buf: BytesMut,
    r: &mut ConnResult,
    wl: &Workload,
) -> std::result::Result<(), &'static str> {
    // The payloads and masked frames were built once (see Workload) and the same bytes
    // are written for every pass of the cycle (a fixed mask key per frame is valid
    // RFC 6455 framing; the server still unmasks every byte). Echoes come back in order,
    // so echo n is compared with plaintext n of the cycle.
    let k = wl.plain.len();
    let (mut send_i, mut recv_i) = (0usize, 0usize);
    let deflate = wl.pmd.is_some();
    let mut infl = wl.pmd.as_ref().map(Inflater::new);
    let mut zmsg: Vec<u8> = Vec::new(); // compressed fragments of the current message
    let mut cur_wire = 0usize; // wire bytes of the echo being received
    let want_op = if o.text { OP_TEXT } else { OP_BIN };

    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(o.inflight);
    let mut to_send = o.inflight; // messages we still owe the loop
    let mut woff = 0usize; // bytes of the current message already written
    let mut raw_pending = 0usize; // raw mode: echoed bytes of the current message
    let mut frag: Option<(u8, bool, usize)> = None; // (opcode, compressed, bytes) of a fragmented message
    let mut stopping = false;
    // Long-lived futures, created once (select! re-evaluates branch expressions on
    // every iteration, so building timers inside it would cost a timer per message).
    let mut stop_rx = sh.stop_rx.clone();
    let stop = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    let drain = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(drain);

    {
    let (mut rd, mut wr) = s.split();
    loop {
        if !stopping && sh.phase.load(Ordering::Relaxed) == PH_STOP {
            stopping = true;
            to_send = 0;
            if woff > 0 {
                // finish the message that is half on the wire
                to_send = 1;
            }
            drain.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3));
        }
        if stopping && to_send == 0 && sent_at.is_empty() {
            break;
        }
        let writing = to_send > 0;
        let wire = &wl.wire[send_i];
        tokio::select! {
            biased;
            res = rd.read_buf(&mut buf) => {
                match res {
                    Ok(0) => return Err("eof"),
                    Ok(_) => {}
                    Err(_) => return Err("io_read"),
                }
                let now = Instant::now();
                let measuring = sh.phase.load(Ordering::Relaxed) == PH_MEASURE;
                let mut done = 0usize;
                let mut done_wire = 0usize;
                if o.raw {
                    let mut n = buf.len();
                    // verify and consume
                    while n > 0 {
                        let payload = &wl.plain[(recv_i + done) % k];
                        let take = (o.size - raw_pending).min(n);
                        if buf[..take] != payload[raw_pending..raw_pending + take] {
                            return Err("mismatch");
                        }
                        buf.advance(take);
                        n -= take;
                        raw_pending += take;
                        if raw_pending == o.size {
                            raw_pending = 0;
                            done += 1;
                            done_wire += o.size;
                        }
                    }
                } else {
                    loop {
                        let f = match parse_frame_ext(&mut buf, deflate) {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(_) => return Err("protocol"),
                        };
                        match f.opcode {
                            OP_TEXT | OP_BIN if frag.is_none() => {
                                if f.opcode != want_op { return Err("mismatch"); }
                                cur_wire += f.wire_len;
                                let expect = &wl.plain[(recv_i + done) % k];
                                if f.fin {
                                    let ok = if f.rsv1 {
                                        match infl.as_mut().unwrap().inflate(&[&f.payload], expect.len()) {
                                            Ok(d) => d == &expect[..],
                                            Err(_) => return Err("inflate"),
                                        }
                                    } else {
                                        f.payload[..] == expect[..]
                                    };
                                    if !ok { return Err("mismatch"); }
                                    done += 1;
                                    done_wire += std::mem::take(&mut cur_wire);
                                } else if f.rsv1 {
                                    zmsg.clear();
                                    zmsg.extend_from_slice(&f.payload);
                                    frag = Some((f.opcode, true, 0));
                                } else {
                                    if f.payload[..] != expect[..f.payload.len().min(expect.len())] { return Err("mismatch"); }
                                    frag = Some((f.opcode, false, f.payload.len()));
                                }
                            }
                            OP_CONT if frag.is_some() => {
                                cur_wire += f.wire_len;
                                let (op, z, got) = frag.unwrap();
                                let expect = &wl.plain[(recv_i + done) % k];
                                if z {
                                    zmsg.extend_from_slice(&f.payload);
                                    if f.fin {
                                        match infl.as_mut().unwrap().inflate(&[&zmsg], expect.len()) {
                                            Ok(d) if d == &expect[..] => {}
                                            Ok(_) => return Err("mismatch"),
                                            Err(_) => return Err("inflate"),
                                        }
                                        frag = None;
                                        done += 1;
                                        done_wire += std::mem::take(&mut cur_wire);
                                    }
                                } else {
                                    let end = got + f.payload.len();
                                    if end > expect.len() || f.payload[..] != expect[got..end] { return Err("mismatch"); }
                                    if f.fin {
                                        if end != expect.len() { return Err("mismatch"); }
                                        frag = None;
                                        done += 1;
                                        done_wire += std::mem::take(&mut cur_wire);
                                    } else {
                                        frag = Some((op, false, end));
                                    }
                                }
                            }
                            OP_PING => {
                                let pong = client_frame(true, OP_PONG, &f.payload);
                                // rare; a blocking write here is fine
                                if woff != 0 { return Err("protocol"); }
                                if wr.write_all(&pong).await.is_err() { return Err("io_write"); }
                            }
                            OP_PONG => {}
                            OP_CLOSE => return Err("server_close"),
                            _ => return Err("protocol"),
                        }
                    }
                }
                recv_i = (recv_i + done) % k;
                if measuring {
                    r.rx_wire += done_wire as u64;
                }
                for _ in 0..done {
                    let Some(t0) = sent_at.pop_front() else { return Err("unsolicited") };
                    if measuring {
                        let ns = now.duration_since(t0).as_nanos() as u64;
                        let _ = r.hist.record(ns.max(1));
                        r.msgs += 1;
                        r.bytes += o.size as u64;
                    }
                    if !stopping {
                        to_send += 1;
                    }
                }
            }
            res = wr.write(&wire[woff..]), if writing => {
                match res {
                    Ok(0) | Err(_) => return Err("io_write"),
                    Ok(n) => {
                        if woff == 0 {
                            sent_at.push_back(Instant::now());
                        }
                        woff += n;
                        if woff == wire.len() {
                            woff = 0;
                            to_send -= 1;
                            send_i = (send_i + 1) % k;
                        }
                    }
                }
            }
            _ = &mut drain, if stopping => {
                return Err("drain_timeout");
            }
            _ = &mut stop, if !stopping => {
                // the phase check at the top of the loop takes it from here
            }
        }
    }

    }

    if o.raw {
        let _ = s.shutdown().await;
        return Ok(());
    }
    // Close handshake: send 1000, expect the server's close frame back.
    let close = client_frame(true, OP_CLOSE, &1000u16.to_be_bytes());
    if s.write_all(&close).await.is_err() {
        return Err("close_write");
    }
    let res = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match parse_frame_ext(&mut buf, deflate) {
                Ok(Some(f)) if f.opcode == OP_CLOSE => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return Err("protocol"),
            }
            match s.read_buf(&mut buf).await {
                Ok(0) => return Err("close_eof"),
                Ok(_) => {}
                Err(_) => return Err("io_read"),
            }
        }
    })
    .await;
    match res {
        Ok(r) => r,
        Err(_) => Err("close_timeout"),
    }
}

// ---------------------------------------------------------------------------------------
// /proc readers
// ---------------------------------------------------------------------------------------

/// Sum of on-CPU ns over all threads of `pid` (schedstat field 1; falls back to
/// utime+stime from stat in clock ticks when schedstat is unavailable).
fn proc_cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0u64;
    let dir = format!("/proc/{pid}/task");
    for ent in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let p = ent?.path();
        match std::fs::read_to_string(p.join("schedstat")) {
            Ok(s) => total += s.split_whitespace().next().unwrap_or("0").parse::<u64>().unwrap_or(0),
            Err(_) => {
                let s = std::fs::read_to_string(p.join("stat"))?;
                let after = &s[s.rfind(')').unwrap_or(0) + 2..];
                let f: Vec<&str> = after.split_whitespace().collect();
                // after ')' : field 3 is index 0, utime = field 14, stime = field 15
                let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
                total += ticks * 10_000_000; // USER_HZ = 100 on Linux
            }
        }
    }
    Ok(total)
}

fn self_cpu_ns() -> u64 {
    proc_cpu_ns(std::process::id()).unwrap_or(0)
}

/// Sum of `bytes_sent` over the established TCP sockets whose LOCAL port is `port`
/// (i.e. the server's side of every connection), from `ss -tin` (kernel tcp_info).
/// A server-side, kernel-counted view of the echo traffic, independent of our frame
/// parser and of the server's code. Runs `ss` on a blocking thread; None if unavailable.
/// A snapshot is accepted only if it shows exactly `expect` sockets (netlink dumps can
/// come back short on a busy host); up to 3 tries.
async fn server_bytes_sent(port: u16, expect: u64) -> Option<u64> {
    for _ in 0..3 {
        match ss_once(port).await {
            Some((n, total)) if n == expect => return Some(total),
            _ => {}
        }
    }
    None
}

async fn ss_once(port: u16) -> Option<(u64, u64)> {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("ss")
            .args(["-tinH", "state", "established", &format!("( sport = :{port} )")])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut total = 0u64;
        let mut n = 0u64;
        for tok in text.split_whitespace() {
            if let Some(v) = tok.strip_prefix("bytes_sent:") {
                total += v.parse::<u64>().ok()?;
                n += 1;
            }
        }
        Some((n, total))
    })
    .await
    .ok()
    .flatten()
}

fn vm_rss_kb(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

// ---------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------

async fn load(o: Arc<Opts>) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sh = Arc::new(Shared { phase: AtomicU8::new(PH_WARMUP), stop_rx, connected: AtomicU64::new(0), failed: AtomicU64::new(0) });
    // One probe connection first: it fails fast with a clear message (server down, bad
    // handshake, permessage-deflate declined) and tells what the server negotiates.
    let pmd = if o.raw {
        None
    } else {
        let (s, _, pmd) = connect(&o, false).await.map_err(|(k, e)| anyhow!("probe connection: {k}: {e:#}"))?;
        drop(s);
        pmd
    };
    let wl = Arc::new(build_workload(&o, pmd)?);
    let tx_wire_per_msg = wl.wire.iter().map(|w| w.len()).sum::<usize>() as f64 / wl.wire.len() as f64;
    let t_start = Instant::now();
    let mut handles = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        handles.push(tokio::spawn(run_conn(o.clone(), sh.clone(), wl.clone())));
    }
    // wait until every connection is up (or failed), at most 15 s
    let up_deadline = Instant::now() + Duration::from_secs(15);
    while (sh.connected.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed)) < o.conns as u64
        && Instant::now() < up_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_secs = t_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;

    // kernel-side server byte count (taken just before the window opens / after it closes)
    let sent0 = if o.server_pid.is_some() { server_bytes_sent(o.port, sh.connected.load(Ordering::Relaxed)).await } else { None };
    let cpu0 = o.server_pid.map(proc_cpu_ns).transpose()?;
    let self0 = self_cpu_ns();
    let t0 = Instant::now();
    sh.phase.store(PH_MEASURE, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(o.duration)).await;
    // End snapshot just BEFORE the window closes (after STOP, connections start closing
    // and leave ESTABLISHED); the start snapshot was also taken just before its boundary.
    let sent1 = if o.server_pid.is_some() { server_bytes_sent(o.port, sh.connected.load(Ordering::Relaxed)).await } else { None };
    sh.phase.store(PH_STOP, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = o.server_pid.map(proc_cpu_ns).transpose()?;

    let self1 = self_cpu_ns();

    let mut hist = new_hist();
    let (mut msgs, mut bytes, mut rx_wire) = (0u64, 0u64, 0u64);
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    for h in handles {
        let r = h.await?;
        hist.add(&r.hist)?;
        msgs += r.msgs;
        bytes += r.bytes;
        rx_wire += r.rx_wire;
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    let server_cpu_ns = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let us = |q: f64| if hist.len() == 0 { 0.0 } else { hist.value_at_quantile(q) as f64 / 1000.0 };
    let rate = msgs as f64 / window;
    let mbps = bytes as f64 / window / 1e6;
    let cpu_per_msg = server_cpu_ns.map(|c| if msgs == 0 { f64::NAN } else { c as f64 / 1000.0 / msgs as f64 });
    let server_util = server_cpu_ns.map(|c| c as f64 / 1e9 / window);
    let self_util = (self1.saturating_sub(self0)) as f64 / 1e9 / window;
    let err_total: u64 = errors.values().sum();
    // What one echo costs the server in written bytes: as received by us (headers +
    // payloads, compressed or not), averaged over the measured echoes; without echoes,
    // the uncompressed frame size.
    let echo_wire = if msgs > 0 {
        rx_wire as f64 / msgs as f64
    } else {
        (o.size as u64 + if o.raw { 0 } else if o.size < 126 { 2 } else if o.size <= 0xFFFF { 4 } else { 10 }) as f64
    };
    let server_tx = match (sent0, sent1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let server_echoes = server_tx.map(|b| b as f64 / echo_wire);
    let pmd_desc = wl.pmd.as_ref().map(|p| p.describe());

    if o.json {
        let errs: Vec<String> = errors.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let num = |x: Option<f64>| match x {
            Some(v) if v.is_finite() => format!("{v:.4}"),
            _ => "null".into(),
        };
        println!(
            "{{\"mode\":\"{}\",\"host\":\"{}\",\"port\":{},\"conns\":{},\"inflight\":{},\"size\":{},\"opcode\":\"{}\",\
             \"threads\":{},\"warmup_s\":{},\"window_s\":{:.4},\"connect_s\":{:.4},\"connected\":{},\"msgs\":{},\"msgs_per_s\":{:.2},\
             \"mb_per_s\":{:.4},\"lat_us\":{{\"min\":{:.2},\"p50\":{:.2},\"p90\":{:.2},\"p99\":{:.2},\"p999\":{:.2},\"max\":{:.2},\"mean\":{:.2}}},\
             \"server_pid\":{},\"server_cpu_ms\":{},\"server_cpu_us_per_msg\":{},\"server_cpu_util\":{},\"loadgen_cpu_util\":{:.4},\
             \"server_tx_bytes\":{},\"server_echoes_by_ss\":{},\
             \"compression\":{},\"pmd\":{},\"payload\":\"{}\",\"cycle_msgs\":{},\"tx_wire_bytes_per_msg\":{:.2},\"rx_wire_bytes_per_msg\":{:.2},\
             \"errors_total\":{},\"errors\":{{{}}}}}",
            if o.raw { "raw" } else { "ws" }, o.host, o.port, o.conns, o.inflight, o.size,
            if o.raw { "raw" } else if o.text { "text" } else { "binary" },
            o.threads, o.warmup, window, connect_secs, sh.connected.load(Ordering::Relaxed), msgs, rate, mbps,
            hist.min() as f64 / 1000.0, us(0.5), us(0.9), us(0.99), us(0.999), hist.max() as f64 / 1000.0, hist.mean() / 1000.0,
            o.server_pid.map(|p| p.to_string()).unwrap_or("null".into()),
            num(server_cpu_ns.map(|c| c as f64 / 1e6)), num(cpu_per_msg), num(server_util), self_util,
            server_tx.map(|b| b.to_string()).unwrap_or("null".into()), num(server_echoes),
            wl.pmd.is_some(), pmd_desc.as_ref().map(|d| format!("\"{d}\"")).unwrap_or("null".into()),
            if o.json_payload { "json" } else { "alpha" }, wl.plain.len(), tx_wire_per_msg, echo_wire,
            err_total, errs.join(",")
        );
    } else {
        println!("target      {}:{}{} ({})", o.host, o.port, if o.raw { "" } else { &o.path }, if o.raw { "raw TCP" } else if o.text { "ws text" } else { "ws binary" });
        println!("load        {} conns x {} inflight, {} B, warmup {} s, window {:.3} s, {} thread(s)", o.conns, o.inflight, o.size, o.warmup, window, o.threads);
        println!("connected   {}/{} in {:.3} s", sh.connected.load(Ordering::Relaxed), o.conns, connect_secs);
        println!("payload     {} ({} distinct messages in the cycle); {}", if o.json_payload { "json" } else { "alpha" }, wl.plain.len(), pmd_desc.as_deref().unwrap_or("no compression"));
        println!("wire        {:.1} B/msg client->server, {:.1} B/msg server->client (payload {} B)", tx_wire_per_msg, echo_wire, o.size);
        println!("throughput  {:.0} msgs/s, {:.2} MB/s ({} echoes)", rate, mbps, msgs);
        println!("latency us  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}", us(0.5), us(0.9), us(0.99), us(0.999), hist.max() as f64 / 1000.0);
        if let (Some(c), Some(u), Some(pm)) = (server_cpu_ns, server_util, cpu_per_msg) {
            println!("server cpu  {:.1} ms over window ({:.0}% of a core), {:.3} us/msg", c as f64 / 1e6, u * 100.0, pm);
        }
        if let Some(e) = server_echoes {
            println!("server tx   {:.0} echoes by the kernel's per-socket bytes_sent (ss) ({:.4}x the client's count)", e, if msgs == 0 { 0.0 } else { e / msgs as f64 });
        }
        println!("loadgen cpu {:.0}% of a core", self_util * 100.0);
        println!("errors      {} {:?}", err_total, errors);
    }
    Ok(())
}

async fn idle(o: Arc<Opts>, n: usize) -> Result<()> {
    let pid = o.server_pid.unwrap();
    // With --compression, each connection sends ONE compressible message (default 2048 B
    // of the json payload: above ws's 1024 B threshold, so the server compresses its reply
    // too) and both of the server's deflate contexts exist while the connection idles.
    let size = if o.compression && !o.size_given { 2048 } else if o.compression || o.size_given { o.size } else { 10 };
    let expect_pmd = if o.compression {
        let (s, _, pmd) = connect(&o, false).await.map_err(|(k, e)| anyhow!("probe connection: {k}: {e:#}"))?;
        drop(s);
        pmd
    } else {
        None
    };
    let rss0 = vm_rss_kb(pid)?;
    let mut conns = Vec::with_capacity(n);
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut compressed_replies = 0u64;
    // open in batches of 256 so the listen backlog never overflows
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let mut hs = Vec::new();
        for &i in chunk {
            let o = o.clone();
            let expect_pmd = expect_pmd.clone();
            hs.push(tokio::spawn(async move {
                let (mut s, mut buf, pmd) = connect(&o, false).await.map_err(|(k, _)| k)?;
                if pmd != expect_pmd {
                    return Err("negotiation");
                }
                let plain: Vec<u8> = if o.compression { json_payload(size, i as u64) } else { b"idle-check".to_vec() };
                let msg = match &pmd {
                    Some(p) if p.client_compresses() => {
                        let z = Deflater::new(p).compress(&plain).map_err(|_| "deflate")?;
                        client_frame_rsv1(true, true, OP_BIN, &z)
                    }
                    _ => client_frame(true, OP_BIN, &plain),
                };
                // one echo so the server-side connection is fully set up and has read once
                s.write_all(&msg).await.map_err(|_| "io_write")?;
                let mut infl = pmd.as_ref().map(Inflater::new);
                loop {
                    match parse_frame_ext(&mut buf, pmd.is_some()) {
                        Ok(Some(f)) if f.opcode == OP_BIN && f.fin && f.rsv1 => {
                            match infl.as_mut().unwrap().inflate(&[&f.payload], plain.len()) {
                                Ok(d) if d == &plain[..] => return Ok::<_, &'static str>((s, true)),
                                _ => return Err("mismatch"),
                            }
                        }
                        Ok(Some(f)) if f.opcode == OP_BIN && f.fin && f.payload[..] == plain[..] => return Ok((s, false)),
                        Ok(Some(_)) | Err(_) => return Err("protocol"),
                        Ok(None) => {}
                    }
                    if s.read_buf(&mut buf).await.map_err(|_| "io_read")? == 0 {
                        return Err("eof");
                    }
                }
            }));
        }
        for h in hs {
            match h.await? {
                Ok((s, z)) => {
                    compressed_replies += z as u64;
                    conns.push(s)
                }
                Err(k) => *errors.entry(k).or_default() += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(o.hold)).await;
    let rss1 = vm_rss_kb(pid)?;
    let open = conns.len();
    let per = if open == 0 { f64::NAN } else { (rss1 as f64 - rss0 as f64) / open as f64 };
    drop(conns);
    let pmd_desc = expect_pmd.as_ref().map(|p| p.describe());
    if o.json {
        let errs: Vec<String> = errors.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        println!(
            "{{\"mode\":\"idle\",\"connections\":{n},\"open\":{open},\"hold_s\":{},\"rss_before_kb\":{rss0},\"rss_after_kb\":{rss1},\"kb_per_conn\":{:.3},\
             \"compression\":{},\"pmd\":{},\"msg_size\":{},\"compressed_replies\":{},\"errors\":{{{}}}}}",
            o.hold, per, expect_pmd.is_some(), pmd_desc.as_ref().map(|d| format!("\"{d}\"")).unwrap_or("null".into()),
            if o.compression { size } else { 10 }, compressed_replies, errs.join(",")
        );
    } else {
        println!("idle        {open}/{n} WebSocket connections held {} s", o.hold);
        if let Some(d) = &pmd_desc {
            println!("compression {d}; one {size} B json message each, {compressed_replies} replies came back compressed");
        }
        println!("server rss  {rss0} kB before, {rss1} kB after -> {per:.2} KB per idle connection");
        println!("errors      {errors:?}");
    }
    Ok(())
}

/// Quick conformance smoke test: does the server do what the harness assumes?
async fn selftest(o: Arc<Opts>) -> Result<()> {
    let (mut s, mut buf, pmd) = connect(&o, false).await.map_err(|(k, e)| anyhow!("{k}: {e:#}"))?;
    let deflate = pmd.is_some();
    let mut infl = pmd.as_ref().map(Inflater::new);
    if o.compression {
        match &pmd {
            Some(p) => println!("ok   permessage-deflate negotiated: {}", p.describe()),
            None => println!("note server declined permessage-deflate (--compression-optional): compressed cases skipped"),
        }
    }
    async fn next(s: &mut TcpStream, buf: &mut BytesMut, deflate: bool) -> Result<Frame> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(f) = parse_frame_ext(buf, deflate)? {
                    return Ok(f);
                }
                if s.read_buf(buf).await? == 0 {
                    bail!("EOF");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("timeout waiting for a frame"))?
    }
    /// Next data message (inflated if it came compressed) and whether it was compressed.
    async fn message_z(s: &mut TcpStream, buf: &mut BytesMut, infl: &mut Option<Inflater>) -> Result<(u8, Vec<u8>, bool)> {
        let f = next(s, buf, infl.is_some()).await?;
        let (op, mut data, z) = (f.opcode, f.payload.to_vec(), f.rsv1);
        let mut fin = f.fin;
        while !fin {
            let c = next(s, buf, infl.is_some()).await?;
            if c.opcode != OP_CONT {
                bail!("expected continuation, got opcode {}", c.opcode);
            }
            data.extend_from_slice(&c.payload);
            fin = c.fin;
        }
        if z {
            data = infl.as_mut().unwrap().inflate(&[&data], 64 << 20)?.to_vec();
        }
        Ok((op, data, z))
    }
    let check = |name: &str, ok: bool, detail: String| {
        println!("{} {name}{}", if ok { "ok  " } else { "FAIL" }, if ok { String::new() } else { format!(": {detail}") });
        ok
    };
    let mut all = true;

    s.write_all(&client_frame(true, OP_TEXT, "héllo".as_bytes())).await?;
    let (op, d, _) = message_z(&mut s, &mut buf, &mut infl).await?;
    all &= check("text echo", op == OP_TEXT && d == "héllo".as_bytes(), format!("op {op} {d:?}"));

    s.write_all(&client_frame(true, OP_BIN, &[0, 1, 2, 255])).await?;
    let (op, d, _) = message_z(&mut s, &mut buf, &mut infl).await?;
    all &= check("binary echo", op == OP_BIN && d == [0, 1, 2, 255], format!("op {op} {d:?}"));

    let mut w = client_frame(false, OP_TEXT, b"frag");
    w.extend(client_frame(true, OP_PING, b"mid"));
    w.extend(client_frame(false, OP_CONT, b"men"));
    w.extend(client_frame(true, OP_CONT, b"ted"));
    s.write_all(&w).await?;
    let f = next(&mut s, &mut buf, deflate).await?;
    all &= check("ping inside fragmented message -> pong", f.opcode == OP_PONG && &f.payload[..] == b"mid", format!("op {}", f.opcode));
    let (op, d, _) = message_z(&mut s, &mut buf, &mut infl).await?;
    all &= check("fragmented message reassembled", op == OP_TEXT && d == b"fragmented", format!("op {op} {:?}", String::from_utf8_lossy(&d)));

    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7) as u8).collect();
    s.write_all(&client_frame(true, OP_BIN, &big)).await?;
    let (op, d, _) = message_z(&mut s, &mut buf, &mut infl).await?;
    all &= check("1 MiB binary echo", op == OP_BIN && d == big, format!("op {op} len {}", d.len()));

    s.write_all(&client_frame(true, OP_PING, b"p")).await?;
    let f = next(&mut s, &mut buf, deflate).await?;
    all &= check("ping -> pong", f.opcode == OP_PONG && &f.payload[..] == b"p", format!("op {}", f.opcode));

    if let Some(p) = &pmd {
        // Compressed cases, on the same connection (so context takeover is exercised).
        let mut defl = Deflater::new(p);
        let zc = p.client_compresses();
        if !zc {
            println!("note client_max_window_bits=8: zlib cannot deflate with an 8-bit window, so these are sent uncompressed");
        }
        let mut server_compressed = 0;
        let cases: [(&str, u8, Vec<u8>); 4] = [
            ("compressed text echo (300 B json)", OP_TEXT, json_payload(300, 1)),
            ("compressed binary echo (64 KiB json)", OP_BIN, json_payload(65536, 2)),
            ("compressed echo of the same 64 KiB again (context takeover)", OP_BIN, json_payload(65536, 2)),
            ("compressed 1 MiB json echo", OP_BIN, json_payload(1 << 20, 3)),
        ];
        for (name, op0, plain) in cases {
            let w = if zc { client_frame_rsv1(true, true, op0, &defl.compress(&plain)?) } else { client_frame(true, op0, &plain) };
            s.write_all(&w).await?;
            let (op, d, z) = message_z(&mut s, &mut buf, &mut infl).await?;
            server_compressed += z as usize;
            all &= check(name, op == op0 && d == plain, format!("op {op} len {} (want {})", d.len(), plain.len()));
        }
        // A compressed message split over three frames: RSV1 on the first frame only.
        let plain = json_payload(5000, 4);
        if zc {
            let z = defl.compress(&plain)?;
            let (a, b) = (z.len() / 3, 2 * z.len() / 3);
            let mut w = client_frame_rsv1(false, true, OP_TEXT, &z[..a]);
            w.extend(client_frame(true, OP_PING, b"zmid"));
            w.extend(client_frame(false, OP_CONT, &z[a..b]));
            w.extend(client_frame(true, OP_CONT, &z[b..]));
            s.write_all(&w).await?;
            let f = next(&mut s, &mut buf, deflate).await?;
            all &= check("ping inside compressed fragmented message -> pong", f.opcode == OP_PONG && &f.payload[..] == b"zmid", format!("op {}", f.opcode));
            let (op, d, z) = message_z(&mut s, &mut buf, &mut infl).await?;
            server_compressed += z as usize;
            all &= check("compressed fragmented message (RSV1 on first frame)", op == OP_TEXT && d == plain, format!("op {op} len {}", d.len()));
        }
        // An uncompressed message on a deflate connection (RSV1 clear) is legal too.
        s.write_all(&client_frame(true, OP_BIN, &plain)).await?;
        let (op, d, z) = message_z(&mut s, &mut buf, &mut infl).await?;
        server_compressed += z as usize;
        all &= check("uncompressed message on a deflate connection", op == OP_BIN && d == plain, format!("op {op} len {}", d.len()));
        // one more compressed message after that, to check both contexts are still in step
        let plain = json_payload(2048, 5);
        let w = if zc { client_frame_rsv1(true, true, OP_BIN, &defl.compress(&plain)?) } else { client_frame(true, OP_BIN, &plain) };
        s.write_all(&w).await?;
        let (op, d, z) = message_z(&mut s, &mut buf, &mut infl).await?;
        server_compressed += z as usize;
        all &= check("compressed echo after an uncompressed one", op == OP_BIN && d == plain, format!("op {op} len {}", d.len()));
        println!("note {server_compressed} of the server's replies to these came back compressed (RSV1)");
    }

    s.write_all(&client_frame(true, OP_CLOSE, &1000u16.to_be_bytes())).await?;
    let f = next(&mut s, &mut buf, deflate).await?;
    all &= check("close answered", f.opcode == OP_CLOSE, format!("op {}", f.opcode));

    if !all {
        bail!("selftest failed");
    }
    Ok(())
}

fn main() {
    let o = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = if o.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(o.threads).enable_all().build()
    }
    .expect("runtime");
    let res = rt.block_on(async {
        if o.selftest {
            selftest(o.clone()).await
        } else if let Some(n) = o.idle {
            idle(o.clone(), n).await
        } else {
            load(o.clone()).await
        }
    });
    if let Err(e) = res {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
