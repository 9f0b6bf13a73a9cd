//! The hub's configuration: [`HubConfig`], its embedded defaults, and the file (TOML).
//!
//! Every key is optional; what a file leaves out keeps the embedded default
//! ([`HubConfig::default`]). Unknown keys are errors, so a typo does not silently leave a
//! default in place. Errors name the file, the line and the key:
//!
//! ```text
//! tidewire.toml:7: limits.publish_rate: invalid type: string "fast", expected a number
//! ```
//!
//! The file's layout is documented, with every key, in `docs/configuration.md`.

use crate::auth::AuthConfig;
use crate::node::{NamespaceConfig, NamespaceOptions};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tidewire::DeflateConfig;

/// Log output of the `tidewire` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Settings of the hub. `Default` is the embedded configuration `tidewire serve` runs with;
/// [`HubConfig::load_file`] reads a TOML file over it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Address to listen on. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Log output (used by the binary). Default human.
    pub log_format: LogFormat,
    /// Origins allowed besides the server's own host (`https://app.example.com`), or `*`
    /// for any. Requests without `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Serve the demo pages at `/` and run the demo ticker (a price tick on `live:ticks`
    /// every 100 ms). Default true.
    pub demo: bool,
    /// Speak HTTP/2 beside HTTP/1.1: offered by ALPN (`h2`) over TLS, and taken in clear
    /// from a client that starts with the HTTP/2 preface (h2c, prior knowledge). A
    /// WebSocket may then be a stream of a shared connection (RFC 8441: the server sends
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL`). Default true.
    pub http2: bool,
    /// Serve HTTP/3 on the listening port's UDP twin (needs `tls`): WebSockets over QUIC
    /// (RFC 9220) for clients that ask for them, and the same pages and API. Default
    /// false; the `http3` feature of this crate.
    pub http3: bool,
    /// Send a room message back to its sender too. Default false.
    pub echo_to_sender: bool,
    /// Subprotocols rooms speak, most preferred first: the first of these that a client
    /// offers in `Sec-WebSocket-Protocol` is selected. A client that offers only others is
    /// refused with 400 and a reason (RFC 6455 would let the server answer without the
    /// header, which browsers fail with a bare 1006); one that offers none is accepted.
    /// Rooms relay messages whatever the name, so any list works. Default `chat`,
    /// `superchat` (the tutorial's `new WebSocket(url, ["chat", "superchat"])`).
    pub room_protocols: Vec<String>,
    /// Application heartbeats in rooms: a text message equal to one of these (ignoring
    /// ASCII case and surrounding whitespace) is answered to its sender alone with
    /// [`HubConfig::room_heartbeat_reply`] and never broadcast, so a page that sends a
    /// text heartbeat does not spam the room. Empty: every message is broadcast.
    /// Default `ping`, `heartbeat`. (The server pings every connection itself, and
    /// browsers answer pings on their own: a page needs no heartbeat of its own.)
    pub room_heartbeat: Vec<String>,
    /// The answer to a room heartbeat, empty for none. Default `pong`.
    pub room_heartbeat_reply: String,
    /// How many messages a room member may fall behind before it is disconnected as a
    /// slow consumer (close 4000, as on `/ws`). Default 1024.
    pub room_buffer: usize,
    /// Server pings: interval and the silence after which a connection is closed.
    /// Default 20 s and 60 s.
    pub ping_interval: Duration,
    /// See [`HubConfig::ping_interval`].
    pub idle_timeout: Duration,
    /// Largest message accepted from a client. Default 1 MiB.
    pub max_message_size: usize,
    /// WebSocket connections held at once (rooms and channels); beyond it upgrades get
    /// 503. Default 100,000.
    pub max_connections: usize,
    /// Connections in their HTTP phase at once: accepted and not yet upgraded to a
    /// WebSocket nor closed (a request being read or answered, a keep-alive connection
    /// between requests, a TLS handshake). Beyond it a new connection is answered `503`
    /// with a reason and closed, its head barely read. A connection that upgrades leaves
    /// this count for [`HubConfig::max_connections`]. Default 10,000.
    pub max_http_connections: usize,
    /// Publications per second one connection may make (token bucket), 0 for no limit.
    /// Default 100.
    pub publish_rate: f64,
    /// Bucket size of the publish rate limit. Default 200.
    pub publish_burst: u32,
    /// Channel events a `/ws` connection may have waiting (delivered by the engine, not
    /// yet written to its socket), across all its subscriptions, before it is a slow
    /// consumer. One queue per connection, filled as events come: nothing is
    /// preallocated, per connection or per channel. Default 4096.
    pub send_queue: usize,
    /// Bytes a connection may have waiting for its socket before it is a slow consumer
    /// (closed with 4000); its queue (`send_queue` events, `room_buffer` room messages)
    /// holds at most as many payload bytes too. Default 4 MiB.
    pub send_buffer: usize,
    /// Channels one connection may subscribe to. Default 1000.
    pub max_subscriptions: usize,
    /// Subscribes per second one connection may make (token bucket), 0 for no limit;
    /// beyond it a subscribe gets error 107. Default 100: churn through channels costs
    /// the engine work, and a connection's subscriptions are capped anyway.
    pub subscribe_rate: f64,
    /// Bucket size of the subscribe rate limit. Default 1000, so that a client can take
    /// `max_subscriptions` channels at once when it connects.
    pub subscribe_burst: u32,
    /// Channels (the engine's streams: with subscribers, history, or a position kept
    /// for resuming) the server holds at most; a subscribe or publish that would make one
    /// more gets error 111. Default 1,000,000 (each costs about 100 bytes plus its
    /// history).
    pub max_channels: usize,
    /// Bytes of channel history (data plus per-publication overhead) the server holds at
    /// most, all channels together. A publication that takes the total past it is still
    /// delivered; its channel's oldest publications leave history at once (resumes past
    /// them get `recovered: false`). Default 512 MiB.
    pub max_history_bytes: u64,
    /// permessage-deflate policy, `None` for off. Default on, without server context
    /// takeover, so that a broadcast is compressed once for all members.
    pub compression: Option<DeflateConfig>,
    /// Token checking; `None` (the default) for anonymous access.
    pub auth: Option<AuthConfig>,
    /// Key for `POST /api/publish` (`Authorization: apikey KEY`); the API is off without it.
    pub api_key: Option<String>,
    /// The admin page's password (at least 12 characters): turns the page on at `/admin`
    /// (docs/admin.md); off (404) without one.
    pub admin_password: Option<String>,
    /// Namespaces. Default: see [`default_namespaces`].
    pub namespaces: NamespaceConfig,
    /// Serve `https://` and `wss://` with this certificate chain and key (PEM files), read
    /// at start and again on SIGHUP; `None` (the default) for plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The engine: `["memory"]` (the default: one node), or the `redis://` URLs (one
    /// server, or several with channels sharded over them) or the `nats://` URL shared by
    /// the nodes of a cluster (docs/scaling.md).
    pub engine: Vec<String>,
    /// This node's name, unique in the cluster; generated when `None`.
    pub node_name: Option<String>,
    /// PEM file of the CA that signed the engine's certificate (`rediss://`), when it is
    /// not in the system's trust store.
    pub engine_ca_file: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long to spread the closing of WebSockets over (1012,
    /// "service restart": clients reconnect, to another node, and resume). Default 0:
    /// all at once (with 1001). New upgrades are refused from the start of the drain.
    pub drain: Duration,
    /// The application backend: the calls the hub makes to it (connect, subscribe,
    /// publish, rpc) and the events it sends it (docs/backend.md). Off by default.
    pub backend: BackendConfig,
}

