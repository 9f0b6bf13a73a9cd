//! `tidewire connect URL`: a command-line WebSocket client, in the spirit of websocat.
//!
//! Each line of standard input is sent as one message (text, or with `--binary` the line's
//! bytes as a binary message); each message received is printed on one line (binary ones
//! in hex, or base64 with `--base64`; `--json` prints one JSON object per message
//! instead). End of input closes with 1000 and exits 0 once the server has answered the
//! close. Connection news goes to standard error (unless `--quiet` or `--json`).
//!
//! Exit status: 0 after a normal close (ours or the server's 1000), 1 when the connection
//! cannot be made or ends otherwise (one line on standard error says why: the HTTP status
//! and the server's reason for a refused handshake), 2 for a usage error (bad URL, bad
//! `-H`).

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tidewire::proto::handshake::HandshakeError;
use tidewire::reconnect::{Backoff, Event, GiveUp, ReconnectBuilder};
use tidewire::{ClientBuilder, CloseCode, CloseFrame, Message, Options};
use tokio::sync::mpsc;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// ws:// or wss:// URL to connect to.
    #[arg(value_name = "URL", value_parser = parse_url)]
    url: String,

    /// Send each input line as a binary message (the line's bytes, without the newline)
    /// instead of text.
    #[arg(long)]
    binary: bool,

    /// Print received binary messages in base64 instead of hex.
    #[arg(long)]
    base64: bool,

    /// Offer this subprotocol (repeatable, most preferred first). The connection fails if
    /// the server selects none of them.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,

    /// Add a request header (repeatable): -H 'Authorization: Bearer xyz'.
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,

    /// Send this Origin header (as a browser on that page would).
    #[arg(long, value_name = "ORIGIN")]
    origin: Option<String>,

    /// Go through this proxy: http://[USER:PASSWORD@]HOST[:PORT] (HTTP CONNECT),
    /// socks5h://... (SOCKS5, the proxy resolves the name) or socks5://...; "none" for no
    /// proxy. [default: https_proxy for wss://, http_proxy for ws://, else all_proxy, except
    /// the hosts in no_proxy]
    #[arg(long, value_name = "URL", value_parser = parse_proxy)]
    proxy: Option<tidewire::Proxy>,

    /// Trust the CA certificates in this PEM file for wss:// (a private CA), instead of the
    /// built-in roots and the platform's store.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca_file: Option<std::path::PathBuf>,

    /// WebSocket over HTTP/2 (RFC 8441): auto (wss:// offers h2 and uses it where the
    /// server allows, HTTP/1.1 otherwise), off (HTTP/1.1 only), only (require it; h2c for
    /// ws://).
    #[arg(long, value_name = "auto|off|only", default_value = "auto")]
    http2: tidewire::Http2,

    /// WebSocket over HTTP/3 (RFC 9220): QUIC to the URL's UDP port, for wss:// URLs;
    /// no fallback to TCP (the server must run with --http3).
    #[cfg(feature = "http3")]
    #[arg(long)]
    http3: bool,

    /// DANGEROUS: accept any TLS certificate (self-signed, expired, another host's) for
    /// wss://. Anyone on the path can read and change the traffic. For tests only.
    #[arg(long)]
    insecure: bool,

    /// Ping the server after this much silence (500ms, 10s, 1m), and give the connection
    /// up when nothing at all arrives for three times as long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    ping_interval: Option<Duration>,

    /// Connect again when the connection drops (backoff with jitter, at most --max-delay
    /// between attempts; not after a 1000 or 1009 close or a 4xx refusal, nor, with
    /// --subprotocol tidewire.v1, after the hub's terminal codes 4003, 4008 and
    /// 4500-4999, or 4001). Each wait is announced
    /// on standard error with its reason. Lines typed while disconnected are dropped, with
    /// a warning.
    #[arg(long, conflicts_with = "once")]
    reconnect: bool,

    /// With --reconnect: give up after this many failed attempts in a row.
    #[arg(long, value_name = "N", requires = "reconnect")]
    max_attempts: Option<u32>,

    /// With --reconnect: the longest wait between two attempts (the backoff doubles from
    /// 250 ms up to this; a server's Retry-After is honoured up to this too).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration,
          requires = "reconnect")]
    max_delay: Duration,

    /// Print one JSON object per line: {"ts": UNIX_SECONDS, "type": "text"|"binary", "data":
    /// ...} for messages (binary data as hex or base64, named in "encoding"), and
    /// "open", "close", "disconnected", "reconnecting" objects for the connection.
    #[arg(long)]
    json: bool,

    /// Send the first input line (if any), print one message back, close, exit.
    #[arg(long)]
    once: bool,

    /// No connection news on standard error (errors are still printed).
    #[arg(short, long)]
    quiet: bool,
}

