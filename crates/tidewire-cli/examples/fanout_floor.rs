//! The floor of fan-out on this machine: the same bytes the hub sends for a publication
//! (one prepared frame), written to the same subscriber sockets in one tight loop, with no
//! hub in between (issue 14).
//!
//! Run with: `cargo build --release -p tidewire-cli --example fanout_floor`, then
//! `taskset -c 0 target/release/examples/fanout_floor &` (prints its port) and
//! `taskset -c 1 target/release/tidewire bench fanout ws://127.0.0.1:PORT/ws --channel fan:x
//! --subscribers 10000 --rate 10 --duration 8 --server-pid PID`.
//!
//! It speaks just enough of `tidewire.v1` for `tidewire bench fanout`: `subscribe` is
//! answered at offset 0 and adds the socket to the list; `publish` is answered, then the
//! publication's frame (`{"channel":..,"offset":..,"epoch":..,"data":..}`, unmasked, as
//! the hub writes it) is written to every subscriber with one non-blocking `send(2)` each,
//! on one thread. Every 5 s it prints the writes, the µs per write and the time a pass took
//! to reach all the subscribers (mean and max).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidewire::{Message, ServerBuilder};

#[derive(Default)]
struct Floor {
    subscribers: Vec<RawFd>,
    offset: u64,
    passes: u64,
    writes: u64,
    short: u64,
    busy: Duration,
    max_pass: Duration,
}

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve())
}

async fn serve() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "fanout_floor listening on ws://{}/ws (pid {})",
        listener.local_addr()?,
        std::process::id()
    );
    let floor = Arc::new(Mutex::new(Floor::default()));
    let server = Arc::new(ServerBuilder::new().protocols(["tidewire.v1"]));
    tokio::spawn(report(floor.clone()));
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let fd = tcp.as_raw_fd();
        let (floor, server) = (floor.clone(), server.clone());
        tokio::spawn(async move {
            let Ok(mut ws) = server.accept(tcp).await else {
                return;
            };
            while let Some(Ok(Message::Text(text))) = ws.recv().await {
                let Ok(req) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    break;
                };
                let id = &req["id"];
                // Decided under the lock, acted upon after it.
                let (reply, publication) = {
                    let mut f = floor.lock().unwrap();
                    match req["op"].as_str() {
                        Some("subscribe") => {
                            f.subscribers.push(fd);
                            let r = format!(
                                r#"{{"id":{id},"ok":true,"result":{{"offset":0,"epoch":"floor"}}}}"#
                            );
                            (r, None)
                        }
                        Some("publish") => {
                            f.offset += 1;
                            let event = format!(
                                r#"{{"channel":{},"offset":{},"epoch":"floor","data":{}}}"#,
                                req["channel"], f.offset, req["data"]
                            );
                            let r = format!(
                                r#"{{"id":{id},"ok":true,"result":{{"offset":{},"epoch":"floor"}}}}"#,
                                f.offset
                            );
                            (r, Some(frame(event.as_bytes())))
                        }
                        _ => (format!(r#"{{"id":{id},"ok":true,"result":{{}}}}"#), None),
                    }
                };
                if ws.send(Message::text(reply)).await.is_err() {
                    break;
                }
                if let Some(frame) = publication {
                    write_all(&floor, &frame);
                }
            }
            let mut f = floor.lock().unwrap();
            f.subscribers.retain(|&s| s != fd);
        });
    }
}

/// A server text frame (unmasked) around `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n < 65536 => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// The floor: one non-blocking send(2) per subscriber, in one loop.
fn write_all(floor: &Mutex<Floor>, frame: &[u8]) {
    let mut f = floor.lock().unwrap();
    let start = Instant::now();
    let mut short = 0;
    for &fd in &f.subscribers {
        // SAFETY: `fd` is an open socket of a live connection (removed before it closes);
        // send(2) reads `frame.len()` bytes of `frame`.
        let n = unsafe {
            libc::send(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n != frame.len() as isize {
            short += 1;
        }
    }
    let took = start.elapsed();
    f.passes += 1;
    f.writes += f.subscribers.len() as u64;
    f.short += short;
    f.busy += took;
    f.max_pass = f.max_pass.max(took);
}

async fn report(floor: Arc<Mutex<Floor>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut f = floor.lock().unwrap();
        if f.passes > 0 {
            println!(
                "{} subscribers: {} passes, {} writes ({} short), {:.2} µs per write, a pass reaches all in {:.1} ms (max {:.1} ms)",
                f.subscribers.len(),
                f.passes,
                f.writes,
                f.short,
                f.busy.as_secs_f64() * 1e6 / f.writes.max(1) as f64,
                f.busy.as_secs_f64() * 1e3 / f.passes as f64,
                f.max_pass.as_secs_f64() * 1e3,
            );
        }
        let subscribers = std::mem::take(&mut f.subscribers);
        *f = Floor {
            subscribers,
            offset: f.offset,
            ..Floor::default()
        };
    }
}
