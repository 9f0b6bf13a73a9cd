//! A client that reconnects by itself: [`ReconnectingClient`].
//!
//! It wraps [`ClientBuilder`] and works with any WebSocket server. When a connection ends
//! it waits (exponential backoff with full jitter, [`Backoff`]; after a refusal with
//! `Retry-After`, at least that long, up to the backoff's cap) and connects again, until a
//! close code says not to (a [`ClosePolicy`]: RFC 6455's codes by default, or the server
//! protocol's table given to [`ReconnectBuilder::close_policy`]), the server
//! refuses the handshake for good (a 4xx status), the attempts run out, or the application
//! closes it. A heartbeat (ping frames, [`Heartbeat`]) notices a connection that went
//! silent without closing, and ends it so that a new one is made.
//!
//! Everything arrives on one stream of [`Event`]s, in the order it happened: received
//! messages, and the connection's life (`Connected`, `Disconnected`, `ConnectFailed`,
//! `Reconnecting`, `GaveUp`). The stream ends after `GaveUp`, or after the `Disconnected`
//! that follows [`ReconnectingClient::close`].
//!
//! ```no_run
//! # async fn run() -> tidewire::Result<()> {
//! use std::time::Duration;
//! use tidewire::reconnect::{Backoff, Event, ReconnectingClient};
//!
//! let mut client = ReconnectingClient::builder("ws://127.0.0.1:9001/")
//!     .backoff(Backoff::new(Duration::from_millis(200), Duration::from_secs(30)))
//!     .heartbeat(Duration::from_secs(15), Duration::from_secs(45))
//!     .connect();
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::Connected(_) => client.send("hello").await?,
//!         Event::Message(msg) => println!("{msg:?}"),
//!         Event::Disconnected(d) => eprintln!("disconnected: {} {}", d.code, d.reason),
//!         Event::GaveUp(why) => eprintln!("gave up: {why}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! One task per client drives the connection. It never waits on the application alone:
//! while the application is not reading events it stops reading the socket (the server
//! sees TCP back-pressure) but still takes commands, so `send` and `close` never deadlock
//! with an unread event stream.
//!
//! Not here: resending what was in flight when a connection dropped (between connections
//! `send` fails with [`Error::is_not_connected`], and the application decides), and anything
//! specific to one server's protocol (the hub's resubscription and close codes are in the `tidewire-hub-client` crate).

use crate::connect::ClientBuilder;
use crate::error::{Error, Kind, Result};
use crate::stream::{Heartbeat, WebSocketStream};
use crate::transport::MaybeTlsStream;
use futures_core::Stream;
use futures_sink::Sink;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tidewire_proto::{CloseCode, CloseFrame, Message};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The heartbeat of [`ReconnectingClient::builder`]: a ping after 15 s of silence, a new
/// connection after 45 s without anything from the server.
pub const DEFAULT_HEARTBEAT: Heartbeat = Heartbeat {
    interval: Duration::from_secs(15),
    timeout: Duration::from_secs(45),
};

/// Exponential backoff with full jitter (the "Full Jitter" of the AWS architecture blog's
/// "Exponential Backoff and Jitter"): before reconnect attempt `n` the client sleeps a
/// delay drawn uniformly from `[0, min(max, initial × 2^(n-1))]`.
///
/// Attempts count up while connections fail or do not stay up; a connection that stayed up
/// for [`Backoff::reset_after`] starts the count again from 1. [`Backoff::max_attempts`]
/// bounds the failed connection attempts in a row (none by default: retry forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    max_attempts: Option<u32>,
    reset_after: Duration,
}

impl Default for Backoff {
    /// 250 ms initial ceiling, 30 s cap, no attempt limit, reset after 10 s up.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            max_attempts: None,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Ceilings `initial`, `2 × initial`, `4 × initial`, ... capped at `max` (raised to
    /// `initial` if smaller).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            ..Backoff::default()
        }
    }

    /// Gives up after this many failed connection attempts in a row (`None`: never).
    /// A connection that opens resets the count.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// A connection that stayed up at least this long resets the backoff to its first
    /// step. Default 10 s: a server that accepts and drops at once is not hammered.
    pub fn reset_after(mut self, d: Duration) -> Self {
        self.reset_after = d;
        self
    }

    /// The largest delay before reconnect attempt `attempt` (1-based):
    /// `min(max, initial × 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The delay before reconnect attempt `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=ceiling))
    }
}