/// Event hooks the hub can send to the backend (`backend.events`).
pub const HOOK_EVENTS: [&str; 6] = [
    "connect",
    "disconnect",
    "subscribe",
    "unsubscribe",
    "occupied",
    "vacated",
];

/// The application backend (`[backend]`): the hub POSTs JSON to `URL/connect`,
/// `URL/subscribe`, `URL/publish`, `URL/rpc` (the calls, each enabled on its own) and
/// `URL/events` (the hooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The backend's base URL (`http://` or `https://`); `None`: no calls, no hooks.
    pub url: Option<String>,
    /// How long a call may take before the client gets error 112. Default 3 s.
    pub timeout: Duration,
    /// The handshake's headers forwarded in the connect call (lower case). Default:
    /// cookie, authorization, user-agent, origin, x-forwarded-for, x-real-ip.
    pub headers: Vec<String>,
    /// Ask the backend who a connection is when it sends `connect` without a token (and,
    /// with auth on, accept the backend's answer in place of a token).
    pub connect: bool,
    /// The hook events sent to `URL/events` (of [`HOOK_EVENTS`]); empty: none.
    pub events: Vec<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            url: None,
            timeout: Duration::from_secs(3),
            headers: [
                "cookie",
                "authorization",
                "user-agent",
                "origin",
                "x-forwarded-for",
                "x-real-ip",
            ]
            .map(String::from)
            .to_vec(),
            connect: false,
            events: Vec::new(),
        }
    }
}

impl BackendConfig {
    /// Whether hook event `kind` is sent.
    pub fn sends(&self, kind: &str) -> bool {
        self.url.is_some() && self.events.iter().any(|e| e == kind)
    }

