//! The fairness check of WebSockets sharing one connection (HTTP/2 and HTTP/3): one of
//! 100 sends without ever reading its echoes while the other 99 exchange messages.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tidewire::Message;

/// A client WebSocket as the tests open them.
pub type Ws = tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>;

/// Echoes each of the 99 waits for.
pub const MESSAGES: usize = 200;
/// Their size.
pub const SIZE: usize = 4096;

/// One round over `sockets` (100, on one connection): the first one, when `stalled`,
/// sends 64 KiB messages until its writes block and never reads; the other 99 each send
/// [`MESSAGES`] of [`SIZE`] and read every echo, within 120 s. Returns how long the 99
/// took and how many bytes the stalled one got into its windows.
pub async fn round(mut sockets: Vec<Ws>, stalled: bool) -> (Duration, u64) {
    let mut slow = sockets.remove(0);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sent_by_slow = Arc::new(AtomicU64::new(0));
    let counter = sent_by_slow.clone();
    let slow_task = tokio::spawn(async move {
        if !stalled {
            return slow;
        }
        // Sends until its writes block (the server stopped reading it, since its
        // echoes are not read), and never reads.
        let payload = Message::binary(vec![7u8; 64 << 10]);
        loop {
            tokio::select! {
                r = slow.send(payload.clone()) => {
                    if r.is_err() { break; }
                    counter.fetch_add(64 << 10, Ordering::Relaxed);
                }
                _ = stop_rx.changed() => break,
            }
        }
        slow
    });
    // Let the stalled one fill its windows first.
    tokio::time::sleep(Duration::from_millis(if stalled { 500 } else { 0 })).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let payload = Message::binary(vec![1u8; SIZE]);
            for _ in 0..MESSAGES {
                ws.send(payload.clone()).await.unwrap();
                let back = ws.recv().await.unwrap().unwrap();
                assert_eq!(back.as_payload().len(), SIZE);
            }
            ws
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("the 99 other WebSockets finished while one was stalled");
    let took = start.elapsed();
    let _ = stop_tx.send(true);
    let _slow = slow_task.await.unwrap();
    (took, sent_by_slow.load(Ordering::Relaxed))
}

/// Prints the 99's throughput alone and beside the stalled one, and checks that the
/// stalled one was held by flow control.
pub fn report(over: &str, base: Duration, with_stall: Duration, stuck: u64) {
    let bytes = (99 * MESSAGES * SIZE * 2) as f64;
    println!(
        "fairness: 99 WebSockets x {MESSAGES} echoes of {SIZE} B on one {over} connection: {:.1} MB/s alone ({base:?}), {:.1} MB/s beside one stalled WebSocket ({with_stall:?}) that got {} KiB into its windows before its writes blocked",
        bytes / base.as_secs_f64() / 1e6,
        bytes / with_stall.as_secs_f64() / 1e6,
        stuck >> 10
    );
    assert!(
        stuck < 64 << 20,
        "the stalled WebSocket sent {stuck} bytes: flow control did not hold it"
    );
}