fn parse_url(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
        return Err("the URL must start with ws:// or wss://".into());
    }
    tidewire::WsUrl::parse(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let bad = || format!("expected 'Name: value', got {s:?}");
    let (name, value) = s.split_once(':').ok_or_else(bad)?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = http::HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// Clap value parser for a positive duration of at most a day (`500ms`, `10s`, `1m`).
fn duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    if d > Duration::from_secs(86_400) {
        return Err("must be at most a day (24h)".into());
    }
    Ok(d)
}

/// Parses `500ms`, `20s`, `10m`, `1h`, `7d` or a bare number of seconds; a value too large
/// for a `Duration` is an error, not a wrapped or saturated number.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 500ms, 20s, 10m, 1h, 7d)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn run(args: ConnectArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let input = stdin_lines();
    let out = Output::new(&args);
    let result = rt.block_on(async {
        let result = if args.reconnect {
            reconnecting(&args, input, out).await
        } else {
            once_connected(&args, input, out).await
        };
        // A QUIC connection's close is a packet the runtime still has to send.
        #[cfg(feature = "http3")]
        tidewire::http3::wait_closed(std::time::Duration::from_secs(1)).await;
        result
    });
    // The stdin thread may be blocked in a read: do not wait for it.
    rt.shutdown_background();
    result
}

/// Standard input, line by line (without the line ending), read on its own thread;
/// the channel closes at end of input.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.ends_with(b"\n") {
                        line.pop();
                        if line.ends_with(b"\r") {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

fn parse_proxy(s: &str) -> std::result::Result<tidewire::Proxy, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(tidewire::Proxy::none());
    }
    tidewire::Proxy::parse(s).map_err(|e| e.to_string())
}

fn client_builder(args: &ConnectArgs) -> Result<ClientBuilder> {
    let mut b = ClientBuilder::new(args.url.clone()).protocols(args.subprotocols.clone());
    for (name, value) in &args.headers {
        b = b.header(name.clone(), value.clone());
    }
    if let Some(origin) = &args.origin {
        b = b.origin(origin.clone());
    }
    if args.insecure {
        b = b.tls_config(dangerous::accept_any_certificate_config()?);
    }
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow!("--ca-file: cannot read {}: {e}", path.display()))?;
        let roots = tidewire::root_store_from_pem(&pem)
            .map_err(|e| anyhow!("--ca-file {}: {e}", path.display()))?;
        if roots.is_empty() {
            return Err(anyhow!(
                "--ca-file {}: no certificate in it",
                path.display()
            ));
        }
        b = b.tls_config(std::sync::Arc::new(tidewire::client_config_with_roots(
            roots,
        )));
    }
    if let Some(proxy) = &args.proxy {
        b = b.proxy(proxy.clone());
    }
    b = b.http2(args.http2);
    #[cfg(feature = "http3")]
    if args.http3 {
        if !args.url.starts_with("wss://") {
            bail!(
                "--http3: {} is not a wss:// URL (QUIC is always encrypted)",
                args.url
            );
        }
        b = b.http3(true);
    }
    if let Some(i) = args.ping_interval {
        b = b.options(Options::default().heartbeat(i, i * 3));
    }
    Ok(b)
}