    /// Reads a `--backend-events` list: names of [`HOOK_EVENTS`] separated by commas, or
    /// `all`.
    pub fn parse_events(list: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if e == "all" {
                out.extend(HOOK_EVENTS.map(String::from));
            } else if HOOK_EVENTS.contains(&e) {
                out.push(e.to_owned());
            } else {
                return Err(format!(
                    "unknown event {e:?}: the events are {} (or all)",
                    HOOK_EVENTS.join(", ")
                ));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The PEM files of a TLS server: read at start, and again on each SIGHUP (a renewed
/// certificate takes effect for new connections; connections already open keep theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Reads both files into a TLS acceptor; the error names the file at fault.
    pub fn load(&self) -> std::io::Result<tidewire::tokio_rustls::TlsAcceptor> {
        self.load_for(false)
    }

    /// [`load`](Self::load), offering HTTP/2 by ALPN (`h2`, then `http/1.1`) when `http2`
    /// is set, HTTP/1.1 alone otherwise.
    pub fn load_for(&self, http2: bool) -> std::io::Result<tidewire::tokio_rustls::TlsAcceptor> {
        let mut config = self.load_config()?;
        config.alpn_protocols = tidewire::alpn_protocols(http2);
        Ok(tidewire::tokio_rustls::TlsAcceptor::from(
            std::sync::Arc::new(config),
        ))
    }

    /// The rustls configuration of both files, without ALPN; the error names the file at
    /// fault.
    pub fn load_config(&self) -> std::io::Result<tidewire::rustls::ServerConfig> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
            })
        };
        let (cert, key) = (read(&self.cert)?, read(&self.key)?);
        let config = tidewire::server_config_from_pem(&cert, &key).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "invalid certificate or key ({}, {}): {e}",
                    self.cert.display(),
                    self.key.display()
                ),
            )
        })?;
        Ok(std::sync::Arc::unwrap_or_clone(config))
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Human,
            allowed_origins: Vec::new(),
            demo: true,
            http2: true,
            http3: false,
            echo_to_sender: false,
            room_protocols: vec!["chat".into(), "superchat".into()],
            room_heartbeat: vec!["ping".into(), "heartbeat".into()],
            room_heartbeat_reply: "pong".into(),
            room_buffer: 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_message_size: 1 << 20,
            max_connections: 100_000,
            max_http_connections: 10_000,
            publish_rate: 100.0,
            publish_burst: 200,
            send_queue: 4096,
            send_buffer: 4 << 20,
            max_subscriptions: 1000,
            subscribe_rate: 100.0,
            subscribe_burst: 1000,
            max_channels: crate::engine::DEFAULT_MAX_STREAMS,
            max_history_bytes: crate::engine::DEFAULT_MAX_HISTORY_BYTES,
            compression: Some(DeflateConfig::default().server_no_context_takeover(true)),
            auth: None,
            api_key: None,
            admin_password: None,
            namespaces: default_namespaces(),
            tls: None,
            engine: vec!["memory".into()],
            node_name: None,
            engine_ca_file: None,
            drain: Duration::ZERO,
            backend: BackendConfig::default(),
        }
    }
}

/// The embedded namespaces, which the demo pages use:
/// - the default one and `chat`: the last 1,000 publications for 10 minutes, presence on;
/// - `typing`: typing indicators, no history, no presence;
/// - `board`: whiteboard strokes, the last 10,000 for an hour (late joiners redraw from
///   history), presence on;
/// - `live`: server-published data (the demo ticker), clients may not publish, the last 600
///   (a minute of ticks) for 10 minutes, no presence.
pub fn default_namespaces() -> NamespaceConfig {
    let base = NamespaceOptions::default();
    NamespaceConfig::new()
        .default_namespace(base.clone().presence(true))
        .namespace("chat", base.clone().presence(true))
        .namespace("typing", base.clone().history_size(0))
        .namespace(
            "board",
            base.clone()
                .presence(true)
                .history_size(10_000)
                .history_ttl(Duration::from_secs(3600)),
        )
        .namespace("live", base.publish(false).history_size(600))
}

/// The embedded defaults as a configuration file, every key with its default value and a
/// comment (what `tidewire genconfig` writes). Loading it changes nothing.
pub const DEFAULT_FILE: &str = include_str!("default.toml");

