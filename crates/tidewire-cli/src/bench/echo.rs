//! `tidewire bench echo URL`: closed-loop round trips against an echo server.
//!
//! Every connection keeps `--inflight` messages of `--size` bytes outstanding; each echo
//! that comes back is timed (queued for sending to received) and replaced at once by a new
//! message. Sends are queued and leave together when the connection next waits for input
//! (one write per turn). After every connection is up, `--warmup` seconds are not counted,
//! then `--duration` seconds are: messages, latency and, with `--server-pid`, the server's
//! CPU time per echoed message over exactly that window. Every echo is compared with the
//! message sent, byte for byte.
//!
//! The kernel's byte counters of the connections (`TCP_INFO`, read at both ends of the
//! window) give the bytes per message on the wire each way and, without compression, a
//! count of echoes that does not depend on the frame parser (`kernel_echoes`).
//!
//! `--raw-tcp` is the floor of the peer comparison (`benches/compare.sh`): against a plain
//! TCP echo server (no WebSocket at all) there is no handshake; every message is written as
//! the masked client frame it would be on a WebSocket, and the server must send exactly
//! those bytes back (so the frames come back masked; they are compared with what was sent,
//! header and mask key included). Same closed loop, timing and report as the WebSocket
//! runs, so the floor is measured by the same generator as the servers above it.

use super::payload::Payload;
use super::stats::{
    fmt_f, fmt_int, round, tcp_bytes, CpuWindow, Errors, Latency, Proc, Report, TcpBytes,
};
use super::{Common, Failure, Nofile, Phase, Progress, Shutdown, Target, Ws};
use anyhow::{anyhow, bail, Result};
use bytes::{Buf, Bytes, BytesMut};
use clap::Args;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewire::proto::frame::MAX_HEADER_LEN;
use tidewire::proto::{mask::apply_mask, FrameHeader, Opcode};
use tidewire::{ClientBuilder, MaybeTlsStream, Message};
use tokio::io::Interest;
use tokio::net::TcpStream;

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// The echo server, ws://HOST:PORT/PATH.
    #[arg(value_parser = super::parse_url)]
    url: String,

    /// Connections.
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    conns: u32,

    /// Messages outstanding per connection.
    #[arg(long, default_value_t = 1, value_name = "K",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    inflight: u32,

    /// Payload bytes per message.
    #[arg(long, default_value_t = 20, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(0..=(64 << 20)))]
    size: u32,

    /// Binary messages (the default is text).
    #[arg(long)]
    binary: bool,

    /// What the messages hold: alpha ('a'..'z' repeated, the same every message) or json
    /// (JSON-like records that vary per message, compressible like real data; the same
    /// bytes as loadgen's --payload json). Each connection cycles through at least
    /// 128 KiB of distinct json messages.
    #[arg(long, value_enum, default_value_t = Payload::Alpha, value_name = "KIND")]
    payload: Payload,

    /// Offer permessage-deflate.
    #[arg(long)]
    compression: bool,

    /// With --compression: zlib level (0-9) of the messages this generator sends.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "compression",
          value_parser = clap::value_parser!(u32).range(0..=9))]
    deflate_level: u32,

    /// With --compression: messages shorter than this are sent uncompressed (0: compress
    /// every message).
    #[arg(
        long,
        default_value_t = 64,
        value_name = "BYTES",
        requires = "compression"
    )]
    deflate_threshold: usize,

    /// Raw TCP floor, for a plain TCP echo server (no WebSocket): no HTTP handshake; each
    /// message is written as a masked WebSocket client frame and the server must send the
    /// same bytes back, which are compared with what was sent. Only the host and port of
    /// the URL are used.
    #[arg(long, conflicts_with = "compression")]
    raw_tcp: bool,

    /// Measured seconds.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = super::parse_secs)]
    duration: f64,

    /// Seconds of load before the measured window, not counted.
    #[arg(long, default_value = "2", value_name = "SECS",
          value_parser = super::parse_secs_or_zero)]
    warmup: f64,

    /// Handshakes in progress at a time while connecting.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    connect_concurrency: u32,

    #[command(flatten)]
    pub common: Common,
}