/// A refused or failed connection, in one line.
fn connect_error(url: &str, e: &tidewire::Error) -> anyhow::Error {
    match refusal(e) {
        Some(refusal) => anyhow!("{url}: the server refused the WebSocket handshake: {refusal}"),
        None => anyhow!("cannot connect to {url}: {e}"),
    }
}

/// A refused handshake as "HTTP 404 Not Found: no route for /x" (status, reason, and the
/// first line of the body).
fn refusal(e: &tidewire::Error) -> Option<String> {
    let Some(HandshakeError::Status(code, reason)) = e.handshake_error() else {
        return None;
    };
    let mut line = format!("HTTP {code}");
    if !reason.is_empty() {
        line.push(' ');
        line.push_str(reason);
    }
    if let Some(body) = e.http_body() {
        // Servers often repeat the status line in the body ("404 Not Found: ...").
        let status = format!("{code} {reason}");
        let body = body.strip_prefix(status.as_str()).unwrap_or(body);
        let body = body.trim_start_matches([':', ' ']);
        if !body.is_empty() {
            line.push_str(": ");
            line.push_str(body);
        }
    }
    Some(line)
}

/// The subprotocol check the client library leaves to us: a server may answer without
/// one, but a client that asked for one cannot speak to a server that chose none.
fn check_protocol(args: &ConnectArgs, selected: Option<&str>) -> Result<()> {
    if !args.subprotocols.is_empty() && selected.is_none() {
        bail!(
            "{}: the server accepted none of the offered subprotocols ({})",
            args.url,
            args.subprotocols.join(", ")
        );
    }
    Ok(())
}

fn to_message(args: &ConnectArgs, line: Vec<u8>) -> Result<Message> {
    if args.binary {
        return Ok(Message::binary(line));
    }
    let text = String::from_utf8(line)
        .map_err(|_| anyhow!("an input line is not UTF-8 (use --binary to send bytes)"))?;
    Ok(Message::text(text))
}

fn selected_protocol(resp: &http::Response<()>) -> Option<&str> {
    resp.headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
}

async fn once_connected(
    args: &ConnectArgs,
    mut input: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    out: Output,
) -> Result<()> {
    let builder = client_builder(args)?;
    let (mut ws, resp) = builder
        .connect()
        .await
        .map_err(|e| connect_error(&args.url, &e))?;
    let protocol = selected_protocol(&resp);
    check_protocol(args, protocol)?;
    out.open(&args.url, protocol, resp.version());
    let mut input_open = true;
    if args.once {
        if let Some(line) = input.recv().await {
            ws.send(to_message(
                args,
                line.context("cannot read standard input")?,
            )?)
            .await
            .context("cannot send")?;
        }
        input_open = false;
    }
    let mut peer_close: Option<Option<CloseFrame>> = None;
    let closing = tokio::time::sleep(CLOSE_TIMEOUT);
    tokio::pin!(closing);
    let mut closing_started = false;
    loop {
        tokio::select! {
            line = input.recv(), if input_open => match line {
                Some(line) => {
                    let msg = to_message(args, line.context("cannot read standard input")?)?;
                    ws.send(msg).await.with_context(|| format!("{}: cannot send", args.url))?;
                }
                None => {
                    // End of input: send a close frame (1000), then keep printing what
                    // arrives until the server answers it (the echo of the last lines
                    // may still be on its way).
                    input_open = false;
                    futures_util::SinkExt::close(&mut ws)
                        .await
                        .with_context(|| format!("{}: cannot close", args.url))?;
                    closing.as_mut().reset(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                    closing_started = true;
                }
            },
            _ = &mut closing, if closing_started => {
                bail!("{}: the server did not answer the close within {} s", args.url, CLOSE_TIMEOUT.as_secs());
            }
            msg = ws.recv() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    out.message(&m);
                    if args.once {
                        let _ = ws.close(Some(CloseFrame::new(CloseCode::NORMAL, ""))).await;
                        return Ok(());
                    }
                }
                Some(Ok(Message::Close(frame))) => peer_close = Some(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{}: connection failed: {e}", args.url),
                None => {
                    let (code, reason) = match peer_close {
                        Some(Some(f)) => (f.code, f.reason),
                        Some(None) => (CloseCode::NO_STATUS, String::new()),
                        None => (CloseCode::ABNORMAL, String::new()),
                    };
                    if closing_started && code == CloseCode::NORMAL {
                        // The server's answer to our close.
                        out.close(code.0, &reason, "client");
                        return Ok(());
                    }
                    if code == CloseCode::NORMAL && !args.once {
                        out.close(code.0, &reason, "server");
                        return Ok(());
                    }
                    if out.json {
                        out.close(code.0, &reason, "server");
                    }
                    bail!("{}: closed by the server: {}", args.url, describe_close(code, &reason));
                }
            },
        }
    }
}

