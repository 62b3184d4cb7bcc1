//! Leader takeover on the API server: three `zident ca --kubernetes --roots-in-cluster`
//! processes, the Lease holder killed with SIGKILL, and the time until another replica holds
//! the Lease. The baseline in the same run is the Lease's duration, the bound a takeover can
//! not beat without stealing a live Lease (client-go's rule, which zident follows: a candidate
//! waits until it has seen the same record for a whole duration).
//!
//! Run: `cargo bench -p zident --bench kube_takeover` (optionally `-- ROUNDS`, default 5 per
//! Lease duration; durations 3 s and 15 s, the default). Needs the API server
//! `scripts/k8s/build.sh` builds.

use std::time::{Duration, Instant};

use serde_json::json;
use zident_testkit::kube_api::{KubeApi, namespace};
use zident_testkit::kube_replica::{CaReplica, lease_holder, logs};

const BIN: &str = env!("CARGO_BIN_EXE_zident");

fn main() {
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5usize);
    let api = match KubeApi::shared() {
        Ok(api) => api,
        Err(why) => {
            eprintln!("SKIPPED: no Kubernetes API server: {why}");
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(api, rounds));
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    replicas: &[CaReplica],
    within: Duration,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < within,
            "timed out: {what}{}",
            logs(replicas)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(api: &KubeApi, rounds: usize) {
    let client = api.client().await;
    println!("lease  round  takeover_s  takeover/lease");
    for lease in [3u64, 15] {
        let mut times = Vec::new();
        for round in 0..rounds {
            let ns = format!("takeover-{lease}-{round}");
            namespace(&client, &ns, json!({})).await;
            let base = tempfile::tempdir().expect("tempdir");
            std::fs::write(
                base.path().join("mesh.yaml"),
                "trustDomain: cluster.local\nnodes:\n- {name: node-a, token: token-a}\n",
            )
            .expect("mesh file");
            let flag = format!("{lease}s");
            let mut replicas: Vec<CaReplica> = (0..3)
                .map(|i| {
                    CaReplica::start(
                        BIN,
                        api,
                        base.path(),
                        &ns,
                        &format!("ca-{i}"),
                        &["--leader-lease", &flag, "--no-auto-rotate"],
                    )
                })
                .collect();
            until(
                "three replicas serve",
                &replicas,
                Duration::from_secs(60),
                || async { replicas.iter().all(CaReplica::serving) },
            )
            .await;
            let ns2 = ns.clone();
            until("a leader", &replicas, Duration::from_secs(60), || async {
                lease_holder(&client, &ns2).await.is_some()
            })
            .await;
            // Let the leader renew a few times, so the others hold a fresh record of it.
            let settle = Instant::now();
            until("settled", &replicas, Duration::from_secs(10), || async {
                settle.elapsed() > Duration::from_secs(2)
            })
            .await;
            let leader = lease_holder(&client, &ns).await.expect("a leader");
            let i = replicas
                .iter()
                .position(|r| r.name == leader)
                .expect("the leader is a replica");
            replicas[i].kill9();
            let killed = Instant::now();
            let dead = replicas.remove(i);
            until(
                "another replica takes the Lease",
                &replicas,
                Duration::from_secs(lease * 4 + 10),
                || async {
                    lease_holder(&client, &ns)
                        .await
                        .is_some_and(|h| h != leader)
                },
            )
            .await;
            let took = killed.elapsed().as_secs_f64();
            println!(
                "{lease:>4}s  {round:>5}  {took:>10.2}  {:>14.2}",
                took / lease as f64
            );
            times.push(took);
            drop((dead, replicas));
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "lease {lease}s: takeover median {median:.2} s (min {:.2}, max {:.2}), {:.2} of the Lease's duration",
            times[0],
            times[times.len() - 1],
            median / lease as f64
        );
    }
}
