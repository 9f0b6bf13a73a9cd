//! A connection's HTTP phase: from accept until it upgrades to a WebSocket or ends.
//!
//! Two things bound what a client can make the hub hold before it is a WebSocket:
//! - how many connections are in this phase, `limits.max_http_connections` ([`HttpSlot`]):
//!   beyond it a new connection is answered `503` with a reason at once and closed
//!   ([`answer_and_close`]), its request barely read;
//! - the request head, bounded as `tidewire echo` bounds a handshake (`tidewire::Limits`):
//!   at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] header fields, beyond either `431` with a
//!   one-line reason.
//!
//! hyper can bound a head too (`max_header_size`, `max_headers`), and answers 431, but with
//! an empty body, and the same error for both limits. So the first head of each connection
//! is read here ([`read_head`], into at most 16 KiB) before hyper sees it ([`Prefixed`]
//! hands it the bytes read): the client gets the reason, and `/metrics` tells the two
//! apart. The heads that follow on a keep-alive connection are hyper's to bound, with the
//! same limits (431 without a reason; counted as `head_too_large` either way, since hyper
//! does not say which).

use crate::hub::Hub;
use crate::metrics::Refusal;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The largest request head, request line included (as `tidewire::Limits::max_handshake_size`).
pub(crate) const MAX_HEAD: usize = 16 << 10;

/// The most header fields in a request head (as `tidewire::Limits::max_headers`).
pub(crate) const MAX_HEADERS: usize = 64;

/// How long a refused client is given to read the answer, and then to stop sending.
const LINGER: Duration = Duration::from_secs(1);

/// The most bytes read (and dropped) from a refused client after the answer.
const LINGER_MAX: usize = 1 << 20;

/// A connection counted against `limits.max_http_connections` from accept until it ends or
/// upgrades (hyper hands an upgraded connection over, and its task ends with this slot).
pub(crate) struct HttpSlot(Arc<Hub>);

impl HttpSlot {
    /// Counts a new connection, or `None` (and not counted) if `max_http_connections` are
    /// in their HTTP phase already.
    pub(crate) fn take(hub: &Arc<Hub>) -> Option<HttpSlot> {
        let open = hub.http_conns.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = HttpSlot(hub.clone());
        if open > hub.config.max_http_connections {
            return None;
        }
        Some(slot)
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.0
    }

    pub(crate) fn hub_arc(&self) -> Arc<Hub> {
        self.0.clone()
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.http_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The first request head of a connection, as [`read_head`] found it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// The bytes read: a whole head within the limits (and whatever followed it), or bytes
    /// that are not HTTP, which hyper answers with 400.
    Read(Bytes),
    /// No end of the head within [`MAX_HEAD`] bytes.
    TooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
    /// The client closed (or the read failed) before a whole head.
    Gone,
}

impl Head {
    /// The refusal and its answer, for a head over a limit.
    pub(crate) fn refusal(&self) -> Option<(Refusal, String)> {
        match self {
            Head::TooLarge => Some((
                Refusal::HeadTooLarge,
                format!("request head too large: at most {MAX_HEAD} bytes"),
            )),
            Head::TooManyHeaders => Some((
                Refusal::TooManyHeaders,
                format!("too many header fields: at most {MAX_HEADERS}"),
            )),
            Head::Read(_) | Head::Gone => None,
        }
    }
}

/// Reads until a whole request head is buffered, never more than [`MAX_HEAD`] bytes.
/// Parses only when the end of the head (`\r\n\r\n`) may have arrived, or the buffer is
/// full, so a client trickling bytes costs linear time (as `tidewire::accept` does).
pub(crate) async fn read_head<I: AsyncRead + Unpin>(io: &mut I) -> Head {
    let mut buf = BytesMut::with_capacity(2048);
    let mut scanned: usize = 0;
    loop {
        let start = scanned.saturating_sub(3);
        if buf[start..].windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD {
            match parse(&buf) {
                Parsed::Partial => {}
                Parsed::TooManyHeaders => return Head::TooManyHeaders,
                Parsed::Complete | Parsed::Malformed => return Head::Read(buf.freeze()),
            }
        }
        scanned = buf.len();
        let room = MAX_HEAD - buf.len();
        if room == 0 {
            return Head::TooLarge;
        }
        buf.reserve(room.min(4096));
        match io.read_buf(&mut (&mut buf).limit(room)).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(_) => {}
        }
    }
}

