//! `tidewire bench echo URL`: closed-loop round trips against an echo server.
//!
//! Every connection keeps `--inflight` messages of `--size` bytes outstanding; each echo
//! that comes back is timed (queued for sending to received) and replaced at once by a new
//! message. Sends are queued and leave together when the connection next waits for input
//! (one write per turn). After every connection is up, `--warmup` seconds are not counted,
//! then `--duration` seconds are: messages, latency and, with `--server-pid`, the server's
//! CPU time per echoed message over exactly that window.

use super::stats::{fmt_f, fmt_int, round, CpuWindow, Errors, Latency, Proc, Report};
use super::{Common, Failure, Nofile, Phase, Progress, Shutdown, Target, Ws};
use anyhow::{bail, Result};
use clap::Args;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, Message};

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

    /// Offer permessage-deflate.
    #[arg(long)]
    compression: bool,

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

/// The message every connection sends, built once: 'a'..'z' repeated.
fn payload(size: usize, binary: bool) -> Message {
    let bytes: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    if binary {
        Message::binary(bytes)
    } else {
        // ASCII, so valid UTF-8.
        Message::text(String::from_utf8(bytes).unwrap_or_default())
    }
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
    compressed: AtomicU64,
}

pub async fn run(args: EchoArgs, nofile: Nofile) -> Result<()> {
    nofile.check(args.conns as u64);
    let mut builder = ClientBuilder::new(&args.url);
    if args.compression {
        builder = builder.compression(Some(tidewire::DeflateConfig::default()));
    }
    let target = Arc::new(Target::new(&args.url, builder)?);
    let (probe, _) = target.probe().await?;
    super::close(probe).await;

    let sh = Arc::new(Shared {
        phase: Phase::new(),
        latency: Latency::new(),
        errors: Errors::default(),
        msgs: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        compressed: AtomicU64::new(0),
    });
    let msg = payload(args.size as usize, args.binary);
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
        let (target, sh, msg) = (target.clone(), sh.clone(), msg.clone());
        let (go, abort, limiter) = (go.clone(), abort.clone(), limiter.clone());
        let inflight = args.inflight as usize;
        tasks.push(tokio::spawn(async move {
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
            sh.connected.fetch_add(1, Ordering::Relaxed);
            go.wait().await;
            match drive(i, &mut ws, &sh, msg, inflight, abort).await {
                Ok(()) => super::close(ws).await,
                Err(f) => sh.errors.add(f.0),
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
    let cpu = CpuWindow::start(server)?;
    let t0 = Instant::now();
    sh.phase.set(Phase::MEASURE);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    sh.phase.set(Phase::STOP);
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu.finish()?;
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
    let mut r = Report::new("echo");
    r.field("url", args.url.as_str());
    r.field("conns", args.conns);
    r.field("connected", connected);
    r.field("inflight", args.inflight);
    r.field("size", args.size);
    r.field("opcode", if args.binary { "binary" } else { "text" });
    r.field("compression_offered", args.compression);
    r.field(
        "compression_negotiated",
        sh.compressed.load(Ordering::Relaxed),
    );
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
    r.row("target", args.url.as_str());
    r.row(
        "load",
        format!(
            "{} conns × {} in flight, {} B {}{}, warmup {} s, window {:.3} s",
            args.conns,
            args.inflight,
            args.size,
            if args.binary { "binary" } else { "text" },
            if args.compression {
                format!(
                    ", permessage-deflate offered ({} accepted)",
                    sh.compressed.load(Ordering::Relaxed)
                )
            } else {
                String::new()
            },
            args.warmup,
            window
        ),
    );
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
    if let Some(pid) = args.common.server_pid {
        r.field("server_pid", pid);
    }
    cpu.report(&mut r, window, msgs, "msg");
    r.field("errors_total", sh.errors.total());
    r.field("errors", sh.errors.json());
    r.field("nofile_limit", nofile.soft);
    r.row("errors", sh.errors.human());
    r.print(args.common.json);
    Ok(())
}

/// Latencies recorded per connection before they go to the shared histogram.
const BATCH: usize = 64;

/// The closed loop of one connection, until the window is over and its last echo is back.
async fn drive(
    conn: usize,
    ws: &mut Ws,
    sh: &Shared,
    msg: Message,
    inflight: usize,
    abort: Shutdown,
) -> Result<(), Failure> {
    let size = msg.len();
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(inflight);
    for _ in 0..inflight {
        ws.queue(msg.clone()).map_err(|e| Failure::ws(&e))?;
        sent.push_back(Instant::now());
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
                let Some(t0) = sent.pop_front() else {
                    break Err(Failure("unsolicited message".into()));
                };
                if m.len() != size {
                    break Err(Failure("echo of the wrong length".into()));
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
                if let Err(e) = ws.queue(msg.clone()) {
                    break Err(Failure::ws(&e));
                }
                sent.push_back(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size_and_opcode() {
        let m = payload(30, false);
        assert!(matches!(m, Message::Text(_)));
        assert_eq!(m.len(), 30);
        assert_eq!(&m.as_payload()[..3], b"abc");
        assert_eq!(m.as_payload()[26], b'a');
        let m = payload(0, true);
        assert!(matches!(m, Message::Binary(_)));
        assert!(m.is_empty());
    }
}
