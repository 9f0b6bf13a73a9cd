//! How many reads and writes the stream asks of its transport: a message that is all there
//! arrives in one read, and a frame staged in one piece leaves in one plain write.

use bytes::BytesMut;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use tidewire::{Message, Options, Role, WebSocketStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

#[derive(Default)]
struct Counts {
    reads: AtomicUsize,
    writes: AtomicUsize,
    vectored_writes: AtomicUsize,
}

/// A transport that counts the calls that move bytes.
struct Counting {
    io: DuplexStream,
    counts: Arc<Counts>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.counts.reads.fetch_add(1, Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.counts.writes.fetch_add(1, Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.counts.vectored_writes.fetch_add(1, Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client's masked binary frame (64-bit length form when needed).
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x82];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test]
async fn a_whole_64_kib_message_takes_one_read_and_small_frames_one_plain_write() {
    let (a, mut peer) = tokio::io::duplex(1 << 20);
    let counts = Arc::new(Counts::default());
    let io = Counting {
        io: a,
        counts: counts.clone(),
    };
    let mut ws = WebSocketStream::from_raw(io, Role::Server, Options::default(), BytesMut::new());

    // The whole frame (64 KiB payload, 14-byte header) is in the pipe before the first read.
    let payload: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    peer.write_all(&masked_frame(&payload)).await.unwrap();
    let got = ws.recv().await.unwrap().unwrap();
    assert_eq!(got, Message::binary(payload.clone()));
    assert_eq!(
        counts.reads.load(Relaxed),
        1,
        "a 64 KiB message in one read"
    );

    // A small frame is staged next to its header: one plain write, no writev.
    ws.send(Message::binary(vec![7u8; 20])).await.unwrap();
    assert_eq!(counts.writes.load(Relaxed), 1);
    assert_eq!(counts.vectored_writes.load(Relaxed), 0);

    // A big one goes out without a copy: header and payload as two slices of one writev.
    ws.send(Message::binary(payload)).await.unwrap();
    assert_eq!(counts.writes.load(Relaxed), 1);
    assert_eq!(counts.vectored_writes.load(Relaxed), 1);
}
