//! `tidewire bench`: the project's load generator, built on the project's own client.
//!
//! Five modes, one file each: `echo` (round trips against an echo server), `fanout`
//! (publish-to-receive through the hub's `tidewire.v1` channels), `connections` (idle
//! connections and the server memory they cost), `channels` (many channels with one
//! subscriber each, and the server memory per channel) and `soak` (an hour of mixed
//! traffic, the server's memory and descriptors sampled as it goes). This file holds what they share: the
//! common flags, the runtime, how a connection is opened (optionally from a chosen source
//! address, over `ClientBuilder::connect_on`), how failures are named, the phases of a run
//! and the progress line.
//!
//! On a small machine the generator competes with the server for the CPU, so messages per
//! second are what both reach together. With `--server-pid` every mode also reports the
//! server's own CPU time over exactly the measured window (`stats::Proc`), per message or
//! per delivery: that is the figure that compares servers.
//!
//! Not here: the statistics themselves and the report printer (`stats`).

mod channels;
mod connections;
mod echo;
mod fanout;
mod payload;
mod soak;
mod stats;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidewire::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream, WsUrl};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Round trips against an echo server: each connection keeps --inflight messages
    /// outstanding; latency is send to echo received.
    Echo(echo::EchoArgs),
    /// Fan-out through the hub (`ws://HOST/ws`, tidewire.v1): --subscribers connections
    /// subscribe to one channel, one publisher publishes; latency is publish to receive,
    /// and every subscriber must see every offset exactly once.
    Fanout(fanout::FanoutArgs),
    /// Idle connections: open --conns WebSocket connections, hold them, and report the
    /// server's memory per connection (with --server-pid).
    Connections(connections::ConnectionsArgs),
    /// Memory per channel (hub, `ws://HOST/ws`): subscribe --channels channels, one
    /// subscriber each, --per-connection per connection, and report the server's memory
    /// per channel (with --server-pid); --publish checks each channel delivers.
    Channels(channels::ChannelsArgs),
    /// A long run of mixed traffic against the hub (`ws://HOST/ws`): client sessions that
    /// subscribe, resume with `since`, read slowly or not at all, and leave by a close or
    /// an abrupt kill, while publications arrive (through the HTTP API with --api-key);
    /// reports the server's RSS and descriptors every --interval and checks that nothing
    /// was lost or duplicated.
    Soak(soak::SoakArgs),
}

/// Flags every mode takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Process id of the server: report its CPU time over the measured window (from
    /// /proc/PID/task/*/schedstat) and its memory (VmRSS).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// Print one JSON object with every figure on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Generator threads. 1 (the default) runs everything on one thread, which costs the
    /// least CPU per message; pin it with taskset to keep it off the server's core.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// WebSocket over HTTP/2 (RFC 8441): off (HTTP/1.1, a TCP connection per WebSocket),
    /// only (every WebSocket a stream of a shared HTTP/2 connection, up to the server's
    /// stream limit each; h2c for ws://), or auto (the library's default: HTTP/2 for
    /// wss:// where the server allows it).
    #[arg(long, value_name = "off|only|auto", default_value = "off")]
    pub http2: tidewire::Http2,

    /// WebSocket over HTTP/3 (RFC 9220, wss:// only): every WebSocket a stream of a
    /// shared QUIC connection (the server runs with --http3).
    #[cfg(feature = "http3")]
    #[arg(long)]
    pub http3: bool,
}

impl Common {
    /// The HTTP versions asked for, on a client.
    pub fn versions(&self, builder: ClientBuilder) -> ClientBuilder {
        let builder = builder.http2(self.http2);
        #[cfg(feature = "http3")]
        let builder = builder.http3(self.http3);
        builder
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let threads = match &args.mode {
        Mode::Echo(a) => a.common.threads,
        Mode::Fanout(a) => a.common.threads,
        Mode::Connections(a) => a.common.threads,
        Mode::Channels(a) => a.common.threads,
        Mode::Soak(a) => a.common.threads,
    };
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads as usize)
            .enable_all()
            .build()
    }
    .context("cannot start the async runtime")?;
    let nofile = raise_nofile();
    rt.block_on(async move {
        match args.mode {
            Mode::Echo(a) => echo::run(a, nofile).await,
            Mode::Fanout(a) => fanout::run(a, nofile).await,
            Mode::Connections(a) => connections::run(a, nofile).await,
            Mode::Channels(a) => channels::run(a, nofile).await,
            Mode::Soak(a) => soak::run(a, nofile).await,
        }
    })
}

/// The open-files limit after raising the soft limit to the hard one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Nofile {
    pub soft: u64,
    pub hard: u64,
}

