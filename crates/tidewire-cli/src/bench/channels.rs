//! `tidewire bench channels URL`: many channels with one subscriber each, and what a
//! channel costs the server's memory (issue 14).
//!
//! `--channels N` channels named `PREFIX0` ... `PREFIX{N-1}` are spread over
//! ceil(N / `--per-connection`) connections to the hub's `/ws` (`tidewire.v1`,
//! docs/protocol.md), each connection subscribing to its own run of channels, so every
//! channel has exactly one subscriber. The default prefix carries a random run id, so a
//! second run against the same hub makes new channels.
//!
//! The run goes in steps, all connections together: open every connection (at most
//! `--connect-concurrency` handshakes at a time); read the server's VmRSS ("before": the
//! connections' own cost is in it, so the difference is the channels'); subscribe, each
//! connection pipelining its subscribe requests with at most `--inflight` unanswered and
//! waiting for every reply; hold `--hold` seconds (SIGINT or SIGTERM ends the hold early);
//! read VmRSS again ("after"). RSS per channel is (after - before) / channels subscribed.
//! With `--publish`, each connection then publishes one small message (the channel's
//! number) to each of its channels, and each channel's one subscriber must receive it
//! exactly once, at the offset after the one its subscribe reply gave: the channels are
//! live, not just allocated. A publish refused with error 107 (the hub's publish rate per
//! connection) is sent again 100 ms later.
//!
//! The run fails (exit 1, after the report) when nothing was subscribed, when any
//! subscription failed (error 111 names `--per-connection` and `limits.max_subscriptions`),
//! when a connection was lost, and with `--publish` when a publication was refused,
//! missed or received twice.

use super::fanout::parse_reply;
use super::stats::{
    fmt_f, fmt_int, memory_fields, round, server_rss_kb, CpuWindow, Errors, Proc, Report,
};
use super::{stop_signal, Common, Failure, Nofile, Progress, Target, Ws};
use anyhow::{bail, Result};
use clap::Args;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::{ClientBuilder, Message};
use tidewire_hub_proto::{ErrorCode, Push, RawValue, Request, RequestId, ServerMessage};
use tokio::sync::watch;

#[derive(Debug, Args)]
pub struct ChannelsArgs {
    /// The hub's channel endpoint, ws://HOST:PORT/ws.
    #[arg(value_parser = super::parse_url)]
    url: String,

    /// Channels to create, one subscriber each.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    channels: u64,

    /// Channels per connection: at most the hub's limits.max_subscriptions (1,000 by
    /// default), or the excess is refused with error 111.
    #[arg(long, default_value_t = 500, value_name = "K",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    per_connection: u64,

    /// Channel names are PREFIX0, PREFIX1, ...; a prefix "ns:" puts them in namespace ns.
    /// Default: bench-ch-RUNID- (the default namespace, new channels on every run).
    #[arg(long, value_name = "NAME")]
    prefix: Option<String>,

    /// Seconds to hold the subscriptions before the server's memory is read again (at
    /// most: SIGINT or SIGTERM ends the hold early).
    #[arg(long, default_value = "1", value_name = "SECS",
          value_parser = super::parse_secs_or_zero)]
    hold: f64,

    /// Then publish one small message to each channel and check that its subscriber
    /// receives it exactly once.
    #[arg(long)]
    publish: bool,

    /// Requests (subscribes, publishes) awaiting their reply per connection.
    #[arg(long, default_value_t = 64, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    inflight: u32,

    /// Handshakes in progress at a time while connecting.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    connect_concurrency: u32,

    #[command(flatten)]
    pub common: Common,
}

/// The hub's error codes this mode reacts to (docs/protocol.md, "Error codes").
const RATE_LIMITED: u32 = ErrorCode::RATE_LIMITED.0;
const LIMIT_REACHED: u32 = ErrorCode::LIMIT_REACHED.0;

/// Publish request ids are this plus the channel's number within its connection;
/// subscribe request ids are the number itself.
const PUBLISH_ID: u64 = 1 << 32;