/// A configuration file that could not be read or used.
#[derive(Debug)]
pub struct ConfigError {
    file: PathBuf,
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl ConfigError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// The line of the file the error is on, when known (1-based).
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The dotted key the error is about (`limits.publish_rate`), when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A duration: whole seconds (`20`) or a number with a unit (`"500ms"`, `"20s"`, `"10m"`,
/// `"1h"`).
#[derive(Debug, Clone, Copy)]
struct Secs(Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Secs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration: seconds, or a string such as \"500ms\", \"20s\", \"10m\", \"1h\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secs, E> {
                u64::try_from(v)
                    .map(|s| Secs(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secs, E> {
                parse_duration(v).map(Secs).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"500ms"`, `"20s"`, `"10m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a duration (examples: 500ms, 20s, 10m, 1h)"))?;
    let secs_per_unit = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {v:?} (use ms, s, m or h)"
            ))
        }
    };
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{v:?} is too long a duration"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    allowed_origins: Option<Vec<String>>,
    demo: Option<bool>,
    http2: Option<bool>,
    http3: Option<bool>,
    #[serde(default)]
    heartbeat: Heartbeat,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    rooms: Rooms,
    #[serde(default)]
    compression: Compression,
    auth: Option<Auth>,
    #[serde(default)]
    api: Api,
    #[serde(default)]
    admin: Admin,
    #[serde(default)]
    namespaces: BTreeMap<String, Namespace>,
    tls: Option<Tls>,
    #[serde(default)]
    engine: Engine,
    #[serde(default)]
    backend: Backend,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    url: Option<String>,
    timeout: Option<Secs>,
    headers: Option<Vec<String>>,
    connect: Option<bool>,
    events: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Engine {
    urls: Option<Vec<String>>,
    node_name: Option<String>,
    drain: Option<Secs>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    ping_interval: Option<Secs>,
    idle_timeout: Option<Secs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_connections: Option<usize>,
    max_http_connections: Option<usize>,
    max_message_size: Option<usize>,
    publish_rate: Option<f64>,
    publish_burst: Option<u32>,
    send_queue: Option<usize>,
    send_buffer: Option<usize>,
    max_subscriptions: Option<usize>,
    subscribe_rate: Option<f64>,
    subscribe_burst: Option<u32>,
    max_channels: Option<usize>,
    max_history_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rooms {
    echo_to_sender: Option<bool>,
    buffer: Option<usize>,
    protocols: Option<Vec<String>>,
    heartbeat: Option<Vec<String>>,
    heartbeat_reply: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Compression {
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    hmac_secret: Option<String>,
    rsa_public_key_file: Option<PathBuf>,
    /// PEM public keys: RSA, EC (P-256, P-384) or Ed25519.
    #[serde(default)]
    public_key_files: Vec<PathBuf>,
    jwks_url: Option<String>,
    #[serde(default)]
    anonymous: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Api {
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Admin {
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Namespace {
    history_size: Option<usize>,
    history_ttl: Option<Secs>,
    presence: Option<bool>,
    publish: Option<bool>,
    private: Option<bool>,
    subscribe_proxy: Option<bool>,
    publish_proxy: Option<bool>,
    rpc_proxy: Option<bool>,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line on which `key` (dotted) is set, found by reading the file's tables and keys.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = match key.rsplit_once('.') {
        Some((t, l)) => (t, l),
        None => ("", key),
    };
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            current = rest
                .trim_end_matches(']')
                .split('.')
                .map(|p| p.trim().trim_matches('"'))
                .collect::<Vec<_>>()
                .join(".");
            if current == key {
                return Some(i + 1);
            }
            continue;
        }
        if current == table {
            if let Some((k, _)) = line.split_once('=') {
                if k.trim().trim_matches('"') == leaf {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

impl HubConfig {
    /// Reads a TOML configuration file over `self` (keys absent from the file keep their
    /// current values).
    pub fn load_file(self, path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))?;
        self.apply_toml(&text, path)
    }

    /// [`HubConfig::load_file`] on text already read; `path` names it in errors.
    pub fn apply_toml(self, text: &str, path: &Path) -> Result<HubConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let mut err = ConfigError::new(path, e.message().to_owned());
            err.line = e.span().map(|s| line_of(text, s.start));
            err
        })?;
        let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let key = (key != ".").then_some(key);
            let line = inner
                .span()
                .map(|s| line_of(text, s.start))
                .or_else(|| key.as_deref().and_then(|k| line_of_key(text, k)));
            ConfigError {
                file: path.to_owned(),
                line,
                key,
                message: inner.message().to_owned(),
            }
        })?;
        self.apply(file, text, path)
    }

    fn apply(mut self, f: File, text: &str, path: &Path) -> Result<HubConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError {
            file: path.to_owned(),
            line: line_of_key(text, key),
            key: Some(key.to_owned()),
            message,
        };
        macro_rules! set {
            ($field:expr, $value:expr) => {
                if let Some(v) = $value {
                    $field = v;
                }
            };
        }
        set!(self.listen, f.listen);
        set!(self.log_format, f.log_format);
        set!(self.allowed_origins, f.allowed_origins);
        set!(self.demo, f.demo);
        set!(self.http2, f.http2);
        set!(self.http3, f.http3);
        set!(self.ping_interval, f.heartbeat.ping_interval.map(|s| s.0));
        set!(self.idle_timeout, f.heartbeat.idle_timeout.map(|s| s.0));
        set!(self.max_connections, f.limits.max_connections);
        set!(self.max_http_connections, f.limits.max_http_connections);
        set!(self.max_message_size, f.limits.max_message_size);
        set!(self.publish_rate, f.limits.publish_rate);
        set!(self.publish_burst, f.limits.publish_burst);
        set!(self.send_queue, f.limits.send_queue);
        set!(self.send_buffer, f.limits.send_buffer);
        set!(self.max_subscriptions, f.limits.max_subscriptions);
        set!(self.subscribe_rate, f.limits.subscribe_rate);
        set!(self.subscribe_burst, f.limits.subscribe_burst);
        set!(self.max_channels, f.limits.max_channels);
        set!(self.max_history_bytes, f.limits.max_history_bytes);
        set!(self.echo_to_sender, f.rooms.echo_to_sender);
        set!(self.room_buffer, f.rooms.buffer);
        set!(self.room_protocols, f.rooms.protocols);
        set!(self.room_heartbeat, f.rooms.heartbeat);
        set!(self.room_heartbeat_reply, f.rooms.heartbeat_reply);
        if f.compression.enabled == Some(false) {
            self.compression = None;
        } else if f.compression.enabled == Some(true) && self.compression.is_none() {
            self.compression = HubConfig::default().compression;
        }
        if let Some(a) = f.auth {
            let mut pems = Vec::new();
            let files = a
                .rsa_public_key_file
                .iter()
                .map(|f| ("auth.rsa_public_key_file", f))
                .chain(
                    a.public_key_files
                        .iter()
                        .map(|f| ("auth.public_key_files", f)),
                );
            for (key, file) in files {
                let file = path.parent().unwrap_or(Path::new(".")).join(file);
                let pem = std::fs::read(&file)
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", file.display())))?;
                pems.push(pem);
            }
            let pems: Vec<&[u8]> = pems.iter().map(Vec::as_slice).collect();
            let auth = AuthConfig::with_keys(
                a.hmac_secret.as_deref(),
                &pems,
                a.jwks_url.as_deref(),
                a.anonymous,
            )
            .map_err(|e| invalid("auth", e))?;
            self.auth = Some(auth);
        }
        set!(self.api_key, f.api.key.map(Some));
        set!(self.admin_password, f.admin.password.map(Some));
        if let Some(urls) = f.engine.urls {
            check_engine(&urls).map_err(|e| invalid("engine.urls", e))?;
            self.engine = urls;
        }
        set!(self.node_name, f.engine.node_name.map(Some));
        set!(self.drain, f.engine.drain.map(|s| s.0));
        if let Some(ca) = f.engine.ca_file {
            // Relative to the file, as tls.cert_file is.
            let ca = path.parent().unwrap_or(Path::new(".")).join(ca);
            std::fs::metadata(&ca).map_err(|e| {
                invalid(
                    "engine.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                )
            })?;
            self.engine_ca_file = Some(ca);
        }
        let b = f.backend;
        set!(self.backend.url, b.url.map(Some));
        set!(self.backend.timeout, b.timeout.map(|s| s.0));
        set!(
            self.backend.headers,
            b.headers
                .map(|h| h.into_iter().map(|h| h.to_ascii_lowercase()).collect())
        );
        set!(self.backend.connect, b.connect);
        if let Some(events) = b.events {
            self.backend.events = BackendConfig::parse_events(&events.join(","))
                .map_err(|e| invalid("backend.events", e))?;
        }
        if let Some(t) = f.tls {
            // Relative to the file, as auth.rsa_public_key_file is.
            let dir = path.parent().unwrap_or(Path::new("."));
            let files = TlsFiles {
                cert: dir.join(t.cert_file),
                key: dir.join(t.key_file),
            };
            files.load().map_err(|e| invalid("tls", e.to_string()))?;
            self.tls = Some(files);
        }
        let mut ns = self.namespaces.clone();
        for (name, n) in f.namespaces {
            let key = format!("namespaces.{name}");
            if name != "default" && (name.is_empty() || name.contains(':')) {
                return Err(invalid(&key, "a namespace name has no colon".into()));
            }
            let base = if name == "default" {
                ns.for_channel("x").cloned().unwrap_or_default()
            } else {
                ns.namespace_options(&name).cloned().unwrap_or_default()
            };
            let mut o: NamespaceOptions = base;
            set!(o.history_size, n.history_size);
            set!(o.history_ttl, n.history_ttl.map(|s| s.0));
            set!(o.presence, n.presence);
            set!(o.publish, n.publish);
            set!(o.private, n.private);
            set!(o.subscribe_proxy, n.subscribe_proxy);
            set!(o.publish_proxy, n.publish_proxy);
            set!(o.rpc_proxy, n.rpc_proxy);
            ns = if name == "default" {
                ns.default_namespace(o)
            } else {
                ns.namespace(name, o)
            };
        }
        self.namespaces = ns;
        // `backend.url` may still come from a flag: its absence is checked once they are in.
        self.check_values()
            .and_then(|()| self.check_backend(false))
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(self)
    }

    /// Checks the values that cannot be used, whatever set them (file, variables, flags).
    /// On error: the configuration key at fault (`heartbeat.idle_timeout`) and what is
    /// wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        self.check_values()?;
        if self.http3 {
            if !cfg!(feature = "http3") {
                return Err((
                    "http3",
                    "this build has no HTTP/3 (the http3 feature of tidewire-hub)".into(),
                ));
            }
            if self.tls.is_none() {
                return Err((
                    "http3",
                    "needs tls.cert and tls.key (--tls-cert, --tls-key): QUIC is always encrypted"
                        .into(),
                ));
            }
        }
        self.check_backend(true)
    }

    fn check_values(&self) -> Result<(), (&'static str, String)> {
        let fail = |key, message: &str| Err((key, message.to_owned()));
        if self.ping_interval.is_zero() {
            return fail("heartbeat.ping_interval", "must be more than zero");
        }
        if self.idle_timeout <= self.ping_interval {
            return fail(
                "heartbeat.idle_timeout",
                "must be longer than heartbeat.ping_interval",
            );
        }
        if !(self.publish_rate >= 0.0 && self.publish_rate.is_finite()) {
            return fail(
                "limits.publish_rate",
                "must be a number of publications per second, 0 for no limit",
            );
        }
        if !(self.subscribe_rate >= 0.0 && self.subscribe_rate.is_finite()) {
            return fail(
                "limits.subscribe_rate",
                "must be a number of subscribes per second, 0 for no limit",
            );
        }
        if self.subscribe_burst == 0 {
            return fail("limits.subscribe_burst", "must be at least 1");
        }
        if self.max_channels == 0 {
            return fail("limits.max_channels", "must be at least 1");
        }
        if self.send_queue == 0 {
            return fail("limits.send_queue", "must be at least 1");
        }
        if self.max_message_size < 125 {
            return fail("limits.max_message_size", "must be at least 125 bytes");
        }
        if self.room_buffer == 0 {
            return fail("rooms.buffer", "must be at least 1");
        }
        if self.api_key.as_ref().is_some_and(|k| k.len() < 16) {
            return fail("api.key", "must be at least 16 characters");
        }
        if self
            .admin_password
            .as_ref()
            .is_some_and(|p| p.chars().count() < crate::admin::MIN_PASSWORD)
        {
            return Err((
                "admin.password",
                format!("must be at least {} characters", crate::admin::MIN_PASSWORD),
            ));
        }
        if self.max_connections == 0 {
            return fail(
                "limits.max_connections",
                "must be at least 1 (0 would refuse every WebSocket with 503)",
            );
        }
        if self.max_http_connections == 0 {
            return fail(
                "limits.max_http_connections",
                "must be at least 1 (0 would refuse every request with 503)",
            );
        }
        if self.max_subscriptions == 0 {
            return fail("limits.max_subscriptions", "must be at least 1");
        }
        if self.publish_burst == 0 {
            return fail("limits.publish_burst", "must be at least 1");
        }
        if self.send_buffer == 0 {
            return fail("limits.send_buffer", "must be at least 1 byte");
        }
        for origin in &self.allowed_origins {
            check_origin(origin).map_err(|m| ("allowed_origins", m))?;
        }
        for p in &self.room_protocols {
            if p.is_empty() || !p.bytes().all(is_token_byte) {
                return Err((
                    "rooms.protocols",
                    format!("{p:?} is not a subprotocol name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)"),
                ));
            }
        }
        if self.room_heartbeat.iter().any(|h| h.trim().is_empty()) {
            return fail("rooms.heartbeat", "a heartbeat text cannot be empty");
        }
        Ok(())
    }

    /// The `[backend]` values; with `complete`, also that what needs `backend.url` has it.
    fn check_backend(&self, complete: bool) -> Result<(), (&'static str, String)> {
        let b = &self.backend;
        match &b.url {
            Some(url) => {
                let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                });
                if !ok {
                    return Err((
                        "backend.url",
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            None if !complete => {}
            None => {
                let uses =
                    |o: &NamespaceOptions| o.subscribe_proxy || o.publish_proxy || o.rpc_proxy;
                if b.connect {
                    return Err(("backend.connect", "needs backend.url".into()));
                }
                if !b.events.is_empty() {
                    return Err(("backend.events", "needs backend.url".into()));
                }
                if self.namespaces.all().any(|(_, o)| uses(o)) {
                    return Err((
                        "namespaces",
                        "subscribe_proxy, publish_proxy and rpc_proxy need backend.url".into(),
                    ));
                }
            }
        }
        if b.timeout.is_zero() {
            return Err(("backend.timeout", "must be more than zero".into()));
        }
        for h in &b.headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(("backend.headers", format!("{h:?} is not a header name")));
            }
        }
        Ok(())
    }
}

