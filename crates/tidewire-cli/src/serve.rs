//! `tidewire serve`: the real-time hub with embedded defaults.
//!
//! Settings are layered: the embedded defaults, then `--config FILE` (TOML), then
//! `TIDEWIRE_*` environment variables and flags (a flag wins over its variable).

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tidewire_hub::{AuthConfig, HubConfig, LogFormat};

fn duration(s: &str) -> Result<Duration, String> {
    let d = tidewire_hub::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected human or json".into()),
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md). Flags and TIDEWIRE_* variables
    /// override it; it overrides the embedded defaults.
    #[arg(long, env = "TIDEWIRE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on (IP:PORT). Port 0 picks a free port; the address is printed.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "TIDEWIRE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Log format on stderr: human or json (one object per line). The level is set with
    /// TIDEWIRE_LOG (e.g. info, debug, tidewire_hub=debug). [default: human]
    #[arg(long, env = "TIDEWIRE_LOG_FORMAT", value_name = "FORMAT", value_parser = log_format)]
    log_format: Option<LogFormat>,

    /// Origins allowed to open WebSockets besides the server's own host, comma-separated
    /// (https://app.example.com), or * for any. Requests without Origin are allowed.
    #[arg(
        long,
        env = "TIDEWIRE_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Option<Vec<String>>,

    /// Do not serve the demo pages at /.
    #[arg(long, env = "TIDEWIRE_NO_DEMO")]
    no_demo: bool,

    /// Speak HTTP/1.1 only: no HTTP/2 by ALPN over TLS, no h2c, so no WebSocket over
    /// HTTP/2 (RFC 8441).
    #[arg(long, env = "TIDEWIRE_NO_HTTP2")]
    no_http2: bool,

    /// Also serve HTTP/3 on the same port over UDP (needs --tls-cert and --tls-key):
    /// WebSockets over QUIC (RFC 9220) for clients that ask for them, and the same pages
    /// and API.
    #[arg(long, env = "TIDEWIRE_HTTP3")]
    http3: bool,

    /// Also send each raw-room message back to its sender.
    #[arg(long, env = "TIDEWIRE_ECHO_TO_SENDER")]
    echo_to_sender: bool,

    /// Messages a room member may fall behind before it is disconnected (close 4000,
    /// "slow consumer", as on /ws). [default: 1024]
    #[arg(long, env = "TIDEWIRE_ROOM_BUFFER", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    room_buffer: Option<u64>,

    /// Interval of server pings to a quiet connection (20s, 500ms, 1m; bare numbers are
    /// seconds). [default: 20s]
    #[arg(long, env = "TIDEWIRE_PING_INTERVAL", value_name = "DURATION", value_parser = duration)]
    ping_interval: Option<Duration>,

    /// Silence after which a connection is closed (1011, "keepalive timeout"); longer than
    /// --ping-interval. [default: 60s]
    #[arg(long, env = "TIDEWIRE_IDLE_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    idle_timeout: Option<Duration>,

    /// Turn permessage-deflate off. It is on by default, without server context takeover,
    /// so a broadcast is compressed once for every member that negotiated it.
    #[arg(long, env = "TIDEWIRE_NO_COMPRESSION")]
    no_compression: bool,

    /// Largest message accepted from a client, in bytes (bigger: close 1009).
    /// [default: 1048576]
    #[arg(long, env = "TIDEWIRE_MAX_MESSAGE_SIZE", value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(125..))]
    max_message_size: Option<u64>,

    /// WebSocket connections held at once; further upgrades get 503. [default: 100000]
    #[arg(long, env = "TIDEWIRE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,

    /// Connections in their HTTP phase at once (accepted, not upgraded to a WebSocket:
    /// a request being read or answered, keep-alive); further ones get 503.
    /// [default: 10000]
    #[arg(long, env = "TIDEWIRE_MAX_HTTP_CONNECTIONS", value_name = "N")]
    max_http_connections: Option<usize>,

    /// Channels the server holds at most (subscribed, with history, or kept to resume); a
    /// subscribe or publish that would make one more gets error 111. [default: 1000000]
    #[arg(long, env = "TIDEWIRE_MAX_CHANNELS", value_name = "N")]
    max_channels: Option<usize>,

    /// Bytes of channel history held at most, all channels together; the channel whose
    /// publication passes it sheds its oldest. [default: 536870912]
    #[arg(long, env = "TIDEWIRE_MAX_HISTORY_BYTES", value_name = "BYTES")]
    max_history_bytes: Option<u64>,

    /// Subscribes per second per connection (token bucket; error 107), 0 for no limit.
    /// [default: 100]
    #[arg(long, env = "TIDEWIRE_SUBSCRIBE_RATE", value_name = "PER_SEC")]
    subscribe_rate: Option<f64>,

    /// Publications per second per connection (token bucket; error 107 on /ws, close 4029
    /// in rooms), 0 for no limit. [default: 100]
    #[arg(long, env = "TIDEWIRE_PUBLISH_RATE", value_name = "PER_SEC")]
    publish_rate: Option<f64>,

    /// Burst of the publish rate limit. [default: 200]
    #[arg(long, env = "TIDEWIRE_PUBLISH_BURST", value_name = "N")]
    publish_burst: Option<u32>,

    /// Bytes waiting for a connection's socket before it is closed as a slow consumer.
    /// [default: 4194304]
    #[arg(long, env = "TIDEWIRE_SEND_BUFFER", value_name = "BYTES")]
    send_buffer: Option<usize>,

    /// HS256 secret for connection tokens (at least 32 characters). Turns auth on.
    #[arg(
        long,
        env = "TIDEWIRE_AUTH_HMAC_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    auth_hmac_secret: Option<String>,

    /// RS256 public key (PEM file) for connection tokens. Turns auth on.
    #[arg(long, env = "TIDEWIRE_AUTH_RSA_PUBLIC_KEY", value_name = "FILE")]
    auth_rsa_public_key: Option<PathBuf>,

    /// A public key (PEM file: RSA, EC P-256/P-384 or Ed25519) for connection tokens
    /// (RS*/PS*, ES256/ES384, EdDSA); repeatable. Turns auth on.
    #[arg(long, value_name = "FILE")]
    auth_public_key: Vec<PathBuf>,

    /// A JWKS URL whose keys verify connection tokens (an identity provider's), fetched at
    /// start and kept fresh. Turns auth on.
    #[arg(long, env = "TIDEWIRE_AUTH_JWKS_URL", value_name = "URL")]
    auth_jwks_url: Option<String>,

    /// With auth on, accept connections without a token too (no private namespaces).
    #[arg(long, env = "TIDEWIRE_AUTH_ANONYMOUS")]
    auth_anonymous: bool,

    /// Worker threads: 0 (the default) is one per core; 1 runs everything on one thread
    /// (best when the server is pinned to one core, as in the benchmarks).
    #[arg(long, env = "TIDEWIRE_THREADS", default_value_t = 0, value_name = "N")]
    threads: usize,

    /// PEM certificate chain: serve https:// and wss:// (rustls). Needs --tls-key. SIGHUP
    /// reloads both files for new connections (a renewed certificate) without dropping any.
    #[arg(
        long,
        env = "TIDEWIRE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "TIDEWIRE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// Check the configuration (file, variables, flags, TLS files) and exit: 0 and a summary
    /// when it can be served, 1 and the first problem otherwise. Nothing is listened on.
    #[arg(long)]
    check_config: bool,

    /// Key for POST /api/publish (Authorization: apikey KEY; 16 characters or more).
    #[arg(
        long,
        env = "TIDEWIRE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    /// Password of the admin page at /admin (12 characters or more): nodes, connections,
    /// channels, a live tail, publish, disconnect and block. The page is off without one.
    #[arg(
        long,
        env = "TIDEWIRE_ADMIN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    admin_password: Option<String>,

    /// The engine: memory (the default: one node), redis://HOST:PORT[/DB] (given several
    /// times: channels sharded over the servers), redis+sentinel://HOST:PORT[,...]/MASTER,
    /// redis+cluster://HOST:PORT[,...] or nats://HOST:PORT (JetStream). Nodes on the same
    /// engine form one cluster (docs/scaling.md).
    #[arg(
        long = "engine",
        env = "TIDEWIRE_ENGINE",
        value_name = "URL",
        value_delimiter = ','
    )]
    engine: Vec<String>,

    /// PEM file of the CA that signed the engine's certificate (rediss://), when it is not
    /// in the system's trust store.
    #[arg(long, env = "TIDEWIRE_ENGINE_CA_FILE", value_name = "FILE")]
    engine_ca_file: Option<PathBuf>,

    /// This node's name, unique in the cluster (GET /api/cluster). [default: generated]
    #[arg(long, env = "TIDEWIRE_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,

    /// On SIGTERM, close the WebSockets with 1012 spread over this long, so that clients
    /// move to other nodes a few at a time and resume there. [default: 0s, all at once]
    #[arg(long, env = "TIDEWIRE_DRAIN", value_name = "DURATION", value_parser = duration)]
    drain: Option<std::time::Duration>,

    /// The application backend's base URL: the hub POSTs its calls (URL/connect,
    /// URL/subscribe, URL/publish, URL/rpc) and event hooks (URL/events) there
    /// (docs/backend.md).
    #[arg(long, env = "TIDEWIRE_BACKEND_URL", value_name = "URL")]
    backend_url: Option<String>,

    /// Ask the backend who a connection is (from its cookies and headers) when it sends
    /// connect without a token.
    #[arg(long, env = "TIDEWIRE_BACKEND_CONNECT")]
    backend_connect: bool,

    /// Hook events sent to URL/events: connect, disconnect, subscribe, unsubscribe,
    /// occupied, vacated (comma-separated), or all.
    #[arg(long, env = "TIDEWIRE_BACKEND_EVENTS", value_name = "LIST")]
    backend_events: Option<String>,

    /// How long a backend call may take before the client gets error 112. [default: 3s]
    #[arg(long, env = "TIDEWIRE_BACKEND_TIMEOUT", value_name = "DURATION", value_parser = duration)]
    backend_timeout: Option<std::time::Duration>,
}

