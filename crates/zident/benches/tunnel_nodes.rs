//! The tunnel as users lay it out: two nodes, each in its own network namespace, joined by a
//! veth pair; zident against a real ztunnel pair and a stunnel pair on the same layout, in
//! paired rounds of one run.
//!
//! Run: `scripts/bench-tunnel nodes [ROUNDS MIB SECONDS CONCURRENCY PINGS PARALLEL IDLE]` as
//! root (defaults 3 1024 3 64 2000 16 2000), with `ZTUNNEL_BIN` naming a ztunnel built from
//! istio/ztunnel (without it the ztunnel column is left out, with a message).
//! `ZIDENT_BENCH_ONLY=zident,ztunnel` runs only the products named. Every proxy runs with one
//! worker thread and its access log on, except in the many-cores phase (below).
//!
//! Layout, per product (zident, ztunnel, stunnel), so that none shares a port or a kernel
//! queue with another: node A (`10.6k.0.1`, the client workload's addresses `10.6k.1.10-25` on
//! its loopback) and node B (`10.6k.0.2`, the server workload at `10.6k.2.10`), joined by one
//! veth pair that carries the tunnel. `zident ca` runs in a namespace of its own with a link
//! to each node (control plane only). The client and the server workloads are this same
//! program, run inside the nodes' namespaces (`ip netns exec`), so no byte of the data path
//! crosses the benchmark's own process.
//!
//! Node A's processes (the client and its proxy) run on CPU 0 and node B's (the proxy and the
//! server) on CPU 1 (`taskset`), as on two machines; `ZIDENT_BENCH_NO_PIN=1` turns that off.
//!
//! Measured per round, for each product in turn (the order rotates): bulk MiB/s of one
//! connection, new connections/s with CONCURRENCY clients (one byte echoed on each), the CPU
//! time both proxies spent per GiB (and each node's: the sending node A, the receiving node B,
//! with B's read and write system calls and context switches per MiB, from `/proc`) and per
//! 1,000 connections, and the round trip of one byte on an open tunnel (p50, p99). RSS of each
//! proxy is read before the first round (idle, the tunnel warmed once) and after the last.
//!
//! Before the rounds, once: IDLE tunnels opened at once (64 at a time, a byte echoed on each)
//! and held, the time to open them and each proxy's RSS per tunnel while they are open (zident
//! and ztunnel; stunnel holds a thread per connection), on proxies that have not yet carried a
//! bulk transfer, whose freed memory would pay for the tunnels. Last, the many-cores phase: zident and
//! ztunnel restarted with two worker threads each, both nodes free to run on both cores, and
//! PARALLEL bulk connections at once (MIB in all), per round.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;
const SOCKS_PORT: u16 = 15080;
const CLIENT_IPS: u8 = 16;
/// Whether each node's processes are pinned to a core of their own (the one-thread phases);
/// the many-cores phase lets both nodes' threads run on both cores.
static PIN: AtomicBool = AtomicBool::new(true);

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CPU a node's processes run on: node A on one core, node B on the other, as two
/// machines would be (and the ratios of one round stop depending on where the scheduler put
/// the two proxies). `ZIDENT_BENCH_NO_PIN=1` leaves placement to the scheduler.
fn cpu_of(ns: &str) -> Option<&'static str> {
    if std::env::var_os("ZIDENT_BENCH_NO_PIN").is_some() || !PIN.load(Ordering::Relaxed) {
        return None;
    }
    if ns.ends_with('a') {
        Some("0")
    } else if ns.ends_with('b') {
        Some("1")
    } else {
        None
    }
}

/// `ip netns exec NS [taskset -c CPU]`: the start of a command line run in a node.
fn in_node(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if let Some(cpu) = cpu_of(ns) {
        c.args(["taskset", "-c", cpu]);
    }
    c
}

/// Runs `program args` inside namespace `ns`, its output to `log`.
fn spawn_in(ns: &str, program: &Path, args: &[&str], env: &[(&str, String)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let child = in_node(ns)
        .arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("ip netns exec");
    Proc {
        child,
        log: log.to_owned(),
    }
}

/// Namespaces, removed when dropped. Named `zb<pid>-…` after the run that made them, so a run
/// killed before its `Drop` ran is cleaned up by the next one ([`remove_stale_namespaces`]).
struct Namespaces(Vec<String>);

/// Removes the namespaces of earlier runs whose process is gone (killed with a signal, or
/// SIGKILLed by a timeout: `Drop` never ran), and the processes still running in them. A run
/// still going keeps its own.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some((pid, _)) = name
            .strip_prefix("zb")
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            println!("removing network namespace {name}, left by a run that was killed");
            // Whatever still runs in it (a run killed mid-way can leave its proxies behind).
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).output();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Namespaces {
    fn add(&mut self, name: String) -> String {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // Many short connections from few addresses: reuse TIME_WAIT ports, as a busy node does.
        for (k, v) in [
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.ip_local_port_range", "10000 65000"),
        ] {
            let _ = Command::new("ip")
                .args(["netns", "exec", &name, "sysctl", "-qw", &format!("{k}={v}")])
                .output();
        }
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Joins `a` (`a_addr/prefix`) and `b` (`b_addr/prefix`) with a veth pair named `name`.
fn link(name: &str, a: &str, a_addr: &str, b: &str, b_addr: &str) {
    let (ea, eb) = (format!("{name}a"), format!("{name}b"));
    ip(&[
        "link", "add", &ea, "netns", a, "type", "veth", "peer", "name", &eb, "netns", b,
    ]);
    ip(&["-n", a, "addr", "add", a_addr, "dev", &ea]);
    ip(&["-n", b, "addr", "add", b_addr, "dev", &eb]);
    ip(&["-n", a, "link", "set", &ea, "up"]);
    ip(&["-n", b, "link", "set", &eb, "up"]);
}

/// One product's two nodes.
struct Pair {
    name: &'static str,
    k: u8,
    a: String,
    b: String,
}

impl Pair {
    fn client_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 60 + self.k, 1, 10 + (i % CLIENT_IPS as usize) as u8)
    }
    fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 60 + self.k, 2, 10)
    }
}