/// What a reconnecting client does after the server closed with a code: the verdict of a
/// close policy ([`ReconnectBuilder::close_policy`]).
///
/// The default policy, [`ClosePolicy::rfc6455`], knows only RFC 6455's codes. A server
/// that gives its own codes (3000–4999) a meaning passes its table: the Tidewire hub's is in
/// `tidewire-hub-proto`, and `tidewire-hub-client` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosePolicy {
    /// Reconnect with backoff.
    Reconnect,
    /// Reconnect only with a new token (see [`ReconnectBuilder::reconnect_with_new_token`]);
    /// otherwise stop.
    ReconnectWithNewToken,
    /// Do not reconnect.
    Stop,
}

impl ClosePolicy {
    /// The default policy: stop after 1000 (normal closure: the server meant it) and 1009
    /// (message too big: sending it again fails again), reconnect after anything else,
    /// including every code of 3000–4999, whose meaning only the server's own protocol can
    /// tell (RFC 6455 §7.4.2).
    pub fn rfc6455(code: CloseCode) -> ClosePolicy {
        match code {
            CloseCode::NORMAL | CloseCode::MESSAGE_TOO_BIG => ClosePolicy::Stop,
            _ => ClosePolicy::Reconnect,
        }
    }
}

/// A close policy as the builder keeps it.
#[derive(Clone)]
struct PolicyFn(Arc<dyn Fn(CloseCode) -> ClosePolicy + Send + Sync>);

impl fmt::Debug for PolicyFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicyFn")
    }
}

/// A connection opened.
#[derive(Debug)]
#[non_exhaustive]
pub struct Connected {
    /// The connection's number: 1 for the first, then one more for each new connection.
    pub connection: u64,
    /// The server's 101 response (headers, cookies, the selected subprotocol).
    pub response: http::Response<()>,
}

impl Connected {
    /// The subprotocol the server selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
    }
}

/// A connection ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct Disconnect {
    /// The connection's number (as in [`Connected::connection`]).
    pub connection: u64,
    /// The code of the server's close frame; 1005 for a close frame without a code; 1006
    /// when the connection ended without one (dropped, heartbeat timeout, protocol error).
    /// After [`ReconnectingClient::close`], the code the application sent.
    pub code: CloseCode,
    /// The close frame's reason (empty without one).
    pub reason: String,
    /// What went wrong, when something did (I/O error, heartbeat timeout, the server
    /// breaking the protocol).
    pub error: Option<Error>,
    /// How long the connection was up.
    pub uptime: Duration,
    /// True when the application closed it ([`ReconnectingClient::close`]): the last event.
    pub local: bool,
}

/// Why a [`ReconnectingClient`] stopped for good. The last event of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// The server closed with a code whose [`ClosePolicy`] is to stop.
    CloseCode {
        /// The code.
        code: CloseCode,
        /// The close frame's reason.
        reason: String,
    },
    /// The server refused the handshake for good (HTTP 4xx other than 408, 425 and 429),
    /// or the URL is unusable. The error was in the `ConnectFailed` event before this one.
    Refused,
    /// [`Backoff::max_attempts`] failed attempts in a row.
    Attempts(u32),
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::CloseCode { code, reason } if reason.is_empty() => {
                write!(f, "the server closed with {code}")
            }
            GiveUp::CloseCode { code, reason } => {
                write!(f, "the server closed with {code} ({reason})")
            }
            GiveUp::Refused => f.write_str("the server refused the connection"),
            GiveUp::Attempts(n) => write!(f, "{n} failed connection attempts in a row"),
        }
    }
}

/// What happened, in order. See the [module documentation](self).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened (the first one, or a new one after a disconnect).
    Connected(Connected),
    /// A text or binary message from the server.
    Message(Message),
    /// The connection ended. Unless the application closed it or the code says stop, a
    /// `Reconnecting` follows.
    Disconnected(Disconnect),
    /// A connection attempt failed (refused, timed out, handshake failed).
    ConnectFailed {
        /// Failed attempts in a row, this one included.
        attempt: u32,
        /// Why it failed.
        error: Error,
    },
    /// The client sleeps `delay`, then makes reconnect attempt `attempt`.
    Reconnecting {
        /// The attempt's number since the last connection that stayed up (1-based).
        attempt: u32,
        /// The delay drawn from [`Backoff`].
        delay: Duration,
    },
    /// The client stopped for good; the stream ends.
    GaveUp(GiveUp),
}

enum Command {
    Send {
        connection: Option<u64>,
        msg: Message,
        done: oneshot::Sender<Result<()>>,
    },
    Close {
        frame: Option<CloseFrame>,
        done: oneshot::Sender<()>,
    },
}

