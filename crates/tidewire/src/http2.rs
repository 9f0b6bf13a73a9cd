//! WebSocket over HTTP/2 (RFC 8441), the client's side.
//!
//! Over HTTP/2 a WebSocket is one stream of a connection that many WebSockets (and other
//! requests) share: the client sends an extended CONNECT (`:method CONNECT`,
//! `:protocol websocket`, no `Sec-WebSocket-Key`), the server answers `200` (no
//! `Sec-WebSocket-Accept`), and the stream's DATA frames then carry the same WebSocket
//! frames as an HTTP/1.1 connection would, masking and permessage-deflate included. A
//! client may only send it once the server's SETTINGS said `SETTINGS_ENABLE_CONNECT_PROTOCOL`
//! (RFC 8441 §3).
//!
//! What [`ClientBuilder`](crate::ClientBuilder) does with [`Http2::Auto`] (the default):
//! - `wss://`: offers `h2` and `http/1.1` by ALPN. If the server picks `h2` and allows
//!   extended CONNECT, the WebSocket is a stream of that connection, and later WebSockets
//!   to the same host (same TLS configuration and proxy) share it, up to the server's
//!   stream limit (then a second connection is opened). If it picks `http/1.1`, the
//!   handshake goes on over HTTP/1.1 on the same connection. If it picks `h2` without
//!   extended CONNECT (a plain HTTP/2 site or load balancer), the client connects again
//!   over HTTP/1.1, and remembers for ten minutes not to try HTTP/2 on that host.
//! - `ws://`: HTTP/1.1 (HTTP/2 in clear needs prior knowledge: [`Http2::Only`]).
//!
//! A connection closes once its last WebSocket has. Each stream's window is bounded
//! ([`STREAM_WINDOW`]) and the connection's is many times larger
//! ([`CONNECTION_WINDOW`]), so a WebSocket whose messages are not being read stalls
//! itself, not the others on its connection.

use crate::connect::WsUrl;
use crate::error::{Error, Kind, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When to run a WebSocket over HTTP/2 (RFC 8441).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Http2 {
    /// Never: HTTP/1.1 only, as before RFC 8441.
    Off,
    /// Where the server allows it: `wss://` offers `h2` by ALPN and falls back to HTTP/1.1
    /// (see the [module](self) documentation); `ws://` uses HTTP/1.1. The default.
    #[default]
    Auto,
    /// Always: HTTP/2 by ALPN for `wss://`, HTTP/2 in clear with prior knowledge (h2c)
    /// for `ws://`; a server that does not allow extended CONNECT is an error.
    Only,
}

impl std::str::FromStr for Http2 {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "no" | "false" | "1.1" => Ok(Http2::Off),
            "auto" => Ok(Http2::Auto),
            "only" | "on" | "yes" | "true" | "2" => Ok(Http2::Only),
            _ => Err(format!("{s:?}: expected auto, off or only")),
        }
    }
}

/// The receive window of each WebSocket stream: what the server may send on one stream
/// before the application reads it.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// The receive window of a whole connection: sixteen streams' windows.
pub const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// How long a host whose HTTP/2 has no extended CONNECT is not offered `h2` again.
const NO_H2_FOR: Duration = Duration::from_secs(600);

/// One stream of an HTTP/2 connection carrying a WebSocket: the transport inside
/// [`MaybeTlsStream::Http2`](crate::MaybeTlsStream).
pub struct H2Stream {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// Received, not read yet (its window already given back).
    pending: Bytes,
    shut: bool,
    _lease: Lease,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream", &self.send.stream_id().as_u32())
            .field("connection", &self._lease.entry.id)
            .finish()
    }
}

impl H2Stream {
    /// Which pooled connection this stream belongs to (a number unique in the process):
    /// WebSockets with the same number share one TCP connection.
    pub fn connection_id(&self) -> u64 {
        self._lease.entry.id
    }
}

fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window is given back as a chunk is taken: one chunk at most is
                    // held here, the rest waits in h2 within the stream's window.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                // A reset with NO_ERROR after the server's END_STREAM is a normal end.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// The most bytes handed to h2 in one DATA write.
