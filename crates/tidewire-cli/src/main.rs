//! The `tidewire` command. Glue only: parse arguments, build configuration, call a library.

mod bench;
mod connect;
mod echo;
mod genconfig;
mod gentoken;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment overrides
/// them). A background thread returns the pages a burst freed to the system once they have
/// been unused for `dirty_decay_ms` (10 s); without it jemalloc purges only when it is
/// called again, so a hub that went quiet after a burst of subscribes kept the burst's read
/// buffers resident (10,000 channels: 506-541 bytes of RSS each, 404-421 once purged, for
/// about 330 bytes held).
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(c"background_thread:true".as_ptr());

/// A C string pointer that may be a `static` (jemalloc reads `const char *malloc_conf`).
#[cfg(feature = "jemalloc")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a string literal, never written.
#[cfg(feature = "jemalloc")]
unsafe impl Sync for MallocConf {}

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
    /// The real-time hub: channels at ws://HOST/ws (tidewire.v1), raw rooms at
    /// ws://HOST/rooms/NAME, demo pages at /, /healthz, /metrics, POST /api/publish.
    ///
    /// Runs on embedded defaults (127.0.0.1:8080, in-memory engine, anonymous access, demo
    /// pages on). --config FILE reads TOML over the defaults; every flag can also be set
    /// with its TIDEWIRE_* environment variable. SIGINT or SIGTERM closes every WebSocket
    /// with 1001, drains, and exits 0.
    Serve(Box<serve::ServeArgs>),
    /// Load generator: echo round trips, hub fan-out, idle connections.
    ///
    /// Uses Tidewire's own client. With --server-pid it reports the server's CPU time per
    /// message over exactly the measured window (on a small machine the generator competes
    /// with the server, so that is the figure that compares servers) and its memory per
    /// connection. --json prints one JSON object for scripts.
    Bench(bench::BenchArgs),
    /// Command-line WebSocket client: stdin lines out as messages, messages in as lines.
    ///
    /// Binary messages print in hex (--base64 for base64); --json prints one JSON object
    /// per message. End of input closes with 1000. Exit status 0 after a normal close, 1
    /// when the connection fails or is refused (the reason on stderr), 2 for usage errors.
    Connect(connect::ConnectArgs),
    /// Print the configuration file of `tidewire serve` with every key at its default.
    ///
    /// Each key is commented with its flag and meaning; edit what you need and start with
    /// `tidewire serve --config FILE` (`--check-config` checks it and exits).
    Genconfig(genconfig::GenconfigArgs),
    /// Prints a connection token (HS256 JWT) signed with the hub's secret.
    ///
    /// The secret comes from --auth-hmac-secret (TIDEWIRE_AUTH_HMAC_SECRET) or the [auth]
    /// hmac_secret of --config FILE, as for `tidewire serve`. Use the token as
    /// ws://HOST/ws?token=TOKEN or in a `connect` request.
    Gentoken(gentoken::GentokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo(args) => {
            init_logging(tidewire_hub::LogFormat::Human);
            raise_fd_limit();
            echo::run(args)
        }
        Command::Serve(args) => serve::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Genconfig(args) => genconfig::run(args),
        Command::Gentoken(args) => gentoken::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidewire: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tokio runtime of a server: `threads` 1 runs everything on the current thread (best
/// when the process is pinned to one core), 0 one worker per core, N that many workers.
pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    anyhow::Context::context(
        builder.enable_all().build(),
        "cannot start the async runtime",
    )
}

/// Logs to stderr at the level of `TIDEWIRE_LOG` (default info), as text or JSON lines.
/// Colours only on a terminal, and never with `NO_COLOR` set (no-color.org): a log
/// written to a file, a pipe, journald or docker gets plain text.
pub(crate) fn init_logging(format: tidewire_hub::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        tidewire_hub::LogFormat::Human => builder.init(),
        tidewire_hub::LogFormat::Json => builder.json().init(),
    }
}

/// Raises the open-file limit to its hard limit: every connection is a file descriptor.
pub(crate) fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}