enum Parsed {
    Complete,
    Partial,
    TooManyHeaders,
    Malformed,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut fields).parse(buf) {
        Ok(httparse::Status::Complete(_)) => Parsed::Complete,
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::TooManyHeaders,
        Err(_) => Parsed::Malformed,
    }
}

/// Answers `status` with the one-line `reason` (and `Retry-After: 5` on a 503) and closes:
/// the answer first, then whatever the client still sends is read and dropped for up to a
/// second, so that closing does not reset the connection under the answer.
pub(crate) async fn answer_and_close<I>(mut io: I, status: StatusCode, reason: &str)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
        "Retry-After: 5\r\n"
    } else {
        ""
    };
    let answer = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{reason}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        reason.len() + 1,
    );
    let written = tokio::time::timeout(LINGER, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let mut sink = vec![0u8; 2048];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_MAX {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A connection whose first bytes were read already: reads give those first, then the
/// connection's; writes go to the connection.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: Bytes, io: I) -> Self {
        Prefixed { prefix, io }
    }

    /// The bytes not read yet, and the connection.
    pub(crate) fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Let the buffer go rather than keep it for the connection's life.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_are_those_of_tidewire_echo() {
        let limits = tidewire::Limits::default();
        assert_eq!(MAX_HEAD, limits.max_handshake_size);
        assert_eq!(MAX_HEADERS, limits.max_headers);
    }

    async fn head_of(bytes: Vec<u8>) -> Head {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(&bytes).await.unwrap();
        drop(client);
        read_head(&mut server).await
    }

    fn request(fields: usize, field_len: usize) -> Vec<u8> {
        let mut r = b"GET /healthz HTTP/1.1\r\n".to_vec();
        for i in 0..fields {
            r.extend_from_slice(format!("X-{i}: ").as_bytes());
            r.extend_from_slice(&vec![b'a'; field_len]);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    #[tokio::test]
    async fn heads_within_the_limits_are_handed_on_whole() {
        let r = request(MAX_HEADERS, 1);
        assert_eq!(head_of(r.clone()).await, Head::Read(r.into()));
        // Exactly MAX_HEAD bytes, with a body after it.
        let mut r = request(1, 0);
        let pad = MAX_HEAD - r.len();
        r = request(1, pad);
        assert_eq!(r.len(), MAX_HEAD);
        r.extend_from_slice(b"body");
        let Head::Read(got) = head_of(r.clone()).await else {
            panic!()
        };
        assert!(r.starts_with(&got) && got.len() >= MAX_HEAD);
        // Not HTTP: hyper's to answer (400).
        let junk = b"\x16\x03\x01 hello\r\n\r\n".to_vec();
        assert_eq!(head_of(junk.clone()).await, Head::Read(junk.into()));
    }

    #[tokio::test]
    async fn heads_over_the_limits_are_refused() {
        assert_eq!(
            head_of(request(MAX_HEADERS + 1, 1)).await,
            Head::TooManyHeaders
        );
        assert_eq!(head_of(request(1, MAX_HEAD)).await, Head::TooLarge);
        // The end of the head one byte too late.
        let r = request(1, MAX_HEAD - request(1, 0).len() + 1);
        assert_eq!(head_of(r).await, Head::TooLarge);
        assert_eq!(
            head_of(b"GET / HTTP/1.1\r\nHost".to_vec()).await,
            Head::Gone
        );
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