// ---------------------------------------------------------------------------------------
// The roles run inside the namespaces.

/// `serve IP`: the server workload, a sink (answers the byte count at EOF) and an echo.
async fn serve(ip: Ipv4Addr) {
    let sink = TcpListener::bind((ip, SINK_PORT)).await.expect("sink");
    let echo = TcpListener::bind((ip, ECHO_PORT)).await.expect("echo");
    tokio::spawn(common::sink(sink));
    println!("serving");
    common::echo(echo).await;
}

/// How the client reaches the server workload.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A SOCKS5 proxy on the node (zident's and ztunnel's outbound).
    Socks(SocketAddr),
    /// A local stunnel port per target port: `base` for the sink, `base + 1` for the echo.
    Plain(u16),
}

async fn connect(via: Via, from: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let addr = match via {
        Via::Socks(s) => s,
        Via::Plain(base) => {
            SocketAddr::from(([127, 0, 0, 1], base + u16::from(target.port() == ECHO_PORT)))
        }
    };
    let mut s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    if let Via::Socks(_) = via {
        let SocketAddr::V4(t) = target else {
            return Err(std::io::Error::other("IPv4 targets only"));
        };
        let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
        hello.extend_from_slice(&t.ip().octets());
        hello.extend_from_slice(&t.port().to_be_bytes());
        s.write_all(&hello).await?;
        let mut greeting = [0u8; 2];
        s.read_exact(&mut greeting).await?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await?;
        if reply[1] != 0 {
            return Err(std::io::Error::other(format!("SOCKS5 reply {}", reply[1])));
        }
    }
    Ok(s)
}

