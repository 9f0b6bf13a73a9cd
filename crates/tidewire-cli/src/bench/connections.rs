//! `tidewire bench connections URL`: many idle connections, and what they cost the server.
//!
//! Opens `--conns` WebSocket connections, at most `--connect-concurrency` handshakes at a
//! time. Each one does one ping/pong round trip (so the server has read from it once after
//! the handshake) and then waits, answering the server's pings, for `--hold` seconds. With
//! `--server-pid` the server's VmRSS is read before the first connection and at the end of
//! the hold: KB per connection; and its CPU time while connecting (per connection) and
//! while idle. The generator's own VmRSS is reported the same way: it runs beside the
//! server, on the same machine, and its memory counts when the run is large.
//!
//! When every connection is open (or has failed), one line says so on stderr
//! ("connections: N/N open ..., holding"); SIGINT or SIGTERM then ends the hold early and
//! the report is printed as usual. A script that runs several generators at once waits for
//! that line from each, measures, and signals them all (benches/scale.sh).
//!
//! With `--message-size B` each connection instead echoes one B-byte binary message of the
//! json payload (an echo server is expected) and checks it; with `--compression` too, that
//! is the memory of a connection whose server-side compressor and decompressor both exist.
//! Whether the reply came back compressed is read from the kernel's byte count of the
//! socket (fewer bytes received than the message holds).
//!
//! One source address has about 28,000 ephemeral ports toward one server address. Above
//! that, connections are spread over `--sources` loopback addresses 127.0.0.1, 127.0.0.2,
//! ... (default: one per 25,000 connections); each socket is bound to its source before it
//! connects (with IP_BIND_ADDRESS_NO_PORT, so the port is chosen at connect time and the
//! same port can serve several destinations), and the handshake runs over it with
//! `ClientBuilder::connect_on`.

use super::stats::{
    fmt_f, fmt_int, memory_fields, round, server_rss_kb, tcp_bytes, CpuWindow, Errors, Proc, Report,
};
use super::{stop_signal, Common, Failure, Nofile, Progress, Shutdown, Target, Ws};
use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, MaybeTlsStream, Message};

#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    /// The server, ws://HOST:PORT/PATH (an echo server, or the hub's /ws or /rooms/NAME).
    #[arg(value_parser = super::parse_url)]
    url: String,

    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    conns: u32,

    /// Source addresses 127.0.0.1 ... 127.0.0.K to spread the connections over (loopback
    /// targets only). Default: one per 25,000 connections.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=254))]
    sources: Option<u32>,

    /// Seconds to hold the connections once all are open (at most: SIGINT or SIGTERM ends
    /// the hold early).
    #[arg(long, default_value = "5", value_name = "SECS",
          value_parser = super::parse_secs_or_zero)]
    hold: f64,

    /// Handshakes in progress at a time while connecting.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    connect_concurrency: u32,

    /// Offer permessage-deflate.
    #[arg(long)]
    compression: bool,

    /// Subprotocol to offer (repeatable), most preferred first: the hub's /ws needs
    /// tidewire.v1.
    #[arg(long, value_name = "NAME")]
    subprotocol: Vec<String>,

    /// Instead of the ping, each connection sends one binary message of this many bytes
    /// (the json payload) and waits for its echo before it idles: for an echo server.
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    message_size: Option<u32>,

    #[command(flatten)]
    pub common: Common,
}

/// What the memory figures are divided by: `kb_per_conn`, "KB per connection".
const CONN: (&str, &str) = ("conn", "connection");

/// Connections per source address when `--sources` is not given.
const PER_SOURCE: u64 = 25_000;

