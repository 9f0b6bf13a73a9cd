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

/// A free port for a Redis Cluster node, whose cluster bus listens on the port + 10000:
/// both free, and both below the kernel's ephemeral range (a bus port taken by an outgoing
/// connection kept a node from starting).
fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port >= 22_000 {
            continue;
        }
        if StdListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair in 20000..22000 and 30000..32000");
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
    /// A node of a Redis Cluster ([`RedisCluster`]).
    cluster: bool,
}

impl Redis {
    /// Starts one without persistence (a restart comes back empty).
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// Starts one; with `persist`, an append-only file in its own directory (a restart
    /// comes back with its data).
    pub fn start_with(persist: bool) -> Redis {
        Self::start_as(persist, false)
    }

    fn start_as(persist: bool, cluster: bool) -> Redis {
        let port = if cluster {
            free_cluster_port()
        } else {
            free_port()
        };
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
            cluster,
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
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"]);
        }
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

/// A Redis Cluster of this test: three masters with a replica each (on spare ports,
/// `cluster-node-timeout` 1 s, so a killed master's replica takes over in a few seconds).
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..6).map(|_| Redis::start_as(false, true)).collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok(Duration::from_secs(20));
        c
    }

    /// `redis+cluster://` with every node's address.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every live node says the cluster is ok and every slot is served, and
    /// every replica is in sync with its master (else it may not take over).
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                let replication = n.cli(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index in `nodes` of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = self
            .any()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let table = self.any().cli(&["CLUSTER", "NODES"]);
        for line in table.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let owns = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                }
                None => r.parse() == Ok(slot),
            });
            if owns {
                let port: u16 = f[1].split([':', '@']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}:\n{table}");
    }

    /// The cluster's node id of `nodes[i]`.
    pub fn id(&self, i: usize) -> String {
        self.nodes[i].cli(&["CLUSTER", "MYID"]).trim().to_owned()
    }

    fn any(&self) -> &Redis {
        self.nodes.iter().find(|n| n.child.is_some()).unwrap()
    }

    /// Moves `key`'s slot, with its keys, from the master serving it to `nodes[to]` (as
    /// `redis-cli --cluster reshard` does, for one slot).
    pub fn move_slot_of(&self, key: &str, to: usize) {
        let from = self.master_of(key);
        assert_ne!(from, to);
        let slot = self
            .any()
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .to_owned();
        let (from_id, to_id) = (self.id(from), self.id(to));
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        assert_eq!(
            dst.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])
                .trim(),
            "OK"
        );
        assert_eq!(
            src.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])
                .trim(),
            "OK"
        );
        loop {
            let keys = src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = dst.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = src.cli(&args);
            assert!(out.trim() == "OK", "MIGRATE: {out}");
        }
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            n.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
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

    /// The host's address on the client link (how the namespace reaches the host).
    pub fn client_host(&self) -> String {
        let (net, _) = self.client_ns.rsplit_once('.').unwrap();
        format!("{net}.1")
    }

    /// `tidewire serve` inside the namespace, listening on its client address.
    pub fn node(&self, engine_url: &str, name: &str) -> super::hub::Serve {
        self.node_with(engine_url, name, &[])
    }

    /// [`Netns::node`] with more arguments.
    pub fn node_with(&self, engine_url: &str, name: &str, extra: &[&str]) -> super::hub::Serve {
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
        .args(["--api-key", API_KEY])
        .args(extra);
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

/// A publisher that survives its node: each publication is sent with its own idempotency
/// key and sent again (on a new connection through the balancer if need be) until it is
/// acknowledged. Returns the offset it got.
pub async fn publish_surely(
    ws: &mut Option<super::hub::Ws>,
    lb: SocketAddr,
    channel: &str,
    n: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = serde_json::json!({"id": n, "op": "publish", "channel": channel, "data": {"n": n},
                      "idempotency_key": format!("{channel}-{n}")})
    .to_string();
    loop {
        assert!(
            Instant::now() < deadline,
            "publication {n} on {channel} never acknowledged"
        );
        if ws.is_none() {
            let builder =
                tidewire::ClientBuilder::new(format!("ws://{lb}/ws")).protocols(["tidewire.v1"]);
            match tokio::time::timeout(Duration::from_secs(3), builder.connect()).await {
                Ok(Ok((c, _))) => *ws = Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = ws.as_mut().unwrap();
        let attempt = async {
            c.send(tidewire::Message::text(text.clone())).await.ok()?;
            loop {
                match c.recv().await? {
                    Ok(tidewire::Message::Text(t)) => {
                        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                        if v["id"] == n {
                            return Some(v);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(8), attempt).await {
            Ok(Some(v)) if v["ok"] == true => return v["result"]["offset"].as_u64().unwrap(),
            Ok(Some(v)) => {
                assert_eq!(v["error"]["code"], 112, "{v}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => *ws = None,
        }
    }
}

/// Two nodes on the engine at `url`; `clients` clients of node A in `room:lobby`, watched
/// from node B. Node A is killed with SIGKILL: B's watcher gets every leave within 10 s,
/// and presence is left with the watcher only. How long the leaves took.
pub async fn crashed_node_leaves(url: &str, clients: usize) -> Duration {
    use super::hub::{client, next_json, request};
    use serde_json::json;
    let mut a = node_on(url, "127.0.0.1:0", "node-a", &[]);
    let b = node_on(url, "127.0.0.1:0", "node-b", &[]);
    let mut watcher = client(b.addr).await;
    let mut pushed = Vec::new();
    let r = request(
        &mut watcher,
        json!({"id": 1, "op": "subscribe", "channel": "room:lobby"}),
        &mut pushed,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut members = Vec::new();
    for i in 0..clients {
        let mut ws = client(a.addr).await;
        let r = request(
            &mut ws,
            json!({"id": i, "op": "subscribe", "channel": "room:lobby"}),
            &mut pushed,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
        members.push(ws);
    }
    let mut joins = pushed.iter().filter(|v| v.get("join").is_some()).count();
    while joins < clients + 1 {
        if next_json(&mut watcher).await.get("join").is_some() {
            joins += 1;
        }
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let mut leaves = 0;
    while leaves < clients {
        let v = tokio::time::timeout(Duration::from_secs(12), next_json(&mut watcher))
            .await
            .expect("leaves stopped coming");
        if v.get("leave").is_some() {
            leaves += 1;
        }
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(10), "leaves took {took:?}");
    let p = request(
        &mut watcher,
        json!({"id": 2, "op": "presence", "channel": "room:lobby"}),
        &mut pushed,
    )
    .await;
    assert_eq!(p["result"]["clients"].as_array().unwrap().len(), 1, "{p}");
    drop(members);
    took
}

/// What a subscriber saw of a stream under failovers: each publication's (epoch, offset,
/// n), and how many times it was told that publications were lost.
#[derive(Clone, Default)]
pub struct Seen {
    pub publications: Arc<std::sync::Mutex<Vec<(String, u64, u64)>>>,
    pub told: Arc<AtomicUsize>,
}

impl Seen {
    /// Records everything `sub` delivers, until the returned task is aborted.
    pub fn record(
        &self,
        mut sub: tidewire_hub_client::Subscription,
    ) -> tokio::task::JoinHandle<()> {
        use tidewire_hub_client::Item;
        let seen = self.clone();
        tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                match item {
                    Item::Publication(p) => seen.publications.lock().unwrap().push((
                        p.epoch.clone(),
                        p.offset,
                        p.data["n"].as_u64().unwrap(),
                    )),
                    Item::Unrecoverable { .. } => {
                        seen.told.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        })
    }

    /// Waits until publication `n` arrived (20 s at most).
    pub async fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.publications.lock().unwrap().last().map(|s| s.2) != Some(n) {
            assert!(
                Instant::now() < deadline,
                "publication {n} did not arrive: last {:?}",
                self.publications.lock().unwrap().last()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Guarantees 1 and 4 over what was seen of publications `0..total`: one payload per
    /// (epoch, offset), consecutive offsets within an epoch, and, unless a loss was told,
    /// every publication once and in order in one epoch. (publications seen, losses told,
    /// epochs).
    pub fn check(&self, total: u64) -> (usize, usize, usize) {
        let seen = self.publications.lock().unwrap().clone();
        for w in seen.windows(2) {
            if w[0].0 == w[1].0 {
                assert_eq!(
                    w[1].1,
                    w[0].1 + 1,
                    "a gap or a repeat: {:?} then {:?}",
                    w[0],
                    w[1]
                );
            }
        }
        let mut by_position = std::collections::HashMap::new();
        for (epoch, offset, n) in &seen {
            let first = by_position.entry((epoch.clone(), *offset)).or_insert(*n);
            assert_eq!(first, n, "two payloads at {epoch} {offset}");
        }
        let told = self.told.load(Ordering::SeqCst);
        let epochs: std::collections::HashSet<&String> = seen.iter().map(|s| &s.0).collect();
        if told == 0 {
            let ns: Vec<u64> = seen.iter().map(|s| s.2).collect();
            assert_eq!(ns, (0..total).collect::<Vec<_>>());
            assert_eq!(epochs.len(), 1);
        }
        (seen.len(), told, epochs.len())
    }
}