/// `client MODE VIA CLIENT_IP_BASE SERVER_IP N [CONCURRENCY]`: one measurement, printed as one
/// line `result <value> <failures>` (bulk: MiB/s; conns: connections/s; ping: p50_us p99_us).
async fn client(args: &[String]) {
    let mode = args[0].as_str();
    let via = match args[1].split_once(':') {
        Some(("socks", port)) => Via::Socks(SocketAddr::from((
            [127, 0, 0, 1],
            port.parse().expect("port"),
        ))),
        Some(("plain", port)) => Via::Plain(port.parse().expect("port")),
        _ => panic!("via: socks:PORT or plain:PORT"),
    };
    let base: Ipv4Addr = args[2].parse().expect("client ip");
    let from = move |i: usize| {
        let o = base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], o[3] + (i % CLIENT_IPS as usize) as u8)
    };
    let server: Ipv4Addr = args[3].parse().expect("server ip");
    let n: u64 = args[4].parse().expect("N");
    match mode {
        "bulk" => {
            let target = SocketAddr::from((server, SINK_PORT));
            let mut s = connect(via, from(0), target).await.expect("connect");
            let chunk = vec![0x5au8; 1024 * 1024];
            let start = Instant::now();
            for _ in 0..n {
                s.write_all(&chunk).await.expect("write");
            }
            s.shutdown().await.expect("shutdown");
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await.expect("count");
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(u64::from_be_bytes(count), n * 1024 * 1024, "bytes lost");
            println!("result {} 0", n as f64 / secs);
        }
        "conns" => {
            let concurrency: usize = args[5].parse().expect("concurrency");
            let target = SocketAddr::from((server, ECHO_PORT));
            let stop = Arc::new(AtomicBool::new(false));
            let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let mut tasks = Vec::new();
            let start = Instant::now();
            for i in 0..concurrency {
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                let from = from(i);
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let one = async {
                            let mut s = connect(via, from, target).await?;
                            s.write_all(b"x").await?;
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).await?;
                            Ok::<_, std::io::Error>(())
                        };
                        match tokio::time::timeout(Duration::from_secs(10), one).await {
                            Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            tokio::time::sleep(Duration::from_secs(n)).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
            let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            println!("result {rate} {}", failed.load(Ordering::Relaxed));
        }
        "bulkpar" => {
            // N MiB in all over CONNS connections at once, each from its own client address.
            let conns: u64 = args[5].parse().expect("connections");
            let target = SocketAddr::from((server, SINK_PORT));
            let each = (n / conns).max(1);
            let mut streams = Vec::new();
            for i in 0..conns as usize {
                streams.push(connect(via, from(i), target).await.expect("connect"));
            }
            let start = Instant::now();
            let tasks: Vec<_> = streams
                .into_iter()
                .map(|mut s| {
                    tokio::spawn(async move {
                        let chunk = vec![0x5au8; 1024 * 1024];
                        for _ in 0..each {
                            s.write_all(&chunk).await.expect("write");
                        }
                        s.shutdown().await.expect("shutdown");
                        let mut count = [0u8; 8];
                        s.read_exact(&mut count).await.expect("count");
                        assert_eq!(u64::from_be_bytes(count), each * 1024 * 1024, "bytes lost");
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("a bulk connection");
            }
            let secs = start.elapsed().as_secs_f64();
            println!("result {} 0", (each * conns) as f64 / secs);
        }
        "idle" => {
            // Opens N tunnels (64 at a time), one byte echoed on each so both ends hold it,
            // says how long that took, then holds them all until its stdin closes.
            let target = SocketAddr::from((server, ECHO_PORT));
            let start = Instant::now();
            let mut open = Vec::with_capacity(n as usize);
            let mut failed = 0u64;
            let mut next = 0usize;
            while (next as u64) < n {
                let batch: Vec<_> = (next..(next + 64).min(n as usize))
                    .map(|i| {
                        tokio::spawn(async move {
                            let one = async {
                                let mut s = connect(via, from(i), target).await?;
                                s.write_all(b"x").await?;
                                let mut b = [0u8; 1];
                                s.read_exact(&mut b).await?;
                                Ok::<_, std::io::Error>(s)
                            };
                            tokio::time::timeout(Duration::from_secs(30), one).await
                        })
                    })
                    .collect();
                next += batch.len();
                for t in batch {
                    match t.await {
                        Ok(Ok(Ok(s))) => open.push(s),
                        _ => failed += 1,
                    }
                }
            }
            println!("result {} {failed}", start.elapsed().as_secs_f64());
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
            drop(open);
        }
        "ping" => {
            let target = SocketAddr::from((server, ECHO_PORT));
            let mut s = connect(via, from(0), target).await.expect("connect");
            let mut rtts = Vec::with_capacity(n as usize);
            let mut b = [0u8; 1];
            // A few unmeasured round trips first: the tunnel's stream is open on both sides.
            for i in 0..(n + 50) {
                let t = Instant::now();
                s.write_all(b"p").await.expect("write");
                s.read_exact(&mut b).await.expect("read");
                if i >= 50 {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            rtts.sort_by(|a, b| a.total_cmp(b));
            let at = |q: f64| rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)];
            println!("result {} {}", at(0.5), at(0.99));
        }
        other => panic!("mode {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark.

fn this_program() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

/// The client role in `pair`'s node A: `mode` through `via` to the server, with `n`.
fn client_in_a(pair: &Pair, via: &str, mode: &str, n: &str) -> Command {
    let mut c = in_node(&pair.a);
    c.arg(this_program()).args([
        "client",
        mode,
        via,
        &pair.client_ip(0).to_string(),
        &pair.server_ip().to_string(),
        n,
    ]);
    c
}

/// One measurement run by the client role in `pair`'s node A.
fn measure(pair: &Pair, via: &str, mode: &str, n: u64, extra: &[String]) -> (f64, f64) {
    let out = client_in_a(pair, via, mode, &n.to_string())
        .args(extra)
        .output()
        .expect("client runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| {
            panic!(
                "{} {mode} failed: {text}{}",
                pair.name,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut it = line
        .split(' ')
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN))
}

/// A product under test: its pair, how its client reaches it, and its proxies' pids.
struct Product {
    pair: Pair,
    via: String,
    procs: Vec<Proc>,
}

impl Product {
    fn cpu(&self) -> Duration {
        self.procs
            .iter()
            .map(|p| common::process_cpu(p.pid()))
            .sum()
    }
    /// One measurement through this product, and the CPU seconds its proxies spent on it.
    fn measure_with_cpu(&self, mode: &str, n: u64, extra: &[String]) -> ((f64, f64), f64) {
        let before = self.cpu();
        let result = measure(&self.pair, &self.via, mode, n, extra);
        (result, (self.cpu() - before).as_secs_f64())
    }
    /// What each of its proxies (node A, node B) has done so far.
    fn work(&self) -> Vec<Work> {
        self.procs.iter().map(|p| Work::of(p.pid())).collect()
    }
    fn rss_mib(&self) -> Vec<f64> {
        self.procs
            .iter()
            .map(|p| common::process_rss(p.pid()) as f64 / (1024.0 * 1024.0))
            .collect()
    }
    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {} ---\n{}\n",
                    p.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

fn wait_until(
    what: &str,
    deadline: Duration,
    mut ok: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let until = Instant::now() + deadline;
    while !ok() {
        assert!(
            Instant::now() < until,
            "{what} within {deadline:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn median(v: &[f64]) -> f64 {
    common::median(v.to_vec())
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}–{max:.2}")
}

fn bench(args: &[usize]) {
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (rounds, mib, seconds, concurrency, pings, parallel, idle_tunnels) = (
        arg(0, 3).max(1),
        arg(1, 1024),
        arg(2, 3),
        arg(3, 64),
        arg(4, 2000),
        arg(5, 16),
        arg(6, 2000),
    );
    let ztunnel = std::env::var_os("ZTUNNEL_BIN").map(PathBuf::from);
    if ztunnel.is_none() {
        println!(
            "ZTUNNEL_BIN is not set: the ztunnel column is left out (build ztunnel from istio/ztunnel, see BENCHMARKS.md)"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = |f: &str| d.join(f);
    remove_stale_namespaces();
    let pid = std::process::id();
    // Interface names are limited to 15 bytes: links carry a shorter tag than namespaces.
    let tag = pid % 10_000;
    let mut ns = Namespaces(Vec::new());
    let cp = ns.add(format!("zb{pid}-cp"));
    let mut pairs = Vec::new();
    // ZIDENT_BENCH_ONLY=zident[,ztunnel]: only those (for a profiler, or an A/B of one change).
    let only = std::env::var("ZIDENT_BENCH_ONLY").ok();
    for (k, name) in [(1u8, "zident"), (2, "ztunnel"), (3, "stunnel")] {
        if name == "ztunnel" && ztunnel.is_none() {
            continue;
        }
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == name))
        {
            continue;
        }
        let a = ns.add(format!("zb{pid}-{k}a"));
        let b = ns.add(format!("zb{pid}-{k}b"));
        let net = 60 + k;
        // The data link between the two nodes.
        link(
            &format!("zb{tag}d{k}"),
            &a,
            &format!("10.{net}.0.1/24"),
            &b,
            &format!("10.{net}.0.2/24"),
        );
        for i in 0..CLIENT_IPS {
            ip(&[
                "-n",
                &a,
                "addr",
                "add",
                &format!("10.{net}.1.{}/32", 10 + i),
                "dev",
                "lo",
            ]);
        }
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("10.{net}.2.10/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            &a,
            "route",
            "add",
            &format!("10.{net}.2.0/24"),
            "via",
            &format!("10.{net}.0.2"),
        ]);
        ip(&[
            "-n",
            &b,
            "route",
            "add",
            &format!("10.{net}.1.0/24"),
            "via",
            &format!("10.{net}.0.1"),
        ]);
        // Control-plane links to the CA's namespace.
        for (side, node) in [(0u8, &a), (1u8, &b)] {
            let j = k * 2 + side;
            link(
                &format!("zb{tag}c{j}"),
                &cp,
                &format!("10.59.{j}.1/24"),
                node,
                &format!("10.59.{j}.2/24"),
            );
        }
        pairs.push(Pair { name, k, a, b });
    }

    // The mesh: zident's two nodes, and ztunnel's two workloads with their own tokens.
    let client_ips = |k: u8| {
        (0..CLIENT_IPS)
            .map(|i| format!("'10.{}.1.{}'", 60 + k, 10 + i))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mesh = format!(
        "trustDomain: cluster.local\n\
nodes:\n- {{name: node-za, token: token-za}}\n- {{name: node-zb, token: token-zb}}\n\
identities:\n- {{spiffeId: spiffe://cluster.local/ns/bench/sa/client-t, token: token-ta}}\n\
- {{spiffeId: spiffe://cluster.local/ns/bench/sa/server-t, token: token-tb}}\n\
workloads:\n\
- {{uid: client-z, name: client-z, namespace: bench, serviceAccount: client-z, node: node-za, workloadIps: [{}], protocol: HBONE}}\n\
- {{uid: server-z, name: server-z, namespace: bench, serviceAccount: server-z, node: node-zb, workloadIps: ['10.61.2.10'], protocol: HBONE}}\n\
- {{uid: client-t, name: client-t, namespace: bench, serviceAccount: client-t, node: node-ta, workloadIps: [{}], protocol: HBONE}}\n\
- {{uid: server-t, name: server-t, namespace: bench, serviceAccount: server-t, node: node-tb, workloadIps: ['10.62.2.10'], protocol: HBONE}}\n",
        client_ips(1),
        client_ips(2),
    );
    std::fs::write(p("mesh.yaml"), mesh).expect("mesh");
    std::fs::write(p("token-ta"), "token-ta").expect("token");
    std::fs::write(p("token-tb"), "token-tb").expect("token");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_zident"));
    let mut ca_args = vec![
        "ca".to_string(),
        "--config".into(),
        p("mesh.yaml").display().to_string(),
        "--data-dir".into(),
        p("ca").display().to_string(),
        "--listen".into(),
        "0.0.0.0:15012".into(),
        "--metrics-addr".into(),
        "127.0.0.1:15014".into(),
    ];
    for j in 2..=7 {
        ca_args.push("--dns-name".into());
        ca_args.push(format!("10.59.{j}.1"));
    }
    let ca_args: Vec<&str> = ca_args.iter().map(String::as_str).collect();
    let _ca = spawn_in(&cp, &bin, &ca_args, &[], &p("ca.log"));
    let root = p("ca/root-cert.pem");
    wait_until(
        "the CA publishes its root",
        Duration::from_secs(30),
        || root.exists(),
        || std::fs::read_to_string(p("ca.log")).unwrap_or_default(),
    );
    let root_s = root.display().to_string();

    let mut products = Vec::new();
    let mut servers = Vec::new();
    // Each product's two proxies, with `threads` worker threads each.
    let start = |pair: &Pair, threads: usize| -> Vec<Proc> {
        let (a, b) = (pair.a.clone(), pair.b.clone());
        let ca_of = |side: u8| format!("10.59.{}.1:15012", pair.k * 2 + side);
        match pair.name {
            "zident" => {
                let agent = |node: &str, token: &str, side: u8, ns: &str| {
                    spawn_in(
                        ns,
                        &bin,
                        &[
                            "agent",
                            "--config",
                            &p("mesh.yaml").display().to_string(),
                            "--node",
                            node,
                            "--auth-token",
                            token,
                            "--ca-address",
                            &ca_of(side),
                            "--ca-root-ca",
                            &root_s,
                            "--secret-ttl",
                            "1h",
                            "--no-workload-api",
                            "--socks5-addr",
                            &format!("127.0.0.1:{SOCKS_PORT}"),
                            "--outbound-addr",
                            "127.0.0.1:15001",
                        ],
                        &[("ZIDENT_WORKER_THREADS", threads.to_string())],
                        &p(&format!("agent-{node}-{threads}.log")),
                    )
                };
                vec![
                    agent("node-za", "token-za", 0, &a),
                    agent("node-zb", "token-zb", 1, &b),
                ]
            }
            "ztunnel" => {
                let zt = ztunnel.clone().expect("ztunnel");
                let run = |who: &str, node: &str, token: &str, side: u8, ns: &str, ip: String| {
                    let ca = format!("https://{}", ca_of(side));
                    spawn_in(
                        ns,
                        &zt,
                        &["proxy", "ztunnel"],
                        &[
                            ("XDS_ADDRESS", ca.clone()),
                            ("CA_ADDRESS", ca),
                            ("XDS_ROOT_CA", root_s.clone()),
                            ("CA_ROOT_CA", root_s.clone()),
                            ("AUTH_TOKEN", p(token).display().to_string()),
                            ("PROXY_MODE", "dedicated".into()),
                            ("PROXY_WORKLOAD_INFO", format!("bench/{who}/{who}")),
                            ("UNSTABLE_ENABLE_SOCKS5", "true".into()),
                            ("ENABLE_ORIG_SRC", "false".into()),
                            ("INSTANCE_IP", ip),
                            ("NODE_NAME", node.to_string()),
                            ("ZTUNNEL_WORKER_THREADS", threads.to_string()),
                            ("RUST_LOG", "info".into()),
                        ],
                        &p(&format!("ztunnel-{who}-{threads}.log")),
                    )
                };
                vec![
                    run(
                        "client-t",
                        "node-ta",
                        "token-ta",
                        0,
                        &a,
                        pair.client_ip(0).to_string(),
                    ),
                    run(
                        "server-t",
                        "node-tb",
                        "token-tb",
                        1,
                        &b,
                        pair.server_ip().to_string(),
                    ),
                ]
            }
            _ => {
                common::stunnel_certs(d);
                let f = |n: &str| p(n).display().to_string();
                let server_ip = pair.server_ip();
                let server_conf = format!(
                    "foreground = yes\npid =\ndebug = 5\n\
[sink]\naccept = {server_ip}:4433\nconnect = {server_ip}:{SINK_PORT}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n\
[echo]\naccept = {server_ip}:4434\nconnect = {server_ip}:{ECHO_PORT}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n",
                    f("server.pem"),
                    f("server.key"),
                    f("ca.pem"),
                    f("server.pem"),
                    f("server.key"),
                    f("ca.pem"),
                );
                let client_conf = format!(
                    "foreground = yes\npid =\ndebug = 5\n\
[sink]\nclient = yes\naccept = 127.0.0.1:{SOCKS_PORT}\nconnect = {server_ip}:4433\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = server.bench\nsslVersionMin = TLSv1.3\n\
[echo]\nclient = yes\naccept = 127.0.0.1:{}\nconnect = {server_ip}:4434\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = server.bench\nsslVersionMin = TLSv1.3\n",
                    f("client.pem"),
                    f("client.key"),
                    f("ca.pem"),
                    SOCKS_PORT + 1,
                    f("client.pem"),
                    f("client.key"),
                    f("ca.pem"),
                );
                std::fs::write(p("stunnel-server.conf"), server_conf).expect("conf");
                std::fs::write(p("stunnel-client.conf"), client_conf).expect("conf");
                let stunnel = PathBuf::from("/usr/bin/stunnel");
                vec![
                    spawn_in(
                        &a,
                        &stunnel,
                        &[&f("stunnel-client.conf")],
                        &[],
                        &p("stunnel-client.log"),
                    ),
                    spawn_in(
                        &b,
                        &stunnel,
                        &[&f("stunnel-server.conf")],
                        &[],
                        &p("stunnel-server.log"),
                    ),
                ]
            }
        }
    };
    for pair in pairs {
        servers.push(spawn_in(
            &pair.b,
            &this_program(),
            &["serve", &pair.server_ip().to_string()],
            &[],
            &p(&format!("serve-{}.log", pair.name)),
        ));
        let procs = start(&pair, 1);
        let via = if pair.name == "stunnel" {
            format!("plain:{SOCKS_PORT}")
        } else {
            format!("socks:{SOCKS_PORT}")
        };
        products.push(Product { pair, via, procs });
    }

    // Warm up: each path carries a connection end to end (certificates fetched, xDS in).
    let warm = |prod: &Product| {
        wait_until(
            &format!("{} carries a connection", prod.pair.name),
            Duration::from_secs(90),
            || {
                let out = client_in_a(&prod.pair, &prod.via, "ping", "10").output();
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("result "))
            },
            || prod.logs(),
        );
    };
    for prod in &products {
        warm(prod);
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle: Vec<Vec<f64>> = products.iter().map(Product::rss_mib).collect();

    // Many open, idle tunnels: how long they take to open and what each holds on both nodes,
    // on proxies that have carried one connection only. (After the bulk rounds a proxy's heap
    // holds what the transfer freed, and tunnels opened then are paid from it: ztunnel's node A
    // grew 1.6-2.2 KiB per tunnel after the rounds, 16 -> 27 MiB from the transfer before them.)
    // stunnel is left out: it holds a thread per connection.
    let mut held: Vec<Option<IdleTunnels>> = Vec::new();
    for prod in &products {
        if prod.pair.name == "stunnel" || idle_tunnels == 0 {
            held.push(None);
            continue;
        }
        let r = hold_idle_tunnels(prod, idle_tunnels);
        println!(
            "  {:<8} {idle_tunnels} idle tunnels open in {:.2} s ({} failed); RSS per tunnel {:.1} / {:.1} KiB (node A / B)",
            prod.pair.name, r.secs, r.failed, r.kib_per_tunnel[0], r.kib_per_tunnel[1]
        );
        held.push(Some(r));
    }

    println!(
        "tunnel across two network namespaces (veth): {rounds} rounds; bulk {mib} MiB on one connection; new connections for {seconds} s with {concurrency} clients; {pings} one-byte round trips"
    );
    let n = products.len();
    let mut bulk = vec![Vec::new(); n];
    let mut conns = vec![Vec::new(); n];
    let mut cpu_gib = vec![Vec::new(); n];
    // Per node, per GiB of the bulk transfer: [sending node A, receiving node B].
    let mut node_gib: Vec<[Vec<Work>; 2]> = vec![[Vec::new(), Vec::new()]; n];
    let mut cpu_kconn = vec![Vec::new(); n];
    let mut p50 = vec![Vec::new(); n];
    let mut p99 = vec![Vec::new(); n];
    let mut failures = vec![0.0; n];
    for round in 0..rounds {
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        for &i in &order {
            let prod = &products[i];
            let before = prod.work();
            let (v, _) = measure(&prod.pair, &prod.via, "bulk", mib as u64, &[]);
            let after = prod.work();
            let gib = mib as f64 / 1024.0;
            let per = |k: usize| after[k].since(before[k]).per(gib);
            let (a, b) = (per(0), per(1));
            bulk[i].push(v);
            cpu_gib[i].push(a.cpu + b.cpu);
            node_gib[i][0].push(a);
            node_gib[i][1].push(b);
            println!(
                "  round {round}: {:<8} bulk {v:>7.0} MiB/s, CPU s/GiB {:.2} (sending {:.2}, receiving {:.2}); receiving node per MiB: {:.1} read/write calls, {:.1} context switches",
                prod.pair.name,
                a.cpu + b.cpu,
                a.cpu,
                b.cpu,
                b.syscalls / 1024.0,
                b.switches / 1024.0,
            );
        }
        for &i in &order {
            let prod = &products[i];
            let ((v, failed), cpu) =
                prod.measure_with_cpu("conns", seconds as u64, &[concurrency.to_string()]);
            let per_k = cpu / (v * seconds as f64 / 1000.0);
            conns[i].push(v);
            cpu_kconn[i].push(per_k);
            failures[i] += failed;
            println!(
                "  round {round}: {:<8} {v:>7.0} connections/s ({failed} failed), {per_k:.3} CPU s/1000",
                prod.pair.name
            );
        }
        for &i in &order {
            let prod = &products[i];
            let (a, b) = measure(&prod.pair, &prod.via, "ping", pings as u64, &[]);
            p50[i].push(a);
            p99[i].push(b);
            println!(
                "  round {round}: {:<8} 1-byte round trip p50 {a:.0} µs, p99 {b:.0} µs",
                prod.pair.name
            );
        }
    }
    let after: Vec<Vec<f64>> = products.iter().map(Product::rss_mib).collect();

    println!();
    let names: Vec<&str> = products.iter().map(|p| p.pair.name).collect();
    println!("| median of {rounds} rounds | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(n));
    let row = |label: &str, v: &[Vec<f64>], digits: usize| {
        let cells: Vec<String> = v
            .iter()
            .map(|x| format!("{:.*}", digits, median(x)))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let node_row = |label: &str, node: usize, f: fn(&Work) -> f64, digits: usize| {
        let v: Vec<Vec<f64>> = node_gib
            .iter()
            .map(|nodes| nodes[node].iter().map(f).collect())
            .collect();
        row(label, &v, digits);
    };
    row("bulk MiB/s, 1 connection", &bulk, 0);
    row(
        &format!("new connections/s, {concurrency} clients"),
        &conns,
        0,
    );
    row("CPU s per GiB (both proxies)", &cpu_gib, 2);
    node_row("CPU s per GiB, sending node", 0, |w| w.cpu, 2);
    node_row("CPU s per GiB, receiving node", 1, |w| w.cpu, 2);
    node_row(
        "read/write calls per MiB, receiving node",
        1,
        |w| w.syscalls / 1024.0,
        1,
    );
    node_row(
        "context switches per MiB, receiving node",
        1,
        |w| w.switches / 1024.0,
        1,
    );
    row("CPU s per 1,000 connections", &cpu_kconn, 3);
    row("1-byte round trip p50, µs", &p50, 0);
    row("1-byte round trip p99, µs", &p99, 0);
    let rss: Vec<String> = idle
        .iter()
        .zip(&after)
        .map(|(i, a)| format!("{} → {}", per_node(i, 0), per_node(a, 0)))
        .collect();
    println!(
        "| RSS MiB per proxy (A/B), idle → after | {} |",
        rss.join(" | ")
    );
    let cells = |f: &dyn Fn(&IdleTunnels) -> String| {
        held.iter()
            .map(|h| h.as_ref().map(f).unwrap_or_else(|| "–".into()))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!(
        "| {idle_tunnels} idle tunnels: seconds to open | {} |",
        cells(&|h| format!("{:.2}", h.secs))
    );
    println!(
        "| {idle_tunnels} idle tunnels: RSS KiB per tunnel (A/B) | {} |",
        cells(&|h| per_node(&h.kib_per_tunnel, 1))
    );
    println!(
        "| failed connections | {} |",
        failures
            .iter()
            .map(|f| format!("{f:.0}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!();

    // zident against each other product, round by round (paired: same machine state).
    let node_cpu = |node: usize| -> Vec<Vec<f64>> {
        node_gib
            .iter()
            .map(|nodes| nodes[node].iter().map(|w| w.cpu).collect())
            .collect()
    };
    let (sending, receiving) = (node_cpu(0), node_cpu(1));
    for (j, other) in names.iter().enumerate().skip(1) {
        let (b, bs, bsp) = ratios(&bulk, j);
        let (c, cs, csp) = ratios(&conns, j);
        let (g, gs, gsp) = ratios(&cpu_gib, j);
        let (ga, gas, gasp) = ratios(&sending, j);
        let (gb, gbs, gbsp) = ratios(&receiving, j);
        let (l, ls, lsp) = ratios(&p50, j);
        println!(
            "zident / {other}: bulk {b:.2} (rounds {bs}; spread {bsp}), connections/s {c:.2} ({cs}; {csp}), CPU per GiB {g:.2} ({gs}; {gsp}): sending node {ga:.2} ({gas}; {gasp}), receiving node {gb:.2} ({gbs}; {gbsp}), latency p50 {l:.2} ({ls}; {lsp})"
        );
        if let (Some(z), Some(o)) = (&held[0], &held[j]) {
            println!(
                "zident / {other}, {idle_tunnels} idle tunnels: time to open {:.2}, RSS per tunnel {:.2} (node A) / {:.2} (node B)",
                z.secs / o.secs,
                z.kib_per_tunnel[0] / o.kib_per_tunnel[0],
                z.kib_per_tunnel[1] / o.kib_per_tunnel[1],
            );
        }
    }
    println!(
        "idle RSS per proxy, MiB: {}",
        names
            .iter()
            .zip(&idle)
            .map(|(n, v)| format!("{n} {}", per_node(v, 1)))
            .collect::<Vec<_>>()
            .join("; ")
    );

    // Many connections on many cores: each proxy restarted with two worker threads, both
    // nodes free to run on both cores, PARALLEL bulk connections at once.
    if parallel == 0 {
        return;
    }
    PIN.store(false, Ordering::Relaxed);
    let mut many: Vec<usize> = Vec::new();
    for (i, prod) in products.iter_mut().enumerate() {
        if prod.pair.name == "stunnel" {
            continue;
        }
        prod.procs.clear();
        prod.procs = start(&prod.pair, 2);
        many.push(i);
    }
    for &i in &many {
        warm(&products[i]);
    }
    println!();
    println!(
        "{parallel} bulk connections at once ({mib} MiB in all), 2 worker threads per proxy, nodes not pinned: {rounds} rounds"
    );
    let mut par_bulk = vec![Vec::new(); n];
    let mut par_cpu = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in 0..many.len() {
            let i = many[(k + round) % many.len()];
            let prod = &products[i];
            let ((v, _), cpu) =
                prod.measure_with_cpu("bulkpar", mib as u64, &[parallel.to_string()]);
            let cpu = cpu / (mib as f64 / 1024.0);
            par_bulk[i].push(v);
            par_cpu[i].push(cpu);
            println!(
                "  round {round}: {:<8} {parallel} connections {v:>7.0} MiB/s, {cpu:.2} CPU s/GiB (both proxies)",
                prod.pair.name
            );
        }
    }
    for (j, other) in names.iter().enumerate().skip(1) {
        if par_bulk[j].is_empty() || par_bulk[0].is_empty() {
            continue;
        }
        let (b, bs, bsp) = ratios(&par_bulk, j);
        let (g, gs, gsp) = ratios(&par_cpu, j);
        println!(
            "zident / {other}, {parallel} connections on 2 threads: bulk {b:.2} (rounds {bs}; spread {bsp}), CPU per GiB {g:.2} ({gs}; {gsp}); MiB/s {:.0} vs {:.0}",
            median(&par_bulk[0]),
            median(&par_bulk[j]),
        );
    }
    drop(servers);
}

/// zident's figures over product `j`'s, round by round: the median ratio, the rounds' ratios,
/// and their spread.
fn ratios(v: &[Vec<f64>], j: usize) -> (f64, String, String) {
    let r: Vec<f64> = v[0].iter().zip(&v[j]).map(|(z, o)| z / o).collect();
    let shown = r
        .iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    (median(&r), shown, spread(&r))
}

/// Numbers of node A and node B, `A/B`.
fn per_node(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// What a process has done so far: CPU seconds, read and write system calls
/// (`/proc/PID/io`), and context switches of all its threads.
#[derive(Clone, Copy, Debug, Default)]
struct Work {
    cpu: f64,
    syscalls: f64,
    switches: f64,
}

impl Work {
    fn of(pid: u32) -> Self {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field = |text: &str, name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let mut switches = 0.0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                switches += field(&status, "voluntary_ctxt_switches:")
                    + field(&status, "nonvoluntary_ctxt_switches:");
            }
        }
        Self {
            cpu: common::process_cpu(pid).as_secs_f64(),
            syscalls: field(&io, "syscr:") + field(&io, "syscw:"),
            switches,
        }
    }
    fn since(self, before: Self) -> Self {
        Self {
            cpu: self.cpu - before.cpu,
            syscalls: self.syscalls - before.syscalls,
            switches: self.switches - before.switches,
        }
    }
    fn per(self, units: f64) -> Self {
        Self {
            cpu: self.cpu / units,
            syscalls: self.syscalls / units,
            switches: self.switches / units,
        }
    }
}

/// Many idle tunnels held open at once.
struct IdleTunnels {
    secs: f64,
    failed: f64,
    kib_per_tunnel: Vec<f64>,
}

/// Opens `count` tunnels through `prod` (a client in node A that echoes a byte on each and
/// holds them), reads each proxy's RSS while they are open, then lets them close.
fn hold_idle_tunnels(prod: &Product, count: usize) -> IdleTunnels {
    use std::io::{BufRead, Write};
    let before = prod.rss_mib();
    let mut child = client_in_a(&prod.pair, &prod.via, "idle", &count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    let found = loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break None,
            Ok(_) => {
                if let Some(r) = line.trim().strip_prefix("result ") {
                    break Some(r.to_string());
                }
            }
        }
    };
    let open = prod.rss_mib();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"done\n");
    }
    let _ = child.wait();
    let Some(result) = found else {
        panic!(
            "{}: the idle-tunnel client failed\n{}",
            prod.pair.name,
            prod.logs()
        );
    };
    let mut it = result
        .split(' ')
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    let (secs, failed) = (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN));
    let opened = (count as f64 - failed).max(1.0);
    IdleTunnels {
        secs,
        failed,
        kib_per_tunnel: open
            .iter()
            .zip(&before)
            .map(|(o, b)| (o - b) * 1024.0 / opened)
            .collect(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let ip: Ipv4Addr = args[1].parse().expect("ip");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(serve(ip));
        }
        Some("client") => {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(
                    if matches!(args[1].as_str(), "conns" | "bulkpar" | "idle") {
                        2
                    } else {
                        1
                    },
                )
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(client(&args[1..]));
        }
        _ => {
            if !Path::new("/run/netns").exists()
                && Command::new("ip").args(["netns", "list"]).output().is_err()
            {
                println!("SKIPPED: needs `ip` (iproute2) and root for network namespaces");
                return;
            }
            let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
            bench(&numbers);
        }
    }
}