/// Builds a [`ReconnectingClient`].
#[derive(Debug, Clone)]
pub struct ReconnectBuilder {
    client: ClientBuilder,
    backoff: Backoff,
    heartbeat: Option<Heartbeat>,
    capacity: usize,
    seed: Option<u64>,
    new_tokens: bool,
    policy: PolicyFn,
}

impl ReconnectBuilder {
    /// Reconnects with `client`'s settings (subprotocols, headers, TLS, options). Its
    /// heartbeat is kept, or [`DEFAULT_HEARTBEAT`] if it has none.
    pub fn new(client: ClientBuilder) -> Self {
        ReconnectBuilder {
            heartbeat: client.options.heartbeat.or(Some(DEFAULT_HEARTBEAT)),
            client,
            backoff: Backoff::default(),
            capacity: 1024,
            seed: None,
            new_tokens: false,
            policy: PolicyFn(Arc::new(ClosePolicy::rfc6455)),
        }
    }

    /// Changes the underlying [`ClientBuilder`]: `.client(|c| c.protocols(["chat"]))`.
    /// A heartbeat set there (in the options it is given) becomes this builder's, as if
    /// given to [`heartbeat`](Self::heartbeat); options without one leave it as it was.
    pub fn client(mut self, f: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Self {
        let before = self.client.options.heartbeat;
        self.client = f(self.client);
        let after = self.client.options.heartbeat;
        if after.is_some() && after != before {
            self.heartbeat = after;
        }
        self
    }

    /// Sets the backoff. Default: [`Backoff::default`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Pings a connection quiet for `interval`; ends it (and reconnects) when nothing at
    /// all arrived for `timeout`. Default [`DEFAULT_HEARTBEAT`].
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = Some(Heartbeat { interval, timeout });
        self
    }

    /// No heartbeat: a connection that goes silent without closing is not noticed.
    pub fn no_heartbeat(mut self) -> Self {
        self.heartbeat = None;
        self
    }

    /// Events buffered for the application before the client stops reading the socket.
    /// Default 1024.
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.capacity = events.max(1);
        self
    }

    /// Seeds the backoff's jitter (for reproducible tests). Default: from the OS.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Reconnect after a close code whose policy is [`ClosePolicy::ReconnectWithNewToken`]
    /// (the hub's 4001, token expired): the application sends a fresh token on each new
    /// connection. Default false (such a code stops the client).
    pub fn reconnect_with_new_token(mut self, yes: bool) -> Self {
        self.new_tokens = yes;
        self
    }

    /// Decides, for each close code the server sends, whether to reconnect. Default
    /// [`ClosePolicy::rfc6455`]. Only codes that came in a close frame from the server
    /// count: a connection that dropped (1006) is always reconnected.
    pub fn close_policy(
        mut self,
        policy: impl Fn(CloseCode) -> ClosePolicy + Send + Sync + 'static,
    ) -> Self {
        self.policy = PolicyFn(Arc::new(policy));
        self
    }

    /// Starts the client on the current tokio runtime and returns at once; the first
    /// connection attempt is under way. Panics outside a tokio runtime.
    pub fn connect(self) -> ReconnectingClient {
        let mut client = self.client;
        client.options.heartbeat = self.heartbeat;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(self.capacity);
        let current = Arc::new(AtomicU64::new(0));
        let rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let driver = Driver {
            client,
            backoff: self.backoff,
            rng,
            new_tokens: self.new_tokens,
            policy: self.policy,
            cmds: cmd_rx,
            cmds_open: true,
            events: ev_tx,
            current: current.clone(),
        };
        tokio::spawn(driver.run());
        ReconnectingClient {
            sender: Sender {
                tx: cmd_tx,
                current,
            },
            events: Events { rx: ev_rx },
        }
    }
}

/// A WebSocket client that reconnects by itself. See the [module documentation](self).
///
/// Read its events with [`next_event`](Self::next_event) (or as a [`Stream`]); send with
/// [`send`](Self::send). Dropping it closes the connection (1000) and stops the client.
#[derive(Debug)]
pub struct ReconnectingClient {
    sender: Sender,
    events: Events,
}

impl ReconnectingClient {
    /// A builder for `url` (`ws://` or `wss://`) with default settings.
    pub fn builder(url: impl Into<String>) -> ReconnectBuilder {
        ReconnectBuilder::new(ClientBuilder::new(url))
    }