/// How long a connection waits for any message while requests are outstanding.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection does next; the main task moves it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Wait,
    Subscribe,
    Publish,
    Done,
}

/// What the connections' tasks share: counters of the run.
#[derive(Default)]
struct Shared {
    prefix: String,
    errors: Errors,
    open: AtomicU64,
    failed: AtomicU64,
    /// Connections that ended before the run did.
    lost: AtomicU64,
    subscribed: AtomicU64,
    /// Subscribes answered with an error (any code), and with 111 among them.
    refused: AtomicU64,
    refused_limit: AtomicU64,
    /// Connections through with a step (every reply in, or gone).
    subscribe_done: AtomicU64,
    publish_done: AtomicU64,
    /// Publishes acknowledged, refused (other than 107), and sent again after 107.
    acked: AtomicU64,
    publish_refused: AtomicU64,
    rate_limited: AtomicU64,
    /// Publications received on their channel: the first time, and again.
    received: AtomicU64,
    duplicates: AtomicU64,
    /// Publications whose data or offset is not the one published.
    wrong: AtomicU64,
    /// Pushed messages that are not publications (presence joins and leaves).
    other_pushes: AtomicU64,
}

impl Shared {
    fn name(&self, i: u64) -> String {
        format!("{}{i}", self.prefix)
    }
}

/// The default prefix: `bench-ch-` and a run id from the clock and the process id.
fn default_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let id = (nanos ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff;
    format!("bench-ch-{id:012x}-")
}

/// The longest channel name the hub accepts (docs/protocol.md, "Namespaces").
const MAX_NAME: usize = 255;

fn check_names(prefix: &str, channels: u64) -> Result<()> {
    let longest = prefix.len() + (channels - 1).to_string().len();
    if longest > MAX_NAME {
        bail!(
            "--prefix is too long: channel names would be up to {longest} bytes, the hub \
             accepts at most {MAX_NAME}"
        );
    }
    Ok(())
}

