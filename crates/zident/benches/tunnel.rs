//! Tunnel benchmark: the zident tunnel (SOCKS5 → HBONE mTLS → inbound) against direct TCP and
//! against a stunnel pair doing mutual TLS, all on loopback in one run.
//!
//! Run: `scripts/bench-tunnel` (installs stunnel4 from Debian if missing), or
//! `cargo bench -p zident --bench tunnel` with `stunnel` on the PATH. Optional arguments:
//! `MIB ROUNDS SECONDS CONCURRENCY` (defaults 1024 3 3 64).
//!
//! - Throughput: one connection carries MIB mebibytes one way to a sink that answers with the
//!   count once it has read them all; the time is from the first byte to that answer.
//! - New connections per second: CONCURRENCY clients for SECONDS each open a connection, send
//!   one byte, read it back from an echo workload and close; every connection is a new tunnel
//!   (a new SOCKS5 session and a new HTTP/2 CONNECT stream; for stunnel, a new TLS session).
//!
//! Everything is real: `zident ca` and two `zident agent` processes (two nodes of one mesh
//! file, release build, default logging: an access line per connection on each side; their
//! `--worker-threads` from `ZIDENT_WORKER_THREADS`, default 1), and two
//! `stunnel` processes with P-256 certificates from one CA, verifying each other. The clients
//! and the workloads run in this process. Rounds alternate the three paths; medians are
//! reported.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Workload A's addresses: clients spread over them so no source address runs out of ports.
const CLIENT_IPS: u8 = 16;
const WORKLOAD_B: [u8; 4] = [127, 0, 3, 2];
const TOKEN_A: &str = "bench-a";
const TOKEN_B: &str = "bench-b";

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 3, 100 + (i % CLIENT_IPS as usize) as u8)
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts `zident agent` for `node` and waits until it prints `line`.
fn start_agent(dir: &Path, ca: &common::Ca, node: &str, token: &str, args: &[String]) -> Proc {
    let port = ca.addr.rsplit(':').next().expect("CA port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zident"))
        .arg("agent")
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--ca-root-ca")
        .arg(dir.join("ca/root-cert.pem"))
        .args(["--node", node, "--auth-token", token, "--secret-ttl", "1h"])
        .args(["--ca-address", &format!("localhost:{port}")])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--readiness-addr", "127.0.0.1:0", "--no-workload-api"])
        .args(["--outbound-addr", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start zident agent");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining: the access log lines are part of the work measured.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("zident agent: admin at") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("zident agent started");
    Proc(child)
}

/// Starts one stunnel with `config`, waiting until `accept` takes connections.
async fn start_stunnel(dir: &Path, name: &str, config: String, accept: SocketAddr) -> Proc {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, config).expect("stunnel config");
    let child = Command::new("stunnel")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel is installed (scripts/bench-tunnel installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(accept).await.is_err() {
        assert!(Instant::now() < deadline, "stunnel {name} never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proc(child)
}

/// How a client reaches workload B.
#[derive(Clone, Copy)]
enum Path3 {
    Direct(SocketAddr),
    Stunnel(SocketAddr),
    Zident {
        socks: SocketAddr,
        target: SocketAddr,
    },
}

impl Path3 {
    fn name(&self) -> &'static str {
        match self {
            Path3::Direct(_) => "direct TCP",
            Path3::Stunnel(_) => "stunnel pair (mTLS)",
            Path3::Zident { .. } => "zident tunnel",
        }
    }

    async fn connect(&self, from: Ipv4Addr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((from, 0)))?;
        let addr = match self {
            Path3::Direct(a) | Path3::Stunnel(a) => *a,
            Path3::Zident { socks, .. } => *socks,
        };
        let mut s = socket.connect(addr).await?;
        s.set_nodelay(true)?;
        if let Path3::Zident { target, .. } = self {
            let SocketAddr::V4(t) = target else {
                unreachable!("IPv4 workload")
            };
            let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
            hello.extend_from_slice(&t.ip().octets());
            hello.extend_from_slice(&t.port().to_be_bytes());
            s.write_all(&hello).await?;
            let mut reply = [0u8; 12];
            s.read_exact(&mut reply).await?;
            if reply[3] != 0 {
                return Err(std::io::Error::other(format!("SOCKS5 reply {}", reply[3])));
            }
        }
        Ok(s)
    }
}

/// MiB/s of one connection carrying `mib` MiB.
async fn throughput(path: Path3, mib: usize) -> f64 {
    let mut s = path.connect(client_ip(0)).await.expect("connect");
    let chunk = vec![0x5au8; 1024 * 1024];
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk).await.expect("write");
    }
    s.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("count");
    let elapsed = start.elapsed();
    assert_eq!(
        u64::from_be_bytes(count),
        (mib * 1024 * 1024) as u64,
        "{}: bytes lost",
        path.name()
    );
    mib as f64 / elapsed.as_secs_f64()
}