    /// The next event; `None` once the client has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.next_event().await
    }

    /// Sends a message on the current connection. See [`Sender::send`].
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        self.sender.send(msg).await
    }

    /// Sends only if connection number `connection` is still the current one. See
    /// [`Sender::send_on`].
    pub async fn send_on(&self, connection: u64, msg: impl Into<Message>) -> Result<()> {
        self.sender.send_on(connection, msg).await
    }

    /// Starts closing (default 1000) and stops reconnecting. See [`Sender::close`].
    pub async fn close(&self, frame: Option<CloseFrame>) {
        self.sender.close(frame).await
    }

    /// The current connection's number, `None` between connections.
    pub fn connection(&self) -> Option<u64> {
        self.sender.connection()
    }

    /// A handle for sending from other tasks.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Splits into the sending handle and the event stream.
    pub fn split(self) -> (Sender, Events) {
        (self.sender, self.events)
    }
}

impl Stream for ReconnectingClient {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.get_mut().events).poll_next(cx)
    }
}

/// The sending side of a [`ReconnectingClient`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::Sender<Command>,
    current: Arc<AtomicU64>,
}

impl Sender {
    /// Queues a message on the current connection; it leaves at once (everything queued
    /// together leaves in one write). Fails with [`Error::is_not_connected`] between
    /// connections and with [`Error::is_closed`] once the client has stopped. `Ok` means
    /// queued, not delivered: a connection can still drop before the server reads it.
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        self.command(None, msg.into()).await
    }

    /// As [`send`](Self::send), but only on connection number `connection`: if that one
    /// has ended, the message is not sent (not even on a newer connection) and the error
    /// is [`Error::is_not_connected`]. For protocols where a new connection must begin
    /// with its own messages (authentication, resubscription).
    pub async fn send_on(&self, connection: u64, msg: impl Into<Message>) -> Result<()> {
        self.command(Some(connection), msg.into()).await
    }

    async fn command(&self, connection: Option<u64>, msg: Message) -> Result<()> {
        let (done, rx) = oneshot::channel();
        let cmd = Command::Send {
            connection,
            msg,
            done,
        };
        self.tx
            .send(cmd)
            .await
            .map_err(|_| Error::new(Kind::Closed))?;
        rx.await.unwrap_or_else(|_| Err(Error::new(Kind::Closed)))
    }

    /// Starts the close handshake on the current connection with `frame` (default 1000)
    /// and stops the client. What arrives until the server answers (messages included)
    /// is still delivered, then a last `Disconnected` (with `local: true`), then the event
    /// stream ends; the server has [`Options::close_timeout`](crate::Options) to answer.
    /// Returns once the close frame is on its way (at once between connections).
    pub async fn close(&self, frame: Option<CloseFrame>) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Command::Close { frame, done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The current connection's number, `None` between connections.
    pub fn connection(&self) -> Option<u64> {
        match self.current.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }
}

/// The event stream of a [`ReconnectingClient`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// The application closed the client or dropped it.
struct Stop;

/// How a connection ended.
struct Ended {
    code: CloseCode,
    reason: String,
    error: Option<Error>,
    local: bool,
}

/// The task behind a [`ReconnectingClient`].
struct Driver {
    client: ClientBuilder,
    backoff: Backoff,
    rng: StdRng,
    new_tokens: bool,
    policy: PolicyFn,
    cmds: mpsc::Receiver<Command>,
    /// False once every [`Sender`] is gone (the events may still be read).
    cmds_open: bool,
    events: mpsc::Sender<Event>,
    current: Arc<AtomicU64>,
}

/// A handshake refusal that will not change by retrying: a bad URL, or HTTP 4xx other
/// than 408 (timeout), 425 (too early) and 429 (too many requests).
fn refused_for_good(e: &Error) -> bool {
    e.is_url()
        || e.is_proxy_for_good()
        || e.http_status()
            .is_some_and(|s| (400..500).contains(&s) && !matches!(s, 408 | 425 | 429))
}

/// A command while there is no connection.
fn idle_command(cmds_open: &mut bool, cmd: Option<Command>) -> Result<(), Stop> {
    match cmd {
        None => {
            *cmds_open = false;
            Ok(())
        }
        Some(Command::Send { done, .. }) => {
            let _ = done.send(Err(Error::new(Kind::NotConnected)));
            Ok(())
        }
        Some(Command::Close { done, .. }) => {
            let _ = done.send(());
            Err(Stop)
        }
    }
}

