//! A TCP proxy for the tests to put between a client and a server, and to cut.
//!
//! `sever` drops both sockets of every connection open at that moment: the client sees its
//! connection end without a close frame, as when a network path dies (1006).
//! `refuse` makes new connections close as soon as they are accepted (the handshake fails);
//! `blackhole` keeps connections open but discards whatever arrives (a silent network:
//! only a heartbeat notices).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

pub struct Proxy {
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
    refuse: Arc<AtomicBool>,
    blackhole: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    accept_times: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.sever();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let refuse = Arc::new(AtomicBool::new(false));
        let blackhole = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept_times = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (cut, refuse, blackhole, active, accepted, times) = (
                cut.clone(),
                refuse.clone(),
                blackhole.clone(),
                active.clone(),
                accepted.clone(),
                accept_times.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    times.lock().unwrap().push(Instant::now());
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if refuse.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut cut = cut.subscribe();
                    let (blackhole, active) = (blackhole.clone(), active.clone());
                    active.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let both = async {
                            tokio::join!(
                                pump(cr, sw, blackhole.clone()),
                                pump(sr, cw, blackhole.clone())
                            )
                        };
                        tokio::select! {
                            _ = both => {}
                            _ = cut.changed() => {}
                        }
                        // Both sockets are dropped here.
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        Proxy {
            addr,
            cut,
            refuse,
            blackhole,
            active,
            accepted,
            accept_times,
            task,
        }
    }

    /// Drops both sockets of every open connection: no close frame, just the end of TCP.
    pub fn sever(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// New connections are closed as soon as they are accepted.
    pub fn refuse(&self, yes: bool) {
        self.refuse.store(yes, Ordering::SeqCst);
    }

    /// Open connections stay open but nothing gets through, either way.
    pub fn blackhole(&self, yes: bool) {
        self.blackhole.store(yes, Ordering::SeqCst);
    }

    /// Connections being forwarded now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// When each connection was accepted, in order.
    pub fn accept_times(&self) -> Vec<Instant> {
        self.accept_times.lock().unwrap().clone()
    }

    /// Waits until at least `n` connections are being forwarded.
    pub async fn wait_active(&self, n: usize) {
        let wait = async {
            while self.active() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("no connection through the proxy within 20 s");
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, blackhole: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
