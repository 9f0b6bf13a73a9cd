//! `tidewire echo`: a bare echo server.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tidewire::{Limits, Message, Options, ServerBuilder};
use tidewire_hub::log_text;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on (IP:PORT). Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:9001", value_name = "ADDR")]
    listen: SocketAddr,

    /// Largest frame payload accepted, in bytes. Bigger frames are closed with 1009.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_frame_size: usize,

    /// Largest message accepted after reassembly, in bytes. Bigger messages: close 1009.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    max_message_size: usize,

    /// Worker threads. 1 runs everything on the current thread (best when the server is
    /// pinned to one core, as in the benchmarks); 0 means one per core.
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,

    /// Seconds a client may take to finish its opening handshake (answered with 408).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    handshake_timeout: u64,

    /// Subprotocols to accept, most preferred first (comma-separated). The first one the
    /// client also offers is selected.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    protocols: Vec<String>,

    /// PEM certificate chain: serve wss:// (TLS, rustls). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// Speak HTTP/1.1 only: no HTTP/2 by ALPN over TLS, no h2c, so no WebSocket over
    /// HTTP/2 (RFC 8441).
    #[arg(long)]
    no_http2: bool,

    /// Also serve WebSockets over HTTP/3 (RFC 9220) on the same port over UDP (needs
    /// --tls-cert and --tls-key).
    #[cfg(feature = "http3")]
    #[arg(long, requires = "tls_cert")]
    http3: bool,

    #[command(flatten)]
    compression: CompressionArgs,
}

/// permessage-deflate options, shared by the commands that serve WebSocket.
#[derive(Debug, Args)]
pub struct CompressionArgs {
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it (browsers do).
    #[arg(long)]
    pub compression: bool,

    /// zlib level for outgoing messages, 0 (store) to 9 (smallest).
    #[arg(long, default_value_t = 1, value_name = "0-9",
          value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: u32,

    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub compression_threshold: usize,

    /// Keep the compression context between outgoing messages (better ratio for streams of
    /// similar messages, but about 256 KiB of zlib state per connection). Off by default:
    /// the server answers server_no_context_takeover, compresses with a per-thread shared
    /// stream, and holds no compressor per connection.
    #[arg(long)]
    pub server_context_takeover: bool,

    /// Require clients to compress every message with a fresh context: no decompressor
    /// held per connection.
    #[arg(long)]
    pub client_no_context_takeover: bool,

    /// Largest window (LZ77, 2^N bytes) for what the server compresses.
    #[arg(long, default_value_t = 15, value_name = "8-15",
          value_parser = clap::value_parser!(u8).range(8..=15))]
    pub server_max_window_bits: u8,

    /// Largest window clients may compress with, when they let the server choose (browsers
    /// do). 12 (4 KiB) keeps the per-connection inflate state small; 15 is zlib's maximum.
    #[arg(long, default_value_t = 12, value_name = "8-15",
          value_parser = clap::value_parser!(u8).range(8..=15))]
    pub client_max_window_bits: u8,
}

impl CompressionArgs {
    /// The deflate policy, or `None` when compression is off.
    pub fn policy(&self) -> Option<tidewire::DeflateConfig> {
        self.compression.then(|| {
            tidewire::DeflateConfig::default()
                .level(self.compression_level)
                .threshold(self.compression_threshold)
                .server_no_context_takeover(!self.server_context_takeover)
                .client_no_context_takeover(self.client_no_context_takeover)
                .server_max_window_bits(self.server_max_window_bits)
                .client_max_window_bits(self.client_max_window_bits)
        })
    }
}

pub fn run(args: EchoArgs) -> Result<()> {
    let rt = crate::runtime(args.threads)?;
    rt.block_on(serve(args))
}

