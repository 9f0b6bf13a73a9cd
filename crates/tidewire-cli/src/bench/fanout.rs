//! `tidewire bench fanout URL`: publish-to-receive through the hub's channels.
//!
//! `--subscribers` connections speak `tidewire.v1` (docs/protocol.md) to the hub's `/ws`
//! endpoint and subscribe to one channel, at most `--connect-concurrency` handshakes at a
//! time; publishing starts once every subscribe reply is in. One publisher connection
//! publishes `--rate` times a second (open loop), or with `--rate 0` as fast as the replies
//! allow with `--inflight` publishes outstanding. Each publication's `data` is a JSON string
//! of `--size` bytes that starts with its send time (ns since this process's time base), so
//! latency is receive time minus send time, both read from the same clock.
//!
//! Requests are built and replies read with `tidewire-hub-proto`'s types. Publications are
//! not: subscribers read only what they need from one, the number after `"offset":` and
//! the digits at the start of `data`, found by scanning the bytes (no JSON parse), so that
//! 10,000 subscribers in this process do not cost more CPU than the server they measure.
//! The tests check the scan against the protocol crate's encoder.
//! Every subscriber must see every offset exactly once: jumps are counted as missing,
//! repeats as duplicates, and offsets never received by the end as missing too.
//!
//! Deliveries and their latency count when received inside the measured window, the same
//! window over which the server's CPU time is taken: CPU per delivery.

use super::stats::{fmt_f, fmt_int, round, CpuWindow, Errors, Latency, Proc, Report};
use super::{Common, Failure, Nofile, Phase, Progress, Shutdown, Target, Ws};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, Message};
use tidewire_hub_proto::{RawValue, Request, RequestId, ServerMessage, StreamPosition};
use tokio::time::MissedTickBehavior;

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// The hub's channel endpoint, ws://HOST:PORT/ws.
    #[arg(value_parser = super::parse_url)]
    url: String,

    /// Subscriber connections.
    #[arg(long, default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    subscribers: u32,

    /// The channel to subscribe and publish to.
    #[arg(long, default_value = "bench", value_name = "NAME")]
    channel: String,

    /// Publications per second (open loop); 0: as fast as the replies allow, with
    /// --inflight publishes outstanding.
    #[arg(long, default_value = "100", value_name = "R", value_parser = parse_rate)]
    rate: f64,

    /// With --rate 0: publishes outstanding at a time.
    #[arg(long, default_value_t = 1, value_name = "K",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    inflight: u32,

    /// Bytes of each publication's data (a JSON string carrying the send time; at least
    /// the length of the timestamp).
    #[arg(long, default_value_t = 20, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
    size: u32,

    /// Measured seconds of publishing.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = super::parse_secs)]
    duration: f64,

    /// Seconds of publishing before the measured window, not counted.
    #[arg(long, default_value = "1", value_name = "SECS",
          value_parser = super::parse_secs_or_zero)]
    warmup: f64,

    /// Seconds to wait after the last publication for the subscribers to catch up.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = super::parse_secs)]
    drain: f64,

    /// Handshakes (and subscribes) in progress at a time while connecting.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    connect_concurrency: u32,

    /// Publisher connections (the hub answers one connection's requests in order, one at
    /// a time: several connections measure what the engine takes); --rate is shared
    /// between them, --inflight is per connection.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    publishers: u32,

    /// Another node of the same cluster (repeatable): subscribers are spread over the URL
    /// and these in turn, and the publisher connects to the last one given, so that
    /// publications cross nodes.
    #[arg(long = "node", value_name = "URL", value_parser = super::parse_url)]
    nodes: Vec<String>,

    /// Process id of another node (repeatable): its CPU time is added to --server-pid's.
    #[arg(long = "node-pid", value_name = "PID", requires = "server_pid")]
    node_pids: Vec<u32>,

    /// Process id of the engine (redis-server, nats-server): its CPU time over the window
    /// is reported apart, per publication.
    #[arg(long, value_name = "PID")]
    engine_pid: Option<u32>,

    #[command(flatten)]
    pub common: Common,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=10_000_000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate in publications per second (0 to 10000000; 0: unlimited)"
        )),
    }
}

/// A publication as a subscriber sees it: what the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Publication {
    pub offset: u64,
    /// The send time carried at the start of `data`, if it is there.
    pub sent_ns: Option<u64>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The decimal digits at the start of `s`, if any (at most 19 of them).