pub async fn run(args: ChannelsArgs, nofile: Nofile) -> Result<()> {
    let n = args.channels;
    let k = args.per_connection;
    let conns = n.div_ceil(k);
    nofile.check(conns);
    let prefix = args.prefix.clone().unwrap_or_else(default_prefix);
    check_names(&prefix, n)?;
    let builder = ClientBuilder::new(&args.url).protocols(["tidewire.v1"]);
    let target = Arc::new(Target::new(&args.url, builder)?);
    let probe = target.probe_selecting("tidewire.v1").await?;
    super::close(probe).await;

    let server = args.common.server_pid.map(|pid| Proc { pid });
    // Fails early, with the flag named, when the pid is wrong.
    server_rss_kb(server)?;
    let sh = Arc::new(Shared {
        prefix,
        ..Shared::default()
    });
    let (step_tx, step) = watch::channel(Step::Wait);
    let started = Instant::now();
    let progress = {
        let (sh, step) = (sh.clone(), step.clone());
        Progress::start(move || {
            format!(
                "channels: {:.1} s, {}/{conns} connections open, {}/{n} subscribed, {} \
                 refused{}",
                started.elapsed().as_secs_f64(),
                fmt_int(sh.open.load(Ordering::Relaxed)),
                fmt_int(sh.subscribed.load(Ordering::Relaxed)),
                fmt_int(sh.refused.load(Ordering::Relaxed)),
                if *step.borrow() >= Step::Publish {
                    format!(
                        ", {} published, {} received",
                        fmt_int(sh.acked.load(Ordering::Relaxed)),
                        fmt_int(sh.received.load(Ordering::Relaxed))
                    )
                } else {
                    String::new()
                }
            )
        })
    };

    // Connections, a bounded number of handshakes at a time; each then waits for the
    // subscribe step.
    let limiter = super::connect_limiter(args.connect_concurrency as usize);
    let mut tasks = Vec::with_capacity(conns as usize);
    for c in 0..conns {
        let first = c * k;
        let count = k.min(n - first) as usize;
        let (target, sh, limiter, step) =
            (target.clone(), sh.clone(), limiter.clone(), step.clone());
        let inflight = args.inflight as usize;
        tasks.push(tokio::spawn(async move {
            let opened = {
                let _permit = limiter.acquire().await;
                target.connect(None).await
            };
            match opened {
                Ok((ws, _)) => {
                    sh.open.fetch_add(1, Ordering::Relaxed);
                    let mut conn = Conn::new(first, count, inflight);
                    conn.run(ws, &sh, step).await;
                    conn
                }
                Err(f) => {
                    sh.errors.add(f.0);
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    Conn::new(first, 0, inflight)
                }
            }
        }));
    }
    wait_until(
        Duration::from_secs(600),
        "connections not open after 600 s",
        || sh.open.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) >= conns,
    )
    .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let open = sh.open.load(Ordering::Relaxed);
    if open == 0 {
        drop(progress);
        bail!("no connection could be opened: {}", sh.errors.human());
    }

    // Subscribe, with the memory read on both sides.
    let rss_before = server_rss_kb(server)?;
    let own_rss_before = Proc::me().rss_kb().ok();
    let cpu = CpuWindow::start(server)?;
    let t0 = Instant::now();
    let _ = step_tx.send(Step::Subscribe);
    wait_until(
        Duration::from_secs(600),
        "subscriptions not answered after 600 s",
        || sh.subscribe_done.load(Ordering::Relaxed) >= open,
    )
    .await?;
    let subscribe_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.finish()?;
    let subscribed = sh.subscribed.load(Ordering::Relaxed);
    drop(progress);
    eprintln!(
        "channels: {}/{} subscribed on {open} connections in {subscribe_secs:.2} s; holding \
         {} s (SIGINT or SIGTERM ends the hold)",
        fmt_int(subscribed),
        fmt_int(n),
        args.hold
    );
    let mut stop = std::pin::pin!(stop_signal());
    let t1 = Instant::now();
    let stopped = tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(args.hold)) => false,
        _ = &mut stop => true,
    };
    let hold_secs = t1.elapsed().as_secs_f64();
    let rss_after = server_rss_kb(server)?;
    let own_rss_after = Proc::me().rss_kb().ok();
    let lost_in_hold = sh.lost.load(Ordering::Relaxed);

    // Publish one message to each channel; every subscriber must get its one.
    let mut publish_secs = None;
    let mut rss_published = None;
    if args.publish && subscribed > 0 && !stopped {
        let progress = {
            let sh = sh.clone();
            Progress::start(move || {
                format!(
                    "channels: publishing, {}/{subscribed} acknowledged, {} received",
                    fmt_int(sh.acked.load(Ordering::Relaxed)),
                    fmt_int(sh.received.load(Ordering::Relaxed))
                )
            })
        };
        let t2 = Instant::now();
        let _ = step_tx.send(Step::Publish);
        let replies_in = wait_until(Duration::from_secs(600), "", || {
            sh.publish_done.load(Ordering::Relaxed) >= open
        })
        .await;
        if replies_in.is_err() {
            sh.errors
                .add("timeout: publish replies not all in after 600 s");
        }
        // Deliveries may trail the replies: 10 s for the last of them, then 200 ms more
        // in which a duplicate would show.
        let _ = wait_until(Duration::from_secs(10), "", || {
            sh.received.load(Ordering::Relaxed) >= sh.acked.load(Ordering::Relaxed)
        })
        .await;
        publish_secs = Some(t2.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_published = server_rss_kb(server)?;
        drop(progress);
    }
    let _ = step_tx.send(Step::Done);
    let mut missing = 0u64;
    for t in tasks {
        if let Ok(conn) = t.await {
            missing += conn.missing();
        }
    }
    let lost = sh.lost.load(Ordering::Relaxed);
    let held = open - lost_in_hold;

    let refused = sh.refused.load(Ordering::Relaxed);
    let refused_limit = sh.refused_limit.load(Ordering::Relaxed);
    let acked = sh.acked.load(Ordering::Relaxed);
    let received = sh.received.load(Ordering::Relaxed);
    let duplicates = sh.duplicates.load(Ordering::Relaxed);
    let wrong = sh.wrong.load(Ordering::Relaxed);
    let publish_refused = sh.publish_refused.load(Ordering::Relaxed);
    let mut r = Report::new("channels");
    r.field("url", args.url.as_str());
    r.field("prefix", sh.prefix.as_str());
    r.field("channels", n);
    r.field("per_connection", k);
    r.field("inflight", args.inflight);
    r.field("connections", conns);
    r.field("open", open);
    r.field("connections_failed", sh.failed.load(Ordering::Relaxed));
    r.field("connections_lost", lost);
    r.field("connect_s", round(connect_secs, 3));
    r.field("subscribed", subscribed);
    r.field("refused", refused);
    r.field("refused_limit", refused_limit);
    r.field("subscribe_s", round(subscribe_secs, 3));
    r.field(
        "subscribes_per_s",
        round(subscribed as f64 / subscribe_secs, 1),
    );
    r.field("hold_s", round(hold_secs, 3));
    r.field("stopped_by_signal", stopped);
    r.field("other_pushes", sh.other_pushes.load(Ordering::Relaxed));
    r.row(
        "target",
        format!(
            "{} channels {}0 ... {}",
            args.url,
            sh.prefix,
            sh.name(n - 1)
        ),
    );
    r.row(
        "connections",
        format!(
            "{}/{} open in {connect_secs:.2} s, {} channels each (the last {}), {} held \
             through the hold",
            fmt_int(open),
            fmt_int(conns),
            fmt_int(k),
            fmt_int(n - (conns - 1) * k),
            fmt_int(held)
        ),
    );
    r.row(
        "subscriptions",
        format!(
            "{}/{} in {subscribe_secs:.2} s ({}/s, {} in flight per connection), {} refused \
             ({} with 111: limit reached)",
            fmt_int(subscribed),
            fmt_int(n),
            fmt_f(subscribed as f64 / subscribe_secs, 0),
            args.inflight,
            fmt_int(refused),
            fmt_int(refused_limit)
        ),
    );
    if let (Some(pid), Some(before), Some(after)) = (args.common.server_pid, rss_before, rss_after)
    {
        r.field("server_pid", pid);
        memory_fields(
            &mut r,
            "server memory",
            "",
            before,
            after,
            subscribed,
            ("channel", "channel"),
        );
        let bytes = (after as f64 - before as f64) * 1024.0 / subscribed.max(1) as f64;
        r.field("bytes_per_channel", round(bytes, 0));
        r.row(
            "per channel",
            format!("{} bytes of server VmRSS", fmt_f(bytes, 0)),
        );
        if let Some(published) = rss_published {
            let per = (published as f64 - after as f64) / acked.max(1) as f64;
            r.field("rss_after_publish_kb", published);
            r.field("kb_per_publication", round(per, 3));
            r.row(
                "after publishing",
                format!(
                    "VmRSS {} KB: {} KB more per publication (kept in history)",
                    fmt_int(published),
                    fmt_f(per, 3)
                ),
            );
        }
    }
    if let (Some(before), Some(after)) = (own_rss_before, own_rss_after) {
        memory_fields(
            &mut r,
            "generator memory",
            "generator_",
            before,
            after,
            subscribed,
            ("channel", "channel"),
        );
    }
    if let Some(ns) = cpu.server_ns {
        let per = ns as f64 / 1000.0 / subscribed.max(1) as f64;
        r.field("server_cpu_subscribe_ms", round(ns as f64 / 1e6, 1));
        r.field("server_cpu_us_per_subscribe", round(per, 2));
        r.row(
            "server CPU",
            format!(
                "{} µs per subscribe ({} ms while subscribing)",
                fmt_f(per, 1),
                fmt_f(ns as f64 / 1e6, 1)
            ),
        );
    }
    r.field(
        "generator_cpu_subscribe_ms",
        round(cpu.own_ns as f64 / 1e6, 1),
    );
    r.field("publish", args.publish);
    if let Some(secs) = publish_secs {
        r.field("publish_s", round(secs, 3));
        r.field("published", acked);
        r.field("publish_refused", publish_refused);
        r.field("rate_limited", sh.rate_limited.load(Ordering::Relaxed));
        r.field("received", received);
        r.field("missing", missing);
        r.field("duplicates", duplicates);
        r.field("wrong", wrong);
        r.row(
            "publications",
            format!(
                "{}/{} acknowledged in {secs:.2} s ({} sent again after 107), {} refused; \
                 {} received once, {} missing, {} duplicate, {} not what was published",
                fmt_int(acked),
                fmt_int(subscribed),
                fmt_int(sh.rate_limited.load(Ordering::Relaxed)),
                fmt_int(publish_refused),
                fmt_int(received),
                fmt_int(missing),
                fmt_int(duplicates),
                fmt_int(wrong)
            ),
        );
    }
    r.field("errors_total", sh.errors.total());
    r.field("errors", sh.errors.json());
    r.field("nofile_limit", nofile.soft);
    r.row("errors", sh.errors.human());
    r.print(args.common.json);

    // A run that measured nothing, or not the channels it asked for, fails.
    if subscribed == 0 {
        bail!(
            "nothing was measured: no channel was subscribed; errors: {}",
            sh.errors.human()
        );
    }
    if refused_limit > 0 {
        bail!(
            "the hub refused {} of {} subscriptions with error 111 (limit reached): lower \
             --per-connection (now {k}) or raise limits.max_subscriptions in the hub's \
             configuration",
            fmt_int(refused_limit),
            fmt_int(n)
        );
    }
    if subscribed < n {
        bail!(
            "{} of {} channels were not subscribed; errors: {}",
            fmt_int(n - subscribed),
            fmt_int(n),
            sh.errors.human()
        );
    }
    if lost > 0 {
        bail!(
            "{lost} of {open} connections were lost during the run; errors: {}",
            sh.errors.human()
        );
    }
    let undelivered = acked < subscribed || missing > 0 || duplicates > 0 || wrong > 0;
    if args.publish && !stopped && undelivered {
        bail!(
            "not every channel got its publication exactly once: {} of {} published, {} \
             missing, {} duplicate, {} not what was published; errors: {}",
            fmt_int(acked),
            fmt_int(subscribed),
            fmt_int(missing),
            fmt_int(duplicates),
            fmt_int(wrong),
            sh.errors.human()
        );
    }
    Ok(())
}

