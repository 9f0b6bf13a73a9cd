//! `tidewire bench`: each mode runs briefly against a real `tidewire echo` / `tidewire serve`
//! and its `--json` figures are present and plausible.

mod common;

use serde_json::Value;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run tidewire bench")
}

fn bench_json(args: &[&str]) -> Value {
    let out = bench(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

#[test]
fn echo_mode_measures_round_trips_and_server_cpu() {
    let server = common::start(&["--threads", "1"]);
    let pid = server.child.id().to_string();
    let url = format!("ws://{}/", server.addr);
    let v = bench_json(&[
        "echo",
        &url,
        "--conns",
        "4",
        "--inflight",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(v["mode"], "echo");
    assert_eq!(num(&v, "connected"), 4.0);
    assert!(num(&v, "msgs") > 100.0, "{v}");
    assert!(num(&v, "msgs_per_s") > 100.0, "{v}");
    let lat = &v["latency_us"];
    assert!(
        num(lat, "p50") > 0.0 && num(lat, "p50") <= num(lat, "p99"),
        "{v}"
    );
    assert_eq!(num(lat, "count"), num(&v, "msgs"), "{v}");
    // The server did work for every echo: between 0.1 µs and 10 ms of CPU each.
    let per = num(&v, "server_cpu_us_per_msg");
    assert!(per > 0.1 && per < 10_000.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
}

#[test]
fn echo_mode_binary_with_compression_offered() {
    let server = common::start(&["--compression"]);
    let url = format!("ws://{}/", server.addr);
    let v = bench_json(&[
        "echo",
        &url,
        "--conns",
        "2",
        "--size",
        "2000",
        "--binary",
        "--compression",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(v["opcode"], "binary");
    assert_eq!(num(&v, "compression_negotiated"), 2.0, "{v}");
    assert!(num(&v, "msgs") > 10.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
}

#[test]
fn echo_mode_json_payload_counts_wire_bytes_and_compression() {
    // Uncompressed: every echo is 1024 + 4 bytes on the wire, and the kernel's byte count
    // agrees with the parser's count of echoes.
    let server = common::start(&[]);
    let url = format!("ws://{}/", server.addr);
    let v = bench_json(&[
        "echo",
        &url,
        "--conns",
        "3",
        "--size",
        "1024",
        "--payload",
        "json",
        "--binary",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(v["payload"], "json");
    assert_eq!(num(&v, "cycle_msgs"), 128.0, "{v}");
    assert!(v["pmd"].is_null(), "{v}");
    let msgs = num(&v, "msgs");
    assert!(msgs > 100.0, "{v}");
    let rx = num(&v, "rx_wire_bytes_per_msg");
    assert!((rx - 1028.0).abs() < 20.0, "{v}");
    let tx = num(&v, "tx_wire_bytes_per_msg");
    assert!((tx - 1032.0).abs() < 20.0, "{v}");
    assert!((num(&v, "kernel_echoes") / msgs - 1.0).abs() < 0.05, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");

    // Compressed both ways: far fewer bytes than 1024 per message; no count by size.
    let server = common::start(&["--compression"]);
    let url = format!("ws://{}/", server.addr);
    let v = bench_json(&[
        "echo",
        &url,
        "--conns",
        "2",
        "--size",
        "1024",
        "--payload",
        "json",
        "--compression",
        "--deflate-level",
        "6",
        "--deflate-threshold",
        "0",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_eq!(num(&v, "compression_negotiated"), 2.0, "{v}");
    assert!(
        v["pmd"]
            .as_str()
            .unwrap_or("")
            .starts_with("permessage-deflate"),
        "{v}"
    );
    assert!(num(&v, "msgs") > 10.0, "{v}");
    assert!(num(&v, "tx_wire_bytes_per_msg") < 500.0, "{v}");
    assert!(num(&v, "rx_wire_bytes_per_msg") < 700.0, "{v}");
    assert!(v["kernel_echoes"].is_null(), "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
}

/// A plain TCP echo server on its own threads: sends back every byte it reads, each byte
/// XORed with `flip` (0: a true echo).
fn tcp_echo(flip: u8) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    buf[..n].iter_mut().for_each(|b| *b ^= flip);
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn echo_mode_raw_tcp_against_a_plain_tcp_echo() {
    let addr = tcp_echo(0);
    let url = format!("ws://{addr}/");
    for (size, header) in [("300", 8.0), ("70000", 14.0)] {
        let v = bench_json(&[
            "echo",
            &url,
            "--raw-tcp",
            "--conns",
            "3",
            "--inflight",
            "2",
            "--size",
            size,
            "--payload",
            "json",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--json",
        ]);
        assert_eq!(v["transport"], "raw-tcp", "{v}");
        assert_eq!(num(&v, "connected"), 3.0, "{v}");
        let msgs = num(&v, "msgs");
        assert!(msgs > 20.0, "{v}");
        assert_eq!(num(&v["latency_us"], "count"), msgs, "{v}");
        // The masked frame goes out and comes back: payload + header + mask key.
        let frame = size.parse::<f64>().unwrap() + header;
        assert!(
            (num(&v, "rx_wire_bytes_per_msg") / frame - 1.0).abs() < 0.05,
            "{v}"
        );
        assert!((num(&v, "kernel_echoes") / msgs - 1.0).abs() < 0.05, "{v}");
        assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
    }

    // An "echo" that changes the bytes: the probe frame says so, and the run fails.
    let addr = tcp_echo(0xff);
    let url = format!("ws://{addr}/");
    let out = bench(&["echo", &url, "--raw-tcp", "--conns", "3", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("sent back other bytes than the probe frame"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// How a server that is not an echo server misbehaves, after its first answer.
#[derive(Clone, Copy)]
enum NotEcho {
    /// Echoes the first message of each connection, then answers nothing.
    SilentAfterFirst,
    /// Echoes the first message of each connection, then answers each with another one.
    OtherAfterFirst,
    /// Answers pings, and closes every connection (1001) after 300 ms.
    Closes,
}

/// A WebSocket server on its own thread that behaves as `how` says.
fn not_echo(how: NotEcho) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tidewire::accept(tcp).await else {
                        return;
                    };
                    let closes = tokio::time::sleep(std::time::Duration::from_millis(300));
                    tokio::pin!(closes);
                    let mut first = true;
                    loop {
                        let m = tokio::select! {
                            m = ws.recv() => m,
                            _ = &mut closes, if matches!(how, NotEcho::Closes) => {
                                let frame = tidewire::CloseFrame::new(tidewire::CloseCode(1001), "bye");
                                let _ = ws.close(Some(frame)).await;
                                return;
                            }
                        };
                        let Some(Ok(m)) = m else { return };
                        if !m.is_data() {
                            continue;
                        }
                        let reply = match (how, first) {
                            (_, true) => Some(m),
                            (NotEcho::OtherAfterFirst, false) => {
                                Some(tidewire::Message::text("not an echo"))
                            }
                            _ => None,
                        };
                        first = false;
                        if let Some(reply) = reply {
                            if ws.send(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

/// Issue 13, item 10: `tidewire bench echo` against a non-echo endpoint reported 0 msgs/s
/// with errors and exited 0. A run that measured nothing, or measured something other
/// than echoes, prints its report and exits 1 with one line saying why.
#[test]
fn issue_13_echo_mode_fails_when_nothing_or_not_echoes_are_measured() {
    // A hub room sends a message to the others, not back: the probe says so at once.
    let (child, addr) = common::spawn("serve", &[]);
    let _hub = common::Server { child, addr };
    let started = std::time::Instant::now();
    let out = bench(&["echo", &format!("ws://{addr}/rooms/bench"), "--conns", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("did not echo the probe message within 5 s"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));

    let run = |addr: std::net::SocketAddr| {
        let url = format!("ws://{addr}/");
        let args = ["echo", &url, "--conns", "3", "--duration", "0.5"];
        let out = bench(&[&args[..], &["--warmup", "0.3", "--json"]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        // The report is printed all the same.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        (v, stderr)
    };
    // Echoes the probe (and each connection's first message), then nothing.
    let (v, stderr) = run(not_echo(NotEcho::SilentAfterFirst));
    assert_eq!(num(&v, "msgs"), 0.0, "{v}");
    assert!(stderr.contains("nothing was measured"), "{stderr}");
    assert!(stderr.contains("echoes still outstanding"), "{stderr}");
    // Echoes the probe, then answers with other messages.
    let (v, stderr) = run(not_echo(NotEcho::OtherAfterFirst));
    assert_eq!(num(&v, "connected"), 3.0, "{v}");
    assert!(
        stderr.contains("3 of 3 connections got back something other than what they sent"),
        "{stderr}"
    );
    assert!(stderr.contains("is not an echo server"), "{stderr}");
}

#[test]
fn issue_13_fanout_and_connections_fail_when_nothing_is_measured() {
    // The hub's live: namespace refuses publishing: nothing is delivered.
    let (child, addr) = common::spawn("serve", &[]);
    let _hub = common::Server { child, addr };
    let url = format!("ws://{addr}/ws");
    let args = ["fanout", &url, "--subscribers", "2", "--channel", "live:x"];
    let out = bench(&[&args[..], &["--duration", "0.3", "--warmup", "0", "--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nothing was measured: no publication was acknowledged"),
        "{stderr}"
    );
    assert!(stderr.contains("publish refused"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(num(&v, "acked_total"), 0.0, "{v}");

    // Every connection is closed by the server during the hold: none held.
    let url = format!("ws://{}/", not_echo(NotEcho::Closes));
    let out = bench(&["connections", &url, "--conns", "3", "--hold", "1", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nothing was measured: no connection stayed open through the hold"),
        "{stderr}"
    );
    assert!(
        stderr.contains("closed by server with code 1001"),
        "{stderr}"
    );
    let v: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    )
    .unwrap();
    assert_eq!(num(&v, "held"), 0.0, "{v}");
}

#[test]
fn fanout_mode_delivers_every_offset_once() {
    let (child, addr) = common::spawn("serve", &[]);
    let server = common::Server { child, addr };
    let pid = server.child.id().to_string();
    let url = format!("ws://{}/ws", server.addr);
    let v = bench_json(&[
        "fanout",
        &url,
        "--subscribers",
        "20",
        "--rate",
        "200",
        "--duration",
        "1.5",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(v["mode"], "fanout");
    assert_eq!(num(&v, "subscribed"), 20.0, "{v}");
    let pubs = num(&v, "publications");
    assert!(
        pubs > 100.0 && pubs < 400.0,
        "about 300 publications expected: {v}"
    );
    // Every subscriber receives every publication: deliveries ≈ 20 × publications (the
    // window cuts a few publications at its edges).
    let deliveries = num(&v, "deliveries");
    assert!(deliveries > 15.0 * pubs && deliveries < 25.0 * pubs, "{v}");
    assert_eq!(num(&v, "missing"), 0.0, "{v}");
    assert_eq!(num(&v, "duplicates"), 0.0, "{v}");
    let lat = &v["latency_us"];
    assert!(num(lat, "p50") > 0.0 && num(lat, "p99") < 1e6, "{v}");
    assert!(num(&v, "server_cpu_us_per_delivery") > 0.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");

    // Unlimited rate with a window of 4 publishes: still nothing missing.
    let v = bench_json(&[
        "fanout",
        &url,
        "--subscribers",
        "5",
        "--rate",
        "0",
        "--inflight",
        "4",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--channel",
        "other",
        "--json",
    ]);
    assert!(num(&v, "publications") > 10.0, "{v}");
    assert_eq!(num(&v, "missing"), 0.0, "{v}");
    assert_eq!(num(&v, "duplicates"), 0.0, "{v}");
}

#[test]
fn connections_mode_reports_memory_per_connection() {
    let echo = common::start(&[]);
    let pid = echo.child.id().to_string();
    let url = format!("ws://{}/", echo.addr);
    let v = bench_json(&[
        "connections",
        &url,
        "--conns",
        "200",
        "--sources",
        "2",
        "--hold",
        "0.3",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(v["mode"], "connections");
    assert_eq!(num(&v, "open"), 200.0, "{v}");
    assert_eq!(num(&v, "held"), 200.0, "{v}");
    assert_eq!(num(&v, "sources"), 2.0, "{v}");
    assert!(num(&v, "rss_after_kb") > 0.0, "{v}");
    let per = num(&v, "kb_per_conn");
    assert!(per > -100.0 && per < 1000.0, "{v}");

    // The hub's rooms endpoint too.
    let (child, addr) = common::spawn("serve", &[]);
    let hub = common::Server { child, addr };
    let url = format!("ws://{}/rooms/bench", hub.addr);
    let v = bench_json(&[
        "connections",
        &url,
        "--conns",
        "50",
        "--hold",
        "0.2",
        "--json",
    ]);
    assert_eq!(num(&v, "open"), 50.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
}

#[test]
fn connections_mode_with_one_compressed_message_each() {
    let args = |url: &str| {
        bench_json(&[
            "connections",
            url,
            "--conns",
            "20",
            "--hold",
            "0.1",
            "--compression",
            "--message-size",
            "2048",
            "--json",
        ])
    };
    let echo = common::start(&["--compression"]);
    let v = args(&format!("ws://{}/", echo.addr));
    assert_eq!(num(&v, "held"), 20.0, "{v}");
    assert_eq!(num(&v, "message_size"), 2048.0, "{v}");
    assert_eq!(num(&v, "compression_negotiated"), 20.0, "{v}");
    assert_eq!(num(&v, "replies_compressed"), 20.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");

    // A server without compression: the same messages come back whole.
    let plain = common::start(&[]);
    let v = args(&format!("ws://{}/", plain.addr));
    assert_eq!(num(&v, "held"), 20.0, "{v}");
    assert_eq!(num(&v, "compression_negotiated"), 0.0, "{v}");
    assert_eq!(num(&v, "replies_compressed"), 0.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
}

#[test]
fn connections_mode_says_when_open_and_a_signal_ends_the_hold() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let (child, addr) = common::spawn("serve", &[]);
    let hub = common::Server { child, addr };
    let pid = hub.child.id().to_string();
    let url = format!("ws://{}/ws", hub.addr);
    let mut gen = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "bench",
            "connections",
            &url,
            "--conns",
            "30",
            "--hold",
            "60",
            "--subprotocol",
            "tidewire.v1",
        ])
        .args(["--server-pid", &pid, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidewire bench");
    // The one stderr line that says every connection is open; EOF if the bench died.
    let mut stderr = BufReader::new(gen.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let _ = gen.kill();
            panic!("bench ended before saying it holds its connections");
        }
    }
    assert!(line.contains("30/30 open, 0 failed"), "{line}");
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &gen.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // It reports and exits well before the 60 s hold.
    let status = loop {
        if let Some(s) = gen.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = gen.kill();
            panic!("bench still running 15 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut gen.stdout.take().unwrap(), &mut out).unwrap();
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["stopped_by_signal"], true, "{v}");
    assert_eq!(num(&v, "held"), 30.0, "{v}");
    assert!(num(&v, "hold_s") < 15.0, "{v}");
    // The hub's /ws waits for a `connect` 10 s only with auth on: none is lost here.
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
    assert!(num(&v, "generator_rss_after_kb") > 0.0, "{v}");
    assert!(num(&v, "rss_after_kb") > 0.0, "{v}");
    assert!(v["generator_kb_per_conn"].is_number(), "{v}");
}

#[test]
fn channels_mode_subscribes_every_channel_and_delivers_one_publication_each() {
    let (child, addr) = common::spawn("serve", &["--no-demo"]);
    let hub = common::Server { child, addr };
    let pid = hub.child.id().to_string();
    let url = format!("ws://{}/ws", hub.addr);
    let v = bench_json(&[
        "channels",
        &url,
        "--channels",
        "1200",
        "--per-connection",
        "400",
        "--hold",
        "0.2",
        "--publish",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(v["mode"], "channels");
    assert_eq!(num(&v, "connections"), 3.0, "{v}");
    assert_eq!(num(&v, "open"), 3.0, "{v}");
    assert_eq!(num(&v, "subscribed"), 1200.0, "{v}");
    assert_eq!(num(&v, "refused"), 0.0, "{v}");
    // Every channel got its one publication, exactly once (400 per connection is above
    // the hub's publish burst of 200: some were sent again after error 107).
    assert_eq!(num(&v, "published"), 1200.0, "{v}");
    assert_eq!(num(&v, "received"), 1200.0, "{v}");
    assert_eq!(num(&v, "missing"), 0.0, "{v}");
    assert_eq!(num(&v, "duplicates"), 0.0, "{v}");
    assert_eq!(num(&v, "wrong"), 0.0, "{v}");
    assert!(num(&v, "rate_limited") > 0.0, "{v}");
    // The default namespace has presence: each subscriber's own join event.
    assert_eq!(num(&v, "other_pushes"), 1200.0, "{v}");
    // Memory: present, and a channel costs the server something.
    assert!(num(&v, "rss_before_kb") > 0.0, "{v}");
    assert!(num(&v, "rss_after_kb") > num(&v, "rss_before_kb"), "{v}");
    assert!(num(&v, "kb_per_channel") > 0.0, "{v}");
    assert!(num(&v, "bytes_per_channel") > 0.0, "{v}");
    assert!(num(&v, "rss_after_publish_kb") > 0.0, "{v}");
    assert!(num(&v, "generator_rss_after_kb") > 0.0, "{v}");
    assert!(num(&v, "server_cpu_us_per_subscribe") > 0.0, "{v}");
    assert_eq!(num(&v, "errors_total"), 0.0, "{v}");
    let prefix = v["prefix"].as_str().unwrap_or_default().to_owned();
    assert!(prefix.starts_with("bench-ch-"), "{v}");

    // A second run on the same hub makes new channels (a new run id): nothing is
    // refused as already subscribed, and the table names them.
    let out = bench(&["channels", &url, "--channels", "10", "--hold", "0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10/10 in"), "{stdout}");
    assert!(!stdout.contains(&prefix), "{stdout}");
}

#[test]
fn channels_mode_above_max_subscriptions_fails_naming_the_limit() {
    let dir = std::env::temp_dir().join(format!("tidewire-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("max-subs.toml");
    std::fs::write(&config, "[limits]\nmax_subscriptions = 50\n").unwrap();
    let (child, addr) = common::spawn(
        "serve",
        &["--no-demo", "--config", config.to_str().unwrap()],
    );
    let _hub = common::Server { child, addr };
    let url = format!("ws://{addr}/ws");
    let out = bench(&[
        "channels",
        &url,
        "--channels",
        "120",
        "--per-connection",
        "60",
        "--hold",
        "0",
        "--json",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or("");
    assert!(last.contains("error 111"), "{stderr}");
    assert!(last.contains("lower --per-connection (now 60)"), "{stderr}");
    assert!(last.contains("raise limits.max_subscriptions"), "{stderr}");
    // The report is printed all the same: 50 of each connection's 60 subscribed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(num(&v, "subscribed"), 100.0, "{v}");
    assert_eq!(num(&v, "refused_limit"), 20.0, "{v}");
    assert_eq!(v["errors"]["subscribe refused: error 111"], 20, "{v}");

    // Nothing subscribed at all (a namespace the hub does not know): exit 1, one line.
    let out = bench(&[
        "channels",
        &url,
        "--channels",
        "5",
        "--prefix",
        "nope:",
        "--hold",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 2, "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or("");
    assert!(
        last.contains("nothing was measured: no channel was subscribed"),
        "{stderr}"
    );
    assert!(last.contains("subscribe refused: error 103"), "{stderr}");
}

#[test]
fn refused_connection_is_one_clear_line_and_fails() {
    // A port that was just free: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let out = bench(&["echo", &url, "--duration", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("connect refused"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_name_the_flag() {
    let out = bench(&["echo", "ws://127.0.0.1:1/", "--conns", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conns"));
    let out = bench(&["fanout", "ws://127.0.0.1:1/ws", "--rate", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
    let out = bench(&["connections", "ftp://x/"]);
    assert_eq!(out.status.code(), Some(2));
    let out = bench(&["echo", "ws://127.0.0.1:1/", "--duration", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
    let out = bench(&["echo", "ws://127.0.0.1:1/", "--payload", "random"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload"));
    let out = bench(&["echo", "ws://127.0.0.1:1/", "--raw-tcp", "--compression"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--raw-tcp") && stderr.contains("--compression"),
        "{stderr}"
    );
    let out = bench(&["echo", "ws://127.0.0.1:1/", "--deflate-level", "6"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--compression"));
    let out = bench(&["channels", "ws://127.0.0.1:1/ws", "--per-connection", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--per-connection"));
    let out = bench(&["connections", "ws://127.0.0.1:1/", "--message-size", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--message-size"));
}

/// Issue 13, item 4: the URLs of every mode are parsed strictly (a bad port went to 80).
#[test]
fn issue_13_bad_urls_are_usage_errors_in_every_mode() {
    for (mode, url, fault) in [
        (
            "echo",
            "ws://127.0.0.1:99999/",
            "port 99999 is out of range",
        ),
        (
            "fanout",
            "ws://127.0.0.1:abc/ws",
            "port \"abc\" is not a number",
        ),
        ("connections", "ws://127.0.0.1:0/", "port 0 is out of range"),
        ("echo", "ws://127.0.0.1/#x", "fragment"),
    ] {
        let out = bench(&[mode, url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{mode} {url}: {stderr}");
        assert!(stderr.contains(&format!("invalid URL {url}")), "{stderr}");
        assert!(stderr.contains(fault), "{stderr}");
    }
}