/// An HTTP token character (RFC 9110 §5.6.2), as subprotocol names are.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// An entry of `allowed_origins`: `*`, `null`, or `SCHEME://HOST[:PORT]` as browsers send it
/// in `Origin` (RFC 6454 §6.2): no path, no user, no whitespace. A bare host would never
/// match any browser's `Origin`, so it is refused here rather than at every handshake.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" || origin == "null" {
        return Ok(());
    }
    let hint = |what: &str| {
        format!("{origin:?} {what}: write it as the browser sends it, SCHEME://HOST[:PORT] (https://app.example.com, http://localhost:3000), or * for any origin")
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(hint("has no scheme"));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(hint("has no valid scheme"));
    }
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() {
        return Err(hint("has no host"));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(hint("has a path"));
    }
    if authority.contains('@') {
        return Err(hint("has a user name"));
    }
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(hint("has spaces in it"));
    }
    if let Some((host, port)) = authority.rsplit_once(':') {
        // Not an IPv6 literal's colon ("[::1]" alone has its last colon inside brackets).
        if !host.is_empty() && !port.contains(']') && port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(hint("has a bad port"));
        }
    }
    Ok(())
}

/// An engine URL without its password (`redis://:***@host:6379`), for logs and summaries.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => {
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Checks a list of engine URLs (`--engine`, `engine.urls`): one `memory`, one `nats://`,
/// or one or more `redis://` (sharded); what is wrong, for people.
pub fn check_engine(urls: &[String]) -> Result<(), String> {
    let Some(first) = urls.first() else {
        return Err("no engine given: memory, redis://HOST:PORT or nats://HOST:PORT".into());
    };
    let scheme = |u: &str| {
        u.split_once("://")
            .map_or(u.to_owned(), |(s, _)| s.to_owned())
    };
    for u in urls {
        let s = scheme(u);
        match s.as_str() {
            "memory" | "redis" | "rediss" | "redis+sentinel" | "redis+cluster" | "rediss+cluster"
            | "nats" => {}
            _ => {
                return Err(format!(
                "{u}: unknown engine (expected memory, redis://HOST:PORT[/DB], redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB], redis+cluster://HOST:PORT[,HOST:PORT...] or nats://HOST:PORT)"
            ))
            }
        }
    }
    let first = scheme(first);
    if urls.len() > 1 && !urls.iter().all(|u| scheme(u).starts_with("redis")) {
        return Err(
            "only redis:// URLs can be given several times (channels are sharded over them)".into(),
        );
    }
    if urls.len() > 1 && urls.iter().any(|u| scheme(u).ends_with("+cluster")) {
        return Err(
            "a redis+cluster:// URL is the only engine URL: list the cluster's nodes in it, \
             comma-separated (the cluster shards channels by itself)"
                .into(),
        );
    }
    if first == "memory" && urls.len() > 1 {
        return Err("memory is a single engine".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HubConfig, ConfigError> {
        HubConfig::default().apply_toml(text, Path::new("t.toml"))
    }

    #[test]
    fn empty_file_keeps_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.listen, HubConfig::default().listen);
        assert!(c.namespaces.for_channel("lobby").unwrap().presence);
    }

    #[test]
    fn full_file() {
        let c = load(
            r#"
listen = "127.0.0.1:9000"
allowed_origins = ["https://example.com"]
log_format = "json"
[heartbeat]
ping_interval = "5s"
idle_timeout = 15
[limits]
max_connections = 10
publish_rate = 2.5
publish_burst = 5
[auth]
hmac_secret = "0123456789abcdef0123456789abcdef"
[namespaces.private]
private = true
presence = false
[namespaces.ticks]
history_size = 10
history_ttl = "1m"
publish = false
"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert_eq!(c.idle_timeout, Duration::from_secs(15));
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.publish_rate, 2.5);
        assert!(c.auth.is_some());
        let p = c.namespaces.for_channel("private:x").unwrap();
        assert!(p.private && !p.presence);
        let t = c.namespaces.for_channel("ticks:eur").unwrap();
        assert_eq!(t.history_size, 10);
        assert_eq!(t.history_ttl, Duration::from_secs(60));
        assert!(!t.publish);
        assert!(c.namespaces.for_channel("nope:x").is_none());
    }

    #[test]
    fn errors_name_line_and_key() {
        let e =
            load("listen = \"127.0.0.1:1\"\n\n[limits]\npublish_rate = \"fast\"\n").unwrap_err();
        assert_eq!(e.line(), Some(4), "{e}");
        assert_eq!(e.key(), Some("limits.publish_rate"), "{e}");
        assert!(
            e.to_string().starts_with("t.toml:4: limits.publish_rate: "),
            "{e}"
        );

        let e = load("[limits]\nmax_conections = 3\n").unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");
        assert!(e.to_string().contains("max_conections"), "{e}");

        let e = load("[heartbeat]\nping_interval = 30\nidle_timeout = 10\n").unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert_eq!(e.key(), Some("heartbeat.idle_timeout"));

        let e = load("listen = \n").unwrap_err();
        assert_eq!(e.line(), Some(1), "{e}");

        let e = load("[heartbeat]\nping_interval = \"20 parsecs\"\n").unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");

        let e = load("[namespaces.\"a:b\"]\npresence = true\n").unwrap_err();
        assert_eq!(e.key(), Some("namespaces.a:b"), "{e}");
    }

    #[test]
    fn the_default_file_sets_every_key_to_its_default() {
        // Start from a configuration that differs from the default in every field the
        // file can set: after the file, nothing of it may remain.
        let mut c = HubConfig {
            listen: "10.1.2.3:1".parse().unwrap(),
            log_format: LogFormat::Json,
            allowed_origins: vec!["*".into()],
            demo: false,
            echo_to_sender: true,
            room_protocols: vec!["x".into()],
            room_heartbeat: vec![],
            room_heartbeat_reply: String::new(),
            room_buffer: 7,
            ping_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            max_message_size: 200,
            max_connections: 3,
            max_http_connections: 4,
            publish_rate: 1.0,
            publish_burst: 1,
            send_queue: 9,
            send_buffer: 9,
            max_subscriptions: 9,
            compression: None,
            ..HubConfig::default()
        };
        let odd = NamespaceOptions {
            history_size: 3,
            history_ttl: Duration::from_secs(3),
            presence: false,
            publish: false,
            private: true,
            subscribe_proxy: true,
            publish_proxy: true,
            rpc_proxy: true,
        };
        let mut ns = NamespaceConfig::new().default_namespace(odd.clone());
        for name in ["chat", "typing", "board", "live"] {
            ns = ns.namespace(name, odd.clone());
        }
        c.namespaces = ns;
        let loaded = c
            .apply_toml(DEFAULT_FILE, Path::new("default.toml"))
            .unwrap();
        assert_eq!(format!("{loaded:?}"), format!("{:?}", HubConfig::default()));
    }

    #[test]
    fn the_documented_file_is_the_default_file() {
        let docs = include_str!("../../../docs/configuration.md");
        let body = &DEFAULT_FILE[DEFAULT_FILE.find("listen =").unwrap()..];
        assert!(
            docs.contains(body),
            "docs/configuration.md must show crates/tidewire-hub/src/default.toml from `listen =` on"
        );
    }

    #[test]
    fn the_backend_section_is_read_and_checked() {
        let c = load(
            "[backend]\nurl = \"http://127.0.0.1:3000/hub\"\ntimeout = \"250ms\"\n\
             headers = [\"Cookie\"]\nconnect = true\nevents = [\"vacated\", \"connect\"]\n\
             [namespaces.game]\nrpc_proxy = true\n",
        )
        .unwrap();
        let b = &c.backend;
        assert_eq!(b.url.as_deref(), Some("http://127.0.0.1:3000/hub"));
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert_eq!(
            (b.headers.as_slice(), b.connect),
            (&["cookie".to_owned()][..], true)
        );
        assert_eq!(b.events, ["connect", "vacated"]);
        assert!(b.sends("vacated") && !b.sends("subscribe"));
        assert!(c.namespaces.for_channel("game:x").unwrap().rpc_proxy);
        let e = load("[backend]\nurl = \"ftp://x\"\n").unwrap_err();
        assert_eq!(e.key(), Some("backend.url"), "{e}");
        let e = load("[backend]\nurl = \"http://x\"\nevents = [\"joined\"]\n").unwrap_err();
        assert_eq!(e.key(), Some("backend.events"), "{e}");
        assert!(e.to_string().contains("unknown event \"joined\""), "{e}");
        // A file may leave the URL to a flag; the whole configuration may not.
        let c = load("[namespaces.game]\nrpc_proxy = true\n").unwrap();
        let (key, message) = c.check().unwrap_err();
        assert_eq!(key, "namespaces");
        assert!(message.contains("need backend.url"), "{message}");
        assert_eq!(BackendConfig::parse_events("all").unwrap().len(), 6);
    }

    #[test]
    fn values_that_cannot_work_are_refused() {
        // Regression (issue 13, item 5): these were accepted and then failed every client.
        let e = load("allowed_origins = [\"app.example.com\"]\n").unwrap_err();
        assert_eq!(e.key(), Some("allowed_origins"), "{e}");
        assert!(e.to_string().contains("has no scheme"), "{e}");
        for bad in [
            "https://",
            "https://a.example/path",
            "ftp//x",
            "https://u@x",
            "http://x:0",
            "http://x:99999",
        ] {
            let e = load(&format!("allowed_origins = [{bad:?}]\n")).unwrap_err();
            assert_eq!(e.key(), Some("allowed_origins"), "{bad}: {e}");
        }
        for good in [
            "*",
            "null",
            "https://app.example.com",
            "http://localhost:3000/",
            "http://[::1]:8080",
            "http://[::1]",
        ] {
            load(&format!("allowed_origins = [{good:?}]\n"))
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let e = load("[limits]\nmax_connections = 0\n").unwrap_err();
        assert_eq!(
            (e.key(), e.line()),
            (Some("limits.max_connections"), Some(2)),
            "{e}"
        );
        let e = load("[admin]\npassword = \"eleven char\"\n").unwrap_err();
        assert_eq!(
            (e.key(), e.line()),
            (Some("admin.password"), Some(2)),
            "{e}"
        );
        assert!(e.to_string().contains("at least 12 characters"), "{e}");
        let c = load("[admin]\npassword = \"twelve chars\"\n").unwrap();
        assert_eq!(c.admin_password.as_deref(), Some("twelve chars"));
        let e = load("[rooms]\nprotocols = [\"chat room\"]\n").unwrap_err();
        assert_eq!(e.key(), Some("rooms.protocols"), "{e}");
        let e = load("[rooms]\nheartbeat = [\" \"]\n").unwrap_err();
        assert_eq!(e.key(), Some("rooms.heartbeat"), "{e}");
        let c =
            load("[rooms]\nprotocols = [\"v2.chat\"]\nheartbeat = []\nheartbeat_reply = \"\"\n")
                .unwrap();
        assert_eq!(c.room_protocols, ["v2.chat"]);
        assert!(c.room_heartbeat.is_empty() && c.room_heartbeat_reply.is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
        // Overflowed (a panic in debug builds, a wrap in release) before.
        assert!(parse_duration("5124095576030432h").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
    }
}
