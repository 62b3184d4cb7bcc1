//! Recovery after a CA outage: how long after the CA answers again every identity of a node is
//! Available, beside how long the identities would still have waited for their next backoff
//! step (the baseline: what recovery took before the agent probed the CA).
//!
//! Run: `cargo bench -p zident --bench ca_recovery` (optionally `-- IDENTITIES`, default 1,000).
//!
//! The CA is the real `zident ca` process, killed and started again on the same port; the agent
//! runs in this process with its defaults (backoff 1 s doubling to 150 s, 8 requests in flight)
//! and 20 s certificates, so that the outage outlives them.

mod common;

/// The agent runs in this process: on the allocator the `zident` binary uses (jemalloc), as
/// users run it, not on the C library's malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant, SystemTime};

use zident_agent::{AgentConfig, CaClientConfig, CertState, RunningAgent, TokenSource};

fn main() {
    let identities = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(identities));
}

async fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(identities: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), common::mesh(identities)).expect("mesh file");
    let ca = common::start_ca(dir.path());
    let listen = ca.addr.clone();
    let port = listen.rsplit(':').next().expect("port").to_owned();
    let client = CaClientConfig {
        address: format!("localhost:{port}"),
        root_ca: dir.path().join("ca/root-cert.pem"),
        token: TokenSource::Literal(common::TOKEN.into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(30),
        poll_bundle: false,
    };
    let mut config = AgentConfig::new("bench-node", dir.path().join("mesh.yaml"), client);
    config.secret_ttl = Duration::from_secs(20);
    (
        config.admin_addr,
        config.metrics_addr,
        config.readiness_addr,
    ) = (None, None, None);
    let agent = RunningAgent::start(config, None).await.expect("agent");
    wait("warm-up", Duration::from_secs(600), || {
        agent.manager.is_ready()
    })
    .await;

    // The outage: past every certificate's expiry, and long enough for the backoff to grow.
    drop(ca);
    let outage = Instant::now();
    wait(
        "every identity failed three times",
        Duration::from_secs(300),
        || {
            agent.manager.all(|s| {
                s.last_error.is_some()
                    && s.attempts >= 4
                    && matches!(s.state, CertState::Unavailable(_))
            })
        },
    )
    .await;
    // The baseline: when each identity's next retry was due when the CA came back.
    let now = SystemTime::now();
    let mut waits: Vec<f64> = agent
        .manager
        .snapshot()
        .iter()
        .filter_map(|(_, s)| s.next_attempt?.duration_since(now).ok())
        .map(|d| d.as_secs_f64())
        .collect();
    waits.sort_by(f64::total_cmp);
    let ca = common::start_ca_at(dir.path(), &listen);
    let back = Instant::now();
    wait("recovery", Duration::from_secs(300), || {
        agent
            .manager
            .snapshot()
            .iter()
            .all(|(_, s)| matches!(s.state, CertState::Available(_)))
    })
    .await;
    let took = back.elapsed().as_secs_f64();
    let pick = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    println!("zident CA-outage recovery benchmark");
    println!("  identities                      {identities} on one node, 20 s certificates");
    println!(
        "  outage                          {:.1} s (CA process killed, then started on the same port)",
        back.duration_since(outage).as_secs_f64()
    );
    println!("  CA back -> every identity Available   {took:.2} s   (goal <= 2 s)");
    println!(
        "  baseline: next backoff retry was due in  median {:.1} s, max {:.1} s",
        pick(0.5),
        pick(1.0)
    );
    println!(
        "  ratio recovery / median backoff wait   {:.2}",
        took / pick(0.5)
    );
    drop(agent);
    drop(ca);
}
