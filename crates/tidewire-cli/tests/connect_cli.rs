//! `tidewire connect` as a person or a script runs it: a real process with stdin and
//! stdout, against `tidewire echo`, `tidewire serve` (rooms and /ws), a Python `websockets`
//! server, and each way a connection can fail.

mod common;

use common::proxy::Proxy;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A running `tidewire connect`, its output read line by line on threads.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
    err_seen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn connect(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidewire connect");
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    Proc {
        stdin: child.stdin.take(),
        child,
        out,
        err,
        err_seen: Vec::new(),
    }
}

impl Proc {
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin closed");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn out_line(&self) -> String {
        self.out
            .recv_timeout(WAIT)
            .expect("no output line within 20 s")
    }

    /// Waits for a stderr line containing `needle`.
    fn err_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) => {
                    self.err_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line with {needle:?}; saw {:?}", self.err_seen),
            }
        }
    }

    /// Closes stdin, waits for the exit; returns the status and the rest of the output.
    fn finish(mut self) -> (i32, String, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "tidewire connect did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let collect = |rx: &Receiver<String>| {
            let mut s = String::new();
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
                s.push_str(&line);
                s.push('\n');
            }
            s
        };
        let out = collect(&self.out);
        let mut err = self.err_seen.join("\n");
        err.push_str(&collect(&self.err));
        (status.code().unwrap_or(-1), out, err)
    }
}

/// Runs `tidewire connect ARGS` with `input` on stdin to the end.
fn run(args: &[&str], input: &str) -> (i32, String, String) {
    let mut p = connect(args);
    p.stdin
        .as_mut()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    p.finish()
}

fn echo_url(server: &common::Server) -> String {
    format!("ws://{}/", server.addr)
}

#[test]
fn text_lines_to_echo_and_back() {
    let echo = common::start(&[]);
    let (code, out, err) = run(&[&echo_url(&echo)], "hello\nworld\r\n\nlast\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello\nworld\n\nlast\n");
    assert!(err.contains("connected to"), "{err}");
    assert!(err.contains("closed by the client: 1000"), "{err}");
}

#[test]
fn binary_lines_print_as_hex_or_base64() {
    let echo = common::start(&[]);
    let url = echo_url(&echo);
    let (code, out, _) = run(&["--binary", &url], "hello\n\x01\x02\n");
    assert_eq!(code, 0);
    assert_eq!(out, "68656c6c6f\n0102\n");
    let (code, out, _) = run(&["--binary", "--base64", "-q", &url], "hello\n");
    assert_eq!(code, 0);
    assert_eq!(out, "aGVsbG8=\n");
}

#[test]
fn json_output_is_one_object_per_line() {
    let echo = common::start(&[]);
    let url = echo_url(&echo);
    let (code, out, err) = run(&["--json", &url], "hi there\n");
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "JSON mode reports on stdout: {err}");
    let objs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = objs.iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["open", "text", "close"]);
    assert!(objs.iter().all(|o| o["ts"].as_f64().unwrap() > 1.6e9));
    assert_eq!(objs[1]["data"], "hi there");
    assert_eq!(
        (objs[2]["code"].as_u64(), objs[2]["by"].as_str()),
        (Some(1000), Some("client"))
    );

    let (_, out, _) = run(&["--json", "--binary", "-q", &url], "ab\n");
    let obj: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(obj["type"], "binary");
    assert_eq!(
        (obj["data"].as_str(), obj["encoding"].as_str()),
        (Some("6162"), Some("hex"))
    );
}

#[test]
fn once_sends_one_line_prints_one_reply() {
    let echo = common::start(&[]);
    let mut p = connect(&["--once", &echo_url(&echo)]);
    // stdin stays open: --once does not wait for its end.
    p.send("first");
    p.send("second");
    assert_eq!(p.out_line(), "first");
    let start = Instant::now();
    let deadline = start + WAIT;
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "--once did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        p.out.recv_timeout(Duration::from_secs(1)).is_err(),
        "printed more than one"
    );
}