fn leading_number(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    s[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// Finds the offset and the send time in a pushed publication
/// (`{"channel":C,"offset":O,"epoch":E,"data":"NS ..."}`) without parsing the JSON.
/// `None` for anything else (replies, presence events). A `"` inside a JSON string is
/// always escaped, so `"offset":` cannot be matched inside the channel name.
pub(crate) fn parse_publication(text: &[u8]) -> Option<Publication> {
    if !text.starts_with(b"{\"channel\":") {
        return None;
    }
    let at = find(text, b"\"offset\":")? + b"\"offset\":".len();
    let offset = leading_number(&text[at..])?;
    let sent_ns = find(&text[at..], b"\"data\":\"")
        .and_then(|i| leading_number(&text[at + i + b"\"data\":\"".len()..]));
    Some(Publication { offset, sent_ns })
}

/// The `data` of a publication sent at `sent_ns`: a JSON string of `size` bytes (quotes
/// included), the timestamp first, padded with `x`; longer when the timestamp needs it.
pub(crate) fn publication_data(sent_ns: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(24));
    s.push('"');
    s.push_str(&sent_ns.to_string());
    if s.len() + 1 < size {
        s.push(' ');
    }
    while s.len() + 1 < size {
        s.push('x');
    }
    s.push('"');
    s
}

/// What one subscriber saw of the channel's offsets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetCheck {
    /// The next offset expected.
    pub next: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
}

impl OffsetCheck {
    /// Starts at the channel position of the subscribe reply: the next publication
    /// carries `position + 1`.
    pub fn new(position: u64) -> OffsetCheck {
        OffsetCheck {
            next: position + 1,
            ..OffsetCheck::default()
        }
    }

    pub fn see(&mut self, offset: u64) {
        self.received += 1;
        if offset == self.next {
            self.next += 1;
        } else if offset > self.next {
            self.missing += offset - self.next;
            self.next = offset + 1;
        } else {
            // Seen already (or out of order, which the protocol rules out as well).
            self.duplicates += 1;
        }
    }

    /// Counts what never arrived up to `last`, the last offset published.
    pub fn finish(&mut self, last: u64) {
        if last >= self.next {
            self.missing += last + 1 - self.next;
            self.next = last + 1;
        }
    }
}

/// The reply to a request: its id, and the offset or the error code it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub id: Option<u64>,
    pub offset: Option<u64>,
    pub error: Option<u32>,
}

/// Parses a reply (`{"id":N,"ok":true,"result":{..}}` or `{"id":N,"error":{..}}`); `None`
/// for pushed messages. Replies are few, so they get a real JSON parse.
pub(crate) fn parse_reply(text: &str) -> Option<Reply> {
    if text.starts_with("{\"channel\":") {
        return None;
    }
    let Ok(ServerMessage::Reply(reply)) = ServerMessage::parse(text) else {
        return None;
    };
    Some(Reply {
        id: reply.id.as_u64(),
        // `subscribe` and `publish` results both start with the channel's position.
        offset: reply
            .result::<StreamPosition>()
            .ok()
            .flatten()
            .map(|p| p.offset),
        error: reply.outcome.err().map(|e| e.code.0),
    })
}