const MAX_WRITE: usize = 64 << 10;

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want = buf.len().min(MAX_WRITE);
        this.send.reserve_capacity(want);
        let granted = loop {
            if this.send.capacity() > 0 {
                break this.send.capacity();
            }
            match this.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) => continue,
                Poll::Ready(Some(Ok(n))) => break n,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_io_error(e))),
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => {
                    // The peer reset the stream meanwhile: no capacity will come.
                    if let Poll::Ready(reason) = this.send.poll_reset(cx) {
                        let e = match reason {
                            Ok(r) => io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                format!("HTTP/2 stream reset by the server: {r}"),
                            ),
                            Err(e) => h2_io_error(e),
                        };
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        };
        let n = granted.min(want);
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what was handed to h2.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            // END_STREAM: the half-close that TCP's FIN is over HTTP/1.1.
            let _ = this.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// Which connections may be shared: the same server, reached the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tls: bool,
    host: String,
    port: u16,
    /// The TLS configuration's address (a different trust store is another connection).
    tls_config: usize,
    proxy: String,
}

/// A pooled HTTP/2 connection.
struct Entry {
    id: u64,
    send: h2::client::SendRequest<Bytes>,
    /// WebSockets open on it (and being opened).
    active: AtomicUsize,
    /// Its task has ended: the connection is gone.
    dead: AtomicBool,
    key: Key,
    /// The TLS configuration the key names by address: kept alive with the entry, so that
    /// no other configuration can take its address meanwhile.
    _tls: Arc<rustls::ClientConfig>,
}

/// A WebSocket's share of its connection: while any is held, the connection stays.
struct Lease {
    entry: Arc<Entry>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.entry.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last WebSocket on it: the pool lets it go, and h2 closes it once its
            // streams are done.
            let mut pool = lock(pool());
            if self.entry.active.load(Ordering::Acquire) == 0 {
                if let Some(list) = pool.get_mut(&self.entry.key) {
                    list.retain(|e| !Arc::ptr_eq(e, &self.entry));
                    if list.is_empty() {
                        pool.remove(&self.entry.key);
                    }
                }
            }
        }
    }
}

type Pool = Mutex<HashMap<Key, Vec<Arc<Entry>>>>;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// A lock per key, held while a new connection for it is being made.
fn dial_locks() -> &'static Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>> {
    static LOCKS: OnceLock<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

/// Hosts whose HTTP/2 has no extended CONNECT, and since when.
fn no_h2() -> &'static Mutex<HashMap<(String, u16), Instant>> {
    static NO_H2: OnceLock<Mutex<HashMap<(String, u16), Instant>>> = OnceLock::new();
    NO_H2.get_or_init(Default::default)
}

/// The HTTP/2 connections this process has open to WebSocket servers (for tests and
/// diagnostics): how many there are, and how many WebSockets they carry in all.
pub fn pooled_connections() -> (usize, usize) {
    let pool = lock(pool());
    let entries = pool
        .values()
        .flatten()
        .filter(|e| !e.dead.load(Ordering::Acquire));
    entries.fold((0, 0), |(c, w), e| {
        (c + 1, w + e.active.load(Ordering::Acquire))
    })
}

/// A pooled connection with room for one more stream, leased.
fn lease_pooled(key: &Key) -> Option<Lease> {
    let mut pool = lock(pool());
    let list = pool.get_mut(key)?;
    list.retain(|e| !e.dead.load(Ordering::Acquire));
    let entry = list
        .iter()
        .find(|e| e.active.load(Ordering::Acquire) < e.send.current_max_send_streams())?;
    entry.active.fetch_add(1, Ordering::AcqRel);
    Some(Lease {
        entry: entry.clone(),
    })
}

/// What [`open`] found.
pub(crate) enum Opened<S> {
    /// A WebSocket over HTTP/2, and the server's answer.
    WebSocket(Box<H2Stream>, http::Response<()>),
    /// The server speaks HTTP/1.1 on this connection (ALPN): go on with it.
    Http1(S),
    /// HTTP/2 is not for this one: connect over HTTP/1.1 (afresh).
    NotHere,
}

/// The request a WebSocket over HTTP/2 is opened with (RFC 8441 §4 and §5).
pub(crate) use crate::connect::ExtendedConnect as Request;

