//! Helpers shared by the tests that drive a real `tidewire` process over raw sockets.
#![allow(dead_code)]

pub mod backend;
pub mod cluster;
pub mod hub;
pub mod proxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Writes `text` to `name` in a directory of this test process; returns its path. The file
/// is written aside and renamed into place: tests run in parallel, and a server started by
/// one must never read it half-written by another.
pub fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("tidewire-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let aside = dir.join(format!(".{name}.{n}"));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    path
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tidewire COMMAND --listen 127.0.0.1:0 EXTRA...` and returns it with the address
/// from the first line it prints ("... listening on SCHEME://HOST:PORT/ ...").
pub fn spawn(command: &str, extra: &[&str]) -> (Child, SocketAddr) {
    spawn_at(command, "127.0.0.1:0", extra)
}

/// Starts `tidewire COMMAND --listen LISTEN EXTRA...` (a fixed port: a restart on the same
/// address) and returns it with the address it printed.
pub fn spawn_at(command: &str, listen: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    cmd.args([command, "--listen", listen]).args(extra);
    started(cmd)
}

/// Starts `tidewire COMMAND --listen 127.0.0.1:0 EXTRA...` with at most `files` open
/// descriptors (RLIMIT_NOFILE, soft and hard, so the binary cannot raise it).
pub fn spawn_with_open_files(command: &str, files: u64, extra: &[&str]) -> (Child, SocketAddr) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    cmd.args([command, "--listen", "127.0.0.1:0"]).args(extra);
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    started(cmd)
}

/// Starts `tidewire COMMAND --listen 127.0.0.1:0 EXTRA...` with its log (stderr) piped to
/// the caller: `child.stderr` is there to read.
pub fn spawn_logged(command: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    cmd.args([command, "--listen", "127.0.0.1:0"]).args(extra);
    started_with(cmd, Stdio::piped())
}

/// Collects a child's stderr lines on a thread; read them with `lines()`.
pub struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl LogLines {
    pub fn collect(child: &mut Child) -> LogLines {
        let err = child.stderr.take().expect("stderr piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        LogLines(lines)
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) until some line contains `needle`; returns all lines.
    pub fn wait_for(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.lines();
            if lines.iter().any(|l| l.contains(needle)) || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns `cmd` and returns it with the address from the first line it prints; its stderr
/// goes nowhere.
pub fn started(cmd: Command) -> (Child, SocketAddr) {
    started_with(cmd, Stdio::null())
}

fn started_with(mut cmd: Command, stderr: Stdio) -> (Child, SocketAddr) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn tidewire");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect(&line);
    (child, addr.parse().expect(&line))
}

/// Starts `tidewire echo --listen 127.0.0.1:0 EXTRA...`.
pub fn start(extra: &[&str]) -> Server {
    let (child, addr) = spawn("echo", extra);
    Server { addr, child }
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn request(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads an HTTP response head; returns the status code and the whole head.
pub fn read_head(s: &mut TcpStream) -> (u16, String) {
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

pub fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(request("").as_bytes()).unwrap();
    let (status, head) = read_head(&mut s);
    assert_eq!(status, 101, "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// A frame with raw control over fin, opcode, mask and the length field.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
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

pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, Some([0x11, 0x22, 0x33, 0x44]))
}

/// Reads one unmasked server frame: (opcode, payload). None at end of stream.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
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
pub fn expect_close(s: &mut TcpStream, code: u16) {
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
pub fn good_roundtrip(addr: SocketAddr, text: &str) {
    let mut s = upgraded(addr);
    s.write_all(&masked(1, text.as_bytes())).unwrap();
    assert_eq!(read_frame(&mut s), Some((1, text.as_bytes().to_vec())));
    s.write_all(&masked(8, &1000u16.to_be_bytes())).unwrap();
    expect_close(&mut s, 1000);
}

/// Like [`spawn_logged`], with extra environment variables (e.g. `TIDEWIRE_LOG=debug`).
pub fn spawn_logged_env(
    command: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Child, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    cmd.args([command, "--listen", "127.0.0.1:0"]).args(extra);
    cmd.envs(env.iter().copied());
    started_with(cmd, Stdio::piped())
}