impl Driver {
    async fn run(mut self) {
        // Reconnect attempts since the last connection that stayed up: the backoff step.
        let mut streak = 0u32;
        // Failed connection attempts in a row: against `max_attempts`.
        let mut failures = 0u32;
        let mut connection = 0u64;
        loop {
            // What a refusing server asked for with `Retry-After`.
            let mut asked = None;
            let attempt = match self.attempt().await {
                Ok(a) => a,
                Err(Stop) => return,
            };
            match attempt {
                Err(error) => {
                    failures += 1;
                    asked = error.retry_after();
                    let for_good = refused_for_good(&error);
                    let event = Event::ConnectFailed {
                        attempt: failures,
                        error,
                    };
                    if self.emit(event).await.is_err() {
                        return;
                    }
                    if for_good {
                        let _ = self.emit(Event::GaveUp(GiveUp::Refused)).await;
                        return;
                    }
                    if self.backoff.max_attempts.is_some_and(|max| failures >= max) {
                        let _ = self.emit(Event::GaveUp(GiveUp::Attempts(failures))).await;
                        return;
                    }
                }
                Ok((mut ws, response)) => {
                    failures = 0;
                    connection += 1;
                    self.current.store(connection, Ordering::Release);
                    let started = Instant::now();
                    let first = Event::Connected(Connected {
                        connection,
                        response,
                    });
                    let served = self.serve(&mut ws, connection, first).await;
                    self.current.store(0, Ordering::Release);
                    drop(ws);
                    let Ok(ended) = served else { return };
                    let uptime = started.elapsed();
                    let (code, reason, local) = (ended.code, ended.reason.clone(), ended.local);
                    let event = Event::Disconnected(Disconnect {
                        connection,
                        code: ended.code,
                        reason: ended.reason,
                        error: ended.error,
                        uptime,
                        local,
                    });
                    if self.emit(event).await.is_err() || local {
                        return;
                    }
                    let stop = match (self.policy.0)(code) {
                        ClosePolicy::Reconnect => false,
                        ClosePolicy::ReconnectWithNewToken => !self.new_tokens,
                        ClosePolicy::Stop => true,
                    };
                    // Codes only count when they came in a close frame from the server.
                    if stop && code != CloseCode::ABNORMAL && code != CloseCode::NO_STATUS {
                        let _ = self
                            .emit(Event::GaveUp(GiveUp::CloseCode { code, reason }))
                            .await;
                        return;
                    }
                    if uptime >= self.backoff.reset_after {
                        streak = 0;
                    }
                }
            }
            streak = streak.saturating_add(1);
            let mut delay = self.backoff.delay(streak, &mut self.rng);
            if let Some(asked) = asked {
                // The server knows its load: wait as long as it asked, up to our cap.
                delay = delay.max(asked.min(self.backoff.max));
            }
            let event = Event::Reconnecting {
                attempt: streak,
                delay,
            };
            if self.emit(event).await.is_err() || self.pause(delay).await.is_err() {
                return;
            }
        }
    }

    /// Delivers an event outside a connection, taking commands while the application is
    /// not reading.
    async fn emit(&mut self, event: Event) -> Result<(), Stop> {
        loop {
            tokio::select! {
                permit = self.events.reserve() => match permit {
                    Ok(p) => {
                        p.send(event);
                        return Ok(());
                    }
                    Err(_) => return Err(Stop),
                },
                cmd = self.cmds.recv(), if self.cmds_open => idle_command(&mut self.cmds_open, cmd)?,
            }
        }
    }

