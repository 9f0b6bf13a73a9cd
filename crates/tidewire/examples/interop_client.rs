//! Run with: cargo build --release -p tidewire --example interop_client && target/release/examples/interop_client ws://127.0.0.1:9001
//!
//! The Tidewire side of the interop tests (`interop/run.sh`, `interop/README.md`):
//! connects to an echo server at URL (Python `websockets` or Node `ws`), runs the
//! SCENARIO as the client, prints one line per step and exits 0 on success, or 1
//! with a `FAIL ...` message on stderr.
//!
//! SCENARIO: text then binary messages of sizes 0, 1, 125, 126, 127, 65535, 65536,
//! 1 MiB and 16 MiB - 64, each echoed back byte-exact and in order; a ping whose
//! pong must carry the same payload; a close with 1000 answered by a close with 1000.
//! The payloads are built exactly like `interop/scenario.py` and `interop/node/scenario.mjs`.
//!
//! `--http2 only` (or `INTEROP_HTTP2=only`) runs the WebSocket over HTTP/2 (RFC 8441):
//! h2c with prior knowledge for `ws://`, ALPN `h2` for `wss://`, and fails unless the
//! handshake was an extended CONNECT answered over HTTP/2. `auto` and `off` are the
//! library's other modes (`ClientBuilder::http2`); without the flag, the library default.
//! `--http3` (built with `--features http3`) runs it over HTTP/3 (RFC 9220, QUIC, `wss://`
//! only; the server's CA from `SSL_CERT_FILE`), and fails unless it went over HTTP/3.
//!
//! Written against the expected async API of the `tidewire` crate (`ClientBuilder`,
//! `Config`, `Limits`, `Message`, `CloseFrame`, `CloseCode`); adjust the names here
//! if the crate ended up spelling them differently.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidewire::{ClientBuilder, CloseCode, CloseFrame, Config, Limits, Message};

const MIB: usize = 1024 * 1024;
/// 7-bit (<= 125), 16-bit (126..=65535) and 64-bit (>= 65536) length encodings.
const SIZES: [usize; 9] = [0, 1, 125, 126, 127, 65535, 65536, MIB, 16 * MIB - 64];
const MAX_MESSAGE_SIZE: usize = 17 * MIB;
/// 19 bytes: ASCII, then 2-, 3- and 4-byte UTF-8 sequences.
const TEXT_PATTERN: &str = "tidewire:é€𝄞|";
const PING_PAYLOAD: &[u8] = b"tidewire-ping\x00\xff";
const CLOSE_CODE: u16 = 1000;
const CLOSE_REASON: &str = "interop done";
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Exactly `n` UTF-8 bytes: TEXT_PATTERN repeated, cut at a char boundary,
/// then padded with '.' (at most 3) to reach `n` bytes.
fn text_payload(n: usize) -> String {
    let reps = n / TEXT_PATTERN.len();
    let mut rem = n - reps * TEXT_PATTERN.len();
    let mut s = String::with_capacity(n);
    for _ in 0..reps {
        s.push_str(TEXT_PATTERN);
    }
    for ch in TEXT_PATTERN.chars() {
        if ch.len_utf8() > rem {
            break;
        }
        s.push(ch);
        rem -= ch.len_utf8();
    }
    s.extend(std::iter::repeat_n('.', rem));
    assert_eq!(s.len(), n);
    s
}