/// The configuration these arguments describe.
pub fn config(args: &ServeArgs) -> Result<HubConfig> {
    let mut c = HubConfig::default();
    if let Some(path) = &args.config {
        c = c.load_file(path)?;
    }
    macro_rules! set {
        ($field:expr, $value:expr) => {
            if let Some(v) = $value {
                $field = v;
            }
        };
    }
    set!(c.listen, args.listen);
    set!(c.log_format, args.log_format);
    set!(c.allowed_origins, args.allowed_origins.clone());
    set!(c.room_buffer, args.room_buffer.map(|n| n as usize));
    set!(c.ping_interval, args.ping_interval);
    set!(c.idle_timeout, args.idle_timeout);
    set!(
        c.max_message_size,
        args.max_message_size.map(|n| n as usize)
    );
    set!(c.max_connections, args.max_connections);
    set!(c.max_http_connections, args.max_http_connections);
    set!(c.max_channels, args.max_channels);
    set!(c.max_history_bytes, args.max_history_bytes);
    set!(c.subscribe_rate, args.subscribe_rate);
    set!(c.publish_rate, args.publish_rate);
    set!(c.publish_burst, args.publish_burst);
    set!(c.send_buffer, args.send_buffer);
    c.demo &= !args.no_demo;
    c.http2 &= !args.no_http2;
    c.http3 |= args.http3;
    c.echo_to_sender |= args.echo_to_sender;
    if args.no_compression {
        c.compression = None;
    }
    if args.auth_hmac_secret.is_some()
        || args.auth_rsa_public_key.is_some()
        || !args.auth_public_key.is_empty()
        || args.auth_jwks_url.is_some()
    {
        let mut pems = Vec::new();
        let files = args
            .auth_rsa_public_key
            .iter()
            .map(|p| ("--auth-rsa-public-key", p))
            .chain(
                args.auth_public_key
                    .iter()
                    .map(|p| ("--auth-public-key", p)),
            );
        for (flag, p) in files {
            let pem =
                std::fs::read(p).with_context(|| format!("{flag}: cannot read {}", p.display()))?;
            pems.push(pem);
        }
        let pems: Vec<&[u8]> = pems.iter().map(Vec::as_slice).collect();
        let auth = AuthConfig::with_keys(
            args.auth_hmac_secret.as_deref(),
            &pems,
            args.auth_jwks_url.as_deref(),
            args.auth_anonymous,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "--auth-hmac-secret/--auth-rsa-public-key/--auth-public-key/--auth-jwks-url: {e}"
            )
        })?;
        c.auth = Some(auth);
    } else if args.auth_anonymous {
        // Without a key of its own, the flag can only relax the file's [auth].
        match c.auth.take() {
            Some(auth) => c.auth = Some(auth.with_anonymous(true)),
            None => anyhow::bail!(
                "--auth-anonymous (TIDEWIRE_AUTH_ANONYMOUS): auth is off, so every connection is anonymous already; \
                 it applies with --auth-hmac-secret, --auth-public-key, --auth-jwks-url or [auth] in --config"
            ),
        }
    }
    set!(c.api_key, args.api_key.clone().map(Some));
    set!(c.admin_password, args.admin_password.clone().map(Some));
    if !args.engine.is_empty() {
        let urls = engine_urls(&args.engine);
        tidewire_hub::check_engine(&urls)
            .map_err(|e| anyhow::anyhow!("--engine (TIDEWIRE_ENGINE): {e}"))?;
        c.engine = urls;
    }
    set!(c.node_name, args.node_name.clone().map(Some));
    if let Some(ca) = &args.engine_ca_file {
        std::fs::metadata(ca)
            .with_context(|| format!("--engine-ca-file: cannot read {}", ca.display()))?;
        c.engine_ca_file = Some(ca.clone());
    }
    set!(c.drain, args.drain);
    set!(c.backend.url, args.backend_url.clone().map(Some));
    if args.backend_connect {
        c.backend.connect = true;
    }
    if let Some(list) = &args.backend_events {
        c.backend.events = tidewire_hub::BackendConfig::parse_events(list)
            .map_err(|e| anyhow::anyhow!("--backend-events (TIDEWIRE_BACKEND_EVENTS): {e}"))?;
    }
    set!(c.backend.timeout, args.backend_timeout);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = tidewire_hub::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        files
            .load()
            .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
        c.tls = Some(files);
    }
    if let Err((key, message)) = c.check() {
        // Name the flag where one sets the key, and the file key too (it may come from there).
        let flag = match key {
            "heartbeat.ping_interval" => "--ping-interval",
            "heartbeat.idle_timeout" => "--idle-timeout",
            "limits.publish_rate" => "--publish-rate",
            "limits.max_message_size" => "--max-message-size",
            "rooms.buffer" => "--room-buffer",
            "api.key" => "--api-key",
            "admin.password" => "--admin-password",
            "allowed_origins" => "--allowed-origins",
            "limits.max_connections" => "--max-connections",
            "limits.max_http_connections" => "--max-http-connections",
            "limits.max_channels" => "--max-channels",
            "limits.subscribe_rate" => "--subscribe-rate",
            "limits.publish_burst" => "--publish-burst",
            "limits.send_buffer" => "--send-buffer",
            "backend.url" => "--backend-url",
            "backend.connect" => "--backend-connect",
            "backend.events" => "--backend-events",
            "backend.timeout" => "--backend-timeout",
            "http3" => "--http3",
            _ => "--config",
        };
        anyhow::bail!("{flag} ({key}): {message}");
    }
    Ok(c)
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = config(&args)?;
    if args.check_config {
        println!("{}", summary(&args, &config));
        return Ok(());
    }
    crate::init_logging(config.log_format);
    crate::raise_fd_limit();
    let listen = config.listen;
    let rt = crate::runtime(args.threads)?;
    rt.block_on(async move {
        tidewire_hub::serve(config, shutdown_signal())
            .await
            .map_err(|e| {
                // The engine's failures name it; the others are the listener's.
                if e.to_string().starts_with("engine ") {
                    anyhow::anyhow!("cannot start: {e} (--engine, TIDEWIRE_ENGINE)")
                } else {
                    anyhow::Error::new(e).context(format!("cannot serve on {listen} (--listen)"))
                }
            })
    })
}