/// How long the server may take to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn describe_close(code: CloseCode, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (CloseCode::ABNORMAL, _) => "1006 (connection dropped without a close frame)".into(),
        (CloseCode::NO_STATUS, _) => "1005 (close frame without a code)".into(),
        (_, true) => code.to_string(),
        (_, false) => format!("{code} {reason}"),
    }
}

async fn reconnecting(
    args: &ConnectArgs,
    mut input: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    out: Output,
) -> Result<()> {
    let builder = client_builder(args)?;
    let mut rb = ReconnectBuilder::new(builder).backoff(backoff(args));
    if args
        .subprotocols
        .iter()
        .any(|p| p == tidewire_hub_client::PROTOCOL)
    {
        // The hub's close codes: stop after 4003 and 4008, as its own client does.
        rb = rb.close_policy(tidewire_hub_client::close_policy);
    }
    if let Some(i) = args.ping_interval {
        rb = rb.heartbeat(i, i * 3);
    }
    let mut client = rb.connect();
    let mut input_open = true;
    // Why the client is about to wait: the last failed attempt or the last disconnect.
    let mut last_failure = String::new();
    loop {
        tokio::select! {
            line = input.recv(), if input_open => match line {
                Some(line) => {
                    let msg = to_message(args, line.context("cannot read standard input")?)?;
                    match client.send(msg).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_connected() => out.note("not connected: line dropped"),
                        Err(e) => bail!("{}: cannot send: {e}", args.url),
                    }
                }
                None => {
                    input_open = false;
                    // The last event is the local Disconnected; the stream then ends.
                    client.close(None).await;
                }
            },
            ev = client.next_event() => match ev {
                None => return Ok(()),
                Some(Event::Connected(c)) => {
                    if let Err(e) = check_protocol(args, c.protocol()) {
                        client.close(None).await;
                        return Err(e);
                    }
                    out.open(&args.url, c.protocol(), c.response.version());
                }
                Some(Event::Message(m)) => out.message(&m),
                Some(Event::Disconnected(d)) => {
                    if d.local {
                        out.close(d.code.0, &d.reason, "client");
                    } else {
                        let why = d.error.as_ref().map(ToString::to_string);
                        out.disconnected(d.code.0, &d.reason, why.as_deref());
                        last_failure = format!("disconnected: {}", describe_close(d.code, &d.reason));
                    }
                }
                Some(Event::ConnectFailed { error, .. }) => last_failure = failure_reason(&error),
                Some(Event::Reconnecting { attempt, delay }) => {
                    out.reconnecting(&args.url, attempt, delay, &last_failure)
                }
                // A close code says it all; after failed attempts, say how the last failed.
                Some(Event::GaveUp(why @ GiveUp::CloseCode { .. })) => {
                    bail!("{}: gave up: {why}", args.url)
                }
                Some(Event::GaveUp(why)) => {
                    bail!("{}: gave up: {why}: {last_failure}", args.url)
                }
                Some(_) => {}
            },
        }
    }
}

/// The backoff of `--reconnect`: from 250 ms (or --max-delay if shorter), doubling up to
/// --max-delay. The library's default cap (30 s) suits a service; a person watching a
/// terminal should not wait more than a few seconds after the server is back.
fn backoff(args: &ConnectArgs) -> Backoff {
    let initial = Duration::from_millis(250).min(args.max_delay);
    Backoff::new(initial, args.max_delay).max_attempts(args.max_attempts)
}