/// Polls `done` every 10 ms until it holds; an error with `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One subscriber's view of one of its channels.
#[derive(Debug, Default, Clone, Copy)]
struct Chan {
    /// The channel's offset in the subscribe reply, once subscribed.
    position: Option<u64>,
    acked: bool,
    received: u32,
}

/// One connection and its run of channels `first .. first + chans.len()`.
struct Conn {
    first: u64,
    chans: Vec<Chan>,
    inflight_max: usize,
    inflight: usize,
    /// Requests allowed in flight now: `inflight_max`, down to 1 after a 107, back up by
    /// one per acknowledged publish (so a rate-limited hub refuses a few, not a window's
    /// worth, every time its bucket runs dry).
    window: usize,
    /// The next channel (local number) to send a request for in this step.
    next: usize,
    /// Publishes refused with 107, to send again once `paused_until` has passed.
    retry: VecDeque<usize>,
    paused_until: Option<tokio::time::Instant>,
}

/// A request of the current step, for the channel with local number `j`.
enum Op {
    Subscribe,
    Publish,
}

impl Conn {
    fn new(first: u64, count: usize, inflight_max: usize) -> Conn {
        Conn {
            first,
            chans: vec![Chan::default(); count],
            inflight_max,
            inflight: 0,
            window: inflight_max,
            next: 0,
            retry: VecDeque::new(),
            paused_until: None,
        }
    }

