//! Agent warm-up benchmark: how long 10,000 identities on one node take to become Available
//! against the real CA, beside the CA's own issuance rate measured in the same run, and how much
//! memory the agent holds per identity.
//!
//! Run: `cargo bench -p zident --bench agent_warmup` (optionally `-- IDENTITIES`).
//!
//! The CA is the real `zident ca` process. The agent runs in this process with its defaults (8
//! requests in flight), so its memory is read from this process's RSS before and after.

mod common;

/// The agent runs in this process: on the allocator the `zident` binary uses (jemalloc), as
/// users run it, not on the C library's malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use zident_agent::{AgentConfig, CaClientConfig, RunningAgent, TokenSource};
use zident_identity::SpiffeId;

fn main() {
    let identities = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(identities));
}

async fn run(identities: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), common::mesh(identities)).expect("mesh file");
    let ca = common::start_ca(dir.path());
    let root_path = dir.path().join("ca/root-cert.pem");
    let root = std::fs::read(&root_path).expect("root");

    // The CA's own rate, driven directly (CSRs made before timing), in this run.
    let id = SpiffeId::new("spiffe://cluster.local/ns/bench/sa/app-0").expect("id");
    let direct = common::drive(&ca, &root, &id, 5_000, 64).await;

    let rss_before = common::rss_bytes();
    let port = ca.addr.rsplit(':').next().expect("port");
    let client = CaClientConfig {
        address: format!("localhost:{port}"),
        root_ca: root_path,
        token: TokenSource::Literal(common::TOKEN.into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(30),
        poll_bundle: false,
    };
    let mut config = AgentConfig::new("bench-node", dir.path().join("mesh.yaml"), client);
    config.secret_ttl = Duration::from_secs(3600);
    config.admin_addr = None;
    config.metrics_addr = None;
    config.readiness_addr = None;
    if let Ok(n) = std::env::var("ZIDENT_BENCH_AGENT_CONCURRENCY") {
        config.concurrency = n
            .parse()
            .expect("ZIDENT_BENCH_AGENT_CONCURRENCY is a number");
    }
    let concurrency = config.concurrency;
    let ca_cpu_before = common::process_cpu(ca.pid());
    let agent_cpu_before = common::process_cpu(std::process::id());
    let start = Instant::now();
    let agent = RunningAgent::start(config, None).await.expect("agent");
    // Readiness (every identity has been Available once) is cheap to poll: it stops at the
    // first identity still waiting and copies nothing.
    loop {
        if agent.manager.is_ready() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{} of {identities} still pending after 10 minutes",
            agent.manager.readiness().1.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let ca_cpu = common::process_cpu(ca.pid()) - ca_cpu_before;
    let agent_cpu = common::process_cpu(std::process::id()) - agent_cpu_before;
    let rss_after = common::rss_bytes();
    let agent_rate = identities as f64 / elapsed.as_secs_f64();
    let per_identity = rss_after.saturating_sub(rss_before) as f64 / identities as f64;
    println!("zident agent warm-up benchmark");
    println!(
        "  identities               {identities} on one node, {concurrency} requests in flight"
    );
    println!("  time to all Available    {:.2} s", elapsed.as_secs_f64());
    println!("  agent rate               {agent_rate:.0} certs/s");
    println!(
        "  CA rate, driven directly {:.0} certs/s (64 in flight, same run)",
        direct.per_sec
    );
    println!(
        "  ratio agent / CA         {:.2}  (goal >= 0.70)",
        agent_rate / direct.per_sec
    );
    let per = |d: Duration| d.as_secs_f64() * 1e6 / identities as f64;
    println!(
        "  CPU per identity         agent {:.0} us + CA {:.0} us  (CA driven directly: {:.0} us)",
        per(agent_cpu),
        per(ca_cpu),
        direct.cpu_us
    );
    println!(
        "  agent memory             {:.1} KiB RSS per identity (goal <= 16 KiB)",
        per_identity / 1024.0
    );
    drop(agent);
}
