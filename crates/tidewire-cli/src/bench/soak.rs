//! `tidewire bench soak URL`: a long run of mixed traffic against the hub, reporting the
//! server's memory and file descriptors at every interval (issue 15).
//!
//! What runs, all at once, for `--duration`:
//! - a publisher: `--rate` publications per second spread over `--channels` channels,
//!   through `POST /api/publish` when `--api-key` is given (one keep-alive HTTP/1.1
//!   connection, reopened when it fails), through a `tidewire.v1` connection otherwise;
//! - `--clients` client slots, each going through sessions without end: connect to `/ws`,
//!   subscribe to its two channels (with `since`, from the second session on), read for a
//!   random 1 to 10 s, then leave by a close handshake or by dropping the TCP connection
//!   without a word (an abrupt kill), half and half. A session is a slow reader with
//!   probability `--slow`: with a 4 KiB receive buffer, it subscribes, then reads nothing
//!   for its whole life (5 to 30 s) (the hub may close it as a slow consumer, 4000; it resumes like
//!   the others).
//!
//! Every slot checks what the hub promises across its sessions: each channel's offsets
//! arrive exactly once and in order, the resume (`since`) recovers every publication
//! missed while away (`recovered: true`, the same epoch). A gap, a duplicate or a failed
//! recovery is counted and fails the run; with `--history-size`, a resume that missed more
//! than history keeps is counted apart (the hub is right not to recover it), and every
//! failed recovery is reported with how much it missed and how long the slot was away.
//!
//! With `--server-pid`, the server's VmRSS and open descriptors (`/proc/PID/fd`) are read
//! every `--interval` and printed as one line each. The verdict compares every sample
//! after `--warmup` with the first one after it: the run fails when RSS grew by more than
//! `--max-rss-growth` MiB or descriptors by more than `--max-fd-growth` (when given).

use super::stats::{fmt_int, round, Errors, Proc, Report};
use super::{stop_signal, Common, Failure, Nofile, Target, Ws};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, Message};
use tidewire_hub_proto::{
    Push, RawValue, Request, RequestId, ServerMessage, StreamPosition, SubscribeResult,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// The hub's channel endpoint, ws://HOST:PORT/ws.
    #[arg(value_parser = super::parse_url)]
    url: String,

    /// How long to run, in seconds.
    #[arg(long, default_value = "3600", value_name = "SECS", value_parser = super::parse_secs)]
    duration: f64,

    /// Seconds between two samples of the server's memory and descriptors.
    #[arg(long, default_value = "60", value_name = "SECS", value_parser = super::parse_secs)]
    interval: f64,

    /// Seconds of warm-up: the samples before it are printed, not judged.
    #[arg(long, default_value = "60", value_name = "SECS",
          value_parser = super::parse_secs_or_zero)]
    warmup: f64,

    /// Client slots, each going through sessions (connect, subscribe, read, leave).
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: u32,

    /// Channels the publications are spread over.
    #[arg(long, default_value_t = 20, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    channels: u32,

    /// Publications per second, all channels together.
    #[arg(long, default_value_t = 100.0, value_name = "N", value_parser = parse_rate)]
    rate: f64,

    /// Publish through `POST /api/publish` with this key (the hub's `--api-key`);
    /// without it, through a tidewire.v1 connection.
    #[arg(
        long,
        value_name = "KEY",
        env = "TIDEWIRE_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    /// Bytes of padding in each publication's data (slow readers fall behind sooner).
    #[arg(long, default_value_t = 64, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    payload: u32,

    /// The share of sessions that read nothing (slow readers), 0 to 1.
    #[arg(long, default_value_t = 0.1, value_name = "P", value_parser = parse_share)]
    slow: f64,

    /// Channel names are PREFIX0, PREFIX1, ... (default: soak-RUNID-, new per run).
    #[arg(long, value_name = "NAME")]
    prefix: Option<String>,

    /// The channels' history_size on the server: a resume that missed more than this is
    /// counted as beyond history (the hub is right to answer `recovered: false`), not as
    /// a failure. Without it every resume not recovered fails the run.
    #[arg(long, value_name = "N")]
    history_size: Option<u64>,

    /// Fail when the server's RSS grows more than this many MiB after the warm-up.
    #[arg(long, value_name = "MIB", value_parser = parse_mib)]
    max_rss_growth: Option<f64>,

    /// Fail when the server's open descriptors grow more than this after the warm-up.
    #[arg(long, value_name = "N")]
    max_fd_growth: Option<u64>,

    #[command(flatten)]
    pub common: Common,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate between 0 and 1000000 per second"
        )),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

