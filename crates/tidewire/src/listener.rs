//! A TCP listener that keeps answering when the process is out of file descriptors.
//!
//! Every connection is a descriptor. At the process's limit (`RLIMIT_NOFILE`, EMFILE) or
//! the system's (ENFILE), `accept(2)` fails and leaves the connection in the kernel's
//! queue; a plain accept loop can only wait, and the clients behind it time out with no
//! word from the server. [`Listener`] keeps one descriptor in reserve (`/dev/null`). When
//! `accept` fails for want of descriptors it gives up the reserve, accepts the waiting
//! client with it, answers `503 Service Unavailable` with the reason and `Retry-After`,
//! closes, and takes the reserve back: each client gets a clear refusal, one at a time,
//! until connections close and accepting works again. Clients that are refused are
//! counted ([`Listener::refused`]) and logged at most once every 10 s.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The answer to a client that arrives while the process is out of descriptors.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 76\r\n\
Retry-After: 5\r\n\
Connection: close\r\n\
\r\n\
server out of file descriptors (too many open connections), try again later\n";

/// How long a refused client may take to send its request, and then to read the answer.
const REFUSAL_STEP: Duration = Duration::from_secs(1);

/// How often the out-of-descriptors warning may be logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The largest request head read (and discarded) from a refused client.
const REFUSAL_HEAD_MAX: usize = 16 * 1024;

/// State shared with the task that is answering a refused client.
#[derive(Debug, Default)]
struct Shared {
    /// A refusal holds the reserve descriptor.
    busy: AtomicBool,
    done: Notify,
    refused: AtomicU64,
}

/// A TCP listener whose [`accept`](Listener::accept) never fails and keeps answering at
/// the descriptor limit (see the [module docs](self)).
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    spare: Option<File>,
    shared: Arc<Shared>,
    nodelay: bool,
    last_warning: Option<Instant>,
}

impl Listener {
    /// Wraps a bound listener and takes its reserve descriptor.
    pub fn new(inner: TcpListener) -> Self {
        Listener {
            inner,
            spare: reserve(),
            shared: Arc::default(),
            nodelay: false,
            last_warning: None,
        }
    }

    /// Sets `TCP_NODELAY` on every accepted connection (small replies leave at once).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// A counter of the clients answered with 503 for want of descriptors, shared with
    /// the listener (read it at any time, e.g. for metrics).
    pub fn refused(&self) -> RefusedCounter {
        RefusedCounter(self.shared.clone())
    }

    /// The next connection. Errors that concern one client (reset before accept) are
    /// skipped; at the descriptor limit waiting clients are refused as described in the
    /// [module docs](self); other errors are logged and retried after 50 ms.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            if self.spare.is_none() && !self.shared.busy.load(Ordering::Acquire) {
                self.spare = reserve();
            }
            match self.inner.accept().await {
                Ok(conn) => return self.ready(conn),
                Err(e) if is_one_clients(&e) => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    if let Some(conn) = self.shed(&e).await {
                        return conn;
                    }
                }
                Err(e) => {
                    self.warn(format_args!("accept failed: {e}; retrying in 50 ms"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Out of descriptors: refuses the waiting client with the reserve descriptor, or
    /// waits for the refusal that holds it. Returns a connection to serve if descriptors
    /// turned out to be free again.
    async fn shed(&mut self, e: &io::Error) -> Option<(TcpStream, SocketAddr)> {
        self.warn(format_args!(
            "accept failed: {e}; answering new clients 503 until connections close \
             (raise the open-file limit, RLIMIT_NOFILE, or lower the connection limit)"
        ));
        let Some(spare) = self.spare.take() else {
            // A refusal is in flight: wait until it gives the descriptor back (or a
            // little while, in case something else frees descriptors first).
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.shared.done.notified()).await;
            return None;
        };
        drop(spare);
        let (tcp, peer) = match self.inner.accept().await {
            Ok(conn) => conn,
            Err(_) => return None,
        };
        // If the reserve can be taken back now, descriptors were freed meanwhile: the
        // client is served normally.
        self.spare = reserve();
        if self.spare.is_some() {
            return Some(self.ready((tcp, peer)));
        }
        self.shared.busy.store(true, Ordering::Release);
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "refused: out of file descriptors");
        tokio::spawn(refuse(tcp, self.shared.clone()));
        None
    }

    /// A connection to hand out, with the socket options asked for.
    fn ready(&self, (tcp, peer): (TcpStream, SocketAddr)) -> (TcpStream, SocketAddr) {
        if self.nodelay {
            let _ = tcp.set_nodelay(true);
        }
        (tcp, peer)
    }

    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let due = match self.last_warning {
            Some(t) => now.duration_since(t) >= WARN_EVERY,
            None => true,
        };
        if due {
            self.last_warning = Some(now);
            tracing::warn!(
                refused = self.shared.refused.load(Ordering::Relaxed),
                "{what}"
            );
        }
    }
}

/// The number of clients a [`Listener`] has refused for want of descriptors.
#[derive(Debug, Clone)]
pub struct RefusedCounter(Arc<Shared>);

impl RefusedCounter {
    /// How many clients have been refused so far.
    pub fn get(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }
}

/// Reads the refused client's request head (so that closing does not reset the
/// connection over unread bytes and lose the answer), answers 503, and waits for the
/// client to close; then hands the descriptor back.
async fn refuse(mut tcp: TcpStream, shared: Arc<Shared>) {
    let mut buf = [0u8; 2048];
    let mut seen = 0usize;
    let mut tail = [0u8; 4];
    let _ = tokio::time::timeout(REFUSAL_STEP, async {
        while seen < REFUSAL_HEAD_MAX {
            let n = match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            seen += n;
            for &b in &buf[..n] {
                tail = [tail[1], tail[2], tail[3], b];
            }
            if &tail == b"\r\n\r\n" {
                return;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(REFUSAL_STEP, async {
        tcp.write_all(REFUSAL).await?;
        tcp.shutdown().await?;
        // Until the client closes: whatever it still sends is read, not left to reset.
        while tcp.read(&mut buf).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
    drop(tcp);
    shared.busy.store(false, Ordering::Release);
    shared.done.notify_one();
}

/// The reserve descriptor, if one can be had.
fn reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

/// EMFILE (the process's limit) or ENFILE (the system's): the same numbers on Linux,
/// the BSDs and macOS.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// An error about one client that is gone (it reset before we accepted it).
fn is_one_clients(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        Listener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Listener::local_addr(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        assert!(head.starts_with("HTTP/1.1 503 "));
    }

    #[test]
    fn descriptor_errors_are_told_apart() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(104)));
        assert!(is_one_clients(&io::Error::from_raw_os_error(103)));
    }

    #[tokio::test]
    async fn accepts_normally_below_the_limit() {
        let mut l = Listener::new(TcpListener::bind("127.0.0.1:0").await.unwrap()).nodelay(true);
        assert!(l.spare.is_some());
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (tcp, _) = l.accept().await;
        assert!(tcp.nodelay().unwrap());
        client.await.unwrap().unwrap();
        assert_eq!(l.refused().get(), 0);
    }
}