/// The source addresses to bind to; empty: let the kernel choose (one source).
fn source_addresses(conns: u64, sources: Option<u32>, target: SocketAddr) -> Result<Vec<IpAddr>> {
    let k = match sources {
        Some(k) => k as u64,
        None => conns.div_ceil(PER_SOURCE),
    };
    if k <= 1 {
        return Ok(Vec::new());
    }
    if k > 254 {
        bail!(
            "{conns} connections need {k} source addresses, more than the 254 of \
             127.0.0.1-127.0.0.254: run fewer connections per generator"
        );
    }
    let loopback_v4 = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    if !loopback_v4 {
        bail!(
            "{conns} connections need {k} source addresses (--sources), which is only \
             possible toward a 127.0.0.0/8 address, not {target}"
        );
    }
    Ok((1..=k as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect())
}

struct Shared {
    errors: Errors,
    open: AtomicU64,
    failed: AtomicU64,
    /// Connections that ended while held.
    lost: AtomicU64,
    /// Connections that negotiated permessage-deflate.
    compressed: AtomicU64,
    /// --message-size: echoes that came back in fewer bytes than the message has.
    replies_compressed: AtomicU64,
    /// --message-size: connections whose echo differed from the message sent.
    mismatched: AtomicU64,
}

pub async fn run(args: ConnectionsArgs, nofile: Nofile) -> Result<()> {
    let n = args.conns as u64;
    nofile.check(n);
    let mut builder = args
        .common
        .versions(ClientBuilder::new(&args.url).protocols(args.subprotocol.iter().cloned()));
    if args.compression {
        builder = builder.compression(Some(tidewire::DeflateConfig::default()));
    }
    let target = Arc::new(Target::new(&args.url, builder)?);
    let sources = source_addresses(n, args.sources, target.addr)?;
    let (probe, _) = target.probe().await?;
    super::close(probe).await;

    let server = args.common.server_pid.map(|pid| Proc { pid });
    let own_rss_before = Proc::me().rss_kb().ok();
    let rss_before = server_rss_kb(server)?;
    let sh = Arc::new(Shared {
        errors: Errors::default(),
        open: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        compressed: AtomicU64::new(0),
        replies_compressed: AtomicU64::new(0),
        mismatched: AtomicU64::new(0),
    });
    let started = Instant::now();
    let progress = {
        let sh = sh.clone();
        Progress::start(move || {
            format!(
                "connections: {:.1} s, {}/{n} open, {} failed, {} lost",
                started.elapsed().as_secs_f64(),
                fmt_int(sh.open.load(Ordering::Relaxed)),
                fmt_int(sh.failed.load(Ordering::Relaxed)),
                fmt_int(sh.lost.load(Ordering::Relaxed)),
            )
        })
    };
    let connect_cpu = CpuWindow::start(server)?;
    let (done_tx, done) = Shutdown::new();
    let limiter = super::connect_limiter(args.connect_concurrency as usize);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let (target, sh, limiter, done) =
            (target.clone(), sh.clone(), limiter.clone(), done.clone());
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let message = args
            .message_size
            .map(|size| Message::binary(super::payload::json(size as usize, i as u64)));
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = limiter.acquire().await;
                // Boxed: the handshake's state is freed once the connection is open.
                Box::pin(open(&target, source, message)).await
            };
            match opened {
                Ok((ws, reply_compressed)) => {
                    sh.open.fetch_add(1, Ordering::Relaxed);
                    if ws.compression().is_some() {
                        sh.compressed.fetch_add(1, Ordering::Relaxed);
                    }
                    if reply_compressed {
                        sh.replies_compressed.fetch_add(1, Ordering::Relaxed);
                    }
                    hold(ws, &sh, done).await;
                }
                Err(f) => {
                    if f.is_mismatch() {
                        sh.mismatched.fetch_add(1, Ordering::Relaxed);
                    }
                    sh.errors.add(f.0);
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut stop = std::pin::pin!(stop_signal());
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut stopped = false;
    while sh.open.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!("connections not open after 600 s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = &mut stop => {
                stopped = true;
                break;
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connect_cpu = connect_cpu.finish()?;
    let open_count = sh.open.load(Ordering::Relaxed);
    let failed_count = sh.failed.load(Ordering::Relaxed);
    // The progress line ends here; the held count is in the report.
    drop(progress);
    if !stopped {
        eprintln!(
            "connections: {}/{n} open, {} failed in {connect_secs:.2} s; holding {} s \
             (SIGINT or SIGTERM ends the hold)",
            open_count, failed_count, args.hold
        );
    }
    let hold_cpu = CpuWindow::start(server)?;
    let t0 = Instant::now();
    if !stopped {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.hold)) => {}
            _ = &mut stop => stopped = true,
        }
    }
    let hold_secs = t0.elapsed().as_secs_f64();
    let hold_cpu = hold_cpu.finish()?;
    let rss_after = server_rss_kb(server)?;
    let own_rss_after = Proc::me().rss_kb().ok();
    let held = sh.open.load(Ordering::Relaxed) - sh.lost.load(Ordering::Relaxed);
    let _ = done_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if open_count == 0 {
        bail!("no connection could be opened: {}", sh.errors.human());
    }

    let mut r = Report::new("connections");
    r.field("url", args.url.as_str());
    r.field("conns", n);
    r.field("open", open_count);
    r.field("held", held);
    r.field("failed", sh.failed.load(Ordering::Relaxed));
    r.field("sources", sources.len().max(1));
    r.field("compression_offered", args.compression);
    r.field(
        "compression_negotiated",
        sh.compressed.load(Ordering::Relaxed),
    );
    r.field("message_size", args.message_size);
    if args.message_size.is_some() {
        r.field(
            "replies_compressed",
            sh.replies_compressed.load(Ordering::Relaxed),
        );
    }
    r.field("connect_s", round(connect_secs, 3));
    r.field("connects_per_s", round(open_count as f64 / connect_secs, 1));
    r.field("hold_s", round(hold_secs, 3));
    r.field("stopped_by_signal", stopped);
    r.row("target", args.url.as_str());
    r.row(
        "connections",
        format!(
            "{}/{} open in {connect_secs:.2} s ({}/s) from {} source address{}, {} held {:.1} s",
            fmt_int(open_count),
            fmt_int(n),
            fmt_f(open_count as f64 / connect_secs, 0),
            sources.len().max(1),
            if sources.len() > 1 { "es" } else { "" },
            fmt_int(held),
            hold_secs
        ),
    );
    if args.compression || args.message_size.is_some() {
        r.row(
            "each",
            format!(
                "{}{}",
                match args.message_size {
                    Some(b) => format!(
                        "echoed one {b} B json message ({} replies compressed)",
                        fmt_int(sh.replies_compressed.load(Ordering::Relaxed))
                    ),
                    None => "did one ping/pong".into(),
                },
                if args.compression {
                    format!(
                        "; permessage-deflate offered, {} negotiated",
                        fmt_int(sh.compressed.load(Ordering::Relaxed))
                    )
                } else {
                    String::new()
                }
            ),
        );
    }
    if let (Some(pid), Some(before), Some(after)) = (args.common.server_pid, rss_before, rss_after)
    {
        r.field("server_pid", pid);
        memory_fields(&mut r, "server memory", "", before, after, held, CONN);
    }
    if let (Some(before), Some(after)) = (own_rss_before, own_rss_after) {
        memory_fields(
            &mut r,
            "generator memory",
            "generator_",
            before,
            after,
            held,
            CONN,
        );
    }
    if let (Some(c), Some(h)) = (connect_cpu.server_ns, hold_cpu.server_ns) {
        let per = c as f64 / 1000.0 / open_count as f64;
        r.field("server_cpu_connect_ms", round(c as f64 / 1e6, 1));
        r.field("server_cpu_us_per_connect", round(per, 2));
        r.field("server_cpu_hold_ms", round(h as f64 / 1e6, 1));
        r.field("server_cpu_hold_util", round(h as f64 / 1e9 / hold_secs, 4));
        r.row(
            "server CPU",
            format!(
                "{} µs per connection opened; {} ms while holding ({:.1}% of a core)",
                fmt_f(per, 1),
                fmt_f(h as f64 / 1e6, 1),
                h as f64 / 1e7 / hold_secs
            ),
        );
    }
    r.field(
        "generator_cpu_connect_ms",
        round(connect_cpu.own_ns as f64 / 1e6, 1),
    );
    r.field("errors_total", sh.errors.total());
    r.field("errors", sh.errors.json());
    r.field("nofile_limit", nofile.soft);
    r.row("errors", sh.errors.human());
    r.print(args.common.json);
    // A run that measured nothing, or not what it meant to, fails.
    let mismatched = sh.mismatched.load(Ordering::Relaxed);
    if mismatched > 0 {
        bail!(
            "{mismatched} of {n} connections got back something other than the message they \
             sent: {} is not an echo server (--message-size needs one)",
            args.url
        );
    }
    if held == 0 {
        bail!(
            "nothing was measured: no connection stayed open through the hold; errors: {}",
            sh.errors.human()
        );
    }
    Ok(())
}