fn parse_mib(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of MiB (0 or more)")),
    }
}

/// A small xorshift generator: the run needs cheap variety, not quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Counters of the whole run.
#[derive(Default)]
struct Shared {
    errors: Errors,
    published: AtomicU64,
    publish_failed: AtomicU64,
    sessions: AtomicU64,
    connect_failed: AtomicU64,
    open: AtomicU64,
    kills: AtomicU64,
    closes: AtomicU64,
    slow_sessions: AtomicU64,
    closed_by_server: AtomicU64,
    resumes: AtomicU64,
    received: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    unrecovered: AtomicU64,
    /// Resumes that missed more than `history_size` publications (not recovered, rightly).
    beyond_history: AtomicU64,
    history_size: Option<u64>,
}

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss_kb: u64,
    fds: u64,
    open: u64,
    sessions: u64,
    published: u64,
    received: u64,
}

pub async fn run(args: SoakArgs, nofile: Nofile) -> Result<()> {
    nofile.check(u64::from(args.clients) + 1);
    let server = args.common.server_pid.map(|pid| Proc { pid });
    if let Some(p) = server {
        p.rss_kb()
            .and_then(|_| p.fds())
            .with_context(|| format!("cannot read /proc/{} (--server-pid)", p.pid))?;
    }
    let builder = ClientBuilder::new(&args.url).protocols(["tidewire.v1"]);
    let target = Arc::new(Target::new(&args.url, builder)?);
    let probe = target.probe_selecting("tidewire.v1").await?;
    super::close(probe).await;
    let prefix = args.prefix.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
        format!("soak-{nanos:x}-")
    });
    let names: Arc<Vec<String>> =
        Arc::new((0..args.channels).map(|i| format!("{prefix}{i}")).collect());

    let sh = Arc::new(Shared {
        history_size: args.history_size,
        ..Shared::default()
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();

    let publisher = {
        let (sh, names, stop) = (sh.clone(), names.clone(), stop.clone());
        let how = match &args.api_key {
            Some(key) => PublishVia::Api {
                addr: target.addr,
                key: key.clone(),
            },
            None => PublishVia::Ws(target.clone()),
        };
        let (rate, pad) = (args.rate, "x".repeat(args.payload as usize));
        tokio::spawn(async move { publish(how, rate, &pad, &names, &sh, stop).await })
    };
    let mut slots = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients {
        let (sh, names, stop, target) = (sh.clone(), names.clone(), stop.clone(), target.clone());
        let slow = args.slow;
        // Spread the first connections over the first second.
        let delay = Duration::from_millis(u64::from(i) * 1000 / u64::from(args.clients));
        slots.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            Slot::new(i, &names).run(&target, slow, &sh, stop).await;
        }));
    }

    // Samples until the end (or SIGINT/SIGTERM).
    let mut samples = Vec::new();
    let interval = Duration::from_secs_f64(args.interval);
    let end = started + Duration::from_secs_f64(args.duration);
    let mut next = started;
    let signal = stop_signal();
    tokio::pin!(signal);
    loop {
        let now = Instant::now();
        if now >= next {
            let s = Sample {
                at: started.elapsed().as_secs_f64(),
                rss_kb: server.map_or(Ok(0), |p| p.rss_kb())?,
                fds: server.map_or(Ok(0), |p| p.fds())?,
                open: sh.open.load(Ordering::Relaxed),
                sessions: sh.sessions.load(Ordering::Relaxed),
                published: sh.published.load(Ordering::Relaxed),
                received: sh.received.load(Ordering::Relaxed),
            };
            eprintln!(
                "soak: {:>7.0} s  RSS {:>8} KB  fds {:>6}  open {:>6}  sessions {:>9}  \
                 published {:>9}  received {:>10}",
                s.at,
                fmt_int(s.rss_kb),
                fmt_int(s.fds),
                fmt_int(s.open),
                fmt_int(s.sessions),
                fmt_int(s.published),
                fmt_int(s.received)
            );
            samples.push(s);
            next += interval;
        }
        if now >= end {
            break;
        }
        let wake = next.min(end);
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = &mut signal => break,
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        for s in slots {
            let _ = s.await;
        }
        let _ = publisher.await;
    })
    .await;
    report(&args, server.is_some(), &samples, &sh, started.elapsed())
}