impl Nofile {
    /// Says so on stderr when `conns` connections (plus a few descriptors of our own)
    /// will not fit.
    pub fn check(&self, conns: u64) {
        let need = conns + 32;
        if need > self.soft {
            eprintln!(
                "tidewire bench: warning: {conns} connections need about {need} file \
                 descriptors, above the open-files limit of {} (hard limit {}); the \
                 connections beyond it will fail with \"too many open files\"",
                self.soft, self.hard
            );
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (a generator holds one descriptor
/// per connection).
fn raise_nofile() -> Nofile {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Nofile {
                soft: 1024,
                hard: 1024,
            };
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
    }
    // rlim_t is u64 on Linux, the only system this tool reads /proc on.
    Nofile {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    }
}

/// Clap value parser for a `ws://` or `wss://` URL.
pub(crate) fn parse_url(s: &str) -> Result<String, String> {
    WsUrl::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Clap value parser for a positive number of seconds (fractions allowed).
pub(crate) fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Clap value parser for zero or more seconds.
pub(crate) fn parse_secs_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (0 or more)")),
    }
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection could not be opened, or why it ended. The text is the key under which
/// the failure is counted ("connect refused", "handshake failed: status 404", ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Failure {
    fn connect(e: &std::io::Error) -> Failure {
        use std::io::ErrorKind as K;
        Failure(match e.kind() {
            K::ConnectionRefused => "connect refused".into(),
            K::TimedOut => "timeout: connect".into(),
            K::AddrNotAvailable => "connect: address not available (out of ephemeral ports? \
                                    try --sources)"
                .into(),
            _ if e.raw_os_error() == Some(libc::EMFILE) => "connect: too many open files".into(),
            _ => format!("connect: {e}"),
        })
    }

    /// A failure of the opening handshake, or of an open connection.
    pub fn ws(e: &tidewire::Error) -> Failure {
        use tidewire::proto::handshake::HandshakeError;
        Failure(if let Some(h) = e.handshake_error() {
            match h {
                HandshakeError::Status(code, _) => format!("handshake failed: status {code}"),
                HandshakeError::ConnectionClosed => "handshake failed: connection closed".into(),
                other => format!("handshake failed: {other}"),
            }
        } else if e.is_timeout() {
            format!("timeout: {e}")
        } else if let Some(p) = e.protocol_error() {
            format!("protocol error: {p}")
        } else if e.is_io() {
            "connection reset (I/O error)".into()
        } else {
            e.to_string()
        })
    }

    /// What came back is not what was sent ("echo differs from the message sent", "echo
    /// of the wrong length", "unsolicited message"): the server is not an echo server, or
    /// not only one. Such a run measured something else and fails.
    pub fn is_mismatch(&self) -> bool {
        self.0.starts_with("echo ") || self.0.starts_with("unsolicited ")
    }

    /// The server sent a close frame.
    pub fn closed(frame: Option<&tidewire::CloseFrame>) -> Failure {
        Failure(match frame {
            Some(f) => format!("closed by server with code {}", f.code.0),
            None => "closed by server without code".into(),
        })
    }

    /// How a receive loop ended that was not supposed to end.
    pub fn from_recv(r: Option<tidewire::Result<Message>>) -> Failure {
        match r {
            Some(Ok(Message::Close(f))) => Failure::closed(f.as_ref()),
            Some(Ok(_)) => Failure("unexpected message".into()),
            Some(Err(e)) => Failure::ws(&e),
            None => Failure("connection ended".into()),
        }
    }
}

/// Where connections go, and how they are opened.
pub(crate) struct Target {
    pub url: String,
    tls: bool,
    pub addr: SocketAddr,
    builder: ClientBuilder,
    handshake_timeout: Duration,
}

impl Target {
    pub fn new(url: &str, builder: ClientBuilder) -> Result<Target> {
        let parsed = WsUrl::parse(url)?;
        let addr = (parsed.host.as_str(), parsed.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", parsed.host))?
            .next()
            .with_context(|| format!("{} has no address", parsed.host))?;
        Ok(Target {
            url: url.to_owned(),
            tls: parsed.tls,
            addr,
            builder,
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// Opens TCP (from `source` when given: the socket is bound before it connects) and
    /// runs the handshake, within the handshake timeout.
    pub async fn connect(
        &self,
        source: Option<IpAddr>,
    ) -> Result<(Ws, axum::http::Response<()>), Failure> {
        self.connect_with(source, None).await
    }

    /// [`connect`](Self::connect), with the socket's receive buffer set to `rcvbuf` bytes
    /// before it connects (a reader that falls behind sooner; plain `ws://` only).
    pub async fn connect_with(
        &self,
        source: Option<IpAddr>,
        rcvbuf: Option<u32>,
    ) -> Result<(Ws, axum::http::Response<()>), Failure> {
        if self.tls || self.builder.http2_mode() == tidewire::Http2::Only {
            // wss:// (HTTP/3 included) or HTTP/2: the library opens the connection itself,
            // or takes a stream of one it has (no source address choice).
            return self.builder.connect().await.map_err(|e| Failure::ws(&e));
        }
        let open = async {
            let socket = if self.addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| Failure::connect(&e))?;
            if let Some(ip) = source {
                bind_source(&socket, ip).map_err(|e| Failure(format!("bind {ip}: {e}")))?;
            }
            if let Some(bytes) = rcvbuf {
                socket
                    .set_recv_buffer_size(bytes)
                    .map_err(|e| Failure(format!("SO_RCVBUF {bytes}: {e}")))?;
            }
            let tcp = socket
                .connect(self.addr)
                .await
                .map_err(|e| Failure::connect(&e))?;
            let _ = tcp.set_nodelay(true);
            self.builder
                .connect_on(MaybeTlsStream::Plain(tcp))
                .await
                .map_err(|e| Failure::ws(&e))
        };
        match tokio::time::timeout(self.handshake_timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(Failure("timeout: connect and handshake".into())),
        }
    }

    /// The first connection of a run: its failure ends the run with one clear line.
    pub async fn probe(&self) -> Result<(Ws, axum::http::Response<()>)> {
        match self.connect(None).await {
            Ok(c) => Ok(c),
            Err(f) => bail!("cannot connect to {} ({}): {f}", self.url, self.addr),
        }
    }

    /// [`probe`](Self::probe), and the server must select `protocol` (the hub's `/ws` and
    /// `tidewire.v1`): anything else ends the run with one line.
    pub async fn probe_selecting(&self, protocol: &str) -> Result<Ws> {
        let (ws, response) = self.probe().await?;
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if selected != Some(protocol) {
            close(ws).await;
            bail!(
                "{} did not select the {protocol} subprotocol (is it the hub's /ws endpoint?)",
                self.url
            );
        }
        Ok(ws)
    }
}

/// Resolves on the first SIGINT or SIGTERM (never, if they cannot be caught): ends a hold
/// early, and the report is printed as usual.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Binds `socket` to `ip` without taking a port yet (IP_BIND_ADDRESS_NO_PORT): the port is
/// chosen by `connect`, unique per destination, so one source address serves 64,000
/// connections to each server port instead of 64,000 in all (several generators, each
/// toward its own server, share the source addresses).
fn bind_source(socket: &TcpSocket, ip: IpAddr) -> std::io::Result<()> {
    if ip.is_ipv4() {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads `on` (a c_int, whose size is passed) on a socket we own.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(SocketAddr::new(ip, 0))
}

/// Closes a connection politely, bounded in time.
pub(crate) async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// The phases of a measured run. Only messages received during `MEASURE` count.
pub(crate) struct Phase(AtomicU8);

impl Phase {
    pub const WARMUP: u8 = 0;
    pub const MEASURE: u8 = 1;
    pub const STOP: u8 = 2;

    pub fn new() -> Phase {
        Phase(AtomicU8::new(Phase::WARMUP))
    }
    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, p: u8) {
        self.0.store(p, Ordering::Relaxed)
    }
}

/// A one-way "it is over" signal whose waiting future is built once per task (and so
/// costs nothing per message inside `select!`).
#[derive(Clone)]
pub(crate) struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Shutdown(rx))
    }
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }
}

/// A status line on stderr, rewritten in place four times a second while the run goes on;
/// only when stderr is a terminal. Cleared when dropped.
pub(crate) struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(line: impl Fn() -> String + Send + 'static) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                eprint!("\r{}\x1b[K", line());
            }
        });
        Progress { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            eprint!("\r\x1b[K");
        }
    }
}

