//! Raw TCP echo: copies bytes back. No WebSocket framing at all — the floor.
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let addr = tidewire_peers::parse_listen("echo-raw", "raw TCP echo server (bytes in, same bytes out; the floor)");
    tidewire_peers::run(tidewire_peers::serve("echo-raw", addr, |mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }));
}