#[test]
fn hub_room_between_two_processes() {
    let hub = common::hub::serve(&[]);
    let url = format!("ws://{}/rooms/x", hub.addr);
    let mut b = connect(&[&url]);
    b.err_line("connected to");
    let (code, _, err) = run(&[&url], "hello from a\nsecond\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.out_line(), "hello from a");
    assert_eq!(b.out_line(), "second");
    let (code, _, err) = b.finish();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn hub_channels_with_the_subprotocol() {
    let hub = common::hub::serve(&[]);
    let url = format!("ws://{}/ws", hub.addr);
    let mut p = connect(&["--subprotocol", "tidewire.v1", &url]);
    assert!(p
        .err_line("connected to")
        .contains("subprotocol tidewire.v1"));
    p.send(r#"{"id":1,"op":"subscribe","channel":"news"}"#);
    let reply: Value = serde_json::from_str(&p.out_line()).unwrap();
    assert_eq!(
        (reply["id"].as_u64(), reply["ok"].as_bool()),
        (Some(1), Some(true))
    );
    p.send(r#"{"id":2,"op":"publish","channel":"news","data":{"text":"hi"}}"#);
    // The reply, the publication and our own presence join, in some order.
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &Value| v["data"]["text"] == "hi") {
        seen.push(serde_json::from_str(&p.out_line()).unwrap());
    }
    let (code, _, err) = p.finish();
    assert_eq!(code, 0, "{err}");

    let (code, out, _) = run(
        &["--once", "--subprotocol", "tidewire.v1", &url],
        "{\"id\":9,\"op\":\"ping\"}\n",
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), r#"{"id":9,"ok":true,"result":{}}"#);
}

/// Python `websockets` (interop/py_server.py) as the server. Needs interop/.venv, which
/// interop/run.sh and interop/connect.sh create; skipped without it unless
/// TIDEWIRE_REQUIRE_PYTHON=1 (interop/connect.sh sets it).
#[test]
fn python_websockets_server() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("interop/.venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("TIDEWIRE_REQUIRE_PYTHON").is_none(),
            "{} is missing",
            python.display()
        );
        eprintln!(
            "skipped: {} not found (bash interop/connect.sh creates it and runs this test)",
            python.display()
        );
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(&python)
        .arg(root.join("interop/py_server.py"))
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.contains("listening"), "{banner}");
    let url = format!("ws://127.0.0.1:{port}/");
    // websockets answers a close frame at once, before its handler has echoed what came
    // just before it: wait for each echo before the end of input.
    for (args, lines, echoes) in [
        (
            vec![],
            ["from tidewire", "üñí©ødé"],
            ["from tidewire", "üñí©ødé"],
        ),
        (vec!["--binary"], ["\x00\x7f", "ab"], ["007f", "6162"]),
        (
            vec!["--json", "-q"],
            ["{}", "x"],
            [r#""data":"{}""#, r#""data":"x""#],
        ),
    ] {
        let mut p = connect(&[&args[..], &[url.as_str()]].concat());
        for (line, echo) in lines.iter().zip(echoes) {
            p.send(line);
            let got = p.out_line();
            assert!(got.contains(echo), "{args:?}: {got}");
        }
        let (code, _, err) = p.finish();
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn refused_connection_is_one_line_and_status_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out, err) = run(&[&format!("ws://127.0.0.1:{port}/")], "");
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect to ws://127.0.0.1:"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
}

#[test]
fn bad_urls_and_headers_are_usage_errors() {
    for (args, needle) in [
        (vec!["http://x"], "must start with ws:// or wss://"),
        (vec!["ws://"], "invalid URL"),
        (
            vec!["-H", "NoColonHere", "ws://127.0.0.1:1/"],
            "expected 'Name: value'",
        ),
        (
            vec!["-H", "Bad Name: x", "ws://127.0.0.1:1/"],
            "expected 'Name: value'",
        ),
        (vec![], "<URL>"),
    ] {
        let (code, _, err) = run(&args, "");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A free loopback port (bound, noted, closed).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Issue 13, item 4: `ws://127.0.0.1:99999/` and `ws://127.0.0.1:abc/` connected to a
/// server on port 80. They, and every other malformed URL, are usage errors (exit 2) that
/// name the URL and the fault, and nothing is connected to: a listener on port 80 (when
/// this test may open one) sees no connection.
#[test]
fn issue_13_bad_ports_exit_2_and_never_connect() {
    let port_80 = std::net::TcpListener::bind("127.0.0.1:80").ok();
    if let Some(l) = &port_80 {
        l.set_nonblocking(true).unwrap();
    } else {
        eprintln!("127.0.0.1:80 not available: not checking that nothing connects there");
    }
    for (url, fault) in [
        (
            "ws://127.0.0.1:99999/",
            "port 99999 is out of range (1 to 65535)",
        ),
        ("ws://127.0.0.1:abc/", "port \"abc\" is not a number"),
        ("ws://127.0.0.1:0/", "port 0"),
        ("ws://127.0.0.1:/", "empty port"),
        ("ws://user:pw@127.0.0.1/", "user information"),
        ("ws://127.0.0.1/#top", "fragment"),
        ("ws://:9001/", "missing host"),
        ("wss://127.0.0.1:70000/", "out of range"),
    ] {
        let started = Instant::now();
        let (code, out, err) = run(&[url], "");
        assert_eq!(code, 2, "{url}: {err}");
        assert!(out.is_empty(), "{url}: {out}");
        assert!(
            err.contains(&format!("invalid URL {}", url.replace("pw@", "***@"))),
            "{url}: {err}"
        );
        assert!(err.contains(fault), "{url}: {err}");
        assert!(
            !err.contains("cannot connect") && !err.contains("connected to"),
            "{url}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
    }
    // --reconnect parses the same URL the same way.
    let (code, _, err) = run(&["--reconnect", "ws://127.0.0.1:99999/"], "");
    assert_eq!(code, 2, "{err}");
    if let Some(l) = port_80 {
        match l.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("something connected to port 80: {other:?}"),
        }
    }
}

/// Issue 13, item 10: `wss://` to a plain port said "received corrupt message of type
/// InvalidContentType".
#[test]
fn issue_13_wss_to_a_plain_port_says_the_server_may_not_speak_tls() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let (code, out, err) = run(&[&format!("wss://{addr}/")], "");
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "TLS handshake failed: the server at {addr} does not seem to speak TLS (try ws://)"
        )),
        "{err}"
    );
    assert!(!err.contains("InvalidContentType"), "{err}");
}