/// Why a connection attempt failed, in a few words: "connection refused", "HTTP 503
/// Service Unavailable: busy", "handshake timed out".
fn failure_reason(e: &tidewire::Error) -> String {
    if let Some(refusal) = refusal(e) {
        return refusal;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) if e.is_io() => {
            // "Connection refused (os error 111)" -> "connection refused".
            let text = io.to_string();
            let text = text.find(" (os error").map_or(&text[..], |i| &text[..i]);
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => e.to_string(),
            }
        }
        _ => e.to_string(),
    }
}

/// Where messages and connection news go.
struct Output {
    json: bool,
    quiet: bool,
    base64: bool,
}

impl Output {
    fn new(args: &ConnectArgs) -> Output {
        Output {
            json: args.json,
            quiet: args.quiet || args.once,
            base64: args.base64,
        }
    }

    fn line(&self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    fn json(&self, kind: &str, mut fields: serde_json::Value) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_millis() as f64) / 1000.0)
            .unwrap_or(0.0);
        if let Some(map) = fields.as_object_mut() {
            map.insert("ts".into(), ts.into());
            map.insert("type".into(), kind.into());
        }
        self.line(&fields.to_string());
    }

    fn encode(&self, bytes: &[u8]) -> String {
        if self.base64 {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        } else {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    }

    fn message(&self, m: &Message) {
        match (m, self.json) {
            (Message::Text(t), false) => self.line(t),
            (Message::Text(t), true) => self.json("text", serde_json::json!({"data": t.as_str()})),
            (Message::Binary(b), false) => self.line(&self.encode(b)),
            (Message::Binary(b), true) => {
                let encoding = if self.base64 { "base64" } else { "hex" };
                self.json(
                    "binary",
                    serde_json::json!({"data": self.encode(b), "encoding": encoding}),
                )
            }
            _ => {}
        }
    }

    /// A line on standard error, unless quiet (or JSON, which reports on stdout).
    fn note(&self, what: &str) {
        if self.json {
            if !self.quiet {
                self.json("note", serde_json::json!({"message": what}));
            }
        } else if !self.quiet {
            eprintln!("tidewire connect: {what}");
        }
    }

    fn open(&self, url: &str, protocol: Option<&str>, version: http::Version) {
        let http = if version == http::Version::HTTP_2 {
            "2"
        } else if version == http::Version::HTTP_3 {
            "3"
        } else {
            "1.1"
        };
        if self.json {
            if !self.quiet {
                self.json(
                    "open",
                    serde_json::json!({"url": url, "protocol": protocol, "http": http}),
                );
            }
            return;
        }
        let over = match http {
            "2" => " over HTTP/2",
            "3" => " over HTTP/3",
            _ => "",
        };
        match protocol {
            Some(p) => self.note(&format!("connected to {url}{over} (subprotocol {p})")),
            None => self.note(&format!("connected to {url}{over}")),
        }
    }

    fn close(&self, code: u16, reason: &str, by: &str) {
        if self.json {
            if !self.quiet {
                self.json(
                    "close",
                    serde_json::json!({"code": code, "reason": reason, "by": by}),
                );
            }
            return;
        }
        self.note(&format!(
            "closed by the {by}: {}",
            describe_close(CloseCode(code), reason)
        ));
    }

    fn disconnected(&self, code: u16, reason: &str, error: Option<&str>) {
        if self.json {
            if !self.quiet {
                let v = serde_json::json!({"code": code, "reason": reason, "error": error});
                self.json("disconnected", v);
            }
            return;
        }
        let mut line = format!("disconnected: {}", describe_close(CloseCode(code), reason));
        if let Some(e) = error {
            line.push_str(&format!(" ({e})"));
        }
        self.note(&line);
    }

    /// "reconnecting to URL in 1.2 s (attempt 3): connection refused" (or "in 180 ms").
    fn reconnecting(&self, url: &str, attempt: u32, delay: Duration, reason: &str) {
        if self.json {
            if !self.quiet {
                let v = serde_json::json!({
                    "url": url,
                    "attempt": attempt,
                    "delay_ms": delay.as_millis() as u64,
                    "reason": reason,
                });
                self.json("reconnecting", v);
            }
            return;
        }
        let delay = if delay < Duration::from_secs(1) {
            format!("{} ms", delay.as_millis())
        } else {
            format!("{:.1} s", delay.as_secs_f64())
        };
        let mut line = format!("reconnecting to {url} in {delay} (attempt {attempt})");
        if !reason.is_empty() {
            line.push_str(": ");
            line.push_str(reason);
        }
        self.note(&line);
    }
}