fn report(
    args: &SoakArgs,
    measured: bool,
    samples: &[Sample],
    sh: &Shared,
    took: Duration,
) -> Result<()> {
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut r = Report::new("soak");
    r.field("url", args.url.as_str());
    r.field("seconds", round(took.as_secs_f64(), 1));
    r.field("clients", args.clients);
    r.field("channels", args.channels);
    r.field("rate", args.rate);
    let pairs = [
        ("sessions", &sh.sessions),
        ("connect_failed", &sh.connect_failed),
        ("abrupt_kills", &sh.kills),
        ("closes", &sh.closes),
        ("slow_sessions", &sh.slow_sessions),
        ("closed_by_server", &sh.closed_by_server),
        ("resumes", &sh.resumes),
        ("published", &sh.published),
        ("publish_failed", &sh.publish_failed),
        ("received", &sh.received),
        ("gaps", &sh.gaps),
        ("duplicates", &sh.duplicates),
        ("unrecovered", &sh.unrecovered),
        ("beyond_history", &sh.beyond_history),
    ];
    for (k, v) in pairs {
        r.field(k, c(v));
    }
    r.row(
        "sessions",
        format!(
            "{} ({} killed, {} closed, {} slow readers, {} closed by the server, {} \
             connects failed)",
            fmt_int(c(&sh.sessions)),
            fmt_int(c(&sh.kills)),
            fmt_int(c(&sh.closes)),
            fmt_int(c(&sh.slow_sessions)),
            fmt_int(c(&sh.closed_by_server)),
            fmt_int(c(&sh.connect_failed))
        ),
    );
    r.row(
        "publications",
        format!(
            "{} published ({} failed), {} received, {} resumes",
            fmt_int(c(&sh.published)),
            fmt_int(c(&sh.publish_failed)),
            fmt_int(c(&sh.received)),
            fmt_int(c(&sh.resumes))
        ),
    );
    r.row(
        "delivery",
        format!(
            "{} gaps, {} duplicates, {} resumes not recovered, {} beyond history",
            c(&sh.gaps),
            c(&sh.duplicates),
            c(&sh.unrecovered),
            c(&sh.beyond_history)
        ),
    );
    let mut failures = Vec::new();
    for (what, v) in [
        ("gaps", c(&sh.gaps)),
        ("duplicates", c(&sh.duplicates)),
        ("resumes not recovered", c(&sh.unrecovered)),
    ] {
        if v > 0 {
            failures.push(format!("{v} {what}"));
        }
    }
    if c(&sh.published) == 0 {
        failures.push("nothing was published".into());
    }
    if c(&sh.received) == 0 {
        failures.push("nothing was received".into());
    }
    let judged: Vec<&Sample> = samples.iter().filter(|s| s.at >= args.warmup).collect();
    r.field(
        "samples",
        serde_json::Value::Array(
            samples
                .iter()
                .map(|s| {
                    serde_json::json!({"at_s": round(s.at, 1), "rss_kb": s.rss_kb,
                        "fds": s.fds, "open": s.open, "sessions": s.sessions,
                        "published": s.published, "received": s.received})
                })
                .collect(),
        ),
    );
    if measured {
        match judged.first() {
            Some(base) => {
                let max_rss = judged.iter().map(|s| s.rss_kb).max().unwrap_or(base.rss_kb);
                let max_fds = judged.iter().map(|s| s.fds).max().unwrap_or(base.fds);
                let last = judged.last().copied().unwrap_or(base);
                let growth_mib = (max_rss as f64 - base.rss_kb as f64) / 1024.0;
                let fd_growth = max_fds.saturating_sub(base.fds);
                r.field("rss_after_warmup_kb", base.rss_kb);
                r.field("rss_max_kb", max_rss);
                r.field("rss_last_kb", last.rss_kb);
                r.field("rss_growth_mib", round(growth_mib, 2));
                r.field("fds_after_warmup", base.fds);
                r.field("fds_max", max_fds);
                r.row(
                    "server RSS",
                    format!(
                        "{} KB after warm-up, {} KB at most, {} KB last: +{:.1} MiB",
                        fmt_int(base.rss_kb),
                        fmt_int(max_rss),
                        fmt_int(last.rss_kb),
                        growth_mib
                    ),
                );
                r.row(
                    "server fds",
                    format!(
                        "{} after warm-up, {} at most, {} last",
                        base.fds, max_fds, last.fds
                    ),
                );
                if let Some(bound) = args.max_rss_growth {
                    if growth_mib > bound {
                        failures.push(format!(
                            "RSS grew {growth_mib:.1} MiB after the warm-up \
                             (--max-rss-growth {bound})"
                        ));
                    }
                }
                if let Some(bound) = args.max_fd_growth {
                    if fd_growth > bound {
                        failures.push(format!(
                            "descriptors grew by {fd_growth} after the warm-up \
                             (--max-fd-growth {bound})"
                        ));
                    }
                }
            }
            None => failures.push("no sample after the warm-up (--warmup >= --duration?)".into()),
        }
    } else if args.max_rss_growth.is_some() || args.max_fd_growth.is_some() {
        failures.push("--max-rss-growth and --max-fd-growth need --server-pid".into());
    }
    r.field("errors", sh.errors.json());
    r.row("errors", sh.errors.human());
    r.field("failures", failures.clone());
    r.print(args.common.json);
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}