/// Issue 13, item 10: after a 3 s outage `tidewire connect --reconnect` waited 11 s on
/// attempt 7. Each wait is at most --max-delay (2 s by default) and says what it waits for;
/// the server back, the client is back within that.
#[test]
fn issue_13_reconnect_waits_at_most_the_cap_and_says_why() {
    let listen = format!("127.0.0.1:{}", free_port());
    let (child, addr) = common::spawn_at("echo", &listen, &[]);
    let echo = common::Server { child, addr };
    let url = format!("ws://{addr}/");
    let mut p = connect(&["--reconnect", &url]);
    p.err_line("connected to");
    // A 4 s outage: the server is gone, every attempt is refused.
    drop(echo);
    p.err_line("disconnected: 1006");
    std::thread::sleep(Duration::from_secs(4));
    let (child, _) = common::spawn_at("echo", &listen, &[]);
    let _echo = common::Server { child, addr };
    let back = Instant::now();
    p.err_line("connected to");
    let waited = back.elapsed();
    let prefix = format!("tidewire connect: reconnecting to {url} in ");
    let waits: Vec<(f64, &str)> = p
        .err_seen
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (delay, rest) = rest.split_once(" (attempt ")?;
            let secs = match delay.split_once(' ')? {
                (ms, "ms") => ms.parse::<f64>().ok()? / 1000.0,
                (s, "s") => s.parse().ok()?,
                _ => return None,
            };
            Some((secs, rest.split_once("): ")?.1))
        })
        .collect();
    // 250 ms doubling: 7 attempts or more in 4 s only with a cap near 2 s.
    assert!(waits.len() >= 4, "{:?}", p.err_seen);
    assert!(waits.iter().all(|(s, _)| *s <= 2.0), "{:?}", p.err_seen);
    assert!(waits[0].1.starts_with("disconnected: 1006"), "{waits:?}");
    assert!(
        waits[1..]
            .iter()
            .all(|(_, why)| *why == "connection refused"),
        "{waits:?}"
    );
    assert!(
        waited < Duration::from_millis(3500),
        "back after {waited:?}"
    );
    p.send("after");
    assert_eq!(p.out_line(), "after");
    let (code, _, err) = p.finish();
    assert_eq!(code, 0, "{err}");

    // --max-delay changes the cap.
    let (code, _, err) = run(&["--reconnect", "--max-delay", "0", &url], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-delay"), "{err}");
    let (code, _, err) = run(&["--max-delay", "1s", &url], "");
    assert_eq!(code, 2, "--max-delay without --reconnect: {err}");
}