/// `--insecure`: a certificate verifier that accepts every certificate.
mod dangerous {
    use std::sync::Arc;
    use tidewire::rustls;
    use tidewire::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tidewire::rustls::crypto::{
        verify_tls12_signature, verify_tls13_signature, CryptoProvider,
    };
    use tidewire::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tidewire::rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts ANY server certificate: no chain, no name, no expiry check. The handshake
    /// signatures are still checked (the server holds the key of the certificate it sent),
    /// which proves nothing about who the server is. Only for `--insecure`.
    #[derive(Debug)]
    pub struct DangerousAcceptAnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for DangerousAcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// A client configuration with [`DangerousAcceptAnyCertificate`].
    pub fn accept_any_certificate_config() -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_websocket_urls() {
        assert!(parse_url("ws://127.0.0.1:9001/x?y=1").is_ok());
        assert!(parse_url("WSS://example.com").is_ok());
        assert!(parse_url("http://x").unwrap_err().contains("ws://"));
        assert!(parse_url("ws://").is_err());
        assert!(parse_url("127.0.0.1:80").is_err());
    }

    #[test]
    fn urls_with_bad_ports_are_refused() {
        for url in ["ws://127.0.0.1:99999/", "ws://127.0.0.1:abc/", "wss://h:0/"] {
            let e = parse_url(url).unwrap_err();
            assert!(e.contains(url) && e.contains("port"), "{e}");
        }
    }

    #[test]
    fn durations_never_overflow() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "s", "1.5s", "-1s", "1 s", "1y", "1hh"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Would overflow u64 milliseconds (and tidewire_hub::parse_duration's seconds).
        assert!(parse_duration("5124095576030432h")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        // The flag: more than zero, at most a day (ping interval × 3 must not overflow).
        assert!(duration("0").is_err());
        assert!(duration("25h").is_err());
        assert_eq!(duration("24h"), Ok(Duration::from_secs(86_400)));
    }

    fn args(argv: &[&str]) -> ConnectArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ConnectArgs,
        }
        let full = std::iter::once("connect").chain(argv.iter().copied());
        <Cli as clap::Parser>::try_parse_from(full)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
            .args
    }

    #[test]
    fn reconnect_backoff_is_capped_for_people() {
        // Default: 250 ms doubling to 2 s, not the library's 30 s.
        let b = backoff(&args(&["--reconnect", "ws://h/"]));
        let ceilings: Vec<u128> = (1..=8).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [250, 500, 1000, 2000, 2000, 2000, 2000, 2000]);
        let b = backoff(&args(&["--reconnect", "--max-delay", "10s", "ws://h/"]));
        assert_eq!(b.ceiling(7), Duration::from_secs(10));
        assert_eq!(b.ceiling(1), Duration::from_millis(250));
        // Shorter than the first step: every wait is at most the cap.
        let b = backoff(&args(&["--reconnect", "--max-delay", "100ms", "ws://h/"]));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(9), Duration::from_millis(100));
    }

    #[test]
    fn failure_reasons_are_short() {
        let refused =
            tidewire::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(failure_reason(&refused), "connection refused");
        let os = tidewire::Error::from(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(failure_reason(&os), "connection refused");
        let bad = tidewire::WsUrl::parse("ws://h:0/").unwrap_err();
        assert_eq!(failure_reason(&bad), bad.to_string());
    }

    #[test]
    fn headers_are_name_colon_value() {
        let (n, v) = parse_header("X-Token:  abc ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-token", "abc"));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert!(parse_header(": empty name").is_err());
    }
}