/// Exactly `n` bytes of xorshift32 (13, 17, 5) output seeded with
/// 0x9E3779B9 ^ n, each 32-bit word little-endian.
fn binary_payload(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ (n as u32);
    let mut out = Vec::with_capacity(n + 3);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn describe(msg: &Message) -> String {
    #[allow(unreachable_patterns)]
    match msg {
        Message::Text(t) => {
            let s: &str = t;
            format!(
                "text({} bytes) {:?}...",
                s.len(),
                s.chars().take(24).collect::<String>()
            )
        }
        Message::Binary(b) => format!("binary({} bytes)", b.len()),
        Message::Ping(p) => format!("ping({} bytes)", p.len()),
        Message::Pong(p) => format!("pong({} bytes)", p.len()),
        Message::Close(Some(f)) => format!("close({} {:?})", f.code.0, f.reason),
        Message::Close(None) => "close(no status)".to_string(),
        _ => "another kind of message".to_string(),
    }
}

fn ok(what: impl std::fmt::Display, t0: Instant) {
    println!("ok   {what} ({} ms)", t0.elapsed().as_millis());
}

/// The payload we sent, to compare with what comes back.
enum Sent {
    Text(String),
    Binary(Vec<u8>),
}

struct Run {
    url: String,
    step_timeout: Duration,
    compression: bool,
    http2: Option<tidewire::Http2>,
    http3: bool,
}

impl Run {
    async fn step<T, F>(&self, what: &str, fut: F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        match tokio::time::timeout(self.step_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("{what}: timed out after {:?}", self.step_timeout)),
        }
    }

    async fn run(&self) -> Result<(), String> {
        let t0 = Instant::now();
        let config = Config::default().limits(
            Limits::default()
                .max_message_size(MAX_MESSAGE_SIZE)
                .max_frame_size(MAX_MESSAGE_SIZE),
        );
        let (mut ws, response) = self
            .step("connect", async {
                let mut builder = ClientBuilder::new(self.url.as_str())
                    .config(config)
                    .compression(self.compression.then(tidewire::DeflateConfig::default));
                if let Some(mode) = self.http2 {
                    builder = builder.http2(mode);
                }
                #[cfg(feature = "http3")]
                {
                    builder = builder.http3(self.http3);
                }
                builder
                    .connect()
                    .await
                    .map_err(|e| format!("connect to {}: {e}", self.url))
            })
            .await?;
        let over = match response.version() {
            http::Version::HTTP_2 => "HTTP/2 extended CONNECT",
            http::Version::HTTP_3 => "HTTP/3 extended CONNECT",
            http::Version::HTTP_11 => "HTTP/1.1",
            _ => "another HTTP version",
        };
        if self.http3 && response.version() != http::Version::HTTP_3 {
            return Err(format!(
                "--http3: the handshake went over {over}, not HTTP/3"
            ));
        }
        if self.http2 == Some(tidewire::Http2::Only) && response.version() != http::Version::HTTP_2
        {
            return Err(format!(
                "--http2 only: the handshake went over {over}, not HTTP/2"
            ));
        }
        let negotiated = ws.compression().is_some();
        if negotiated != self.compression {
            return Err(format!(
                "permessage-deflate offered: {}, negotiated: {negotiated}",
                self.compression
            ));
        }
        let ext = if negotiated {
            "permessage-deflate"
        } else {
            "no extensions"
        };
        ok(
            format_args!(
                "connected to {} (tidewire, {over}, status {}, {ext})",
                self.url,
                response.status().as_u16()
            ),
            t0,
        );

        for (kind, make) in [
            (
                "text",
                (|n| Sent::Text(text_payload(n))) as fn(usize) -> Sent,
            ),
            ("binary", |n| Sent::Binary(binary_payload(n))),
        ] {
            for n in SIZES {
                let t0 = Instant::now();
                let sent = make(n);
                let what = format!("{kind} {n}");
                self.step(&what, async {
                    let msg = match &sent {
                        Sent::Text(s) => Message::text(s.clone()),
                        Sent::Binary(b) => Message::binary(b.clone()),
                    };
                    ws.send(msg)
                        .await
                        .map_err(|e| format!("{what}: send: {e}"))?;
                    let got = next_data(&mut ws, &what).await?;
                    check_echo(&what, &sent, &got)
                })
                .await?;
                ok(format_args!("{kind} {n} bytes echoed"), t0);
            }
        }

        let t0 = Instant::now();
        self.step("ping", async {
            ws.send(Message::Ping(Bytes::from_static(PING_PAYLOAD)))
                .await
                .map_err(|e| format!("ping: send: {e}"))?;
            loop {
                match ws.recv().await {
                    Some(Ok(Message::Pong(p))) if p[..] == *PING_PAYLOAD => return Ok(()),
                    Some(Ok(Message::Pong(p))) => {
                        println!("note unsolicited pong ({} bytes) ignored", p.len())
                    }
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(other)) => {
                        return Err(format!("ping: expected pong, got {}", describe(&other)))
                    }
                    Some(Err(e)) => return Err(format!("ping: {e}")),
                    None => return Err("ping: connection ended before the pong".to_string()),
                }
            }
        })
        .await?;
        let hex: String = PING_PAYLOAD.iter().map(|b| format!("{b:02x}")).collect();
        ok(
            format_args!("ping {hex} answered by pong with same payload"),
            t0,
        );

        // Close: send our close frame, expect the peer's close frame with the same
        // code, then the end of the stream (the library finishes the handshake).
        let t0 = Instant::now();
        let code = self
            .step("close", async {
                let frame = CloseFrame {
                    code: CloseCode(CLOSE_CODE),
                    reason: CLOSE_REASON.into(),
                };
                ws.send(Message::Close(Some(frame)))
                    .await
                    .map_err(|e| format!("close: send: {e}"))?;
                let mut code = None;
                loop {
                    match ws.recv().await {
                        Some(Ok(Message::Close(Some(f)))) => code = Some(f.code.0),
                        Some(Ok(Message::Close(None))) => {
                            return Err("close: peer answered without a status code".to_string())
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(other)) if code.is_none() => {
                            return Err(format!("close: expected close, got {}", describe(&other)))
                        }
                        Some(Ok(_)) => {}
                        // Some libraries report the finished handshake as an error; the
                        // close frame we already received is what counts.
                        Some(Err(e)) if code.is_none() => return Err(format!("close: {e}")),
                        Some(Err(_)) | None => break,
                    }
                }
                code.ok_or_else(|| "close: connection ended without a close frame".to_string())
            })
            .await?;
        if code != CLOSE_CODE {
            return Err(format!(
                "close: expected code {CLOSE_CODE} back, got {code}"
            ));
        }
        ok(format_args!("close {code} handshake completed"), t0);
        Ok(())
    }
}