    /// Sleeps between connections, taking commands.
    async fn pause(&mut self, delay: Duration) -> Result<(), Stop> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                cmd = self.cmds.recv(), if self.cmds_open => idle_command(&mut self.cmds_open, cmd)?,
                _ = self.events.closed() => return Err(Stop),
            }
        }
    }

    /// One connection attempt (TCP, TLS, handshake), taking commands meanwhile.
    async fn attempt(&mut self) -> Result<Result<(Ws, http::Response<()>)>, Stop> {
        let client = self.client.clone();
        let connecting = async move { client.connect().await };
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                r = &mut connecting => return Ok(r),
                cmd = self.cmds.recv(), if self.cmds_open => idle_command(&mut self.cmds_open, cmd)?,
                _ = self.events.closed() => return Err(Stop),
            }
        }
    }

    /// Runs one connection until it ends: delivers `first`, then what arrives, and sends
    /// what the application sends. `Err(Stop)`: the application went away.
    async fn serve(&mut self, ws: &mut Ws, connection: u64, first: Event) -> Result<Ended, Stop> {
        let mut pending = Some(first);
        let mut peer_close: Option<Option<CloseFrame>> = None;
        let mut error = None;
        // Set once the application closed: the close frame sent, and how long the server
        // has to answer it.
        let mut local: Option<CloseFrame> = None;
        let deadline = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline, if local.is_some() => break,
                permit = self.events.reserve(), if pending.is_some() => match permit {
                    Ok(p) => {
                        if let Some(event) = pending.take() {
                            p.send(event);
                        }
                    }
                    Err(_) => {
                        let _ = ws.close(None).await;
                        return Err(Stop);
                    }
                },
                _ = self.events.closed(), if pending.is_none() => {
                    let _ = ws.close(None).await;
                    return Err(Stop);
                }
                // Reads only while no event waits for the application: back-pressure.
                msg = next_or_flush(ws, pending.is_none()) => match msg {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        pending = Some(Event::Message(m));
                    }
                    Some(Ok(Message::Close(frame))) => peer_close = Some(frame),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        error = Some(e);
                        break;
                    }
                    None => break,
                },
                cmd = self.cmds.recv(), if self.cmds_open => match cmd {
                    None => self.cmds_open = false,
                    Some(Command::Send { connection: only, msg, done }) => {
                        let sent = if only.is_some_and(|c| c != connection) {
                            Err(Error::new(Kind::NotConnected))
                        } else {
                            ws.feed(msg).await.map_err(|e| {
                                if e.is_closed() { Error::new(Kind::NotConnected) } else { e }
                            })
                        };
                        let _ = done.send(sent);
                    }
                    Some(Command::Close { frame, done }) => {
                        if local.is_none() {
                            // Sent with the next flush; what arrives until the server's
                            // answer is still delivered.
                            let frame = frame.unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, ""));
                            let _ = ws.queue(Message::Close(Some(frame.clone())));
                            local = Some(frame);
                            let timeout = self.client.options.close_timeout;
                            deadline.as_mut().reset(Instant::now() + timeout);
                        }
                        let _ = done.send(());
                    }
                },
            }
        }
        if let Some(frame) = local {
            if let Some(event) = pending.take() {
                self.emit(event).await?;
            }
            return Ok(Ended {
                code: frame.code,
                reason: frame.reason,
                error,
                local: true,
            });
        }
        let (code, reason) = match peer_close {
            Some(Some(f)) => (f.code, f.reason),
            Some(None) => (CloseCode::NO_STATUS, String::new()),
            None => (CloseCode::ABNORMAL, String::new()),
        };
        Ok(Ended {
            code,
            reason,
            error,
            local: false,
        })
    }
}

