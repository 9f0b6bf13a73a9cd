//! What the bench modes measure, and how it is printed.
//!
//! - `Latency`: HDR histograms (1 ns to 100 s, 3 significant digits) in a few shards, so
//!   that thousands of connections share a bounded amount of memory and rarely a lock.
//! - `Errors`: failures counted by kind (the `Failure` text).
//! - `Proc`: a process's CPU time, the sum of the first field of
//!   `/proc/PID/task/*/schedstat` (ns on a CPU, every thread), and its `VmRSS`.
//!   `CpuWindow` takes it at both ends of exactly the measured window.
//! - `tcp_bytes`: the kernel's byte counters of one of our sockets (`TCP_INFO`), which
//!   count the wire bytes independently of any frame parser.
//! - `Report`: the figures as one JSON object (`--json`) or as a table of lines.
//!
//! No I/O here except reading `/proc` and `getsockopt`.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Latency histograms, sharded by connection.
pub struct Latency {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

const SHARDS: usize = 16;

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records one latency in nanoseconds, for connection number `conn`.
    pub fn record(&self, conn: usize, ns: u64) {
        if let Ok(mut h) = self.shards[conn % SHARDS].lock() {
            h.saturating_record(ns.max(1));
        }
    }

    /// Records many latencies of one connection under one lock.
    pub fn record_all(&self, conn: usize, ns: &[u64]) {
        if ns.is_empty() {
            return;
        }
        if let Ok(mut h) = self.shards[conn % SHARDS].lock() {
            for &v in ns {
                h.saturating_record(v.max(1));
            }
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let mut all = new_histogram();
        for s in self.shards.iter() {
            if let Ok(h) = s.lock() {
                let _ = all.add(&*h);
            }
        }
        LatencySummary::of(&all)
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary {
                count: 0,
                min: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            min: us(h.min()),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "min": round(self.min, 1),
            "p50": round(self.p50, 1),
            "p90": round(self.p90, 1),
            "p99": round(self.p99, 1),
            "p999": round(self.p999, 1),
            "max": round(self.max, 1),
            "mean": round(self.mean, 1),
        })
    }

    pub fn human(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {} µs",
            fmt_us(self.p50),
            fmt_us(self.p90),
            fmt_us(self.p99),
            fmt_us(self.p999),
            fmt_us(self.max)
        )
    }
}