enum PublishVia {
    Api {
        addr: std::net::SocketAddr,
        key: String,
    },
    Ws(Arc<Target>),
}

/// Publishes at `rate` until `stop`, round-robin over the channels.
async fn publish(
    how: PublishVia,
    rate: f64,
    pad: &str,
    names: &[String],
    sh: &Shared,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut api: Option<tokio::net::TcpStream> = None;
    let mut ws: Option<Ws> = None;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let channel = &names[(n % names.len() as u64) as usize];
        n += 1;
        let data = format!("{{\"n\":{n},\"pad\":\"{pad}\"}}");
        let r = match &how {
            PublishVia::Api { addr, key } => {
                api_publish(&mut api, *addr, key, channel, &data).await
            }
            PublishVia::Ws(target) => ws_publish(&mut ws, target, channel, n, data).await,
        };
        match r {
            Ok(()) => sh.published.fetch_add(1, Ordering::Relaxed),
            Err(f) => {
                sh.errors.add(format!("publish: {f}"));
                api = None;
                ws = None;
                sh.publish_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    if let Some(ws) = ws {
        super::close(ws).await;
    }
}

/// One `POST /api/publish` on a keep-alive connection (opened when there is none).
async fn api_publish(
    conn: &mut Option<tokio::net::TcpStream>,
    addr: std::net::SocketAddr,
    key: &str,
    channel: &str,
    data: &str,
) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure(format!("API: {e}"));
    if conn.is_none() {
        let s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let _ = s.set_nodelay(true);
        *conn = Some(s);
    }
    let Some(s) = conn.as_mut() else {
        return Err(Failure("API: no connection".into()));
    };
    let body = format!(
        "{{\"channel\":{},\"data\":{data}}}",
        serde_json::Value::from(channel)
    );
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        s.write_all(req.as_bytes()).await.map_err(io)?;
        // The head, then Content-Length bytes of body.
        let mut buf = Vec::with_capacity(512);
        let mut byte = [0u8; 256];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(Failure("API: response head too large".into()));
            }
            let k = s.read(&mut byte).await.map_err(io)?;
            if k == 0 {
                return Err(Failure("API: connection closed".into()));
            }
            buf.extend_from_slice(&byte[..k]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split(' ').nth(1).unwrap_or("").to_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let k = s.read(&mut byte).await.map_err(io)?;
            if k == 0 {
                return Err(Failure("API: connection closed in the body".into()));
            }
            buf.extend_from_slice(&byte[..k]);
        }
        if status != "200" {
            let body = String::from_utf8_lossy(&buf[head_end..]);
            return Err(Failure(format!("API: status {status}: {}", body.trim())));
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure("API: timeout".into())),
    }
}