/// Bounded concurrency for opening connections: at most this many handshakes at a time,
/// so that the server's listen backlog never overflows.
pub(crate) fn connect_limiter(n: usize) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(n.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers() {
        assert!(parse_url("ws://127.0.0.1:9001/").is_ok());
        assert!(parse_url("ftp://x/").is_err());
        assert_eq!(parse_secs("1.5"), Ok(1.5));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
        assert_eq!(parse_secs_or_zero("0"), Ok(0.0));
    }

    #[test]
    fn failures_are_named_by_kind() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::connect(&refused).0, "connect refused");
        for mismatch in [
            "echo differs from the message sent",
            "echo differs from the frame sent",
            "echo of the wrong length",
            "unsolicited message",
            "unsolicited bytes",
        ] {
            assert!(Failure(mismatch.into()).is_mismatch(), "{mismatch}");
        }
        assert!(!Failure::connect(&refused).is_mismatch());
        assert!(!Failure("timeout: first round trip".into()).is_mismatch());
        let frame = tidewire::CloseFrame::new(tidewire::CloseCode(4000), "slow");
        assert_eq!(
            Failure::closed(Some(&frame)).0,
            "closed by server with code 4000"
        );
    }

    #[tokio::test]
    async fn source_bind_leaves_the_port_to_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        bind_source(&socket, ip).unwrap();
        // No port yet: a plain bind would have taken one here.
        assert_eq!(socket.local_addr().unwrap(), SocketAddr::new(ip, 0));
        let tcp = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let local = tcp.local_addr().unwrap();
        assert_eq!(local.ip(), ip);
        assert_ne!(local.port(), 0);
    }

    #[test]
    fn nofile_is_raised_to_the_hard_limit() {
        let n = raise_nofile();
        assert_eq!(n.soft, n.hard);
    }
}