/// One message of the cycle as a WebSocket message.
fn message(bytes: Vec<u8>, binary: bool) -> Message {
    if binary {
        Message::binary(bytes)
    } else {
        // Both payloads are ASCII, so valid UTF-8.
        Message::text(String::from_utf8(bytes).unwrap_or_default())
    }
}

/// The mask key of the raw-TCP frames (RFC 6455's example key; any key is valid).
const RAW_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One message as the masked client frame `--raw-tcp` writes (and expects back).
fn masked_frame(payload: &[u8], binary: bool) -> Bytes {
    let opcode = if binary { Opcode::Binary } else { Opcode::Text };
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader::new(opcode, payload.len() as u64, Some(RAW_MASK)).encode(&mut header);
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&header[..n]);
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[n..], RAW_MASK, 0);
    Bytes::from(frame)
}

/// Bytes of an unmasked server frame carrying `size` payload bytes.
fn server_frame_len(size: usize) -> usize {
    let header = FrameHeader::new(Opcode::Binary, size as u64, None).encoded_len();
    header + size
}

struct Shared {
    phase: Phase,
    latency: Latency,
    errors: Errors,
    /// Echoes received in the measured window.
    msgs: AtomicU64,
    /// Echoes received at all (for the progress line).
    seen: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    /// Connections that got back something other than what they sent.
    mismatched: AtomicU64,
    compressed: AtomicU64,
    /// The socket of each connection while it is open, for the kernel's byte counters.
    sockets: Mutex<Vec<Option<RawFd>>>,
}

impl Shared {
    /// A connection ended with `f`.
    fn fail(&self, f: Failure) {
        if f.is_mismatch() {
            self.mismatched.fetch_add(1, Ordering::Relaxed);
        }
        self.errors.add(f.0);
    }

    fn socket_open(&self, conn: usize, fd: RawFd) {
        if let Ok(mut s) = self.sockets.lock() {
            s[conn] = Some(fd);
        }
    }

    /// Called before the connection's socket is closed, so that its number (which the
    /// system may give to another file) is not read any more.
    fn socket_closed(&self, conn: usize) {
        if let Ok(mut s) = self.sockets.lock() {
            s[conn] = None;
        }
    }

    /// The kernel's byte counters summed over the open connections, and how many.
    fn tcp_totals(&self) -> (TcpBytes, u64) {
        let Ok(s) = self.sockets.lock() else {
            return (TcpBytes::default(), 0);
        };
        s.iter()
            .flatten()
            .filter_map(|&fd| tcp_bytes(fd))
            .fold((TcpBytes::default(), 0), |(t, n), b| (t.add(b), n + 1))
    }
}