/// Bytes the kernel has received on the connection's socket (not for wss://).
fn received(ws: &Ws) -> Option<u64> {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp_bytes(std::os::fd::AsRawFd::as_raw_fd(tcp)),
        #[allow(unreachable_patterns)]
        _ => None,
    }
    .map(|b| b.received)
}

/// Opens one connection and does one round trip on it: a ping, or the echo of `message`.
/// Also says whether the echo came back in fewer bytes than the message has (compressed).
/// The stream is boxed, so that moving it into [`hold`] moves a pointer: every byte of a
/// held connection's task is paid once per connection, and the generator runs beside the
/// server it measures.
async fn open(
    target: &Target,
    source: Option<IpAddr>,
    message: Option<Message>,
) -> Result<(Box<Ws>, bool), Failure> {
    let (mut ws, _) = target.connect(source).await?;
    let before = received(&ws);
    let size = message.as_ref().map(Message::len);
    let round_trip = async {
        let expected = match message {
            Some(m) => {
                ws.queue(m.clone()).map_err(|e| Failure::ws(&e))?;
                Some(m)
            }
            None => {
                ws.queue(Message::Ping(Bytes::from_static(b"bench")))
                    .map_err(|e| Failure::ws(&e))?;
                None
            }
        };
        loop {
            match ws.recv().await {
                Some(Ok(Message::Pong(_))) if expected.is_none() => return Ok(()),
                Some(Ok(m)) if m.is_data() && expected.is_some() => {
                    return match expected {
                        Some(e) if e.as_payload() == m.as_payload() => Ok(()),
                        _ => Err(Failure("echo differs from the message sent".into())),
                    };
                }
                Some(Ok(Message::Close(f))) => return Err(Failure::closed(f.as_ref())),
                Some(Ok(_)) => {}
                other => return Err(Failure::from_recv(other)),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), round_trip).await {
        Ok(Ok(())) => {}
        Ok(Err(f)) => return Err(f),
        Err(_) => return Err(Failure("timeout: first round trip".into())),
    }
    let compressed = match (size, before, received(&ws)) {
        (Some(size), Some(a), Some(b)) => b.saturating_sub(a) < size as u64,
        _ => false,
    };
    Ok((Box::new(ws), compressed))
}

/// Holds one connection open (answering pings) until the run is over.
async fn hold(mut ws: Box<Ws>, sh: &Shared, done: Shutdown) {
    let done = done.wait();
    tokio::pin!(done);
    loop {
        tokio::select! {
            biased;
            _ = &mut done => {
                // Boxed: the close handshake's state (2 KB) is only paid while closing.
                Box::pin(super::close(*ws)).await;
                return;
            }
            m = ws.recv() => match m {
                Some(Ok(Message::Close(f))) => {
                    sh.errors.add(Failure::closed(f.as_ref()).0);
                    break;
                }
                Some(Ok(_)) => {}
                other => {
                    sh.errors.add(Failure::from_recv(other).0);
                    break;
                }
            },
        }
    }
    sh.lost.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_one_per_25000_connections() {
        let local: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert!(source_addresses(10_000, None, local).unwrap().is_empty());
        assert!(source_addresses(25_000, None, local).unwrap().is_empty());
        let s = source_addresses(60_000, None, local).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source_addresses(10, Some(4), local).unwrap().len(), 4);
        assert!(source_addresses(10, Some(1), local).unwrap().is_empty());
        // More than 127.0.0.1-127.0.0.254: an error, not a count wrapped to a byte.
        assert_eq!(source_addresses(6_350_000, None, local).unwrap().len(), 254);
        for conns in [6_350_001, 6_400_000, u32::MAX as u64] {
            let e = source_addresses(conns, None, local)
                .unwrap_err()
                .to_string();
            assert!(e.contains("source addresses"), "{e}");
        }
        let remote: SocketAddr = "192.0.2.1:80".parse().unwrap();
        assert!(source_addresses(60_000, None, remote).is_err());
        assert!(source_addresses(100, None, remote).unwrap().is_empty());
    }
}