/// Opens a WebSocket over HTTP/2 where `mode` says to try: on a pooled connection, or on
/// a new one from `dial` (TCP, through the proxy) and, for `wss://`, TLS with `h2` offered.
pub(crate) async fn open<F, Fut>(
    mode: Http2,
    req: &Request<'_>,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: &str,
    dial: F,
) -> Result<Opened<crate::MaybeTlsStream<tokio::net::TcpStream>>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<tokio::net::TcpStream>>,
{
    let url = req.url;
    if mode == Http2::Off || (!url.tls && mode != Http2::Only) {
        return Ok(Opened::NotHere);
    }
    let base = tls.unwrap_or_else(crate::transport::default_client_config);
    let key = Key {
        tls: url.tls,
        host: url.host.clone(),
        port: url.port,
        tls_config: Arc::as_ptr(&base) as usize,
        proxy: proxy.to_owned(),
    };
    if let Some(lease) = lease_pooled(&key) {
        match open_stream(lease, req).await {
            // Gone meanwhile (the server closed it, or is going away): a new connection.
            Err(Failed::Stale(e)) => tracing::debug!("pooled HTTP/2 connection unusable: {e}"),
            done => return done.map_err(Error::from),
        }
    }
    // One new connection at a time per key: WebSockets opened together (a client's first
    // burst) wait for the first one's connection and share it, instead of each dialling
    // its own.
    let dialing = {
        let mut locks = lock(dial_locks());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.clone()).or_default().clone()
    };
    let guard = dialing.lock().await;
    if let Some(lease) = lease_pooled(&key) {
        drop(guard);
        return open_stream(lease, req).await.map_err(Error::from);
    }
    if mode == Http2::Auto {
        let mut refused = lock(no_h2());
        let host = (url.host.clone(), url.port);
        match refused.get(&host) {
            Some(since) if since.elapsed() < NO_H2_FOR => return Ok(Opened::NotHere),
            Some(_) => {
                refused.remove(&host);
            }
            None => {}
        }
    }
    let tcp = dial().await?;
    let io = if url.tls {
        let mut config = (*base).clone();
        // http/1.1 offered even when HTTP/2 is required, so that a server without h2
        // completes the TLS handshake and the error can say what is missing.
        config.alpn_protocols = crate::transport::alpn_protocols(true);
        let io = crate::transport::tls_connect(tcp, url, Some(Arc::new(config))).await?;
        let h2 = match &io {
            crate::MaybeTlsStream::Rustls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            _ => false,
        };
        if !h2 {
            if mode == Http2::Only {
                return Err(not_allowed(url, "the server did not select h2 by ALPN"));
            }
            return Ok(Opened::Http1(io));
        }
        io
    } else {
        crate::MaybeTlsStream::Plain(tcp)
    };
    let handshake = handshake(io, key, base).await.map_err(|e| {
        if url.tls {
            return e;
        }
        // In clear, a server that does not speak HTTP/2 just closes (or answers 400 to
        // the preface): say so rather than "broken pipe".
        not_allowed(
            url,
            &format!("the server did not answer HTTP/2 with prior knowledge (h2c): {e}"),
        )
    })?;
    let Some(lease) = handshake else {
        if mode == Http2::Only {
            return Err(not_allowed(
                url,
                "the server's HTTP/2 does not allow extended CONNECT (no SETTINGS_ENABLE_CONNECT_PROTOCOL)",
            ));
        }
        lock(no_h2()).insert((url.host.clone(), url.port), Instant::now());
        return Ok(Opened::NotHere);
    };
    // Pooled now: the WebSockets waiting on the lock take streams of it.
    drop(guard);
    open_stream(lease, req).await.map_err(Error::from)
}

fn not_allowed(url: &WsUrl, why: &str) -> Error {
    Error::new(Kind::Http2(format!("{}: {why}", url.authority())))
}