/// New connections per second over `seconds` with `concurrency` clients; (rate, failures).
async fn connections(path: Path3, seconds: u64, concurrency: usize) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..concurrency {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let one = async {
                    let mut s = path.connect(client_ip(i)).await?;
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
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    (rate, failed.load(Ordering::Relaxed))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (mib, rounds, seconds, concurrency) = (arg(0, 1024), arg(1, 5), arg(2, 3), arg(3, 64));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(mib, rounds.max(1), seconds as u64, concurrency));
}

async fn run(mib: usize, rounds: usize, seconds: u64, concurrency: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // Workload B: a sink and an echo server on its address.
    let sink_addr = SocketAddr::from((WORKLOAD_B, free_port(WORKLOAD_B)));
    let echo_addr = SocketAddr::from((WORKLOAD_B, free_port(WORKLOAD_B)));
    tokio::spawn(common::sink(
        TcpListener::bind(sink_addr).await.expect("sink"),
    ));
    tokio::spawn(common::echo(
        TcpListener::bind(echo_addr).await.expect("echo"),
    ));

    // zident: CA, node A (the clients' addresses) and node B (workload B).
    let ips: Vec<String> = (0..CLIENT_IPS as usize)
        .map(|i| format!("'{}'", client_ip(i)))
        .collect();
    let hbone_port = free_port(WORKLOAD_B);
    let mesh = format!(
        "trustDomain: cluster.local\n\
nodes:\n- {{name: node-a, token: {TOKEN_A}}}\n- {{name: node-b, token: {TOKEN_B}}}\n\
workloads:\n\
- {{uid: a, name: client, namespace: bench, serviceAccount: client, node: node-a, workloadIps: [{}]}}\n\
- {{uid: b, name: server, namespace: bench, serviceAccount: server, node: node-b, workloadIps: ['{}'], protocol: HBONE}}\n",
        ips.join(", "),
        Ipv4Addr::from(WORKLOAD_B)
    );
    std::fs::write(d.join("mesh.yaml"), mesh).expect("mesh");
    let ca = common::start_ca(d);
    let socks = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let hbone = hbone_port.to_string();
    let _b = start_agent(
        d,
        &ca,
        "node-b",
        TOKEN_B,
        &[
            "--inbound-port".into(),
            hbone.clone(),
            "--socks5-addr".into(),
            "127.0.0.1:0".into(),
        ],
    );
    let _a = start_agent(
        d,
        &ca,
        "node-a",
        TOKEN_A,
        &[
            "--inbound-port".into(),
            hbone,
            "--socks5-addr".into(),
            socks.to_string(),
        ],
    );

    // stunnel: client side takes plain TCP, server side hands it to workload B.
    common::stunnel_certs(d);
    let st_server = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let st_client = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let st_client_echo = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let st_server_echo = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1])));
    let p = |f: &str| d.join(f).display().to_string();
    let server_conf = format!(
        "foreground = yes\npid =\ndebug = 3\n\
[sink]\naccept = {st_server}\nconnect = {sink_addr}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n\
[echo]\naccept = {st_server_echo}\nconnect = {echo_addr}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
        p("server.pem"),
        p("server.key"),
        p("ca.pem"),
    );
    let client_conf = format!(
        "foreground = yes\npid =\ndebug = 3\n\
[sink]\nclient = yes\naccept = {st_client}\nconnect = {st_server}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = server.bench\nsslVersionMin = TLSv1.3\n\
[echo]\nclient = yes\naccept = {st_client_echo}\nconnect = {st_server_echo}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = server.bench\nsslVersionMin = TLSv1.3\n",
        p("client.pem"),
        p("client.key"),
        p("ca.pem"),
        p("client.pem"),
        p("client.key"),
        p("ca.pem"),
    );
    let _sts = start_stunnel(d, "server", server_conf, st_server).await;
    let _stc = start_stunnel(d, "client", client_conf, st_client).await;

    let bulk = [
        Path3::Direct(sink_addr),
        Path3::Stunnel(st_client),
        Path3::Zident {
            socks,
            target: sink_addr,
        },
    ];
    let short = [
        Path3::Direct(echo_addr),
        Path3::Stunnel(st_client_echo),
        Path3::Zident {
            socks,
            target: echo_addr,
        },
    ];
    // Warm up every path (and wait for the agents' certificates: the tunnel fails closed).
    let deadline = Instant::now() + Duration::from_secs(60);
    for path in bulk.iter().chain(short.iter()) {
        loop {
            let ok = async {
                let mut s = path.connect(client_ip(0)).await?;
                s.write_all(b"x").await?;
                s.shutdown().await?;
                let mut b = Vec::new();
                s.read_to_end(&mut b).await?;
                Ok::<_, std::io::Error>(!b.is_empty())
            }
            .await;
            if matches!(ok, Ok(true)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never worked: {ok:?}",
                path.name()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    println!(
        "tunnel benchmark: {rounds} rounds, medians; bulk {mib} MiB on one connection; new connections for {seconds} s with {concurrency} clients"
    );
    let mut mbps = vec![Vec::new(); 3];
    let mut conns = vec![Vec::new(); 3];
    let mut failures = [0u64; 3];
    // ZIDENT_BENCH_ONLY=zident runs the zident path alone (for a profiler); ratios are then
    // meaningless.
    let only_zident = std::env::var("ZIDENT_BENCH_ONLY").is_ok_and(|v| v == "zident");
    let skip = |i: usize| only_zident && i != 2;
    for round in 0..rounds {
        // stunnel and zident take turns going first, so neither always runs right after the
        // other's connection phase.
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
        for i in order {
            let path = bulk[i];
            if skip(i) {
                mbps[i].push(f64::NAN);
                continue;
            }
            let v = throughput(path, mib).await;
            println!("  round {round}: {:<20} {v:>8.0} MiB/s", path.name());
            mbps[i].push(v);
        }
        for i in order {
            let path = short[i];
            if skip(i) {
                conns[i].push(f64::NAN);
                continue;
            }
            let (v, failed) = connections(path, seconds, concurrency).await;
            println!(
                "  round {round}: {:<20} {v:>8.0} connections/s ({failed} failed)",
                path.name()
            );
            conns[i].push(v);
            failures[i] += failed;
        }
    }
    // The paths of one round run back to back on the same machine state, so the ratio of each
    // round is paired; the load of a shared 2-core machine drifts between rounds.
    let paired = |v: &[Vec<f64>], a: usize, b: usize| -> (f64, String) {
        let r: Vec<f64> = v[a].iter().zip(&v[b]).map(|(x, y)| x / y).collect();
        let shown = r
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        (median(r), shown)
    };
    let (t_ratio, t_rounds) = paired(&mbps, 2, 1);
    let (c_ratio, c_rounds) = paired(&conns, 2, 1);
    let t: Vec<f64> = mbps.into_iter().map(median).collect();
    let c: Vec<f64> = conns.into_iter().map(median).collect();
    println!();
    println!("| path | throughput MiB/s | new connections/s | failed connections |");
    println!("|---|---|---|---|");
    for (i, path) in bulk.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {} |",
            path.name(),
            t[i],
            c[i],
            failures[i]
        );
    }
    println!();
    println!(
        "throughput: zident / stunnel = {t_ratio:.2}, median of the rounds' ratios ({t_rounds}) (goal >= 1.2); ratio of the medians {:.2}; zident / direct = {:.2}",
        t[2] / t[1],
        t[2] / t[0]
    );
    println!(
        "new connections: zident / stunnel = {c_ratio:.2} ({c_rounds}); zident {:.0}/s (goal >= 3000); zident / direct = {:.2}",
        c[2],
        c[2] / c[0]
    );
}
