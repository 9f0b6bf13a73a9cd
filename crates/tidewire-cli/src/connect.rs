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
use tidewire::reconnect::{Backoff, Event, ReconnectBuilder};
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

    /// DANGEROUS: accept any TLS certificate (self-signed, expired, another host's) for
    /// wss://. Anyone on the path can read and change the traffic. For tests only.
    #[arg(long)]
    insecure: bool,

    /// Ping the server after this much silence (500ms, 10s, 1m), and give the connection
    /// up when nothing at all arrives for three times as long.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    ping_interval: Option<Duration>,

    /// Connect again when the connection drops (backoff with jitter; not after a 1000
    /// close or a 4xx refusal). Lines typed while disconnected are dropped, with a warning.
    #[arg(long, conflicts_with = "once")]
    reconnect: bool,

    /// With --reconnect: give up after this many failed attempts in a row.
    #[arg(long, value_name = "N", requires = "reconnect")]
    max_attempts: Option<u32>,

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

fn duration(s: &str) -> Result<Duration, String> {
    let d = tidewire_hub::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

pub fn run(args: ConnectArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let input = stdin_lines();
    let out = Output::new(&args);
    let result = rt.block_on(async {
        if args.reconnect {
            reconnecting(&args, input, out).await
        } else {
            once_connected(&args, input, out).await
        }
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
    if let Some(i) = args.ping_interval {
        b = b.options(Options::default().heartbeat(i, i * 3));
    }
    Ok(b)
}

/// A refused or failed connection, in one line.
fn connect_error(url: &str, e: &tidewire::Error) -> anyhow::Error {
    if let Some(HandshakeError::Status(code, reason)) = e.handshake_error() {
        let mut line = format!("{url}: the server refused the WebSocket handshake: HTTP {code}");
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
        return anyhow!(line);
    }
    anyhow!("cannot connect to {url}: {e}")
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
    out.open(&args.url, protocol);
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
    let mut rb =
        ReconnectBuilder::new(builder).backoff(Backoff::default().max_attempts(args.max_attempts));
    if let Some(i) = args.ping_interval {
        rb = rb.heartbeat(i, i * 3);
    }
    let mut client = rb.connect();
    let mut input_open = true;
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
                    out.open(&args.url, c.protocol());
                }
                Some(Event::Message(m)) => out.message(&m),
                Some(Event::Disconnected(d)) => {
                    if d.local {
                        out.close(d.code.0, &d.reason, "client");
                    } else {
                        let why = d.error.as_ref().map(ToString::to_string);
                        out.disconnected(d.code.0, &d.reason, why.as_deref());
                    }
                }
                Some(Event::ConnectFailed { attempt, error }) => {
                    out.note(&format!("attempt {attempt}: {:#}", connect_error(&args.url, &error)));
                }
                Some(Event::Reconnecting { attempt, delay }) => out.reconnecting(attempt, delay),
                Some(Event::GaveUp(why)) => bail!("{}: gave up: {why}", args.url),
                Some(_) => {}
            },
        }
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

    fn open(&self, url: &str, protocol: Option<&str>) {
        if self.json {
            if !self.quiet {
                self.json(
                    "open",
                    serde_json::json!({"url": url, "protocol": protocol}),
                );
            }
            return;
        }
        match protocol {
            Some(p) => self.note(&format!("connected to {url} (subprotocol {p})")),
            None => self.note(&format!("connected to {url}")),
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

    fn reconnecting(&self, attempt: u32, delay: Duration) {
        if self.json {
            if !self.quiet {
                let v =
                    serde_json::json!({"attempt": attempt, "delay_ms": delay.as_millis() as u64});
                self.json("reconnecting", v);
            }
            return;
        }
        self.note(&format!(
            "reconnecting in {} ms (attempt {attempt})",
            delay.as_millis()
        ));
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
    fn headers_are_name_colon_value() {
        let (n, v) = parse_header("X-Token:  abc ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-token", "abc"));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert!(parse_header(": empty name").is_err());
    }
}