/// One `publish` over a tidewire.v1 connection (opened when there is none), waiting for
/// its reply.
async fn ws_publish(
    conn: &mut Option<Ws>,
    target: &Target,
    channel: &str,
    n: u64,
    data: String,
) -> Result<(), Failure> {
    if conn.is_none() {
        *conn = Some(target.connect(None).await?.0);
    }
    let Some(ws) = conn.as_mut() else {
        return Err(Failure("no connection".into()));
    };
    let data =
        RawValue::from_string(data).map_err(|e| Failure(format!("publication data: {e}")))?;
    let text = Request::Publish {
        channel: channel.to_owned(),
        data,
        idempotency_key: None,
    }
    .encode(&RequestId::from(n));
    let exchange = async {
        ws.send(Message::text(text))
            .await
            .map_err(|e| Failure::ws(&e))?;
        loop {
            match ws.recv().await {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(ServerMessage::Reply(reply)) = ServerMessage::parse(t.as_str()) {
                        if reply.id.as_u64() == Some(n) {
                            return match reply.outcome {
                                Ok(_) => Ok(()),
                                Err(e) => Err(Failure(format!("error {}", e.code.0))),
                            };
                        }
                    }
                }
                Some(Ok(_)) => {}
                other => return Err(Failure::from_recv(other)),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(r) => r,
        Err(_) => Err(Failure("publish: timeout".into())),
    }
}

/// A client slot: what it has seen of its channels, across its sessions.
struct Slot {
    rng: Rng,
    /// When the slot last read a message (for the report of a resume not recovered).
    seen_at: Instant,
    /// Its channels and, once known, the position of the last publication seen on each.
    channels: Vec<(String, Option<StreamPosition>)>,
}

impl Slot {
    fn new(i: u32, names: &[String]) -> Slot {
        let n = names.len();
        let a = i as usize % n;
        let b = (i as usize * 7 + 3) % n;
        let mut channels = vec![(names[a].clone(), None)];
        if b != a {
            channels.push((names[b].clone(), None));
        }
        Slot {
            rng: Rng::new(u64::from(i) + 1),
            seen_at: Instant::now(),
            channels,
        }
    }

    async fn run(
        mut self,
        target: &Target,
        slow: f64,
        sh: &Shared,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            let is_slow = self.rng.unit() < slow;
            // A slow reader's socket takes little before the server's queue fills.
            let rcvbuf = is_slow.then_some(4096);
            let ws = match target.connect_with(None, rcvbuf).await {
                Ok((ws, _)) => ws,
                Err(f) => {
                    sh.connect_failed.fetch_add(1, Ordering::Relaxed);
                    sh.errors.add(format!("connect: {f}"));
                    let pause = Duration::from_millis(200 + self.rng.next() % 800);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    continue;
                }
            };
            sh.sessions.fetch_add(1, Ordering::Relaxed);
            sh.open.fetch_add(1, Ordering::Relaxed);
            // Slow readers stay longer, enough to fill the kernel's buffers and the hub's.
            let life = if is_slow {
                Duration::from_millis(5000 + self.rng.next() % 25_000)
            } else {
                Duration::from_millis(1000 + self.rng.next() % 9000)
            };
            let kill = self.rng.next().is_multiple_of(2);
            let ended = self.session(ws, life, is_slow, kill, sh, &mut stop).await;
            sh.open.fetch_sub(1, Ordering::Relaxed);
            if let Err(f) = ended {
                sh.errors.add(f.0);
            }
        }
    }

    /// One session: subscribe (resuming), read (or not) for `life`, leave.
    async fn session(
        &mut self,
        mut ws: Ws,
        life: Duration,
        is_slow: bool,
        kill: bool,
        sh: &Shared,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        for (j, (channel, since)) in self.channels.iter().enumerate() {
            if since.is_some() {
                sh.resumes.fetch_add(1, Ordering::Relaxed);
            }
            let text = Request::Subscribe {
                channel: channel.clone(),
                since: since.clone(),
            }
            .encode(&RequestId::from(j as u64));
            ws.queue(Message::text(text)).map_err(|e| Failure::ws(&e))?;
        }
        ws.flush().await.map_err(|e| Failure::ws(&e))?;
        let deadline = tokio::time::Instant::now() + life;
        if is_slow {
            sh.slow_sessions.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            // What arrived since is read now, in order, before leaving: the replies came
            // first, so the positions stay right.
            while let Ok(m) = tokio::time::timeout(Duration::from_millis(1), ws.recv()).await {
                if !self.receive(m, sh)? {
                    return Ok(());
                }
            }
        } else {
            loop {
                tokio::select! {
                    m = ws.recv() => if !self.receive(m, sh)? { return Ok(()) },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
        if kill {
            sh.kills.fetch_add(1, Ordering::Relaxed);
            drop(ws);
        } else {
            sh.closes.fetch_add(1, Ordering::Relaxed);
            super::close(ws).await;
        }
        Ok(())
    }

    /// Handles one message; `Ok(false)` when the server closed the connection.
    fn receive(
        &mut self,
        m: Option<tidewire::Result<Message>>,
        sh: &Shared,
    ) -> Result<bool, Failure> {
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                sh.closed_by_server.fetch_add(1, Ordering::Relaxed);
                let code = frame.map_or(1005, |f| f.code.0);
                sh.errors.add(format!("closed by server with code {code}"));
                return Ok(false);
            }
            None => {
                sh.closed_by_server.fetch_add(1, Ordering::Relaxed);
                sh.errors.add("connection ended by server");
                return Ok(false);
            }
            Some(Ok(_)) => return Ok(true),
            Some(Err(e)) => return Err(Failure::ws(&e)),
        };
        let parsed = ServerMessage::parse(text.as_str());
        let seen_before = std::mem::replace(&mut self.seen_at, Instant::now());
        match parsed {
            Ok(ServerMessage::Reply(reply)) => {
                let j = reply.id.as_u64().unwrap_or(u64::MAX) as usize;
                let Some((channel, since)) = self.channels.get_mut(j) else {
                    return Err(Failure("reply to no request".into()));
                };
                let result = match (&reply.outcome, reply.result::<SubscribeResult>()) {
                    (Err(e), _) => {
                        return Err(Failure(format!("subscribe {channel}: error {}", e.code.0)))
                    }
                    (Ok(_), Ok(Some(r))) => r,
                    (Ok(_), _) => return Err(Failure("subscribe: unreadable result".into())),
                };
                match since.take() {
                    Some(prev) => {
                        if result.recovered != Some(true) || result.epoch != prev.epoch {
                            let missed = result.offset.saturating_sub(prev.offset);
                            let away = seen_before.elapsed().as_secs_f64();
                            let same = result.epoch == prev.epoch;
                            if same && sh.history_size.is_some_and(|h| missed > h) {
                                sh.beyond_history.fetch_add(1, Ordering::Relaxed);
                            } else {
                                sh.unrecovered.fetch_add(1, Ordering::Relaxed);
                                sh.errors.add(format!(
                                    "resume not recovered: {missed} missed, {away:.0} s after \
                                     the slot last read, epoch {}",
                                    if same { "the same" } else { "changed" }
                                ));
                            }
                            *since = Some(StreamPosition {
                                offset: result.offset,
                                epoch: result.epoch,
                            });
                        } else {
                            let mut pos = prev;
                            for p in result.publications.unwrap_or_default() {
                                see(&mut pos, p.offset, sh);
                            }
                            if pos.offset != result.offset {
                                sh.gaps.fetch_add(1, Ordering::Relaxed);
                                pos.offset = result.offset;
                            }
                            *since = Some(pos);
                        }
                    }
                    None => {
                        *since = Some(StreamPosition {
                            offset: result.offset,
                            epoch: result.epoch,
                        })
                    }
                }
            }
            Ok(ServerMessage::Push(Push::Publication(p))) => {
                if let Some((_, Some(pos))) =
                    self.channels.iter_mut().find(|(c, _)| *c == p.channel)
                {
                    if p.epoch != pos.epoch {
                        sh.unrecovered.fetch_add(1, Ordering::Relaxed);
                        sh.errors.add("a live publication in another epoch");
                        *pos = StreamPosition {
                            offset: p.offset,
                            epoch: p.epoch,
                        };
                    } else {
                        see(pos, p.offset, sh);
                    }
                } else {
                    return Err(Failure(format!(
                        "publication before the subscribe reply on {}",
                        p.channel
                    )));
                }
            }
            Ok(ServerMessage::Push(_)) => {}
            Err(e) => return Err(Failure(format!("unreadable message: {e}"))),
        }
        Ok(true)
    }
}

/// Counts a publication at `offset` against the last position seen.
fn see(pos: &mut StreamPosition, offset: u64, sh: &Shared) {
    sh.received.fetch_add(1, Ordering::Relaxed);
    if offset == pos.offset + 1 {
        pos.offset = offset;
    } else if offset > pos.offset + 1 {
        sh.gaps.fetch_add(1, Ordering::Relaxed);
        pos.offset = offset;
    } else {
        sh.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_checked_in_order() {
        let sh = Shared::default();
        let mut pos = StreamPosition {
            offset: 4,
            epoch: "e".into(),
        };
        see(&mut pos, 5, &sh);
        see(&mut pos, 5, &sh);
        see(&mut pos, 8, &sh);
        assert_eq!(pos.offset, 8);
        assert_eq!(sh.received.load(Ordering::Relaxed), 3);
        assert_eq!(sh.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(sh.gaps.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn value_parsers_name_what_is_wrong() {
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_share("1.5").is_err());
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_mib("-1").is_err());
    }

    #[test]
    fn slots_take_two_channels_when_there_are_two() {
        let names: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
        assert_eq!(Slot::new(0, &names).channels.len(), 2);
        let one = vec!["only".to_string()];
        assert_eq!(Slot::new(3, &one).channels.len(), 1);
    }
}
