//! What the benchmarks share: the real `zident ca` as a child process, a gRPC client for it,
//! CPU and memory readings from /proc, and the tunnel benchmarks' workloads (a sink and an
//! echo server) and stunnel certificates.

#![allow(dead_code)]

pub mod xds;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prost_types::{Struct, Value, value::Kind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zident_identity::{SpiffeId, WorkloadKey};
use zident_proto::istio_ca::IstioCertificateRequest;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

pub const TOKEN: &str = "bench-token";
pub const CONNECTIONS: usize = 4;

/// A mesh file with one node and `workloads` workloads on it, each its own identity
/// `spiffe://cluster.local/ns/bench/sa/app-<i>`.
pub fn mesh(workloads: usize) -> String {
    let mut s = format!(
        "trustDomain: cluster.local\nnodes:\n- {{name: bench-node, token: {TOKEN}}}\nworkloads:\n"
    );
    for i in 0..workloads.max(1) {
        s.push_str(&format!(
            "- {{uid: w{i}, name: app-{i}, namespace: bench, serviceAccount: app-{i}, node: bench-node}}\n"
        ));
    }
    s
}

/// The `zident ca` child process; killed when dropped.
pub struct Ca {
    child: Child,
    pub addr: String,
    /// Where its Prometheus metrics are (`host:port`).
    pub metrics: String,
}

impl Ca {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `zident ca` on `dir/mesh.yaml`. With ZIDENT_BENCH_CA_CPUS=LIST it runs under
/// `taskset -c LIST`, to measure it on cores of its own.
pub fn start_ca(dir: &Path) -> Ca {
    start_ca_at(dir, "127.0.0.1:0")
}

/// [`start_ca`] on a given listen address (to restart a CA where its clients look for it).
pub fn start_ca_at(dir: &Path, listen: &str) -> Ca {
    spawn_ca(dir, listen, None)
}

/// [`start_ca`] with more flags (e.g. a shared datastore).
pub fn start_ca_with(dir: &Path, extra: &[&str]) -> Ca {
    spawn_ca_args(dir, "127.0.0.1:0", None, extra)
}

/// [`start_ca`], also reporting when it accepts each reload of its mesh file (the time its
/// log line carries), to measure from that moment on.
pub fn start_ca_watching_reloads(dir: &Path) -> (Ca, mpsc::Receiver<std::time::SystemTime>) {
    let (tx, rx) = mpsc::channel();
    (spawn_ca(dir, "127.0.0.1:0", Some(tx)), rx)
}

fn spawn_ca(dir: &Path, listen: &str, reloads: Option<mpsc::Sender<std::time::SystemTime>>) -> Ca {
    spawn_ca_args(dir, listen, reloads, &[])
}

/// The benchmarks stand for many nodes with one node's token (one xDS stream each), so the
/// per-caller cap a real node never reaches is lifted.
const MANY_NODES_ONE_TOKEN: [&str; 2] = ["--max-xds-streams-per-caller", "100000"];

fn spawn_ca_args(
    dir: &Path,
    listen: &str,
    reloads: Option<mpsc::Sender<std::time::SystemTime>>,
    extra: &[&str],
) -> Ca {
    let mut command = match std::env::var("ZIDENT_BENCH_CA_CPUS") {
        Ok(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus]).arg(env!("CARGO_BIN_EXE_zident"));
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_zident")),
    };
    let mut child = command
        .arg("ca")
        .arg("--config")
        .arg(dir.join("mesh.yaml"))
        .arg("--data-dir")
        .arg(dir.join("ca"))
        .args(["--listen", listen, "--metrics-addr", "127.0.0.1:0"])
        .args(MANY_NODES_ONE_TOKEN)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start zident ca");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    // Keep draining the CA's output (its log lines are part of the work measured).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("zident ca: listening on ") {
                let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_owned());
            }
            if let Some(rest) = line.strip_prefix("zident ca: metrics at http://") {
                let _ = tx.send(rest.trim_end_matches("/metrics").to_owned());
            }
            if let Some(reloads) = &reloads
                && line.contains("mesh file reloaded")
                && let Some(at) = line
                    .split_whitespace()
                    .next()
                    .and_then(zident_identity::parse_rfc3339)
            {
                let _ = reloads.send(at);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("zident ca printed its address");
    let metrics = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("zident ca printed its metrics address");
    Ca {
        child,
        addr,
        metrics,
    }
}

