//! The `tidewire` command. Glue only: parse arguments, build configuration, call a library.

mod bench;
mod echo;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Tidewire: a WebSocket stack and real-time hub.
#[derive(Debug, Parser)]
#[command(name = "tidewire", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bare echo server: sends every text and binary message back to its sender.
    ///
    /// The testee for the Autobahn TestSuite and the peer benchmarks. Pings are answered,
    /// close handshakes completed, protocol violations closed with the RFC's code.
    Echo(echo::EchoArgs),
    /// The real-time hub: raw rooms at ws://HOST/rooms/NAME, a demo page at /, /healthz.
    ///
    /// Runs on embedded defaults (127.0.0.1:8080, in-memory). Every option can also be set
    /// with a TIDEWIRE_* environment variable. SIGINT or SIGTERM closes every WebSocket with
    /// 1001 and exits 0.
    Serve(serve::ServeArgs),
    /// Load generator: echo round trips, hub fan-out, idle connections.
    ///
    /// Uses Tidewire's own client. With --server-pid it reports the server's CPU time per
    /// message over exactly the measured window (on a small machine the generator competes
    /// with the server, so that is the figure that compares servers) and its memory per
    /// connection. --json prints one JSON object for scripts.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Echo(args) => echo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidewire: {e:#}");
            ExitCode::FAILURE
        }
    }
}
