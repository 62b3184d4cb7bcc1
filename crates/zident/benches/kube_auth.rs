//! Certificate issuance with Kubernetes ServiceAccount tokens against the same with a mesh
//! file's static token, on one real `zident ca --kubernetes` process and a real kube-apiserver.
//!
//! Run: `scripts/k8s/build.sh` once, then `cargo bench -p zident --bench kube_auth`
//! (optionally `-- REQUESTS CONCURRENCY`, default 5,000 64).
//!
//! A node agent's token (ServiceAccount `istio-system/ztunnel`, a trusted node account, bound
//! to its pod on `bench-node` by the TokenRequest API, audience `istio-ca`) asks for the
//! identity of a pod on the same node, as ztunnel does; the baseline, in alternating rounds on
//! the same CA, is the mesh file's node token asking for the same identity. Printed: the rate
//! of each and their ratio (goal: at least 0.9, which the token cache must make possible), the
//! CA's CPU per certificate for each, and the TokenReviews the CA sent per certificate.

mod common;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;
use zident_identity::SpiffeId;
use zident_testkit::kube_api::{KubeApi, create, namespace, pod, service_account};

const ROUNDS: usize = 4;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(5_000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(requests, concurrency));
}

async fn run(requests: usize, concurrency: usize) {
    let api = match KubeApi::shared() {
        Ok(api) => api,
        Err(why) => {
            println!("kube_auth: SKIPPED, no Kubernetes API server: {why}");
            return;
        }
    };
    let client = api.client().await;
    for ns in ["istio-system", "bench"] {
        namespace(&client, ns, json!({})).await;
    }
    for (ns, sa) in [("istio-system", "ztunnel"), ("bench", "app-0")] {
        service_account(&client, ns, sa).await;
    }
    let system: Api<Pod> = Api::namespaced(client.clone(), "istio-system");
    let zt = create(
        &system,
        pod("ztunnel-bench", Some("ztunnel"), "bench-node", json!({})),
    )
    .await;
    let bench: Api<Pod> = Api::namespaced(client.clone(), "bench");
    create(&bench, pod("app-0", Some("app-0"), "bench-node", json!({}))).await;
    let uid = zt.metadata.uid.expect("a uid");
    let token = api
        .token(
            &client,
            "istio-system",
            "ztunnel",
            Some(("ztunnel-bench", &uid)),
            "istio-ca",
        )
        .await;

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), common::mesh(1)).expect("mesh file");
    let kubeconfig = api.kubeconfig();
    let ca = common::start_ca_with(
        dir.path(),
        &[
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8 path"),
            "--trusted-node-accounts",
            "istio-system/ztunnel",
        ],
    );
    let root = std::fs::read(dir.path().join("ca/root-cert.pem")).expect("root");
    let id = SpiffeId::new("spiffe://cluster.local/ns/bench/sa/app-0").expect("id");

    let reviews = || async {
        let text = common::xds::metrics_text(&ca).await;
        text.lines()
            .filter(|l| l.starts_with("zident_ca_token_reviews_total{answered=\"api\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut rows = Vec::new();
    let mut review_calls = 0.0;
    let mut sa_certs = 0usize;
    for round in 1..=ROUNDS {
        let fixed = common::drive(&ca, &root, &id, requests, concurrency).await;
        let before = reviews().await;
        let sa = common::drive_as(&ca, &root, &id, requests, concurrency, &token).await;
        review_calls += reviews().await - before;
        sa_certs += requests + common::CONNECTIONS;
        eprintln!(
            "round {round}: static token {:.0} certs/s ({:.1} us CPU each), ServiceAccount token {:.0} certs/s ({:.1} us), ratio {:.2}",
            fixed.per_sec,
            fixed.cpu_us,
            sa.per_sec,
            sa.cpu_us,
            sa.per_sec / fixed.per_sec
        );
        rows.push((fixed, sa));
    }
    let median = |f: &dyn Fn(&(common::Run, common::Run)) -> f64| {
        common::median(rows.iter().map(f).collect())
    };
    println!(
        "Kubernetes tokens: {requests} certificates per round at concurrency {concurrency}, median of {ROUNDS} rounds"
    );
    println!(
        "  static mesh-file token: {:.0} certs/s, CA CPU {:.1} us/cert",
        median(&|r| r.0.per_sec),
        median(&|r| r.0.cpu_us)
    );
    println!(
        "  ServiceAccount token (TokenReview, node authorizer): {:.0} certs/s, CA CPU {:.1} us/cert",
        median(&|r| r.1.per_sec),
        median(&|r| r.1.cpu_us)
    );
    println!(
        "  ratio ServiceAccount / static: {:.3} (goal: at least 0.9)",
        median(&|r| r.1.per_sec / r.0.per_sec)
    );
    println!(
        "  TokenReviews sent: {review_calls:.0} for {sa_certs} certificates ({:.5} per certificate)",
        review_calls / sa_certs as f64
    );
}