    /// Publications acknowledged and never received.
    fn missing(&self) -> u64 {
        self.chans
            .iter()
            .filter(|c| c.acked && c.received == 0)
            .count() as u64
    }

    /// Runs the connection through the steps; counts what it saw in `sh`. Always reports
    /// each step done exactly once, also when the connection ends early.
    async fn run(&mut self, mut ws: Ws, sh: &Shared, mut step: watch::Receiver<Step>) {
        let mut reported = Step::Wait;
        let outcome = self.steps(&mut ws, sh, &mut step, &mut reported).await;
        if reported < Step::Subscribe {
            sh.subscribe_done.fetch_add(1, Ordering::Relaxed);
        }
        if reported < Step::Publish {
            sh.publish_done.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) => super::close(ws).await,
            Err(f) => {
                sh.errors.add(f.0);
                sh.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn steps(
        &mut self,
        ws: &mut Ws,
        sh: &Shared,
        step: &mut watch::Receiver<Step>,
        reported: &mut Step,
    ) -> Result<(), Failure> {
        self.idle_until(ws, sh, step, Step::Subscribe).await?;
        if *step.borrow() == Step::Subscribe {
            self.requests(ws, sh, Op::Subscribe).await?;
        }
        *reported = Step::Subscribe;
        sh.subscribe_done.fetch_add(1, Ordering::Relaxed);
        self.idle_until(ws, sh, step, Step::Publish).await?;
        if *step.borrow() == Step::Publish {
            self.requests(ws, sh, Op::Publish).await?;
        }
        *reported = Step::Publish;
        sh.publish_done.fetch_add(1, Ordering::Relaxed);
        self.idle_until(ws, sh, step, Step::Done).await
    }

    /// Reads (and counts) whatever arrives until the step is at least `until`.
    async fn idle_until(
        &mut self,
        ws: &mut Ws,
        sh: &Shared,
        step: &mut watch::Receiver<Step>,
        until: Step,
    ) -> Result<(), Failure> {
        loop {
            if *step.borrow_and_update() >= until {
                return Ok(());
            }
            tokio::select! {
                m = ws.recv() => self.receive(m, sh)?,
                r = step.changed() => if r.is_err() {
                    // The run is gone: nothing more to do.
                    return Ok(());
                },
            }
        }
    }

    /// Sends this step's request for every channel, at most `inflight_max` unanswered,
    /// and returns once every one has its reply.
    async fn requests(&mut self, ws: &mut Ws, sh: &Shared, op: Op) -> Result<(), Failure> {
        self.next = 0;
        loop {
            let paused = self
                .paused_until
                .is_some_and(|t| t > tokio::time::Instant::now());
            while self.inflight < self.window && !paused {
                let Some(j) = self.next_request(&op) else {
                    break;
                };
                let i = self.first + j as u64;
                let channel = sh.name(i);
                let text = match op {
                    Op::Subscribe => Request::Subscribe {
                        channel,
                        since: None,
                    }
                    .encode(&RequestId::from(j as u64)),
                    Op::Publish => {
                        let data = RawValue::from_string(i.to_string())
                            .map_err(|e| Failure(format!("publication data: {e}")))?;
                        Request::Publish {
                            channel,
                            data,
                            idempotency_key: None,
                        }
                        .encode(&RequestId::from(PUBLISH_ID + j as u64))
                    }
                };
                ws.queue(Message::text(text)).map_err(|e| Failure::ws(&e))?;
                self.inflight += 1;
            }
            if self.inflight == 0 && self.retry.is_empty() && self.next >= self.chans.len() {
                return Ok(());
            }
            let resume = self.paused_until;
            tokio::select! {
                // Waiting for input also writes what was queued.
                m = ws.recv() => self.receive(m, sh)?,
                _ = async {
                    match resume {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                }, if paused => self.paused_until = None,
                _ = tokio::time::sleep(REPLY_TIMEOUT), if self.inflight > 0 => {
                    return Err(Failure(format!(
                        "timeout: no reply in {} s",
                        REPLY_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    /// The next channel to send a request for: a publish to send again, or the next
    /// channel in order (publishes only to the subscribed ones).
    fn next_request(&mut self, op: &Op) -> Option<usize> {
        if let Op::Publish = op {
            if let Some(j) = self.retry.pop_front() {
                return Some(j);
            }
        }
        while self.next < self.chans.len() {
            let j = self.next;
            self.next += 1;
            match op {
                Op::Subscribe => return Some(j),
                Op::Publish if self.chans[j].position.is_some() => return Some(j),
                Op::Publish => {}
            }
        }
        None
    }

    /// Handles one received message: a reply, a publication, a presence event.
    fn receive(
        &mut self,
        m: Option<tidewire::Result<Message>>,
        sh: &Shared,
    ) -> Result<(), Failure> {
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => return Err(Failure::closed(f.as_ref())),
            Some(Ok(_)) => return Ok(()),
            other => return Err(Failure::from_recv(other)),
        };
        let text = text.as_str();
        if let Some(reply) = parse_reply(text) {
            self.reply(reply.id, reply.offset, reply.error, sh);
        } else {
            self.push(text, sh);
        }
        Ok(())
    }

    fn reply(&mut self, id: Option<u64>, offset: Option<u64>, error: Option<u32>, sh: &Shared) {
        let (publish, j) = match id {
            Some(id) if id >= PUBLISH_ID => (true, id - PUBLISH_ID),
            Some(id) => (false, id),
            None => (false, u64::MAX),
        };
        let Some(chan) = self.chans.get_mut(j as usize) else {
            sh.errors.add("reply with an id that was not sent");
            return;
        };
        self.inflight = self.inflight.saturating_sub(1);
        match (publish, offset, error) {
            (false, Some(offset), None) => {
                chan.position = Some(offset);
                sh.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            (false, _, Some(code)) => {
                sh.errors.add(format!("subscribe refused: error {code}"));
                sh.refused.fetch_add(1, Ordering::Relaxed);
                if code == LIMIT_REACHED {
                    sh.refused_limit.fetch_add(1, Ordering::Relaxed);
                }
            }
            (true, Some(_), None) => {
                chan.acked = true;
                sh.acked.fetch_add(1, Ordering::Relaxed);
                self.window = (self.window + 1).min(self.inflight_max);
            }
            (true, _, Some(RATE_LIMITED)) => {
                sh.rate_limited.fetch_add(1, Ordering::Relaxed);
                self.window = 1;
                self.retry.push_back(j as usize);
                self.paused_until = Some(tokio::time::Instant::now() + Duration::from_millis(100));
            }
            (true, _, Some(code)) => {
                sh.errors.add(format!("publish refused: error {code}"));
                sh.publish_refused.fetch_add(1, Ordering::Relaxed);
            }
            (_, None, None) => sh.errors.add("reply without offset"),
        }
    }

    /// A pushed message: a publication on one of this connection's channels must carry
    /// the channel's number as data, at the offset after the subscribe reply's.
    fn push(&mut self, text: &str, sh: &Shared) {
        let p = match ServerMessage::parse(text) {
            Ok(ServerMessage::Push(Push::Publication(p))) => p,
            Ok(_) => {
                sh.other_pushes.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                sh.errors.add("pushed message that is not tidewire.v1");
                return;
            }
        };
        let i = p
            .channel
            .strip_prefix(sh.prefix.as_str())
            .and_then(|rest| rest.parse::<u64>().ok());
        let chan = i
            .and_then(|i| i.checked_sub(self.first))
            .and_then(|j| self.chans.get_mut(j as usize));
        let (Some(i), Some(chan)) = (i, chan) else {
            sh.errors
                .add("publication on a channel not subscribed here");
            return;
        };
        chan.received += 1;
        if chan.received > 1 {
            sh.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        sh.received.fetch_add(1, Ordering::Relaxed);
        let expected_offset = chan.position.map(|p| p + 1);
        if p.data.get().parse::<u64>().ok() != Some(i) || expected_offset != Some(p.offset) {
            sh.wrong.fetch_add(1, Ordering::Relaxed);
            sh.errors
                .add("publication with other data or offset than the one published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_is_new_per_run_and_in_the_default_namespace() {
        let a = default_prefix();
        assert!(a.starts_with("bench-ch-") && a.ends_with('-'), "{a}");
        assert!(!a.contains(':'), "{a}");
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(a, default_prefix());
    }

    #[test]
    fn names_longer_than_the_hub_accepts_are_refused() {
        assert!(check_names("x", 10_000_000).is_ok());
        let p = "p".repeat(250);
        // 250 + "99999" = 255 bytes: the limit itself.
        assert!(check_names(&p, 100_000).is_ok());
        let e = check_names(&p, 100_001).unwrap_err().to_string();
        assert!(e.contains("256 bytes"), "{e}");
    }

    fn shared(prefix: &str) -> Shared {
        Shared {
            prefix: prefix.into(),
            ..Shared::default()
        }
    }

    /// A publication as the hub encodes it.
    fn publication(channel: &str, offset: u64, data: &str) -> String {
        let mut out = String::new();
        tidewire_hub_proto::write_publication(&mut out, channel, offset, "e", data);
        out
    }

    #[tokio::test]
    async fn replies_and_publications_are_counted_per_channel() {
        let sh = shared("b-");
        // Channels 10, 11, 12 on this connection.
        let mut c = Conn::new(10, 3, 64);
        c.inflight = 3;
        c.reply(Some(0), Some(0), None, &sh);
        c.reply(Some(1), Some(4), None, &sh);
        c.reply(Some(2), None, Some(111), &sh);
        assert_eq!(sh.subscribed.load(Ordering::Relaxed), 2);
        assert_eq!(sh.refused_limit.load(Ordering::Relaxed), 1);
        assert_eq!(c.inflight, 0);
        // Publishes: only the subscribed channels; one refused with 107 comes back.
        c.next = 0;
        assert_eq!(c.next_request(&Op::Publish), Some(0));
        assert_eq!(c.next_request(&Op::Publish), Some(1));
        assert_eq!(c.next_request(&Op::Publish), None);
        c.inflight = 2;
        c.reply(Some(PUBLISH_ID + 1), None, Some(107), &sh);
        assert!(c.paused_until.is_some());
        assert_eq!(c.window, 1);
        assert_eq!(c.next_request(&Op::Publish), Some(1));
        c.reply(Some(PUBLISH_ID), Some(1), None, &sh);
        c.reply(Some(PUBLISH_ID + 1), Some(5), None, &sh);
        assert_eq!(c.window, 3);
        assert_eq!(sh.acked.load(Ordering::Relaxed), 2);
        assert_eq!(c.missing(), 2);
        // Channel 10's publication, once and then again; channel 11's with wrong data.
        let p10 = &publication("b-10", 1, "10");
        c.push(p10, &sh);
        assert_eq!(c.missing(), 1);
        c.push(p10, &sh);
        assert_eq!(sh.duplicates.load(Ordering::Relaxed), 1);
        c.push(&publication("b-11", 5, "10"), &sh);
        assert_eq!(sh.wrong.load(Ordering::Relaxed), 1);
        assert_eq!(sh.received.load(Ordering::Relaxed), 2);
        assert_eq!(c.missing(), 0);
        // Presence events, and channels of other connections.
        c.push(r#"{"channel":"b-10","join":{"client":"c-1"}}"#, &sh);
        assert_eq!(sh.other_pushes.load(Ordering::Relaxed), 1);
        c.push(&publication("b-13", 1, "13"), &sh);
        c.push(&publication("b-9", 1, "9"), &sh);
        c.push(&publication("other", 1, "9"), &sh);
        assert_eq!(
            sh.errors.snapshot()["publication on a channel not subscribed here"],
            3
        );
        c.reply(Some(7), Some(1), None, &sh);
        assert_eq!(
            sh.errors.snapshot()["reply with an id that was not sent"],
            1
        );
    }
}
