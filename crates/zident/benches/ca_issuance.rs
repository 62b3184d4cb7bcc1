//! CA issuance benchmark: the real `zident ca` process, driven over gRPC + TLS with many
//! concurrent requests, against the raw cost of the two signatures every issuance needs.
//!
//! Run: `cargo bench -p zident --bench ca_issuance` (optionally `-- REQUESTS CONCURRENCY`).
//!
//! Printed, from one run on this machine:
//! - issued certificates per second (wall clock);
//! - CPU time of the CA process (user + system, from /proc) per issued certificate;
//! - the raw cost of one P-256 signature verification (the CSR's proof of possession) plus one
//!   P-256 signature (the certificate), measured here with aws-lc-rs on one core;
//! - the ratio raw / CA CPU: the share of the CA's work that is the unavoidable cryptography.
//!   The goal is >= 0.7, i.e. TLS, gRPC, parsing and encoding cost under 30% of an issuance.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use prost_types::{Struct, Value, value::Kind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zident_identity::{SpiffeId, WorkloadKey};
use zident_proto::istio_ca::IstioCertificateRequest;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

const MESH: &str = "trustDomain: cluster.local\n\
nodes:\n- {name: bench-node, token: bench-token}\n\
workloads:\n- {uid: w, name: app, namespace: bench, serviceAccount: app, node: bench-node}\n";
const CONNECTIONS: usize = 4;

struct Ca(Child);

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ROUNDS: usize = 5;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(10_000);
    let concurrency = args.get(1).copied().unwrap_or(64);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // This machine is shared and noisy: alternate the baseline and the CA run, several
    // rounds, and report medians.
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let raw_us = raw_sign_verify_micros();
        let run = runtime.block_on(drive(requests, concurrency));
        eprintln!(
            "round {round}: {:.0} certs/s, CA {:.1} us/cert, raw {raw_us:.1} us, ratio {:.2}",
            run.per_sec,
            run.cpu_us,
            raw_us / run.cpu_us
        );
        rounds.push((run, raw_us));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per_sec = median(rounds.iter().map(|(r, _)| r.per_sec).collect());
    let cpu_us = median(rounds.iter().map(|(r, _)| r.cpu_us).collect());
    let raw_us = median(rounds.iter().map(|(_, raw)| *raw).collect());
    let ratio = median(rounds.iter().map(|(r, raw)| raw / r.cpu_us).collect());
    println!("zident CA issuance benchmark (median of {ROUNDS} rounds)");
    println!(
        "  requests per round       {requests} ({concurrency} in flight over {CONNECTIONS} TLS connections)"
    );
    println!("  issued per second        {per_sec:.0}");
    println!("  CA CPU per certificate   {cpu_us:.1} us  (user+sys of the zident ca process)");
    println!("  raw P-256 verify + sign  {raw_us:.1} us  (aws-lc-rs, one core)");
    println!("  ratio raw / CA CPU       {ratio:.2}  (goal >= 0.70)");
}

struct Run {
    per_sec: f64,
    cpu_us: f64,
}

/// CPU time of one P-256 verify (over a CSR-sized message) plus one P-256 sign (over a
/// certificate-sized message), single-threaded.
fn raw_sign_verify_micros() -> f64 {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .expect("key");
    let csr_info = vec![0x5au8; 220];
    let tbs = vec![0xa5u8; 420];
    let csr_sig = key.sign(&rng, &csr_info).expect("sign");
    let public = UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    let iterations = 5_000;
    for _ in 0..200 {
        public.verify(&csr_info, csr_sig.as_ref()).expect("verify");
        key.sign(&rng, &tbs).expect("sign");
    }
    let start = thread_cpu();
    for _ in 0..iterations {
        public.verify(&csr_info, csr_sig.as_ref()).expect("verify");
        std::hint::black_box(key.sign(&rng, &tbs).expect("sign"));
    }
    (thread_cpu() - start).as_secs_f64() * 1e6 / iterations as f64
}

async fn drive(requests: usize, concurrency: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("mesh file");
    let (ca, addr) = start_ca(dir.path());
    let pid = ca.0.id();

    let id = SpiffeId::new("spiffe://cluster.local/ns/bench/sa/app").expect("id");
    let csrs: Vec<String> = (0..requests)
        .map(|_| {
            WorkloadKey::generate()
                .and_then(|k| k.csr_pem(&id))
                .expect("CSR")
        })
        .collect();

    let root = std::fs::read(dir.path().join("ca/root-cert.pem")).expect("root");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&root))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect");
        clients.push(IstioCertificateServiceClient::new(channel));
    }
    // Warm up connections and the CA.
    for (i, c) in clients.iter_mut().enumerate() {
        c.create_certificate(request(csrs[i].clone(), id.as_str()))
            .await
            .expect("warm-up issuance");
    }

    let queue = std::sync::Arc::new(std::sync::Mutex::new(csrs));
    let cpu_before = process_cpu(pid);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut client = clients[w % CONNECTIONS].clone();
        let queue = queue.clone();
        let id = id.to_string();
        workers.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let next = queue.lock().expect("queue").pop();
                let Some(csr) = next else { break };
                client
                    .create_certificate(request(csr, &id))
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
    let cpu = process_cpu(pid) - cpu_before;
    drop(ca);

    Run {
        per_sec: issued as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / issued as f64,
    }
}

fn request(csr: String, id: &str) -> tonic::Request<IstioCertificateRequest> {
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
        tonic::metadata::MetadataValue::from_static("Bearer bench-token"),
    );
    req
}

fn start_ca(dir: &std::path::Path) -> (Ca, String) {
    // With ZIDENT_BENCH_CA_CPUS=LIST the CA runs under `taskset -c LIST`, to measure it on
    // cores of its own instead of sharing them with this client.
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
        .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
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
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("zident ca printed its address");
    (Ca(child), addr)
}

/// User + system CPU time of a process, from /proc/<pid>/stat.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    // Linux reports /proc times in USER_HZ, which is 100 on every mainstream configuration.
    100.0
}

fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec())
}