struct Shared {
    phase: Phase,
    /// The process-local time base of the timestamps in publications.
    base: Instant,
    latency: Latency,
    /// Publish to its reply, at the publisher.
    ack_latency: Latency,
    errors: Errors,
    connected: AtomicU64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    /// Deliveries received (any phase), for the progress line; updated in batches.
    seen: AtomicU64,
    /// Per subscriber: the next offset it expects; `u64::MAX` once it is gone.
    next: Vec<AtomicU64>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// What a subscriber task hands back.
#[derive(Default)]
struct SubResult {
    check: Option<OffsetCheck>,
    window_deliveries: u64,
    /// Pushed messages that are not publications (presence joins and leaves).
    other_pushes: u64,
}

/// What the publisher task hands back.
#[derive(Default)]
struct PubResult {
    /// Publications sent during the measured window.
    window_sent: u64,
    sent: u64,
    acked: u64,
    /// Offsets of the first and the last acknowledged publication.
    first_offset: Option<u64>,
    last_offset: Option<u64>,
}

const BATCH: usize = 64;

pub async fn run(args: FanoutArgs, nofile: Nofile) -> Result<()> {
    nofile.check(args.subscribers as u64 + 1);
    let mut targets = Vec::new();
    for url in std::iter::once(&args.url).chain(&args.nodes) {
        let builder = ClientBuilder::new(url).protocols(["tidewire.v1"]);
        let target = Arc::new(Target::new(url, builder)?);
        // A probe first: a refused connection, or a server that does not speak
        // tidewire.v1, ends the run here with one line.
        let probe = target.probe_selecting("tidewire.v1").await?;
        super::close(probe).await;
        targets.push(target);
    }
    let publish_target = targets.last().expect("one URL at least").clone();
    let channel = args.channel.clone();
    let n = args.subscribers as usize;
    let sh = Arc::new(Shared {
        phase: Phase::new(),
        base: Instant::now(),
        latency: Latency::new(),
        ack_latency: Latency::new(),
        errors: Errors::default(),
        connected: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        next: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let (done_tx, done) = Shutdown::new();
    let started = Instant::now();
    let progress = {
        let sh = sh.clone();
        Progress::start(move || {
            let phase = match sh.phase.get() {
                Phase::WARMUP => "warmup",
                Phase::MEASURE => "measuring",
                _ => "draining",
            };
            format!(
                "fanout: {:.1} s, {}/{n} subscribed, {} failed, {phase}, {} deliveries",
                started.elapsed().as_secs_f64(),
                sh.subscribed.load(Ordering::Relaxed),
                sh.failed.load(Ordering::Relaxed),
                fmt_int(sh.seen.load(Ordering::Relaxed))
            )
        })
    };

    // Subscribers, a bounded number of handshakes at a time.
    let limiter = super::connect_limiter(args.connect_concurrency as usize);
    let subscribe = Request::Subscribe {
        channel: channel.clone(),
        since: None,
    }
    .encode(&RequestId::from(1));
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let target = targets[i % targets.len()].clone();
        let (sh, limiter) = (sh.clone(), limiter.clone());
        let (subscribe, done) = (subscribe.clone(), done.clone());
        subs.push(tokio::spawn(async move {
            let opened = {
                let _permit = limiter.acquire().await;
                open_subscriber(&target, &sh, &subscribe).await
            };
            match opened {
                Ok((ws, position)) => {
                    sh.next[i].store(position + 1, Ordering::Relaxed);
                    sh.subscribed.fetch_add(1, Ordering::Relaxed);
                    subscriber(i, ws, position, &sh, done).await
                }
                Err(f) => {
                    sh.errors.add(f.0);
                    sh.next[i].store(u64::MAX, Ordering::Relaxed);
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    SubResult::default()
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while sh.subscribed.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) < n as u64 {
        if Instant::now() > deadline {
            bail!("subscribers not up after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let subscribe_secs = started.elapsed().as_secs_f64();
    let subscribed = sh.subscribed.load(Ordering::Relaxed);
    if subscribed == 0 {
        drop(progress);
        bail!("no subscriber could subscribe: {}", sh.errors.human());
    }

    // The publisher connects only now: a connection left unread while thousands of
    // subscribers connect would miss the server's pings and be closed as dead.
    let mut publisher_tasks = Vec::new();
    for _ in 0..args.publishers {
        let publisher = match publish_target.connect(None).await {
            Ok((ws, _)) => ws,
            Err(f) => bail!("a publisher cannot connect: {f}"),
        };
        let sh = sh.clone();
        let rate = args.rate / f64::from(args.publishers);
        let (inflight, size) = (args.inflight as usize, args.size as usize);
        let channel = channel.clone();
        publisher_tasks.push(tokio::spawn(async move {
            publish(publisher, &sh, &channel, rate, inflight, size).await
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let servers: Vec<Proc> = args
        .common
        .server_pid
        .into_iter()
        .chain(args.node_pids.iter().copied())
        .map(|pid| Proc { pid })
        .collect();
    let cpu = CpuWindow::start_all(&servers)?;
    let engine_cpu = CpuWindow::start(args.engine_pid.map(|pid| Proc { pid }))?;
    let t0 = Instant::now();
    sh.phase.set(Phase::MEASURE);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    sh.phase.set(Phase::STOP);
    let window = t0.elapsed().as_secs_f64();
    let cpu = cpu.finish()?;
    let engine_cpu = engine_cpu.finish()?;
    let mut published = PubResult::default();
    for task in publisher_tasks {
        let p = task.await.context("publisher task")?;
        published.window_sent += p.window_sent;
        published.sent += p.sent;
        published.acked += p.acked;
        published.first_offset = match (published.first_offset, p.first_offset) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        published.last_offset = published.last_offset.max(p.last_offset);
    }

    // Drain: until every live subscriber has the last offset, or --drain seconds.
    let drain_start = Instant::now();
    if let Some(last) = published.last_offset {
        let deadline = drain_start + Duration::from_secs_f64(args.drain);
        while Instant::now() < deadline
            && sh
                .next
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .any(|next| next != u64::MAX && next <= last)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let _ = done_tx.send(true);
    let (mut missing, mut duplicates, mut deliveries) = (0u64, 0u64, 0u64);
    let mut incomplete = 0u64;
    let mut other_pushes = 0u64;
    for s in subs {
        let r = s.await.unwrap_or_default();
        deliveries += r.window_deliveries;
        other_pushes += r.other_pushes;
        if let Some(mut check) = r.check {
            if let Some(last) = published.last_offset {
                check.finish(last);
            }
            missing += check.missing;
            duplicates += check.duplicates;
            incomplete += (check.missing > 0) as u64;
        }
    }
    drop(progress);

    let lat = sh.latency.summary();
    let ack = sh.ack_latency.summary();
    let pubs_per_s = published.window_sent as f64 / window;
    let mut r = Report::new("fanout");
    r.field("url", args.url.as_str());
    r.field("channel", args.channel.as_str());
    r.field("subscribers", args.subscribers);
    r.field("subscribed", subscribed);
    r.field("subscribe_s", round(subscribe_secs, 3));
    r.field("rate", args.rate);
    r.field("inflight", args.inflight);
    r.field("size", args.size);
    r.field("threads", args.common.threads);
    r.field("warmup_s", args.warmup);
    r.field("window_s", round(window, 4));
    r.field("publications", published.window_sent);
    r.field("publications_per_s", round(pubs_per_s, 1));
    r.field("published_total", published.sent);
    r.field("acked_total", published.acked);
    r.field("deliveries", deliveries);
    r.field("deliveries_per_s", round(deliveries as f64 / window, 1));
    r.field("latency_us", lat.json());
    r.field("publish_ack_us", ack.json());
    r.field("missing", missing);
    r.field("duplicates", duplicates);
    r.field("subscribers_incomplete", incomplete);
    r.field("drain_s", round(drain_secs, 3));
    r.field("other_pushes", other_pushes);
    r.row("target", format!("{} channel {}", args.url, args.channel));
    r.row(
        "subscribers",
        format!(
            "{subscribed}/{} subscribed in {subscribe_secs:.3} s",
            args.subscribers
        ),
    );
    r.row(
        "publisher",
        format!(
            "{}, {} B data, warmup {} s, window {:.3} s",
            if args.rate > 0.0 {
                format!("{} publications/s (open loop)", fmt_f(args.rate, 0))
            } else {
                format!("unlimited, {} in flight", args.inflight)
            },
            args.size,
            args.warmup,
            window
        ),
    );
    r.row(
        "publications",
        format!(
            "{}/s in the window ({} sent in all, {} acknowledged)",
            fmt_f(pubs_per_s, 1),
            fmt_int(published.sent),
            fmt_int(published.acked)
        ),
    );
    r.row(
        "deliveries",
        format!(
            "{}/s ({} received in the window)",
            fmt_f(deliveries as f64 / window, 0),
            fmt_int(deliveries)
        ),
    );
    r.row("latency", lat.human());
    r.row("publish reply", ack.human());
    r.row(
        "offsets",
        format!(
            "{} missing, {} duplicate ({} subscribers incomplete; drained in {drain_secs:.2} s)",
            fmt_int(missing),
            fmt_int(duplicates),
            fmt_int(incomplete)
        ),
    );
    if other_pushes > 0 {
        r.row(
            "other pushes",
            format!(
                "{} pushed messages that are not publications (presence joins/leaves)",
                fmt_int(other_pushes)
            ),
        );
    }
    if let Some(pid) = args.common.server_pid {
        r.field("server_pid", pid);
    }
    if !args.nodes.is_empty() {
        r.field("nodes", args.nodes.len() + 1);
        r.row(
            "cluster",
            format!(
                "{} nodes: subscribers spread over them, the publisher on {}",
                args.nodes.len() + 1,
                args.nodes.last().unwrap_or(&args.url)
            ),
        );
    }
    cpu.report(&mut r, window, deliveries, "delivery");
    if let (Some(pid), Some(ns)) = (args.engine_pid, engine_cpu.server_ns) {
        let per = ns as f64 / 1000.0 / (published.window_sent.max(1)) as f64;
        r.field("engine_pid", pid);
        r.field("engine_cpu_util", round(ns as f64 / 1e9 / window, 3));
        r.field("engine_cpu_us_per_publication", round(per, 3));
        r.row(
            "engine CPU",
            format!(
                "{:.0}% of a core, {} µs per publication",
                ns as f64 / 1e7 / window,
                fmt_f(per, 1)
            ),
        );
    }
    r.field("errors_total", sh.errors.total());
    r.field("errors", sh.errors.json());
    r.field("nofile_limit", nofile.soft);
    r.row("errors", sh.errors.human());
    r.print(args.common.json);
    // A run that measured nothing, or lost publications, fails.
    if published.acked == 0 {
        bail!(
            "nothing was measured: no publication was acknowledged; errors: {}",
            sh.errors.human()
        );
    }
    if deliveries == 0 {
        bail!(
            "nothing was measured: no subscriber received a publication in the {window:.1} s \
             window; errors: {}",
            sh.errors.human()
        );
    }
    if missing > 0 || duplicates > 0 {
        bail!(
            "{incomplete} of {subscribed} subscribers did not see every publication once: {} \
             missing, {} duplicate; errors: {}",
            fmt_int(missing),
            fmt_int(duplicates),
            sh.errors.human()
        );
    }
    Ok(())
}

/// Connects one subscriber and subscribes; returns the channel position of the reply.
async fn open_subscriber(
    target: &Target,
    sh: &Shared,
    subscribe: &str,
) -> Result<(Ws, u64), Failure> {
    let (mut ws, _) = target.connect(None).await?;
    sh.connected.fetch_add(1, Ordering::Relaxed);
    ws.send(Message::text(subscribe))
        .await
        .map_err(|e| Failure::ws(&e))?;
    let reply = async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(reply) = parse_reply(t.as_str()) {
                        return match (reply.offset, reply.error) {
                            (Some(offset), None) => Ok(offset),
                            (_, Some(code)) => {
                                Err(Failure(format!("subscribe refused: error {code}")))
                            }
                            _ => Err(Failure("subscribe reply without offset".into())),
                        };
                    }
                }
                Some(Ok(Message::Close(f))) => return Err(Failure::closed(f.as_ref())),
                Some(Ok(_)) => {}
                other => return Err(Failure::from_recv(other)),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), reply).await {
        Ok(Ok(position)) => Ok((ws, position)),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure("timeout: subscribe reply".into())),
    }
}

/// One subscriber: reads publications until told that the run is over.
async fn subscriber(i: usize, mut ws: Ws, position: u64, sh: &Shared, done: Shutdown) -> SubResult {
    let mut check = OffsetCheck::new(position);
    let mut window_deliveries = 0u64;
    let mut other_pushes = 0u64;
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    let mut unseen = 0u64;
    let done = done.wait();
    tokio::pin!(done);
    let mut alive = true;
    loop {
        let m = tokio::select! {
            biased;
            m = ws.recv() => m,
            _ = &mut done => break,
        };
        match m {
            Some(Ok(Message::Text(t))) => {
                let Some(p) = parse_publication(t.as_bytes()) else {
                    other_pushes += t.as_bytes().starts_with(b"{\"channel\":") as u64;
                    continue;
                };
                check.see(p.offset);
                sh.next[i].store(check.next, Ordering::Relaxed);
                unseen += 1;
                if sh.phase.get() == Phase::MEASURE {
                    window_deliveries += 1;
                    if let Some(sent) = p.sent_ns {
                        batch.push(sh.now_ns().saturating_sub(sent));
                    }
                }
                if batch.len() == BATCH || unseen == BATCH as u64 {
                    sh.latency.record_all(i, &batch);
                    batch.clear();
                    sh.seen.fetch_add(unseen, Ordering::Relaxed);
                    unseen = 0;
                }
            }
            Some(Ok(Message::Close(f))) => {
                sh.errors.add(Failure::closed(f.as_ref()).0);
                alive = false;
                break;
            }
            Some(Ok(_)) => {}
            other => {
                sh.errors.add(Failure::from_recv(other).0);
                alive = false;
                break;
            }
        }
    }
    sh.latency.record_all(i, &batch);
    sh.seen.fetch_add(unseen, Ordering::Relaxed);
    if !alive {
        sh.next[i].store(u64::MAX, Ordering::Relaxed);
        // Let the close handshake finish if the server started it.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while ws.recv().await.is_some() {}
        })
        .await;
    } else {
        super::close(ws).await;
    }
    SubResult {
        check: Some(check),
        window_deliveries,
        other_pushes,
    }
}

/// The publisher: open loop at `rate`, or closed loop with `inflight` outstanding.
async fn publish(
    mut ws: Ws,
    sh: &Shared,
    channel: &str,
    rate: f64,
    inflight: usize,
    size: usize,
) -> PubResult {
    let mut res = PubResult::default();
    let mut next_id: u64 = 2;
    let mut outstanding: VecDeque<(u64, u64)> = VecDeque::new();
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(if rate > 0.0 {
        1.0 / rate
    } else {
        3600.0
    }));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut queue_one =
        |ws: &mut Ws, res: &mut PubResult, outstanding: &mut VecDeque<(u64, u64)>| {
            let sent = sh.now_ns();
            let Ok(data) = RawValue::from_string(publication_data(sent, size)) else {
                sh.errors.add("publication data is not JSON");
                return false;
            };
            let request = Request::Publish {
                channel: channel.to_owned(),
                data,
                idempotency_key: None,
            };
            let text = request.encode(&RequestId::from(next_id));
            if let Err(e) = ws.queue(Message::text(text)) {
                sh.errors.add(Failure::ws(&e).0);
                return false;
            }
            outstanding.push_back((next_id, sent));
            next_id += 1;
            res.sent += 1;
            if sh.phase.get() == Phase::MEASURE {
                res.window_sent += 1;
            }
            true
        };
    if rate == 0.0 {
        for _ in 0..inflight {
            if !queue_one(&mut ws, &mut res, &mut outstanding) {
                return res;
            }
        }
    }
    // After the window, the outstanding replies get 10 s.
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        if !stopping && sh.phase.get() == Phase::STOP {
            stopping = true;
            grace = Some(Box::pin(tokio::time::sleep(Duration::from_secs(10))));
        }
        if stopping && outstanding.is_empty() {
            break;
        }
        let grace_over = async {
            match grace.as_mut() {
                Some(g) => g.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            m = ws.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Some(reply) = parse_reply(t.as_str()) else { continue };
                    // Replies come in request order.
                    if let Some(at) = outstanding.iter().position(|&(id, _)| Some(id) == reply.id) {
                        let (_, sent) = outstanding.remove(at).unwrap_or_default();
                        if sh.phase.get() == Phase::MEASURE {
                            sh.ack_latency.record(0, sh.now_ns().saturating_sub(sent));
                        }
                    }
                    match (reply.offset, reply.error) {
                        (Some(o), None) => {
                            res.acked += 1;
                            res.first_offset.get_or_insert(o);
                            res.last_offset = Some(res.last_offset.map_or(o, |l: u64| l.max(o)));
                        }
                        (_, Some(code)) => sh.errors.add(format!("publish refused: error {code}")),
                        _ => sh.errors.add("publish reply without offset"),
                    }
                    if rate == 0.0 && !stopping && sh.phase.get() != Phase::STOP
                        && !queue_one(&mut ws, &mut res, &mut outstanding)
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    sh.errors.add(format!("publisher: {}", Failure::closed(f.as_ref())));
                    return res;
                }
                Some(Ok(_)) => {}
                other => {
                    sh.errors.add(format!("publisher: {}", Failure::from_recv(other)));
                    return res;
                }
            },
            _ = tick.tick(), if rate > 0.0 && !stopping => {
                if sh.phase.get() != Phase::STOP && !queue_one(&mut ws, &mut res, &mut outstanding) {
                    break;
                }
            }
            _ = grace_over => {
                sh.errors.add(format!(
                    "timeout: {} publish replies outstanding 10 s after the window",
                    outstanding.len()
                ));
                break;
            }
        }
    }
    super::close(ws).await;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    use tidewire_hub_proto::{encode_error, encode_ok, write_publication, ErrorCode};

    /// A publication as the hub encodes it.
    fn wire(channel: &str, offset: u64, epoch: &str, data: &str) -> String {
        let mut out = String::new();
        write_publication(&mut out, channel, offset, epoch, data);
        out
    }

    #[test]
    fn publication_scan() {
        let t = wire("bench", 46, "7f3a9c0de1b24a55", r#""123456789 xxxx""#);
        let t = t.as_bytes();
        assert_eq!(
            parse_publication(t),
            Some(Publication {
                offset: 46,
                sent_ns: Some(123_456_789)
            })
        );
        // Data that is not one of ours: the offset still counts.
        let t = wire("bench", 7, "e", r#"{"text":"hi"}"#);
        assert_eq!(
            parse_publication(t.as_bytes()),
            Some(Publication {
                offset: 7,
                sent_ns: None
            })
        );
        // A channel name that looks like a field does not fool it.
        let t = wire("a\"offset\":9", 3, "e", r#""5""#);
        assert_eq!(parse_publication(t.as_bytes()).map(|p| p.offset), Some(3));
        // Not publications.
        assert_eq!(
            parse_publication(br#"{"id":1,"ok":true,"result":{"offset":41,"epoch":"e"}}"#),
            None
        );
        assert_eq!(
            parse_publication(br#"{"channel":"c","join":{"client":"c-1"}}"#),
            None
        );
        assert_eq!(parse_publication(br#"{"channel":"c","offset":}"#), None);
    }

    #[test]
    fn leading_numbers() {
        assert_eq!(leading_number(b"0,"), Some(0));
        assert_eq!(leading_number(b"18446744073709551615"), None); // 20 digits
        assert_eq!(
            leading_number(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(leading_number(b"x1"), None);
    }

    #[test]
    fn data_is_padded_to_size_and_round_trips() {
        let d = publication_data(1_234_567, 20);
        assert_eq!(d.len(), 20);
        assert_eq!(d, "\"1234567 xxxxxxxxxx\"");
        assert!(serde_json::from_str::<String>(&d).is_ok());
        // Shorter than the timestamp: the timestamp wins.
        assert_eq!(publication_data(1_234_567, 3), "\"1234567\"");
        assert_eq!(publication_data(1_234_567, 9), "\"1234567\"");
        assert_eq!(publication_data(1_234_567, 10).len(), 10);
        let text = wire("b", 1, "e", &d);
        assert_eq!(
            parse_publication(text.as_bytes()).and_then(|p| p.sent_ns),
            Some(1_234_567)
        );
    }

    #[test]
    fn offsets_missing_and_duplicate() {
        let mut c = OffsetCheck::new(41);
        for o in [42, 43, 44] {
            c.see(o);
        }
        assert_eq!((c.missing, c.duplicates, c.received), (0, 0, 3));
        c.see(47); // 45 and 46 missing
        c.see(47); // duplicate
        c.see(45); // late: counted as duplicate (already given up as missing)
        assert_eq!((c.missing, c.duplicates, c.next), (2, 2, 48));
        c.finish(50); // 48, 49, 50 never came
        assert_eq!(c.missing, 5);
        let mut all = OffsetCheck::new(0);
        all.see(1);
        all.finish(1);
        assert_eq!((all.missing, all.duplicates), (0, 0));
        // Nothing published at all: nothing missing.
        let mut none = OffsetCheck::new(9);
        none.finish(9);
        assert_eq!(none.missing, 0);
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply(&encode_ok(
                &RequestId::from(5),
                &StreamPosition {
                    offset: 46,
                    epoch: "7f".into()
                }
            )),
            Some(Reply {
                id: Some(5),
                offset: Some(46),
                error: None
            })
        );
        assert_eq!(
            parse_reply(&encode_error(
                &RequestId::from(6),
                ErrorCode::PERMISSION_DENIED,
                "no"
            )),
            Some(Reply {
                id: Some(6),
                offset: None,
                error: Some(104)
            })
        );
        assert_eq!(parse_reply(&wire("c", 1, "e", "1")), None);
        // Members in another order are still a reply.
        assert_eq!(
            parse_reply(r#"{"error":{"code":104,"message":"no"},"id":6}"#).map(|r| r.error),
            Some(Some(104))
        );
        assert_eq!(parse_reply("not json"), None);
    }

    #[test]
    fn rate_flag() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