#[test]
fn not_found_prints_status_and_reason() {
    let hub = common::hub::serve(&[]);
    let (code, _, err) = run(&[&format!("ws://{}/nope", hub.addr)], "");
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("HTTP 404 Not Found"), "{err}");
    assert!(err.contains("no route for /nope"), "{err}");
}

#[test]
fn headers_and_origin_are_sent() {
    // A server that records the request head and refuses it with a reason.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
            head.push(b[0]);
        }
        let body = "try again with a token\n";
        let resp = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
        String::from_utf8(head).unwrap()
    });
    let url = format!("ws://{addr}/private");
    let args = [
        "-H",
        "Authorization: Bearer abc",
        "-H",
        "X-Trace:1",
        "--origin",
        "http://app.example",
    ];
    let (code, _, err) = run(&[&args[..], &[url.as_str()]].concat(), "");
    let head = server.join().unwrap().to_ascii_lowercase();
    assert!(head.contains("\r\nauthorization: bearer abc\r\n"), "{head}");
    assert!(head.contains("\r\nx-trace: 1\r\n"), "{head}");
    assert!(
        head.contains("\r\norigin: http://app.example\r\n"),
        "{head}"
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 401 Unauthorized: try again with a token"),
        "{err}"
    );

    // The hub refuses a foreign Origin with 403 and says why.
    let hub = common::hub::serve(&[]);
    let url = format!("ws://{}/rooms/x", hub.addr);
    let (code, _, err) = run(&["--origin", "http://evil.example", &url], "");
    assert_eq!(code, 1);
    assert!(err.contains("HTTP 403 Forbidden"), "{err}");
    assert!(
        err.contains("origin not allowed: http://evil.example"),
        "{err}"
    );
}

#[test]
fn refused_subprotocol_fails() {
    let echo = common::start(&["--protocols", "chat"]);
    let (code, _, err) = run(&["--subprotocol", "other", &echo_url(&echo)], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("accepted none of the offered subprotocols (other)"),
        "{err}"
    );
    let (code, _, err) = run(&["--subprotocol", "chat", &echo_url(&echo)], "x\n");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("subprotocol chat"), "{err}");
    // The hub's /ws speaks only tidewire.v1, and refuses any other offer with its reason.
    let hub = common::hub::serve(&[]);
    let url = format!("ws://{}/ws", hub.addr);
    let (code, _, err) = run(&["--subprotocol", "mqtt", &url], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 400") && err.contains("tidewire.v1") && err.contains("(offered: mqtt)"),
        "{err}"
    );
}