/// The next message when `read` is true; in any case writes out what is queued (a message
/// the application sent while an event waits for it must not wait too).
fn next_or_flush(ws: &mut Ws, read: bool) -> impl Future<Output = Option<Result<Message>>> + '_ {
    std::future::poll_fn(move |cx| {
        if ws.connection().pending_transmit() > 0 {
            // A write error shows up again on the read side.
            let _ = Pin::new(&mut *ws).poll_flush(cx);
        }
        if read {
            Pin::new(&mut *ws).poll_next(cx)
        } else {
            Poll::Pending
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn a_heartbeat_set_through_client_is_not_overridden() {
        let hb = |s| {
            Some(Heartbeat {
                interval: Duration::from_secs(s),
                timeout: Duration::from_secs(3 * s),
            })
        };
        let b = ReconnectingClient::builder("ws://127.0.0.1:9/");
        assert_eq!(b.heartbeat, Some(DEFAULT_HEARTBEAT));
        let b = b.client(|c| {
            c.options(
                crate::Options::default().heartbeat(Duration::from_secs(1), Duration::from_secs(3)),
            )
        });
        assert_eq!(b.heartbeat, hb(1));
        // Other settings through `client` leave it alone, as do options without one...
        let b = b.client(|c| c.protocols(["chat"]));
        assert_eq!(b.heartbeat, hb(1));
        let b = b.heartbeat(Duration::from_secs(2), Duration::from_secs(6));
        let b = b.client(|c| c.options(crate::Options::default()));
        assert_eq!(b.heartbeat, hb(2));
        // ...and the builder's own word still counts after it.
        let b = b.no_heartbeat();
        assert_eq!(b.heartbeat, None);
    }

    #[test]
    fn backoff_ceilings_double_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        // A cap below the initial delay is raised to it.
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
        // Huge values saturate instead of overflowing.
        let b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(b.ceiling(40), Duration::MAX);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(b.delay(40, &mut rng) <= Duration::MAX);
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_spreads() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut rng = StdRng::seed_from_u64(42);
        for attempt in 1..=8 {
            let ceiling = b.ceiling(attempt);
            let delays: Vec<Duration> = (0..4000).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Uniform on [0, ceiling]: mean near ceiling/2, every quarter hit about as often.
            let mean = delays.iter().map(|d| d.as_secs_f64()).sum::<f64>() / delays.len() as f64;
            let half = ceiling.as_secs_f64() / 2.0;
            assert!(
                (mean - half).abs() < half * 0.05,
                "attempt {attempt}: mean {mean}"
            );
            let mut quarters = [0usize; 4];
            for d in &delays {
                let q = (d.as_secs_f64() / ceiling.as_secs_f64() * 4.0) as usize;
                quarters[q.min(3)] += 1;
            }
            assert!(
                quarters.iter().all(|&n| (850..1150).contains(&n)),
                "{quarters:?}"
            );
            // Full jitter reaches down to (almost) nothing.
            let min = delays.iter().min().copied().unwrap_or_default();
            assert!(min < ceiling / 100, "attempt {attempt}: min {min:?}");
        }
    }

    #[test]
    fn jitter_is_reproducible_with_a_seed() {
        let b = Backoff::default();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..=10).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn the_default_close_policy_knows_rfc_6455_only() {
        for code in [1000, 1009] {
            assert_eq!(
                ClosePolicy::rfc6455(CloseCode(code)),
                ClosePolicy::Stop,
                "{code}"
            );
        }
        for code in [
            1001, 1002, 1003, 1006, 1007, 1008, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4001,
            4003, 4008, 4500, 4999,
        ] {
            assert_eq!(
                ClosePolicy::rfc6455(CloseCode(code)),
                ClosePolicy::Reconnect,
                "{code}"
            );
        }
    }

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(5), Duration::from_millis(20))
    }

    async fn next(client: &mut ReconnectingClient) -> Event {
        tokio::time::timeout(Duration::from_secs(10), client.next_event())
            .await
            .expect("no event within 10 s")
            .expect("stream ended")
    }

    /// A loopback server that runs `script` on each accepted connection in turn.
    async fn server(codes: Vec<(&'static str, u16)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for (text, code) in codes {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut ws = crate::accept(tcp).await.unwrap();
                ws.send(text).await.unwrap();
                let _ = ws
                    .close(Some(CloseFrame::new(CloseCode(code), "bye")))
                    .await;
            }
        });
        format!("ws://{addr}/")
    }

    #[tokio::test]
    async fn reconnects_after_1001_and_stops_after_1000() {
        let url = server(vec![("one", 1001), ("two", 1000)]).await;
        let mut c = ReconnectingClient::builder(url).backoff(quick()).connect();
        assert!(matches!(
            next(&mut c).await,
            Event::Connected(Connected { connection: 1, .. })
        ));
        assert!(matches!(next(&mut c).await, Event::Message(m) if m == Message::text("one")));
        match next(&mut c).await {
            Event::Disconnected(d) => {
                assert_eq!(
                    (d.connection, d.code.0, d.reason.as_str()),
                    (1, 1001, "bye")
                );
                assert!(!d.local && d.error.is_none());
            }
            e => panic!("{e:?}"),
        }
        match next(&mut c).await {
            Event::Reconnecting { attempt, delay } => {
                assert_eq!(attempt, 1);
                assert!(delay <= Duration::from_millis(5));
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            next(&mut c).await,
            Event::Connected(Connected { connection: 2, .. })
        ));
        assert!(matches!(next(&mut c).await, Event::Message(m) if m == Message::text("two")));
        assert!(matches!(next(&mut c).await, Event::Disconnected(d) if d.code.0 == 1000));
        match next(&mut c).await {
            Event::GaveUp(GiveUp::CloseCode { code, reason }) => {
                assert_eq!((code.0, reason.as_str()), (1000, "bye"))
            }
            e => panic!("{e:?}"),
        }
        assert!(c.next_event().await.is_none());
        assert!(c.send("late").await.unwrap_err().is_closed());
    }

    /// A server's own code means what the policy given to the builder says: 4321 is
    /// retried by default and stops the client here.
    #[tokio::test]
    async fn the_close_policy_given_is_the_one_applied() {
        let url = server(vec![("one", 4321), ("two", 4321)]).await;
        let mut c = ReconnectingClient::builder(url)
            .backoff(quick())
            .close_policy(|code| match code.0 {
                4321 => ClosePolicy::Stop,
                _ => ClosePolicy::rfc6455(code),
            })
            .connect();
        let mut seen = Vec::new();
        loop {
            match next(&mut c).await {
                Event::GaveUp(GiveUp::CloseCode { code, .. }) => {
                    seen.push(format!("gave up {}", code.0));
                    break;
                }
                Event::Disconnected(d) => seen.push(format!("closed {}", d.code.0)),
                Event::Reconnecting { .. } => seen.push("reconnecting".into()),
                _ => {}
            }
        }
        assert_eq!(seen, ["closed 4321", "gave up 4321"]);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        // A port that refuses: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = ReconnectingClient::builder(format!("ws://127.0.0.1:{port}/"))
            .backoff(quick().max_attempts(Some(3)))
            .connect();
        for n in 1..=3 {
            match next(&mut c).await {
                Event::ConnectFailed { attempt, error } => {
                    assert_eq!(attempt, n);
                    assert!(error.is_io(), "{error}");
                }
                e => panic!("{e:?}"),
            }
            if n < 3 {
                assert!(
                    matches!(next(&mut c).await, Event::Reconnecting { attempt, .. } if attempt == n)
                );
                assert!(c.send("x").await.unwrap_err().is_not_connected());
            }
        }
        assert!(matches!(
            next(&mut c).await,
            Event::GaveUp(GiveUp::Attempts(3))
        ));
        assert!(c.next_event().await.is_none());
    }

    /// Issue 13, item 4: a URL whose port is out of range or not a number went to port 80
    /// and was retried for ever; it is an error at once, and final.
    #[tokio::test]
    async fn issue_13_a_bad_url_fails_once_and_gives_up() {
        for url in ["ws://127.0.0.1:99999/", "ws://127.0.0.1:abc/", "ws://h/#x"] {
            let mut c = ReconnectingClient::builder(url).backoff(quick()).connect();
            match next(&mut c).await {
                Event::ConnectFailed { attempt: 1, error } => {
                    assert!(error.is_url(), "{url}: {error}");
                    assert!(error.to_string().contains(url), "{error}");
                }
                e => panic!("{url}: {e:?}"),
            }
            assert!(matches!(next(&mut c).await, Event::GaveUp(GiveUp::Refused)));
            assert!(c.next_event().await.is_none());
        }
    }

    /// A server that answers every handshake with `status` (and extra header lines) and
    /// a one-line `body`.
    async fn refusing_server(status: &'static str, body: &'static str) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 2048];
                let _ = tcp.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_404_is_final_and_reports_status_and_body() {
        let addr = refusing_server("404 Not Found", "no route for /nope\n").await;
        let mut c = ReconnectingClient::builder(format!("ws://{addr}/nope"))
            .backoff(quick())
            .connect();
        match next(&mut c).await {
            Event::ConnectFailed { attempt: 1, error } => {
                assert_eq!(error.http_status(), Some(404));
                assert_eq!(error.http_body(), Some("no route for /nope"));
                assert!(error.to_string().contains("404 Not Found"), "{error}");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(next(&mut c).await, Event::GaveUp(GiveUp::Refused)));
    }

    #[tokio::test]
    async fn a_503_with_retry_after_is_retried_no_sooner_than_asked() {
        let addr = refusing_server("503 Service Unavailable\r\nRetry-After: 3", "busy\n").await;
        // Backoff ceilings of 1 ms: only Retry-After can make the delay longer; a cap of
        // 2 s bounds what the server may ask.
        for (cap, want) in [(10, 3), (2, 2)] {
            let mut c = ReconnectingClient::builder(format!("ws://{addr}/"))
                .backoff(Backoff::new(
                    Duration::from_millis(1),
                    Duration::from_secs(cap),
                ))
                .connect();
            match next(&mut c).await {
                Event::ConnectFailed { attempt: 1, error } => {
                    assert_eq!(error.http_status(), Some(503));
                    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
                }
                e => panic!("{e:?}"),
            }
            match next(&mut c).await {
                Event::Reconnecting { attempt: 1, delay } => {
                    assert_eq!(delay, Duration::from_secs(want))
                }
                e => panic!("{e:?}"),
            }
        }
    }

    #[tokio::test]
    async fn close_and_send_work_while_events_are_unread() {
        // An echo server; the client sends more than the event buffer holds without
        // reading events, then closes: neither call may hang.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = crate::accept(tcp).await.unwrap();
            while let Some(Ok(m)) = ws.recv().await {
                if m.is_data() && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut c = ReconnectingClient::builder(format!("ws://{addr}/"))
            .event_capacity(2)
            .connect();
        assert!(matches!(next(&mut c).await, Event::Connected(_)));
        let work = async {
            for i in 0..20 {
                c.send(format!("m{i}")).await.unwrap();
            }
            c.close(None).await;
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .expect("send/close hung");
        let mut texts = Vec::new();
        let mut last = None;
        while let Some(e) = c.next_event().await {
            match e {
                Event::Message(Message::Text(t)) => texts.push(t.to_string()),
                e => last = Some(e),
            }
        }
        // Echoes read before the close arrive in order; the last event is the local close.
        assert!(texts.iter().enumerate().all(|(i, t)| *t == format!("m{i}")));
        assert!(matches!(last, Some(Event::Disconnected(d)) if d.local && d.code.0 == 1000));
    }
}
