//! `tidewire serve`: the real-time hub with embedded defaults.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use tidewire_hub::HubConfig;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (IP:PORT). Port 0 picks a free port; the address is printed.
    #[arg(
        long,
        env = "TIDEWIRE_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    listen: SocketAddr,

    /// Also send each raw-room message back to its sender.
    #[arg(long, env = "TIDEWIRE_ECHO_TO_SENDER")]
    echo_to_sender: bool,

    /// Messages a room member may fall behind before it is disconnected (close 1008,
    /// "slow consumer").
    #[arg(
        long,
        env = "TIDEWIRE_ROOM_BUFFER",
        default_value_t = 1024,
        value_name = "N"
    )]
    room_buffer: usize,

    /// Seconds between server pings to a quiet connection.
    #[arg(long, env = "TIDEWIRE_PING_INTERVAL", default_value_t = 20, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    ping_interval: u64,

    /// Seconds of silence after which a connection is closed (1011, "keepalive timeout").
    #[arg(long, env = "TIDEWIRE_IDLE_TIMEOUT", default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,

    /// Turn permessage-deflate off. It is on by default, without server context takeover,
    /// so a broadcast is compressed once for every member that negotiated it.
    #[arg(long, env = "TIDEWIRE_NO_COMPRESSION")]
    no_compression: bool,

    /// Largest message accepted from a client, in bytes (bigger: close 1009).
    #[arg(long, env = "TIDEWIRE_MAX_MESSAGE_SIZE", default_value_t = 1 << 20, value_name = "BYTES")]
    max_message_size: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let mut config = HubConfig::default();
    config.listen = args.listen;
    config.echo_to_sender = args.echo_to_sender;
    config.room_buffer = args.room_buffer;
    config.ping_interval = Duration::from_secs(args.ping_interval);
    config.idle_timeout = Duration::from_secs(args.idle_timeout);
    config.max_message_size = args.max_message_size;
    if args.no_compression {
        config.compression = None;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        tidewire_hub::serve(config, shutdown_signal())
            .await
            .with_context(|| format!("cannot serve on {} (--listen)", args.listen))
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
