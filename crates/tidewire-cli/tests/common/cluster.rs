//! Clusters for the tests: a `redis-server` of the test's own on a spare port (never the
//! shared one on 6379), `tidewire serve` nodes on it, and a TCP balancer in front of them
//! that, like nginx, sends each new connection to the next node that accepts it.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// A free loopback port for a server the test starts (and may restart on the same port):
/// below the kernel's ephemeral range, so that no outgoing connection takes it while the
/// server is down, and at random in 20000..32000, checked free by binding it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = u64::from(std::process::id()) * 7919
        + NEXT.fetch_add(1, Ordering::Relaxed) * 104_729
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for i in 0..1000u64 {
        let port = 20_000 + ((seed + i * 7) % 12_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

/// A `redis-server` process of this test, killed when dropped.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    persist: bool,
    /// Addresses it listens on besides 127.0.0.1.
    pub also_bind: Vec<String>,
    /// Serves TLS only (`rediss://`), with a certificate for 127.0.0.1 signed by a test CA
    /// made by openssl: the CA's certificate.
    pub tls_ca: Option<PathBuf>,
}

impl Redis {
    /// Starts one without persistence (a restart comes back empty).
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// Starts one; with `persist`, an append-only file in its own directory (a restart
    /// comes back with its data).
    pub fn start_with(persist: bool) -> Redis {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tidewire-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port,
            dir,
            child: None,
            persist,
            also_bind: Vec::new(),
            tls_ca: None,
        };
        r.restart();
        r
    }

    /// Starts one that speaks TLS only, with a self-signed certificate for 127.0.0.1.
    pub fn start_tls() -> Redis {
        let mut r = Self::start_with(false);
        r.kill();
        // A test CA, and a server certificate for 127.0.0.1 signed by it.
        let d = |f: &str| r.dir.join(f);
        let ext = d("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let steps: [Vec<std::ffi::OsString>; 3] = [
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=tidewire test CA",
                "-keyout",
            ]
            .iter()
            .map(Into::into)
            .chain([d("ca.key").into(), "-out".into(), d("ca.pem").into()])
            .collect(),
            [
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ]
            .iter()
            .map(Into::into)
            .chain([d("key.pem").into(), "-out".into(), d("server.csr").into()])
            .collect(),
            ["x509", "-req", "-days", "2", "-CAcreateserial", "-in"]
                .iter()
                .map(Into::into)
                .chain([
                    d("server.csr").into(),
                    "-CA".into(),
                    d("ca.pem").into(),
                    "-CAkey".into(),
                    d("ca.key").into(),
                    "-extfile".into(),
                    ext.clone().into(),
                    "-out".into(),
                    d("cert.pem").into(),
                ])
                .collect(),
        ];
        for args in steps {
            let ok = Command::new("openssl")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(ok.success(), "openssl {args:?} failed");
        }
        let cert = d("ca.pem");
        r.tls_ca = Some(cert);
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and directory.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        let bind = std::iter::once("127.0.0.1".to_owned())
            .chain(self.also_bind.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        match &self.tls_ca {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(ca) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.dir.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", &bind])
            .args(["--protected-mode", "no"])
            .args(["--dir", self.dir.to_str().unwrap(), "--save", ""])
            .args(["--appendonly", if self.persist { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .expect("redis-server (Debian's redis-server package)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL (nothing written after the last fsync survives).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
    }

    /// Runs `redis-cli -p PORT ARGS...`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die of SIGKILL promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A TCP balancer: each new connection goes to the next upstream in turn that accepts it
/// (a dead node refuses, and is skipped), as nginx does with `proxy_next_upstream`.
pub struct Balancer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Balancer {
    pub async fn start(upstreams: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let upstreams = upstreams.clone();
                let next = next.clone();
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..upstreams.len() {
                        let up = upstreams[(start + i) % upstreams.len()];
                        if let Ok(mut server) = TcpStream::connect(up).await {
                            let _ = client.set_nodelay(true);
                            let _ = server.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { addr, task }
    }
}

/// A `nats-server` with JetStream on file storage, of this test, on a spare port; killed
/// when dropped.
pub struct Nats {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tidewire-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Nats {
            port,
            dir,
            child: None,
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-sd", self.dir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .expect("nats-server (Debian's nats-server package)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const API_KEY: &str = "cluster-test-key-0123456789";

/// The nodes' configuration file: written once per test process (tests run in parallel,
/// and a node must never read it half-written).
fn config() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(write_config).clone()
}

fn write_config() -> std::path::PathBuf {
    super::temp_file(
        "cluster.toml",
        "[namespaces.default]\nhistory_size = 10000\nhistory_ttl = \"10m\"\npresence = false\n\
         [namespaces.room]\npresence = true\nhistory_size = 100\nhistory_ttl = \"10m\"\n\
         [namespaces.short]\npresence = false\nhistory_size = 10\nhistory_ttl = \"3s\"\n",
    )
}

/// A node on the engine at `url`, listening on `listen` (`127.0.0.1:0` for any port): no
/// rate limits, history in the default namespace, presence in `room:`, the API key
/// [`API_KEY`].
pub fn node_on(url: &str, listen: &str, name: &str, extra: &[&str]) -> super::hub::Serve {
    let config = config();
    let mut args = vec![
        "--engine",
        url,
        "--node-name",
        name,
        "--config",
        config.to_str().unwrap(),
        "--publish-rate",
        "0",
        "--subscribe-rate",
        "0",
        "--no-demo",
        "--api-key",
        API_KEY,
    ];
    args.extend_from_slice(extra);
    let (child, addr) = super::spawn_at("serve", listen, &args);
    super::hub::Serve { child, addr }
}

/// Reads `n` publications from `sub`: each (offset, n) in order; panics on an
/// unrecoverable gap or a stall.
pub async fn read_publications(
    sub: &mut tidewire_hub_client::Subscription,
    n: usize,
) -> Vec<(u64, u64)> {
    use tidewire_hub_client::Item;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
            Ok(Some(Item::Publication(p))) => got.push((p.offset, p.data["n"].as_u64().unwrap())),
            Ok(Some(Item::Unrecoverable { .. })) => {
                panic!("reported unrecoverable after {} publications", got.len())
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("subscription ended after {}", got.len()),
            Err(_) => panic!("stalled after {} publications", got.len()),
        }
    }
    got
}

/// Offsets 1, 2, 3... carrying `first_n`, `first_n + 1`...
pub fn exactly_once_in_order(got: &[(u64, u64)], first_n: u64) {
    for (i, (offset, n)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64 + 1, "offset at {i}");
        assert_eq!(*n, first_n + i as u64, "publication at {i}");
    }
}

/// A reconnecting tidewire.v1 client of `addr` with a short backoff.
pub fn hub_client(addr: SocketAddr) -> Arc<tidewire_hub_client::HubClient> {
    Arc::new(
        tidewire_hub_client::HubClient::builder(format!("ws://{addr}/ws"))
            .backoff(tidewire::reconnect::Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .connect(),
    )
}

/// A network namespace of this test with two veth links to the host: one to reach Redis
/// (`engine_*`), one for the test's clients (`client_*`). Taking the engine link down
/// partitions the namespace's node from Redis, with no reset: its connections hang.
/// Deleted (with its links) when dropped. Needs root (`ip netns`).
pub struct Netns {
    pub name: String,
    host_engine_if: String,
    host_client_if: String,
    /// The host's address on the engine link (Redis listens there).
    pub engine_host: String,
    /// The namespace's address on the client link (its node listens there).
    pub client_ns: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        // Unique per test process and per namespace in it (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        let subnet = (std::process::id() * 7 + n * 31) % 200 + 20;
        let name = format!("twpart{id}");
        let (he, ne) = (format!("twe{id}h"), format!("twe{id}n"));
        let (hc, nc) = (format!("twc{id}h"), format!("twc{id}n"));
        // Left over by a run that died (same pid): gone first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        for stale in [&he, &hc] {
            let _ = Command::new("ip").args(["link", "del", stale]).output();
        }
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let engine_host = format!("10.251.{subnet}.1");
        let client_ns = format!("10.252.{subnet}.2");
        for (h, n, net) in [(&he, &ne, "10.251"), (&hc, &nc, "10.252")] {
            ip(&["link", "add", h, "type", "veth", "peer", "name", n]);
            ip(&["link", "set", n, "netns", &name]);
            ip(&["addr", "add", &format!("{net}.{subnet}.1/30"), "dev", h]);
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{net}.{subnet}.2/30"),
                "dev",
                n,
            ]);
            ip(&["link", "set", h, "up"]);
            ip(&["-n", &name, "link", "set", n, "up"]);
        }
        Netns {
            name,
            host_engine_if: he,
            host_client_if: hc,
            engine_host,
            client_ns,
        }
    }

    /// Takes the engine link down (true) or up again (false).
    pub fn partition(&self, cut: bool) {
        ip(&[
            "link",
            "set",
            &self.host_engine_if,
            if cut { "down" } else { "up" },
        ]);
    }

    /// `tidewire serve` inside the namespace, listening on its client address.
    pub fn node(&self, engine_url: &str, name: &str) -> super::hub::Serve {
        let port = free_port();
        let config = config();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.name,
            env!("CARGO_BIN_EXE_tidewire"),
            "serve",
        ])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--engine", engine_url, "--node-name", name])
        .args(["--config", config.to_str().unwrap()])
        .args(["--publish-rate", "0", "--subscribe-rate", "0", "--no-demo"])
        .args(["--api-key", API_KEY]);
        let (child, addr) = super::started(cmd);
        let addr = SocketAddr::new(self.client_ns.parse().unwrap(), addr.port());
        super::hub::Serve { child, addr }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        for link in [&self.host_engine_if, &self.host_client_if] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
    }
}