async fn serve(args: EchoArgs) -> Result<()> {
    let limits = Limits::default()
        .max_frame_size(args.max_frame_size)
        .max_message_size(args.max_message_size);
    let options = Options::default()
        .limits(limits)
        .handshake_timeout(Duration::from_secs(args.handshake_timeout));
    let builder = Arc::new(
        ServerBuilder::new()
            .options(options)
            .protocols(args.protocols)
            .compression(args.compression.policy()),
    );
    let tls_config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read(cert)
                .with_context(|| format!("cannot read {} (--tls-cert)", cert.display()))?;
            let key_pem = std::fs::read(key)
                .with_context(|| format!("cannot read {} (--tls-key)", key.display()))?;
            let config = tidewire::server_config_from_pem(&cert_pem, &key_pem)
                .context("invalid certificate or key (--tls-cert, --tls-key)")?;
            let mut config = Arc::unwrap_or_clone(config);
            config.alpn_protocols = tidewire::alpn_protocols(!args.no_http2);
            Some(config)
        }
        _ => None,
    };
    let tls = tls_config
        .clone()
        .map(|c| tidewire::tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    // At the open-file limit, new clients get a 503 instead of a timeout.
    let mut listener = tidewire::Listener::new(listener).nodelay(true);
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    #[cfg(feature = "http3")]
    if args.http3 {
        if let Some(config) = &tls_config {
            let endpoint = http3_endpoint(config, local)?;
            tokio::spawn(serve_http3(endpoint, builder.clone()));
        }
    }
    println!("tidewire echo listening on {scheme}://{local}/");
    loop {
        let (tcp, peer) = listener.accept().await;
        // A task is as large as the largest state of its future, for as long as it lives,
        // and an async fn keeps its arguments for its whole life. So the task gets one
        // pointer to what the handshake needs, the handshake and the TLS path are boxed,
        // and an idle connection's task holds its WebSocketStream and little more.
        let start = Box::new(Accepting {
            builder: builder.clone(),
            io: tcp,
            peer,
        });
        let http2 = !args.no_http2;
        match tls.clone() {
            None if http2 => {
                // A task of its own for each outcome, so that an HTTP/1.1 connection's
                // task stays as small as without HTTP/2.
                tokio::spawn(async move {
                    if h2c_preface(&start.io).await {
                        let Accepting { builder, io, .. } = *start;
                        tokio::spawn(Box::pin(async move { serve_http2(io, &builder).await }));
                    } else {
                        tokio::spawn(echo(start));
                    }
                });
            }
            None => {
                tokio::spawn(echo(start));
            }
            Some(acceptor) => {
                tokio::spawn(Box::pin(async move {
                    let Accepting { builder, io, peer } = *start;
                    match acceptor.accept(io).await {
                        Ok(io) if io.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            Box::pin(serve_http2(io, &builder)).await
                        }
                        Ok(io) => echo(Box::new(Accepting { builder, io, peer })).await,
                        Err(e) => {
                            tracing::debug!(%peer, "TLS handshake failed: {}", log_text::peer(&e))
                        }
                    }
                }));
            }
        }
    }
}

/// The QUIC endpoint of `--http3`, on the UDP port of the TCP listener.
#[cfg(feature = "http3")]
fn http3_endpoint(
    tls: &tidewire::rustls::ServerConfig,
    addr: std::net::SocketAddr,
) -> Result<tidewire::http3::quinn::Endpoint> {
    let config = tidewire::http3::server_config(tls).context("--http3")?;
    tidewire::http3::quinn::Endpoint::server(config, addr)
        .with_context(|| format!("--http3: cannot listen on udp/{addr}"))
}

/// Echoes on every WebSocket stream of every HTTP/3 connection (RFC 9220).
#[cfg(feature = "http3")]
async fn serve_http3(endpoint: tidewire::http3::quinn::Endpoint, builder: Arc<ServerBuilder>) {
    while let Some(incoming) = endpoint.accept().await {
        let server = (*builder).clone();
        tokio::spawn(async move {
            if let Err(e) = tidewire::http3::serve_websockets(incoming, server, echo_loop).await {
                tracing::debug!("HTTP/3 connection ended: {}", log_text::peer(&e));
            }
        });
    }
}

/// Whether a client in clear opened with the HTTP/2 preface (h2c with prior knowledge),
/// looking at its first bytes without taking them (at most the handshake timeout).
async fn h2c_preface(tcp: &tokio::net::TcpStream) -> bool {
    let preface = tidewire::upgrade::HTTP2_PREFACE;
    let look = async {
        let mut buf = [0u8; 24];
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 || !preface.starts_with(&buf[..n.min(preface.len())]) {
                return Some(false);
            }
            if n >= 4 {
                return Some(true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), look).await,
        Ok(Some(true))
    )
}

/// Echoes on every WebSocket stream of one HTTP/2 connection (RFC 8441).
async fn serve_http2<S>(io: S, builder: &ServerBuilder)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = tidewire::upgrade::serve_http2(io, builder.clone(), echo_loop).await {
        tracing::debug!("HTTP/2 connection ended: {}", log_text::peer(&e));
    }
}

/// What a connection's task needs until its handshake is done.
struct Accepting<S> {
    builder: Arc<ServerBuilder>,
    io: S,
    peer: SocketAddr,
}

async fn echo<S>(start: Box<Accepting<S>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let handshake = Box::pin(async move {
        let Accepting { builder, io, peer } = *start;
        builder.accept(io).await.map_err(|e| {
            tracing::debug!(%peer, "handshake failed: {}", log_text::peer(&e));
        })
    });
    let Ok(ws) = handshake.await else {
        return;
    };
    echo_loop(ws).await
}

/// Sends every data message back, until the connection ends.
async fn echo_loop<S>(mut ws: tidewire::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        // The await on `ready` sits outside the match so that the received item (and its
        // error) is not kept in the task's state across it.
        let echoed = match ws.recv().await {
            None => break,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => ws.queue(m).is_ok(),
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::debug!("connection ended: {}", log_text::peer(&e));
                break;
            }
        };
        // Queued, not flushed: echoes of everything that arrived together leave together
        // when the stream next waits for input; `ready` waits only when the peer does not
        // read its echoes (the queue is over its high mark).
        if !echoed || ws.ready().await.is_err() {
            break;
        }
    }
}