/// What `--check-config` prints: where the settings came from and the ones people check.
fn summary(args: &ServeArgs, c: &HubConfig) -> String {
    let source = match &args.config {
        Some(p) => format!("{}: ok", p.display()),
        None => "embedded defaults (no --config): ok".to_owned(),
    };
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    let auth = match &c.auth {
        None => "off (anonymous)",
        Some(a) if a.anonymous() => "on, anonymous connections allowed",
        Some(_) => "on, a token is required",
    };
    let origins = if c.allowed_origins.is_empty() {
        "the server's own host only".to_owned()
    } else {
        c.allowed_origins.join(", ")
    };
    let engine = match c.engine.as_slice() {
        [one] if one == "memory" => "memory (one node)".to_owned(),
        urls => format!(
            "{} (node {})",
            urls.iter()
                .map(|u| tidewire_hub::redact_url(u))
                .collect::<Vec<_>>()
                .join(", "),
            c.node_name.as_deref().unwrap_or("named at start")
        ),
    };
    let backend = match &c.backend.url {
        None => "off".to_owned(),
        Some(url) => {
            let mut calls: Vec<&str> = Vec::new();
            if c.backend.connect {
                calls.push("connect");
            }
            let ns = c.namespaces.all();
            let (mut sub, mut publ, mut rpc) = (false, false, false);
            for (_, o) in ns {
                sub |= o.subscribe_proxy;
                publ |= o.publish_proxy;
                rpc |= o.rpc_proxy;
            }
            for (on, name) in [(sub, "subscribe"), (publ, "publish"), (rpc, "rpc")] {
                if on {
                    calls.push(name);
                }
            }
            let list = |v: &[&str]| {
                if v.is_empty() {
                    "none".to_owned()
                } else {
                    v.join(", ")
                }
            };
            let events: Vec<&str> = c.backend.events.iter().map(String::as_str).collect();
            format!(
                "{} (calls: {}; events: {}; timeout {:?})",
                tidewire_hub::redact_url(url),
                list(&calls),
                list(&events),
                c.backend.timeout
            )
        }
    };
    format!(
        "{source}\n  listen: {scheme}://{}/ ({})\n  engine: {engine}\n  auth: {auth}\n  allowed origins: {origins}\n  demo pages: {}\n  admin page: {}\n  room subprotocols: {}\n  max connections: {}\n  backend: {backend}",
        c.listen,
        match (c.http2, c.http3) {
            (true, true) => "HTTP/1.1, HTTP/2 and HTTP/3",
            (true, false) => "HTTP/1.1 and HTTP/2",
            (false, true) => "HTTP/1.1 and HTTP/3",
            (false, false) => "HTTP/1.1 only",
        },
        if c.demo { "on" } else { "off" },
        if c.admin_password.is_some() { "on, at /admin" } else { "off (--admin-password)" },
        if c.room_protocols.is_empty() { "none".to_owned() } else { c.room_protocols.join(", ") },
        c.max_connections,
    )
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

/// The engine URLs of `--engine`/`TIDEWIRE_ENGINE` as split at commas: a piece without a
/// scheme continues the URL before it (the host lists of `redis+sentinel://` and
/// `redis+cluster://` hold commas).
fn engine_urls(pieces: &[String]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for p in pieces {
        match urls.last_mut() {
            Some(last) if !p.contains("://") && p != "memory" => {
                last.push(',');
                last.push_str(p);
            }
            _ => urls.push(p.clone()),
        }
    }
    urls
}

#[cfg(test)]
mod engine_url_tests {
    use super::engine_urls;

    #[test]
    fn host_lists_stay_in_their_url() {
        let split = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            engine_urls(&split("redis://a:1,redis://b:2")),
            ["redis://a:1", "redis://b:2"]
        );
        assert_eq!(
            engine_urls(&split("redis+cluster://a:1,b:2,c:3")),
            ["redis+cluster://a:1,b:2,c:3"]
        );
        assert_eq!(
            engine_urls(&split("redis+sentinel://a:1,b:2/mymaster,memory")),
            ["redis+sentinel://a:1,b:2/mymaster", "memory"]
        );
    }
}