#[test]
fn insecure_accepts_a_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("tidewire-connect-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let echo = common::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let url = format!("wss://localhost:{}/", echo.addr.port());
    let (code, _, err) = run(&[&url], "");
    assert_eq!(code, 1);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(err.contains("self-signed, or a private CA"), "{err}");
    let (code, out, err) = run(&["--insecure", &url], "over tls\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "over tls\n");
    // --ca-file: this certificate trusted as a root, nothing else.
    let (code, out, err) = run(
        &["--ca-file", cert_path.to_str().unwrap(), &url],
        "trusted\n",
    );
    assert_eq!((code, out.as_str()), (0, "trusted\n"), "{err}");
    let (code, _, err) = run(&["--ca-file", key_path.to_str().unwrap(), &url], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("--ca-file") && err.contains("no certificate in it"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_close_codes_decide_the_exit_status() {
    // The hub closes /ws with 4003 on a binary frame: exit 1 naming the code and reason.
    let hub = common::hub::serve(&[]);
    let url = format!("ws://{}/ws", hub.addr);
    let mut p = connect(&["--subprotocol", "tidewire.v1", "--binary", &url]);
    p.send("bin");
    let (code, _, err) = p.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("closed by the server: 4003"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_heartbeat_through_a_cut() {
    let echo = common::start(&[]);
    let proxy = Proxy::start(echo.addr).await;
    let url = format!("ws://{}/", proxy.addr);

    // --reconnect: a cut is reported, the connection comes back, lines flow again.
    let mut p = connect(&["--reconnect", &url]);
    p.err_line("connected to");
    p.send("before");
    assert_eq!(p.out_line(), "before");
    proxy.sever();
    p.err_line("disconnected: 1006");
    p.err_line(&format!("reconnecting to {url} in "));
    p.err_line("connected to");
    p.send("after");
    assert_eq!(p.out_line(), "after");
    let (code, _, err) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");

    // --ping-interval without --reconnect: a silent connection ends the process.
    let mut p = connect(&["--ping-interval", "100ms", &url]);
    p.err_line("connected to");
    proxy.blackhole(true);
    let started = Instant::now();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        // stdin stays open: only the heartbeat can end this.
        let deadline = Instant::now() + WAIT;
        while p.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no heartbeat timeout");
            std::thread::sleep(Duration::from_millis(10));
        }
        p.finish()
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("keepalive timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An HTTP CONNECT proxy on a thread: its port, and the targets it tunnelled to.
fn connect_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let targets = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let target = String::from_utf8_lossy(&head)
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(target.clone());
                let (_, port) = target.rsplit_once(':').unwrap();
                let server =
                    TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let mut server = server;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut client, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, targets)
}

#[test]
fn through_a_proxy_from_the_flag_or_the_environment() {
    let echo = common::start(&[]);
    let url = format!("ws://localhost:{}/", echo.addr.port());
    let (port, targets) = connect_proxy();
    let proxy = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run(&["--once", "--proxy", &proxy, &url], "via the flag\n");
    assert_eq!((code, out.as_str()), (0, "via the flag\n"), "{err}");
    // From http_proxy, as curl reads it (for a host that is not loopback: `echo.test`, a
    // name only this proxy knows).
    let far = format!("ws://echo.test:{}/", echo.addr.port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["connect", "--once", &far])
        .env("http_proxy", &proxy)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"via the environment\n")
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&done.stdout),
        "via the environment\n"
    );
    assert_eq!(
        *targets.lock().unwrap(),
        [
            format!("localhost:{}", echo.addr.port()),
            format!("echo.test:{}", echo.addr.port())
        ]
    );
    // --proxy none goes straight to the server; a bad proxy names the flag.
    let (code, out, _) = run(&["--once", "--proxy", "none", &url], "direct\n");
    assert_eq!((code, out.as_str()), (0, "direct\n"));
    assert_eq!(targets.lock().unwrap().len(), 2);
    let (code, _, err) = run(&["--once", "--proxy", "ftp://p:1", &url], "");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--proxy") && err.contains("unknown proxy scheme"),
        "{err}"
    );
}
