//! Hostile input against a real `tidewire echo` process: while bad clients send garbage,
//! stall their handshake, claim huge frames, skip the mask or send invalid UTF-8, a good
//! client keeps being served; each bad client gets the right HTTP status or close code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["echo", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tidewire echo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "tidewire echo listening on ws://127.0.0.1:PORT/"
    let addr = line
        .trim()
        .trim_start_matches("tidewire echo listening on ws://")
        .trim_end_matches('/');
    Server {
        addr: addr.parse().expect(&line),
        child,
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads an HTTP response head; returns the status code and the whole head.
fn read_head(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head)
}

fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(request("").as_bytes()).unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// A frame with raw control over fin, opcode, mask and the length field.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![(fin as u8) << 7 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, Some([0x11, 0x22, 0x33, 0x44]))
}

/// Reads one unmasked server frame: (opcode, payload). None at end of stream.
fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[0] & 0x0f, p))
}

/// Expects a close frame with `code`, then the end of the stream.
fn expect_close(s: &mut TcpStream, code: u16) {
    loop {
        match read_frame(s) {
            Some((8, p)) => {
                assert!(p.len() >= 2, "close without code");
                assert_eq!(
                    u16::from_be_bytes([p[0], p[1]]),
                    code,
                    "reason: {}",
                    String::from_utf8_lossy(&p[2..])
                );
                break;
            }
            Some((op, _)) => assert!(op == 1 || op == 2 || op == 10, "unexpected opcode {op}"),
            None => panic!("stream ended without close frame {code}"),
        }
    }
    let mut rest = [0u8; 16];
    assert!(
        matches!(s.read(&mut rest), Ok(0) | Err(_)),
        "server must close TCP after close"
    );
}

/// A well-behaved client round trip.
fn good_roundtrip(addr: SocketAddr, text: &str) {
    let mut s = upgraded(addr);
    s.write_all(&masked(1, text.as_bytes())).unwrap();
    assert_eq!(read_frame(&mut s), Some((1, text.as_bytes().to_vec())));
    s.write_all(&masked(8, &1000u16.to_be_bytes())).unwrap();
    expect_close(&mut s, 1000);
}

#[test]
fn bad_handshakes_get_http_errors() {
    let srv = start(&[]);
    let cases: &[(&[u8], u16)] = &[
        (b"garbage garbage\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", 400),
    ];
    for (bytes, status) in cases {
        let mut s = connect(srv.addr);
        s.write_all(bytes).unwrap();
        let (got, head) = read_head(&mut s);
        assert_eq!(got, *status, "{head}");
    }
    // Wrong version: 426 naming the version we speak.
    let mut s = connect(srv.addr);
    let req = request("").replace("Version: 13", "Version: 8");
    s.write_all(req.as_bytes()).unwrap();
    let (got, head) = read_head(&mut s);
    assert_eq!(got, 426);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    // A head over the size limit: 431.
    let mut s = connect(srv.addr);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = s.write_all(big.as_bytes());
    assert_eq!(read_head(&mut s).0, 431);
    good_roundtrip(srv.addr, "still serving");
}

#[test]
fn protocol_violations_get_the_right_close_codes() {
    let srv = start(&["--max-message-size", "1048576"]);
    // Unmasked client frame: 1002.
    let mut s = upgraded(srv.addr);
    s.write_all(&frame(true, 1, b"hi", None)).unwrap();
    expect_close(&mut s, 1002);
    // Invalid UTF-8 in text: 1007, even before the frame is complete (fail fast).
    let mut s = upgraded(srv.addr);
    let f = masked(
        1,
        &[b'a'; 100]
            .iter()
            .copied()
            .chain([0xff])
            .chain([b'b'; 100])
            .collect::<Vec<_>>(),
    );
    s.write_all(&f[..f.len() - 50]).unwrap();
    expect_close(&mut s, 1007);
    // A claimed 2^63-byte frame (top bit set): 1002, without waiting for any payload.
    let mut s = upgraded(srv.addr);
    s.write_all(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    expect_close(&mut s, 1002);
    // A claimed 2^62-byte frame: over the limit, 1009 from the header alone.
    let mut s = upgraded(srv.addr);
    s.write_all(&[0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    expect_close(&mut s, 1009);
    // A fragmented message growing past --max-message-size: 1009.
    let mut s = upgraded(srv.addr);
    let chunk = vec![7u8; 600_000];
    s.write_all(&frame(false, 2, &chunk, Some([1, 2, 3, 4])))
        .unwrap();
    let _ = s.write_all(&frame(true, 0, &chunk, Some([1, 2, 3, 4])));
    expect_close(&mut s, 1009);
    // Reserved opcode and RSV bits: 1002.
    let mut s = upgraded(srv.addr);
    s.write_all(&masked(3, b"")).unwrap();
    expect_close(&mut s, 1002);
    let mut s = upgraded(srv.addr);
    let mut f = masked(1, b"x");
    f[0] |= 0x40;
    s.write_all(&f).unwrap();
    expect_close(&mut s, 1002);
    // Invalid close code: 1002.
    let mut s = upgraded(srv.addr);
    s.write_all(&masked(8, &999u16.to_be_bytes())).unwrap();
    expect_close(&mut s, 1002);
    good_roundtrip(srv.addr, "still serving");
}

#[test]
fn stalled_and_garbage_clients_do_not_block_good_ones() {
    let srv = start(&["--handshake-timeout", "2"]);
    // One client trickles its handshake byte by byte and stops halfway.
    let mut staller = connect(srv.addr);
    let req = request("");
    for b in req.as_bytes()[..req.len() / 2].iter() {
        staller.write_all(&[*b]).unwrap();
    }
    // Another one floods garbage after a valid handshake.
    let mut flooder = upgraded(srv.addr);
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = flooder.write_all(&garbage);
    // Good clients are served meanwhile, promptly.
    let t = Instant::now();
    for i in 0..20 {
        good_roundtrip(srv.addr, &format!("hello {i}"));
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "good clients slowed: {:?}",
        t.elapsed()
    );
    // The staller gets 408 once the handshake timeout passes.
    let (status, head) = read_head(&mut staller);
    assert_eq!(status, 408, "{head}");
}

#[test]
fn stays_up_and_keeps_serving_after_many_bad_clients() {
    let srv = start(&[]);
    for i in 0..50u32 {
        let mut s = connect(srv.addr);
        if i % 2 == 0 {
            let _ = s.write_all(&i.to_le_bytes().repeat(64));
        } else {
            let mut s = upgraded(srv.addr);
            let _ = s.write_all(&[0x81, 0x85]);
        }
    }
    good_roundtrip(srv.addr, "alive");
}