/// A CreateCertificate request as a node agent sends it.
pub fn request(csr: String, id: &str, token: &str) -> tonic::Request<IstioCertificateRequest> {
    let metadata = Struct {
        fields: [(
            "ImpersonatedIdentity".to_string(),
            Value {
                kind: Some(Kind::StringValue(id.to_string())),
            },
        )]
        .into(),
    };
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: Some(metadata),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a token fit for a header"),
    );
    req
}

/// Result of driving the CA directly.
pub struct Run {
    pub per_sec: f64,
    pub cpu_us: f64,
}

/// Drives `requests` CSRs (made before timing) for `id` at `concurrency` over
/// [`CONNECTIONS`] TLS connections; returns the rate and the CA's CPU per certificate.
pub async fn drive(
    ca: &Ca,
    root_pem: &[u8],
    id: &SpiffeId,
    requests: usize,
    concurrency: usize,
) -> Run {
    drive_as(ca, root_pem, id, requests, concurrency, TOKEN).await
}

/// [`drive`] with `token` as the bearer token of every request.
pub async fn drive_as(
    ca: &Ca,
    root_pem: &[u8],
    id: &SpiffeId,
    requests: usize,
    concurrency: usize,
    token: &str,
) -> Run {
    let csrs: Vec<String> = (0..requests)
        .map(|_| {
            WorkloadKey::generate()
                .and_then(|k| k.csr_pem(id))
                .expect("CSR")
        })
        .collect();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root_pem))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{}", ca.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect");
        clients.push(IstioCertificateServiceClient::new(channel));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.create_certificate(request(csrs[i].clone(), id.as_str(), token))
            .await
            .expect("warm-up issuance");
    }
    let queue = Arc::new(std::sync::Mutex::new(csrs));
    let cpu_before = process_cpu(ca.pid());
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut client = clients[w % CONNECTIONS].clone();
        let queue = queue.clone();
        let id = id.to_string();
        let token = token.to_owned();
        workers.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some(csr) = next else { break };
                client
                    .create_certificate(request(csr, &id, &token))
                    .await
                    .expect("issuance");
                done += 1;
            }
            done
        }));
    }
    let mut issued = 0;
    for w in workers {
        issued += w.await.expect("worker");
    }
    let wall = start.elapsed();
    let cpu = process_cpu(ca.pid()) - cpu_before;
    Run {
        per_sec: issued as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / issued as f64,
    }
}

/// Linux reports /proc times in USER_HZ, which is 100 on every mainstream configuration.
const USER_HZ: f64 = 100.0;

fn stat_cpu(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).expect("/proc stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / USER_HZ)
}

/// User + system CPU time of a process.
pub fn process_cpu(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// User + system CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    stat_cpu("/proc/thread-self/stat")
}

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    rss_of("/proc/self/status")
}

/// Resident set size of process `pid`, bytes.
pub fn process_rss(pid: u32) -> u64 {
    rss_of(&format!("/proc/{pid}/status"))
}

fn rss_of(path: &str) -> u64 {
    let status = std::fs::read_to_string(path).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// The median of some numbers.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The tunnel benchmarks' sink: reads everything until EOF, then answers with the count (8
/// bytes).
pub async fn sink(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(&total.to_be_bytes()).await;
        });
    }
}

/// The tunnel benchmarks' echo: answers each byte with itself, until EOF.
pub async fn echo(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// P-256 certificates for a stunnel pair in `dir`: one CA (`ca.pem`), a server and a client
/// certificate (`server.pem`/`server.key` for `server.bench`, `client.pem`/`client.key`).
pub fn stunnel_certs(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench stunnel CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).expect("issuer");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    for name in ["server", "client"] {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![format!("{name}.bench")]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
}
