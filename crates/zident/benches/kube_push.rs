//! The mesh from Kubernetes at scale: PODS enrolled pods in a real kube-apiserver
//! (scripts/k8s/), STREAMS xDS streams subscribed as ztunnel subscribes to the real
//! `zident ca --kubernetes` process.
//!
//! Run: `cargo bench -p zident --bench kube_push` (optionally `-- PODS STREAMS EDITS`, default
//! 5,000 100 41). Needs the API server of `scripts/k8s/build.sh`.
//!
//! Measured, each beside its baseline from the same run:
//! - a pod's status patched (its address assigned, as the kubelet does) until every stream has
//!   received the new workload and ACKed it: median and p99, and the API server's own share
//!   (the patch until a watch of our own sees it);
//! - the CA's start-up: from the process start to serving with a first full view of every pod,
//!   then until every stream holds it;
//! - the CA's memory per pod (against a CA started on the same cluster with no pod) and per
//!   stream.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::json;
use zident_testkit::kube_api::{KubeApi, create, pod, run_pod};

use common::xds::{Seen, open_stream, wait};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pods = args.first().copied().unwrap_or(5_000);
    let streams = args.get(1).copied().unwrap_or(100);
    let edits = args.get(2).copied().unwrap_or(41);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(pods, streams, edits));
}

/// The pod's address: 10.<i/62500>.<(i/250)%250>.<i%250+1>, in 10.200.0.0/16 for the edits.
fn address(i: usize) -> String {
    format!("10.{}.{}.{}", i / 62500, (i / 250) % 250, i % 250 + 1)
}

fn start_ca(dir: &std::path::Path, api: &KubeApi) -> (common::Ca, Duration) {
    std::fs::write(
        dir.join("mesh.yaml"),
        format!(
            "trustDomain: cluster.local\nnodes:\n- {{name: bench-node, token: {}}}\n",
            common::TOKEN
        ),
    )
    .expect("mesh file");
    let kubeconfig = api.kubeconfig();
    let t0 = Instant::now();
    // The CA prints its address once it serves, after the first full list of every kind.
    let ca = common::start_ca_with(
        dir,
        &[
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8 path"),
            "--kubernetes-namespace",
            "bench-system",
        ],
    );
    (ca, t0.elapsed())
}

async fn run(pods: usize, streams: usize, edits: usize) {
    let api = match KubeApi::shared() {
        Ok(api) => api,
        Err(why) => {
            println!("kube_push: SKIPPED, no Kubernetes API server: {why}");
            return;
        }
    };
    let client = api.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "bench", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    )
    .await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "bench");

    // A CA on the cluster with no pod yet: the memory baseline.
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let (empty_ca, empty_start) = start_ca(empty_dir.path(), api);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = common::process_rss(empty_ca.pid());
    drop(empty_ca);

    // The pods, created and run 32 at a time, as a kubelet would report them.
    let t = Instant::now();
    futures_util::stream::iter(0..pods)
        .for_each_concurrent(32, |i| {
            let pod_api = pod_api.clone();
            async move {
                let name = format!("app-{i}");
                create(
                    &pod_api,
                    pod(
                        &name,
                        Some(&format!("app-{}", i % 500)),
                        "bench-node",
                        json!({}),
                    ),
                )
                .await;
                run_pod(&pod_api, &name, &address(i)).await;
            }
        })
        .await;
    let populate = t.elapsed();

    // Our own watch of the pods: when the API server delivers each status change.
    let seen_by_watch = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        Instant,
    >::new()));
    {
        let seen_by_watch = seen_by_watch.clone();
        let stream = watcher(pod_api.clone(), watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(p) = event
                    && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
                    && let Some(name) = p.metadata.name
                {
                    seen_by_watch
                        .lock()
                        .expect("lock")
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
    }

    // The CA with every pod: start-up to a first full view, then every stream holds it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, serving_after) = start_ca(dir.path(), api);
    let root = std::fs::read(dir.path().join("ca/root-cert.pem")).expect("root");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_pods = common::process_rss(ca.pid());
    let seen: Vec<Arc<Seen>> = (0..streams).map(|_| Arc::new(Seen::default())).collect();
    let t = Instant::now();
    for s in &seen {
        open_stream(&ca.addr, &root, s.clone()).await;
    }
    wait(
        "every stream has every pod",
        Duration::from_secs(600),
        || {
            seen.iter().all(|s| {
                s.count.load(Ordering::SeqCst) >= 1 && s.names.lock().expect("lock").len() >= pods
            })
        },
    )
    .await;
    let streams_sync = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_streams = common::process_rss(ca.pid());

    // Edits: a pod is created (not running: no change to the mesh), then its status patched
    // with an address; timed until every stream has it (each ACKs at once).
    let mut times = Vec::new();
    let mut api_share = Vec::new();
    for e in 0..edits {
        let name = format!("edit-{e}");
        create(&pod_api, pod(&name, Some("edit"), "bench-node", json!({}))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let counts: Vec<u64> = seen
            .iter()
            .map(|s| s.count.load(Ordering::SeqCst))
            .collect();
        let t0 = Instant::now();
        run_pod(
            &pod_api,
            &name,
            &format!("10.200.{}.{}", e / 250, e % 250 + 1),
        )
        .await;
        wait(
            "every stream has the new pod",
            Duration::from_secs(60),
            || {
                seen.iter()
                    .zip(&counts)
                    .all(|(s, c)| s.count.load(Ordering::SeqCst) > *c)
            },
        )
        .await;
        let last = seen
            .iter()
            .filter_map(|s| s.last.lock().expect("lock").map(|l| l.0))
            .max()
            .expect("a receipt");
        times.push(last.duration_since(t0).as_secs_f64() * 1000.0);
        wait("our watch saw it", Duration::from_secs(10), || {
            seen_by_watch.lock().expect("lock").contains_key(&name)
        })
        .await;
        let watched = seen_by_watch.lock().expect("lock")[&name];
        api_share.push(watched.duration_since(t0).as_secs_f64() * 1000.0);
    }
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    println!("Kubernetes mesh: {pods} pods, {streams} xDS streams, {edits} pods given an address");
    println!(
        "  pod status patched -> every stream has the workload and ACKs: median {:.1} ms, p99 {:.1} ms (goal: median under 200 ms)",
        p(&times, 0.5),
        p(&times, 0.99)
    );
    println!(
        "  of which the API server (patch -> a watch sees it): median {:.1} ms, p99 {:.1} ms (share of the median {:.2})",
        p(&api_share, 0.5),
        p(&api_share, 0.99),
        p(&api_share, 0.5) / p(&times, 0.5)
    );
    println!(
        "  start-up: serving with a first full view after {:.0} ms ({:.0} ms with no pod); every stream holds all {pods} after {:.0} ms more",
        serving_after.as_secs_f64() * 1000.0,
        empty_start.as_secs_f64() * 1000.0,
        streams_sync.as_secs_f64() * 1000.0
    );
    println!(
        "  CA memory: {:.1} MiB with no pod, {:.1} MiB with {pods} ({:.2} KiB per pod), {:.1} MiB with {streams} streams ({:.1} KiB per stream)",
        rss_empty as f64 / 1048576.0,
        rss_pods as f64 / 1048576.0,
        rss_pods.saturating_sub(rss_empty) as f64 / 1024.0 / pods as f64,
        rss_streams as f64 / 1048576.0,
        rss_streams.saturating_sub(rss_pods) as f64 / 1024.0 / streams as f64
    );
    println!(
        "  (creating and running the {pods} pods through the API server took {:.1} s)",
        populate.as_secs_f64()
    );
}