/// Failures counted by kind.
#[derive(Default)]
pub struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    pub fn add(&self, kind: impl Into<String>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(kind.into()).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    pub fn json(&self) -> Value {
        Value::Object(
            self.snapshot()
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect(),
        )
    }

    pub fn human(&self) -> String {
        let m = self.snapshot();
        if m.is_empty() {
            return "none".into();
        }
        m.iter()
            .map(|(k, v)| format!("{}× {k}", fmt_int(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A process seen through `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    pub pid: u32,
}

impl Proc {
    pub fn me() -> Proc {
        Proc {
            pid: std::process::id(),
        }
    }

    /// Nanoseconds the process's threads have run on a CPU, summed over every thread
    /// alive now (`/proc/PID/task/*/schedstat`, first field).
    pub fn cpu_ns(&self) -> std::io::Result<u64> {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid))? {
            // A thread may exit between the listing and the read: skip it.
            if let Ok(s) = std::fs::read_to_string(task?.path().join("schedstat")) {
                total += parse_schedstat(&s).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fn fds(&self) -> std::io::Result<u64> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count() as u64)
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kb(&self) -> std::io::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        parse_vm_rss_kb(&s)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no VmRSS line"))
    }
}

/// The server's VmRSS when `--server-pid` was given; an unreadable `/proc/PID/status` is
/// an error that names the flag.
pub fn server_rss_kb(server: Option<Proc>) -> anyhow::Result<Option<u64>> {
    match server {
        Some(p) => p
            .rss_kb()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("cannot read /proc/{}/status (--server-pid): {e}", p.pid)),
        None => Ok(None),
    }
}

/// VmRSS before and after `count` things (connections, channels) came to exist, as JSON
/// fields (`{prefix}rss_before_kb`, `{prefix}rss_after_kb`, `{prefix}kb_per_{key}`) and
/// one table row ("... KB per {name}"). `unit` is `(key, name)`: `("conn", "connection")`.
pub fn memory_fields(
    r: &mut Report,
    row: &str,
    prefix: &str,
    before: u64,
    after: u64,
    count: u64,
    unit: (&str, &str),
) {
    let (key, name) = unit;
    let per = (after as f64 - before as f64) / count.max(1) as f64;
    r.field(&format!("{prefix}rss_before_kb"), before);
    r.field(&format!("{prefix}rss_after_kb"), after);
    r.field(&format!("{prefix}kb_per_{key}"), round(per, 2));
    r.row(
        row,
        format!(
            "VmRSS {} KB before, {} KB after: {} KB per {name}",
            fmt_int(before),
            fmt_int(after),
            fmt_f(per, 2)
        ),
    );
}

/// The first field of a schedstat line: time spent on a CPU, in ns.
pub fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The `VmRSS:   1234 kB` line of `/proc/PID/status`, in KiB.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Busy CPU time of the whole machine, in ns, from the first line of `/proc/stat` (user,
/// nice, system, irq, softirq and steal; in clock ticks).
pub fn machine_busy_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = parse_stat_busy_ticks(&stat)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(ticks * (1_000_000_000 / hz))
}

/// The busy ticks of the `cpu` line of `/proc/stat`: user, nice, system, irq, softirq,
/// steal (not idle, not iowait; guest time is already inside user).
pub fn parse_stat_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// The kernel's byte counters of a TCP socket: payload bytes sent and acknowledged by the
/// peer, and received (`tcpi_bytes_acked`, `tcpi_bytes_received` of `TCP_INFO`; Linux 4.1+).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpBytes {
    pub sent: u64,
    pub received: u64,
}

impl TcpBytes {
    pub fn add(self, o: TcpBytes) -> TcpBytes {
        TcpBytes {
            sent: self.sent + o.sent,
            received: self.received + o.received,
        }
    }

    pub fn since(self, earlier: TcpBytes) -> TcpBytes {
        TcpBytes {
            sent: self.sent.saturating_sub(earlier.sent),
            received: self.received.saturating_sub(earlier.received),
        }
    }
}

/// `TCP_INFO` of socket `fd`; `None` if it is not a TCP socket (any more), or the kernel
/// is too old to fill in the byte counters.
pub fn tcp_bytes(fd: std::os::fd::RawFd) -> Option<TcpBytes> {
    // SAFETY: tcp_info is plain data (all-zero is valid); getsockopt writes at most `len`
    // bytes into it and reports how many it wrote.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        );
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + 8;
        if rc != 0 || (len as usize) < needed {
            return None;
        }
        Some(TcpBytes {
            sent: info.tcpi_bytes_acked,
            received: info.tcpi_bytes_received,
        })
    }
}

/// CPU time of the server (when its pid was given), of this generator and of the whole
/// machine over one window.
pub struct CpuWindow {
    server: Option<(Proc, u64)>,
    /// More server processes (the other nodes of a cluster), added to `server`.
    more: Vec<(Proc, u64)>,
    own: u64,
    machine: Option<u64>,
}

/// What a `CpuWindow` measured, in ns.
#[derive(Debug, Clone, Copy)]
pub struct CpuFigures {
    pub server_ns: Option<u64>,
    pub own_ns: u64,
    /// Every process and the kernel, all CPUs together.
    pub machine_ns: Option<u64>,
}

impl CpuWindow {
    pub fn start(server: Option<Proc>) -> anyhow::Result<CpuWindow> {
        let server = match server {
            Some(p) => Some((p, read_cpu(p)?)),
            None => None,
        };
        Ok(CpuWindow {
            server,
            more: Vec::new(),
            own: Proc::me().cpu_ns().unwrap_or(0),
            machine: machine_busy_ns(),
        })
    }

    /// A window over several server processes (a cluster's nodes): their CPU time added.
    pub fn start_all(servers: &[Proc]) -> anyhow::Result<CpuWindow> {
        let mut w = CpuWindow::start(servers.first().copied())?;
        for &p in servers.iter().skip(1) {
            w.more.push((p, read_cpu(p)?));
        }
        Ok(w)
    }

    pub fn finish(&self) -> anyhow::Result<CpuFigures> {
        let mut server_ns = match self.server {
            Some((p, start)) => Some(read_cpu(p)?.saturating_sub(start)),
            None => None,
        };
        for &(p, start) in &self.more {
            let ns = read_cpu(p)?.saturating_sub(start);
            server_ns = Some(server_ns.unwrap_or(0) + ns);
        }
        Ok(CpuFigures {
            server_ns,
            own_ns: Proc::me().cpu_ns().unwrap_or(0).saturating_sub(self.own),
            machine_ns: match (self.machine, machine_busy_ns()) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
        })
    }
}

fn read_cpu(p: Proc) -> anyhow::Result<u64> {
    use anyhow::Context;
    p.cpu_ns().with_context(|| {
        format!(
            "cannot read the CPU time of --server-pid {} from /proc/{}/task/*/schedstat",
            p.pid, p.pid
        )
    })
}

impl CpuFigures {
    /// Adds the CPU figures of a window of `secs` seconds in which `units` messages (or
    /// deliveries, or connections) were handled, named `unit` ("msg", "delivery").
    pub fn report(&self, r: &mut Report, secs: f64, units: u64, unit: &str) {
        if let Some(ns) = self.server_ns {
            let per = if units == 0 {
                Value::Null
            } else {
                Value::from(round(ns as f64 / 1000.0 / units as f64, 3))
            };
            r.field("server_cpu_ms", round(ns as f64 / 1e6, 1));
            r.field("server_cpu_util", round(ns as f64 / 1e9 / secs, 3));
            r.field(&format!("server_cpu_us_per_{unit}"), per.clone());
            r.row(
                "server CPU",
                format!(
                    "{} ms over the window ({:.0}% of a core), {} µs per {unit}",
                    fmt_f(ns as f64 / 1e6, 1),
                    ns as f64 / 1e7 / secs,
                    per.as_f64()
                        .map(|v| fmt_f(v, 3))
                        .unwrap_or_else(|| "-".into())
                ),
            );
        }
        r.field(
            "generator_cpu_util",
            round(self.own_ns as f64 / 1e9 / secs, 3),
        );
        r.row(
            "generator CPU",
            format!("{:.0}% of a core", self.own_ns as f64 / 1e7 / secs),
        );
        if let Some(m) = self.machine_ns {
            // What neither the server nor the generator used: other processes (and, without
            // --server-pid, the server too). On a small machine it tells a disturbed run.
            let others = m.saturating_sub(self.own_ns + self.server_ns.unwrap_or(0));
            r.field("machine_cpu_util", round(m as f64 / 1e9 / secs, 3));
            r.field("others_cpu_util", round(others as f64 / 1e9 / secs, 3));
            r.row(
                "machine CPU",
                format!(
                    "{:.2} cores busy, {:.2} of them {}",
                    m as f64 / 1e9 / secs,
                    others as f64 / 1e9 / secs,
                    if self.server_ns.is_some() {
                        "neither the server nor this generator"
                    } else {
                        "not this generator"
                    }
                ),
            );
        }
    }
}

/// The figures of one run: a JSON object and, for people, labelled lines.
pub struct Report {
    fields: Map<String, Value>,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(mode: &str) -> Report {
        let mut fields = Map::new();
        fields.insert("mode".into(), mode.into());
        Report {
            fields,
            rows: Vec::new(),
        }
    }

    pub fn field(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    pub fn row(&mut self, label: &str, text: impl Into<String>) {
        self.rows.push((label.to_owned(), text.into()));
    }

    pub fn render(&self, json: bool) -> String {
        if json {
            return Value::Object(self.fields.clone()).to_string();
        }
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        self.rows
            .iter()
            .map(|(l, t)| format!("{l:<width$}  {t}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn print(&self, json: bool) {
        println!("{}", self.render(json));
    }
}

/// Rounds to `digits` decimals (for the JSON output).
pub fn round(v: f64, digits: i32) -> f64 {
    if !v.is_finite() {
        return 0.0;
    }
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// 1234567 -> "1,234,567".
pub fn fmt_int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A float with thousands separators: 12345.678, 1 -> "12,345.7".
pub fn fmt_f(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{:.*}", digits, v.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let int = fmt_int(int.parse().unwrap_or(0));
    let sign = if v < 0.0 { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

fn fmt_us(v: f64) -> String {
    fmt_f(v, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_first_field() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn proc_stat_busy_ticks() {
        let stat = "cpu  100 5 50 1000 7 3 2 1 0 0\ncpu0 50 2 25 500 3 1 1 0 0 0\n";
        assert_eq!(parse_stat_busy_ticks(stat), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(parse_stat_busy_ticks("intr 1 2\n"), None);
        assert!(machine_busy_ns().is_some());
    }

    #[test]
    fn vm_rss_line() {
        let status = "Name:\ttidewire\nVmPeak:\t  99999 kB\nVmRSS:\t   35456 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kb(status), Some(35_456));
        assert_eq!(parse_vm_rss_kb("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = Proc::me();
        assert!(me.rss_kb().unwrap() > 0);
        // Burn CPU until the counter moves: the kernel updates a running thread's total at
        // its ticks, so a fixed amount of work (a few milliseconds in a release build) may
        // finish before one. It must move within 2 s of busy work.
        let t0 = me.cpu_ns().unwrap();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while me.cpu_ns().unwrap() <= t0 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "CPU counter did not move in 2 s of busy work"
            );
        }
    }

    #[test]
    fn tcp_counters_count_the_bytes_on_the_wire() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let before = tcp_bytes(client.as_raw_fd()).unwrap();
        client.write_all(&[7u8; 1000]).unwrap();
        let mut buf = [0u8; 1000];
        server.read_exact(&mut buf).unwrap();
        server.write_all(&buf[..300]).unwrap();
        client.read_exact(&mut buf[..300]).unwrap();
        // The acknowledgement of the 1000 bytes may lag a little behind the read.
        let mut d = tcp_bytes(client.as_raw_fd()).unwrap().since(before);
        for _ in 0..100 {
            if d.sent == 1000 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            d = tcp_bytes(client.as_raw_fd()).unwrap().since(before);
        }
        assert_eq!(
            d,
            TcpBytes {
                sent: 1000,
                received: 300
            }
        );
        assert_eq!(d.add(d).received, 600);
        // Not a socket.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(tcp_bytes(file.as_raw_fd()), None);
    }

    #[test]
    fn latency_percentiles_across_shards() {
        let l = Latency::new();
        // 1..=1000 µs, spread over connections.
        for i in 1..=1000u64 {
            l.record(i as usize, i * 1000);
        }
        l.record_all(3, &[]);
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 1.5, "{s:?}");
        assert!((s.min - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
        assert!((s.mean - 500.5).abs() < 1.0, "{s:?}");
        let empty = Latency::new().summary();
        assert_eq!(empty.count, 0);
        assert_eq!(empty.p99, 0.0);
    }

    #[test]
    fn errors_by_kind() {
        let e = Errors::default();
        assert_eq!(e.human(), "none");
        e.add("connect refused");
        e.add("connect refused");
        e.add("closed by server with code 4000");
        assert_eq!(e.total(), 3);
        assert_eq!(e.json()["connect refused"], 2);
        assert_eq!(
            e.human(),
            "1× closed by server with code 4000, 2× connect refused"
        );
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_f(12345.678, 1), "12,345.7");
        assert_eq!(fmt_f(-0.5, 2), "-0.50");
        assert_eq!(fmt_f(3.0, 0), "3");
        assert_eq!(round(1.23456, 2), 1.23);
        assert_eq!(round(f64::NAN, 2), 0.0);
    }

    #[test]
    fn report_renders_json_and_table() {
        let mut r = Report::new("echo");
        r.field("msgs", 10u64);
        r.row("throughput", "10 msgs/s");
        r.row("errors", "none");
        let v: Value = serde_json::from_str(&r.render(true)).unwrap();
        assert_eq!(v["mode"], "echo");
        assert_eq!(v["msgs"], 10);
        assert_eq!(r.render(false), "throughput  10 msgs/s\nerrors      none");
    }
}
