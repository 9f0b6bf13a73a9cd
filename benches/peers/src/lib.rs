//! Shared glue for the peer echo servers: argument parsing, a pinned-friendly
//! current_thread runtime, and a TCP_NODELAY accept loop.

use std::net::SocketAddr;

/// Largest message every peer accepts, where the library lets us configure it.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Parse `--listen ADDR` (default 127.0.0.1:9001) or print help and exit.
pub fn parse_listen(name: &str, about: &str) -> SocketAddr {
    let mut listen: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" | "-l" => {
                let v = args.next().unwrap_or_else(|| die(name, "--listen needs ADDR"));
                listen = v
                    .parse()
                    .unwrap_or_else(|e| die(name, &format!("bad --listen {v}: {e}")));
            }
            "-h" | "--help" => {
                println!(
                    "{name}: {about}\n\n\
                     USAGE: {name} [--listen ADDR]\n\n\
                     OPTIONS:\n  --listen ADDR   address to bind (default 127.0.0.1:9001)\n  -h, --help      this help\n\n\
                     Echoes every text and binary message back unchanged, answers pings with pongs,\n\
                     answers a close with a close, and accepts messages up to 64 MiB where the\n\
                     library lets that be configured. Runs on ONE tokio current_thread runtime\n\
                     (a single core: pin it with `taskset -c 0`), TCP_NODELAY on every socket."
                );
                std::process::exit(0);
            }
            other => die(name, &format!("unknown argument {other} (try --help)")),
        }
    }
    listen
}

fn die(name: &str, msg: &str) -> ! {
    eprintln!("{name}: {msg}");
    std::process::exit(2)
}

/// Build the single-threaded runtime every peer server runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Bind, announce, and hand each accepted stream (TCP_NODELAY set) to `handle`,
/// spawned as its own task on the current_thread runtime.
pub async fn serve<F, Fut>(name: &str, addr: SocketAddr, handle: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| die(name, &format!("bind {addr}: {e}")));
    eprintln!("{name}: listening on {}", listener.local_addr().unwrap());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("{name}: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Run `fut` to completion on the current_thread runtime.
pub fn run<F: std::future::Future<Output = ()>>(fut: F) {
    runtime().block_on(fut);
}