/// Locks `m`, taking the data of a poisoned lock as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// The HTTP/2 handshake on `io`, then: does the server allow extended CONNECT? Its first
/// SETTINGS says; a PING answered tells that they have all arrived. `None`: it does not
/// (the connection is dropped).
async fn handshake<S>(io: S, key: Key, tls: Arc<rustls::ClientConfig>) -> Result<Option<Lease>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(crate::Limits::default().max_handshake_size as u32)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| Error::from(h2_io_error(e)))?;
    let mut ping = conn.ping_pong();
    let entry = Arc::new(Entry {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed) as u64,
        send,
        active: AtomicUsize::new(1),
        dead: AtomicBool::new(false),
        key,
        _tls: tls,
    });
    let weak = Arc::downgrade(&entry);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("HTTP/2 connection ended: {e}");
        }
        if let Some(entry) = weak.upgrade() {
            entry.dead.store(true, Ordering::Release);
        }
    });
    let lease = Lease {
        entry: entry.clone(),
    };
    let allowed = async {
        if let Some(ping) = ping.as_mut() {
            let pong = ping.ping(h2::Ping::opaque());
            tokio::pin!(pong);
            // The setting usually comes before the pong; no need to wait for both.
            loop {
                if entry.send.is_extended_connect_protocol_enabled() {
                    return Ok(true);
                }
                tokio::select! {
                    r = &mut pong => {
                        r.map_err(|e| Error::from(h2_io_error(e)))?;
                        return Ok(entry.send.is_extended_connect_protocol_enabled());
                    }
                    () = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        }
        Ok::<_, Error>(entry.send.is_extended_connect_protocol_enabled())
    };
    if !allowed.await? {
        return Ok(None);
    }
    lock(pool())
        .entry(entry.key.clone())
        .or_default()
        .push(entry.clone());
    Ok(Some(lease))
}

/// Why a stream could not be opened.
enum Failed {
    /// The connection could not take it and processed nothing: a new one may.
    Stale(Error),
    /// Anything else (a refusal, a bad request).
    Other(Error),
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        match f {
            Failed::Stale(e) | Failed::Other(e) => e,
        }
    }
}

/// Sends the extended CONNECT on the leased connection and checks the answer.
async fn open_stream<S>(lease: Lease, req: &Request<'_>) -> Result<Opened<S>, Failed> {
    let url = req.url;
    let scheme = if url.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}{}", url.host_header(), url.path_and_query);
    let mut builder = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header(http::header::SEC_WEBSOCKET_VERSION, "13");
    if !req.protocols.is_empty() {
        builder = builder.header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            req.protocols.join(", "),
        );
    }
    if let Some(ext) = req.extensions {
        builder = builder.header(http::header::SEC_WEBSOCKET_EXTENSIONS, ext);
    }
    if let Some(origin) = req.origin {
        builder = builder.header(http::header::ORIGIN, origin);
    }
    let mut request = builder
        .body(())
        .map_err(|e| Failed::Other(Error::new(Kind::Url(format!("{}: {e}", url.authority())))))?;
    for (name, value) in req.headers {
        // HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2), and the host is
        // the :authority.
        use http::header::*;
        if [
            CONNECTION,
            UPGRADE,
            HOST,
            TRANSFER_ENCODING,
            TE,
            SEC_WEBSOCKET_KEY,
        ]
        .contains(name)
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            continue;
        }
        request.headers_mut().append(name.clone(), value.clone());
    }
    // A connection that cannot take the stream (closed, going away, the stream refused)
    // processed nothing: it leaves the pool, and the caller may try a new one.
    let entry = lease.entry.clone();
    let stale = move |e: h2::Error| {
        let unprocessed = e.is_go_away()
            || e.is_io()
            || e.reason() == Some(h2::Reason::REFUSED_STREAM)
            || entry.dead.load(Ordering::Acquire);
        if unprocessed {
            entry.dead.store(true, Ordering::Release);
        }
        let error = Error::from(h2_io_error(e));
        if unprocessed {
            Failed::Stale(error)
        } else {
            Failed::Other(error)
        }
    };
    let mut sender = lease.entry.send.clone().ready().await.map_err(&stale)?;
    let (response, send) = sender.send_request(request, false).map_err(&stale)?;
    let response = response.await.map_err(&stale)?;
    let (parts, mut recv) = response.into_parts();
    if !parts.status.is_success() {
        let body = refusal_body(&mut recv).await;
        return Err(Failed::Other(crate::connect::refused(
            parts.status,
            &parts.headers,
            body,
        )));
    }
    let mut response = http::Response::new(());
    *response.status_mut() = parts.status;
    *response.version_mut() = http::Version::HTTP_2;
    *response.headers_mut() = parts.headers;
    let stream = H2Stream {
        send,
        recv,
        pending: Bytes::new(),
        shut: false,
        _lease: lease,
    };
    Ok(Opened::WebSocket(Box::new(stream), response))
}

/// The first line of a refusal's body (at most 1 KiB, for at most 1 s).
async fn refusal_body(recv: &mut h2::RecvStream) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < 1024 {
            match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    body.extend_from_slice(&data);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    crate::connect::first_line(&body[..body.len().min(1024)])
}