/// The socket under a WebSocket connection (not for wss://).
fn ws_fd(ws: &Ws) -> Option<RawFd> {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => Some(tcp.as_raw_fd()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// A raw TCP connection for --raw-tcp, within the connect timeout.
async fn raw_connect(target: &Target) -> Result<TcpStream, Failure> {
    match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target.addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(Failure::connect(&e)),
        Err(_) => Err(Failure("timeout: connect".into())),
    }
}

pub async fn run(args: EchoArgs, nofile: Nofile) -> Result<()> {
    nofile.check(args.conns as u64);
    let mut builder = args.common.versions(ClientBuilder::new(&args.url));
    if args.compression {
        let offer = tidewire::DeflateConfig::default()
            .level(args.deflate_level)
            .threshold(args.deflate_threshold);
        builder = builder.compression(Some(offer));
    }
    let target = Arc::new(Target::new(&args.url, builder)?);
    if args.raw_tcp && target.tls {
        bail!("--raw-tcp needs a ws:// URL (host and port of a plain TCP echo server), not wss://");
    }
    // The permessage-deflate parameters the server answered (Sec-WebSocket-Extensions).
    let mut pmd = None;
    let mut http = "1.1";
    if args.raw_tcp {
        match raw_connect(&target).await {
            Ok(mut tcp) => probe_raw(&mut tcp, &target).await?,
            Err(f) => bail!("cannot connect to {} ({}): {f}", target.url, target.addr),
        }
    } else {
        let (mut probe, response) = target.probe().await?;
        if response.version() == http::Version::HTTP_2 {
            http = "2";
        } else if response.version() == http::Version::HTTP_3 {
            http = "3";
        }
        pmd = response
            .headers()
            .get("sec-websocket-extensions")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        probe_echo(&mut probe, &target.url).await?;
        super::close(probe).await;
    }

    let sh = Arc::new(Shared {
        phase: Phase::new(),
        latency: Latency::new(),
        errors: Errors::default(),
        msgs: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        mismatched: AtomicU64::new(0),
        compressed: AtomicU64::new(0),
        sockets: Mutex::new(vec![None; args.conns as usize]),
    });
    let plain = args.payload.cycle(args.size as usize);
    let cycle_msgs = plain.len();
    // What goes out, built once and shared: messages, or raw-TCP frames.
    let frames: Arc<[Bytes]> = if args.raw_tcp {
        plain.iter().map(|p| masked_frame(p, args.binary)).collect()
    } else {
        Arc::from([])
    };
    let msgs: Arc<[Message]> = if args.raw_tcp {
        Arc::from([])
    } else {
        plain.into_iter().map(|p| message(p, args.binary)).collect()
    };
    let (go_tx, go) = Shutdown::new();
    let (abort_tx, abort) = Shutdown::new();
    let limiter = super::connect_limiter(args.connect_concurrency as usize);
    let started = Instant::now();
    let progress = {
        let sh = sh.clone();
        let conns = args.conns as u64;
        Progress::start(move || {
            let (c, f) = (
                sh.connected.load(Ordering::Relaxed),
                sh.failed.load(Ordering::Relaxed),
            );
            let phase = match sh.phase.get() {
                Phase::WARMUP => "warmup",
                Phase::MEASURE => "measuring",
                _ => "draining",
            };
            format!(
                "echo: {:.1} s, {c}/{conns} connected, {f} failed, {phase}, {} echoes",
                started.elapsed().as_secs_f64(),
                fmt_int(sh.seen.load(Ordering::Relaxed))
            )
        })
    };
    let mut tasks = Vec::with_capacity(args.conns as usize);
    for i in 0..args.conns as usize {
        let (target, sh) = (target.clone(), sh.clone());
        let (msgs, frames) = (msgs.clone(), frames.clone());
        let (go, abort, limiter) = (go.clone(), abort.clone(), limiter.clone());
        let inflight = args.inflight as usize;
        let raw = args.raw_tcp;
        tasks.push(tokio::spawn(async move {
            if raw {
                let tcp = {
                    let _permit = limiter.acquire().await;
                    raw_connect(&target).await
                };
                let mut tcp = match tcp {
                    Ok(tcp) => tcp,
                    Err(f) => {
                        sh.errors.add(f.0);
                        sh.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                sh.socket_open(i, tcp.as_raw_fd());
                sh.connected.fetch_add(1, Ordering::Relaxed);
                go.wait().await;
                let r = drive_raw(i, &mut tcp, &sh, &frames, inflight, abort).await;
                sh.socket_closed(i);
                if let Err(f) = r {
                    sh.fail(f);
                }
                return;
            }
            let ws = {
                let _permit = limiter.acquire().await;
                target.connect(None).await
            };
            let mut ws = match ws {
                Ok((ws, _)) => ws,
                Err(f) => {
                    sh.errors.add(f.0);
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if ws.compression().is_some() {
                sh.compressed.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(fd) = ws_fd(&ws) {
                sh.socket_open(i, fd);
            }
            sh.connected.fetch_add(1, Ordering::Relaxed);
            go.wait().await;
            let r = drive(i, &mut ws, &sh, &msgs, inflight, abort).await;
            sh.socket_closed(i);
            match r {
                Ok(()) => super::close(ws).await,
                Err(f) => sh.fail(f),
            }
        }));
    }

    // Everyone connected (or failed), then the warm-up, then the window.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sh.connected.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed)
        < args.conns as u64
    {
        if Instant::now() > deadline {
            bail!("connections not up after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = sh.connected.load(Ordering::Relaxed);
    if connected == 0 {
        drop(progress);
        bail!("no connection could be opened: {}", sh.errors.human());
    }
    let _ = go_tx.send(true);
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let server = args.common.server_pid.map(|pid| Proc { pid });
    let (wire0, _) = sh.tcp_totals();
    let cpu = CpuWindow::start(server)?;
    let t0 = Instant::now();
    // (connections, WebSockets on them) when over HTTP/2.
    let h2_pool = tidewire::http2::pooled_connections();
    sh.phase.set(Phase::MEASURE);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    sh.phase.set(Phase::STOP);
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu.finish()?;
    let (wire1, sockets) = sh.tcp_totals();
    let wire = wire1.since(wire0);
    // Outstanding echoes get 3 s to arrive; then every task is told to give up.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = abort_tx.send(true);
    });
    for t in tasks {
        let _ = t.await;
    }
    drop(progress);

    let msgs = sh.msgs.load(Ordering::Relaxed);
    let lat = sh.latency.summary();
    let negotiated = sh.compressed.load(Ordering::Relaxed);
    // Without compression every echo has a known size on the wire, so the kernel's byte
    // count is also a count of echoes (0 sockets readable: unknown, as over wss://).
    let echo_frame = if args.raw_tcp {
        frames.first().map_or(0, |f| f.len())
    } else {
        server_frame_len(args.size as usize)
    };
    let kernel_echoes = (negotiated == 0 && sockets > 0 && echo_frame > 0)
        .then(|| wire.received as f64 / echo_frame as f64);
    let per_msg = |b: u64| (msgs > 0 && sockets > 0).then(|| round(b as f64 / msgs as f64, 2));
    let mut r = Report::new("echo");
    r.field("url", args.url.as_str());
    r.field("transport", if args.raw_tcp { "raw-tcp" } else { "ws" });
    r.field("http", http);
    r.field("http2_connections", h2_pool.0);
    r.field("conns", args.conns);
    r.field("connected", connected);
    r.field("inflight", args.inflight);
    r.field("size", args.size);
    r.field("opcode", if args.binary { "binary" } else { "text" });
    r.field("payload", args.payload.name());
    r.field("cycle_msgs", cycle_msgs);
    r.field("compression_offered", args.compression);
    r.field("compression_negotiated", negotiated);
    r.field("pmd", pmd.clone());
    if args.compression {
        r.field("deflate_level", args.deflate_level);
        r.field("deflate_threshold", args.deflate_threshold);
    }
    r.field("threads", args.common.threads);
    r.field("connect_s", round(connect_secs, 3));
    r.field("warmup_s", args.warmup);
    r.field("window_s", round(window, 4));
    r.field("msgs", msgs);
    r.field("msgs_per_s", round(msgs as f64 / window, 1));
    r.field(
        "mb_per_s",
        round(msgs as f64 * args.size as f64 / window / 1e6, 3),
    );
    r.field("latency_us", lat.json());
    r.field("kernel_sockets", sockets);
    r.field("tx_wire_bytes_per_msg", per_msg(wire.sent));
    r.field("rx_wire_bytes_per_msg", per_msg(wire.received));
    r.field("kernel_echoes", kernel_echoes.map(|e| round(e, 1)));
    r.row(
        "target",
        if args.raw_tcp {
            format!(
                "{} (raw TCP: no handshake, masked frames echoed)",
                target.addr
            )
        } else if http == "2" {
            format!(
                "{} (WebSockets over HTTP/2: {} on {} TCP connections)",
                args.url, h2_pool.1, h2_pool.0
            )
        } else {
            args.url.clone()
        },
    );
    r.row(
        "load",
        format!(
            "{} conns × {} in flight, {} B {} {}, warmup {} s, window {:.3} s",
            args.conns,
            args.inflight,
            args.size,
            args.payload.name(),
            if args.binary { "binary" } else { "text" },
            args.warmup,
            window
        ),
    );
    if args.compression {
        r.row(
            "compression",
            format!(
                "permessage-deflate offered (level {}, threshold {} B), {negotiated} accepted: {}",
                args.deflate_level,
                args.deflate_threshold,
                pmd.as_deref().unwrap_or("declined")
            ),
        );
    }
    r.row(
        "connected",
        format!("{connected}/{} in {connect_secs:.3} s", args.conns),
    );
    r.row(
        "throughput",
        format!(
            "{} msgs/s, {} MB/s ({} echoes)",
            fmt_f(msgs as f64 / window, 0),
            fmt_f(msgs as f64 * args.size as f64 / window / 1e6, 2),
            fmt_int(msgs)
        ),
    );
    r.row("latency", lat.human());
    if let (Some(tx), Some(rx)) = (per_msg(wire.sent), per_msg(wire.received)) {
        r.row(
            "wire",
            format!(
                "{} B/msg sent, {} B/msg received (kernel counters of {sockets} sockets){}",
                fmt_f(tx, 1),
                fmt_f(rx, 1),
                kernel_echoes
                    .map(|e| format!("; {} echoes by byte count", fmt_f(e, 0)))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(pid) = args.common.server_pid {
        r.field("server_pid", pid);
    }
    cpu.report(&mut r, window, msgs, "msg");
    r.field("errors_total", sh.errors.total());
    r.field("errors", sh.errors.json());
    r.field("nofile_limit", nofile.soft);
    r.row("errors", sh.errors.human());
    r.print(args.common.json);
    // A run that measured nothing, or measured something other than echoes, fails.
    let mismatched = sh.mismatched.load(Ordering::Relaxed);
    if mismatched > 0 {
        bail!(
            "{mismatched} of {connected} connections got back something other than what they \
             sent: {} is not an echo server (or not only one); errors: {}",
            args.url,
            sh.errors.human()
        );
    }
    if msgs == 0 {
        bail!(
            "nothing was measured: no echo came back in the {window:.1} s window; errors: {}",
            sh.errors.human()
        );
    }
    Ok(())
}

/// How long the probe waits for its echo.
const PROBE_WAIT: Duration = Duration::from_secs(5);

/// The probe message: never one of the run's (those are all letters or JSON records).
fn probe_payload() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("tidewire bench probe {} {nanos}", std::process::id())
}

/// One round trip on the probe connection before the run: a server that does not send a
/// message back as it is (a hub room, which sends it to the others; a server that never
/// answers) ends the run here with one line, instead of a run that measures nothing, or
/// measures connections echoing each other through a room.
async fn probe_echo(ws: &mut Ws, url: &str) -> Result<()> {
    let probe = Message::text(probe_payload());
    ws.send(probe.clone())
        .await
        .map_err(|e| anyhow!("{url}: cannot send the probe message: {}", Failure::ws(&e)))?;
    let reply = async {
        loop {
            match ws.recv().await {
                Some(Ok(m)) if m.is_data() => return Ok(m),
                Some(Ok(Message::Close(f))) => return Err(Failure::closed(f.as_ref())),
                Some(Ok(_)) => {}
                other => return Err(Failure::from_recv(other)),
            }
        }
    };
    match tokio::time::timeout(PROBE_WAIT, reply).await {
        Ok(Ok(m)) if m == probe => Ok(()),
        Ok(Ok(_)) => {
            bail!("{url} answered the probe message with another message: is it an echo server?")
        }
        Ok(Err(f)) => bail!("{url} did not echo the probe message: {f}"),
        Err(_) => bail!(
            "{url} did not echo the probe message within {} s: is it an echo server? (a hub \
             room sends a message to the others in the room, not back)",
            PROBE_WAIT.as_secs()
        ),
    }
}

/// [`probe_echo`] for --raw-tcp: one masked frame out, the same bytes back.
async fn probe_raw(tcp: &mut TcpStream, target: &Target) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = masked_frame(probe_payload().as_bytes(), false);
    let mut back = vec![0u8; frame.len()];
    let round_trip = async {
        tcp.write_all(&frame).await?;
        tcp.read_exact(&mut back).await.map(|_| ())
    };
    let addr = target.addr;
    match tokio::time::timeout(PROBE_WAIT, round_trip).await {
        Ok(Ok(())) if back[..] == frame[..] => Ok(()),
        Ok(Ok(())) => {
            bail!("{addr} sent back other bytes than the probe frame: is it a TCP echo server?")
        }
        Ok(Err(e)) => bail!("{addr} did not echo the probe frame: {e}"),
        Err(_) => bail!(
            "{addr} did not echo the probe frame within {} s: is it a TCP echo server?",
            PROBE_WAIT.as_secs()
        ),
    }
}

/// Latencies recorded per connection before they go to the shared histogram.
const BATCH: usize = 64;

/// The closed loop of one connection, until the window is over and its last echo is back.
/// `msgs` is the cycle of messages, sent in order; echo i must equal message i.
async fn drive(
    conn: usize,
    ws: &mut Ws,
    sh: &Shared,
    msgs: &[Message],
    inflight: usize,
    abort: Shutdown,
) -> Result<(), Failure> {
    let mut to_send = 0;
    let mut sent: VecDeque<(Instant, usize)> = VecDeque::with_capacity(inflight);
    for _ in 0..inflight {
        ws.queue(msgs[to_send].clone())
            .map_err(|e| Failure::ws(&e))?;
        sent.push_back((Instant::now(), to_send));
        to_send = (to_send + 1) % msgs.len();
    }
    // Latencies of this connection wait here and go to the shared histogram in batches.
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    let abort = abort.wait();
    tokio::pin!(abort);
    let result = loop {
        let next = tokio::select! {
            biased;
            m = ws.recv() => m,
            _ = &mut abort => break Err(Failure(format!(
                "timeout: {} echoes still outstanding 3 s after the window", sent.len()))),
        };
        match next {
            Some(Ok(m)) if m.is_data() => {
                let now = Instant::now();
                let Some((t0, i)) = sent.pop_front() else {
                    break Err(Failure("unsolicited message".into()));
                };
                if m.len() != msgs[i].len() {
                    break Err(Failure("echo of the wrong length".into()));
                }
                if m.as_payload() != msgs[i].as_payload() {
                    break Err(Failure("echo differs from the message sent".into()));
                }
                sh.seen.fetch_add(1, Ordering::Relaxed);
                match sh.phase.get() {
                    Phase::STOP => {
                        if sent.is_empty() {
                            break Ok(());
                        }
                        continue;
                    }
                    Phase::MEASURE => {
                        batch.push(now.duration_since(t0).as_nanos() as u64);
                        if batch.len() == BATCH {
                            sh.latency.record_all(conn, &batch);
                            sh.msgs.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            batch.clear();
                        }
                    }
                    _ => {}
                }
                if let Err(e) = ws.queue(msgs[to_send].clone()) {
                    break Err(Failure::ws(&e));
                }
                sent.push_back((Instant::now(), to_send));
                to_send = (to_send + 1) % msgs.len();
            }
            Some(Ok(Message::Close(f))) => break Err(Failure::closed(f.as_ref())),
            Some(Ok(_)) => {}
            other => break Err(Failure::from_recv(other)),
        }
    };
    sh.latency.record_all(conn, &batch);
    sh.msgs.fetch_add(batch.len() as u64, Ordering::Relaxed);
    result
}

/// `drive` for --raw-tcp: the same closed loop over a plain TCP echo. `frames` are the
/// masked frames of the cycle; what comes back must be the same bytes, frame after frame.
/// Reads and writes are multiplexed on readiness, so a big frame cannot deadlock against
/// its own echo.
async fn drive_raw(
    conn: usize,
    tcp: &mut TcpStream,
    sh: &Shared,
    frames: &[Bytes],
    inflight: usize,
    abort: Shutdown,
) -> Result<(), Failure> {
    let mut to_send = 0;
    let mut out = BytesMut::new();
    let mut sent: VecDeque<(Instant, usize)> = VecDeque::with_capacity(inflight);
    for _ in 0..inflight {
        out.extend_from_slice(&frames[to_send]);
        sent.push_back((Instant::now(), to_send));
        to_send = (to_send + 1) % frames.len();
    }
    let mut input = BytesMut::with_capacity(64 * 1024);
    // Bytes of the oldest outstanding frame already seen back.
    let mut matched = 0;
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    let abort = abort.wait();
    tokio::pin!(abort);
    let result = 'conn: loop {
        let interest = if out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let ready = tokio::select! {
            biased;
            r = tcp.ready(interest) => match r {
                Ok(r) => r,
                Err(e) => break Err(Failure(format!("raw TCP: {e}"))),
            },
            _ = &mut abort => break Err(Failure(format!(
                "timeout: {} echoes still outstanding 3 s after the window", sent.len()))),
        };
        if ready.is_writable() && !out.is_empty() {
            match tcp.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break Err(Failure("connection reset (I/O error)".into())),
            }
        }
        if !ready.is_readable() {
            continue;
        }
        if input.capacity() - input.len() < 16 * 1024 {
            input.reserve(64 * 1024);
        }
        match tcp.try_read_buf(&mut input) {
            Ok(0) => break Err(Failure("connection ended".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break Err(Failure("connection reset (I/O error)".into())),
        }
        while !input.is_empty() {
            let Some(&(t0, i)) = sent.front() else {
                break 'conn Err(Failure("unsolicited bytes".into()));
            };
            let frame = &frames[i];
            let take = (frame.len() - matched).min(input.len());
            if input[..take] != frame[matched..matched + take] {
                break 'conn Err(Failure("echo differs from the frame sent".into()));
            }
            input.advance(take);
            matched += take;
            if matched < frame.len() {
                break;
            }
            matched = 0;
            sent.pop_front();
            sh.seen.fetch_add(1, Ordering::Relaxed);
            match sh.phase.get() {
                Phase::STOP => {
                    if sent.is_empty() {
                        break 'conn Ok(());
                    }
                    continue;
                }
                Phase::MEASURE => {
                    batch.push(t0.elapsed().as_nanos() as u64);
                    if batch.len() == BATCH {
                        sh.latency.record_all(conn, &batch);
                        sh.msgs.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        batch.clear();
                    }
                }
                _ => {}
            }
            out.extend_from_slice(&frames[to_send]);
            sent.push_back((Instant::now(), to_send));
            to_send = (to_send + 1) % frames.len();
        }
    };
    sh.latency.record_all(conn, &batch);
    sh.msgs.fetch_add(batch.len() as u64, Ordering::Relaxed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_size_and_opcode() {
        let m = message(super::super::payload::alpha(30), false);
        assert!(matches!(m, Message::Text(_)));
        assert_eq!(m.len(), 30);
        assert_eq!(&m.as_payload()[..3], b"abc");
        assert_eq!(m.as_payload()[26], b'a');
        let m = message(Vec::new(), true);
        assert!(matches!(m, Message::Binary(_)));
        assert!(m.is_empty());
    }

    #[test]
    fn raw_frames_are_masked_client_frames() {
        let payload = super::super::payload::alpha(200);
        let f = masked_frame(&payload, true);
        // FIN + binary, MASK + 126 (16-bit length 200), the key, then the masked bytes.
        assert_eq!(&f[..8], &[0x82, 0xfe, 0, 200, 0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(f.len(), 8 + 200);
        let (h, n) = FrameHeader::parse(&f).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.fin, h.mask, h.payload_len, n),
            (Opcode::Binary, true, Some(RAW_MASK), 200, 8)
        );
        let mut body = f[n..].to_vec();
        apply_mask(&mut body, RAW_MASK, 0);
        assert_eq!(body, payload);
        assert_eq!(masked_frame(b"hi", false)[..2], [0x81, 0x82]);
    }

    #[test]
    fn server_frame_sizes() {
        assert_eq!(server_frame_len(20), 22);
        assert_eq!(server_frame_len(1024), 1028);
        assert_eq!(server_frame_len(65536), 65546);
    }
}