/// The next text or binary message, skipping control messages.
async fn next_data(
    ws: &mut tidewire::WebSocketStream<tidewire::MaybeTlsStream<tokio::net::TcpStream>>,
    what: &str,
) -> Result<Message, String> {
    loop {
        match ws.recv().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(msg)) => return Ok(msg),
            Some(Err(e)) => return Err(format!("{what}: receive: {e}")),
            None => return Err(format!("{what}: connection ended before the echo")),
        }
    }
}

fn check_echo(what: &str, sent: &Sent, got: &Message) -> Result<(), String> {
    let (a, b): (&[u8], &[u8]) = match (sent, got) {
        (Sent::Text(s), Message::Text(t)) => {
            let t: &str = t;
            (s.as_bytes(), t.as_bytes())
        }
        (Sent::Binary(s), Message::Binary(b)) => (s.as_slice(), &b[..]),
        _ => {
            return Err(format!(
                "{what}: echo has the wrong type: {}",
                describe(got)
            ))
        }
    };
    if a != b {
        return Err(format!(
            "{what}: echo differs: sent {} bytes, got {} bytes, first difference at byte {}",
            a.len(),
            b.len(),
            first_difference(a, b)
        ));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut step_timeout = DEFAULT_STEP_TIMEOUT;
    let mut compression = false;
    let mut http2 = None;
    let mut http3 = false;
    if let Ok(mode) = std::env::var("INTEROP_HTTP2") {
        match mode.parse() {
            Ok(mode) => http2 = Some(mode),
            Err(e) => {
                eprintln!("interop_client: INTEROP_HTTP2: {e}");
                return ExitCode::from(2);
            }
        }
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--step-timeout" => match args.next().and_then(|s| s.parse().ok()) {
                Some(secs) => step_timeout = Duration::from_secs(secs),
                None => {
                    eprintln!("interop_client: --step-timeout needs whole seconds");
                    return ExitCode::from(2);
                }
            },
            "--compression" => compression = true,
            // WebSocket over HTTP/3 (RFC 9220): needs the `http3` feature of tidewire.
            "--http3" if cfg!(feature = "http3") => http3 = true,
            "--http2" => match args.next().map(|s| s.parse::<tidewire::Http2>()) {
                Some(Ok(mode)) => http2 = Some(mode),
                Some(Err(e)) => {
                    eprintln!("interop_client: --http2: {e}");
                    return ExitCode::from(2);
                }
                None => {
                    eprintln!("interop_client: --http2 needs auto, off or only");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: interop_client URL [--compression] [--http2 auto|off|only] [--http3] [--step-timeout SECONDS]");
                return ExitCode::SUCCESS;
            }
            _ if url.is_none() && !arg.starts_with('-') => url = Some(arg),
            _ => {
                eprintln!("interop_client: unexpected argument {arg:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(url) = url else {
        eprintln!(
            "usage: interop_client URL [--compression] [--http2 auto|off|only] [--http3] [--step-timeout SECONDS]"
        );
        return ExitCode::from(2);
    };

    let t0 = Instant::now();
    match (Run {
        url,
        step_timeout,
        compression,
        http2,
        http3,
    })
    .run()
    .await
    {
        Ok(()) => {
            println!(
                "done: scenario passed in {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAIL {e}");
            ExitCode::FAILURE
        }
    }
}
