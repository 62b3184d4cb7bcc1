//! A replica's records on a real API server are written at a pace set by their size: a replica
//! issuing all the time rewrites a large serials record (every valid certificate, one line
//! each) about once per 64 KiB of it a second, not in every one-second round, and has written
//! the last certificate within the 15 s it may lag.
//!
//! Needs the API server `scripts/k8s/build.sh` builds (.ci/run builds it); skipped with a
//! message without it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use serde_json::json;
use zident_testkit::kube_api::{KubeApi, namespace};
use zident_testkit::kube_replica::{CaReplica, logs, until_replicas};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const NS: &str = "zident-records";
const RECORD: &str = "zident-ca-serials-ca-0";
/// The pace the replica keeps (`record_pace.rs`): bytes of record per second of wait.
const BYTES_PER_SECOND: f64 = 64.0 * 1024.0;
/// A record waits at most this long for a write once it has something new.
const MAX_LAG: Duration = Duration::from_secs(15);
/// Certificates issued in all: about 750 KB of record, below the 900 KiB a record holds.
const CERTIFICATES: usize = 1800;

/// A service account name nearly as long as Kubernetes allows (a DNS subdomain: labels of at
/// most 63), so that each line of the record is long and the record grows large with few
/// certificates.
fn long_name() -> String {
    format!("sa-{}", vec!["x".repeat(60); 4].join("."))
}

/// The record's resourceVersion, size, and lines (one per certificate), when it exists.
async fn record(api: &Api<ConfigMap>) -> Option<(String, usize, usize)> {
    let cm = api.get_opt(RECORD).await.ok()??;
    let version = cm.metadata.resource_version?;
    let data = cm.data?;
    let len = data.values().map(String::len).sum();
    let lines = data.values().map(|t| t.lines().count()).sum();
    Some((version, len, lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_is_written_at_the_pace_of_its_size_and_catches_up() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    namespace(&client, NS, json!({})).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let base = tempfile::tempdir().expect("temp dir");
    let sa = long_name();
    std::fs::write(
        base.path().join("mesh.yaml"),
        format!(
            "trustDomain: cluster.local\nnodes:\n- {{name: node-a, token: token-a}}\n\
             workloads:\n- {{uid: w, name: w, namespace: default, serviceAccount: {sa}, node: node-a}}\n"
        ),
    )
    .expect("mesh file");
    let replica = CaReplica::start(
        BIN,
        api,
        base.path(),
        NS,
        "ca-0",
        &[
            "--max-ttl",
            "600s",
            "--default-ttl",
            "600s",
            "--no-auto-rotate",
        ],
    );
    let replicas = [replica];
    until_replicas(
        "the replica serves",
        &replicas,
        Duration::from_secs(60),
        || async { replicas[0].serving() },
    )
    .await;
    let root = replicas[0].root_pem();
    let id = format!("spiffe://cluster.local/ns/default/sa/{sa}");
    let port = replicas[0].port;

    // Issue all the time, from 8 tasks with a pause of 100 ms after each certificate (at most
    // 80 a second, so the record stays large for many rounds), until CERTIFICATES are issued.
    let issued = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (issued, root, id) = (issued.clone(), root.clone(), id.clone());
            tokio::spawn(async move {
                while issued.fetch_add(1, Ordering::SeqCst) < CERTIFICATES {
                    let got = zident_testkit::ca::request_certificate(
                        port,
                        root.as_bytes(),
                        "token-a",
                        &id,
                        600,
                    )
                    .await;
                    assert!(got.is_ok(), "issuance: {got:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let waiter = {
        let done = done.clone();
        tokio::spawn(async move {
            for t in tasks {
                t.await.expect("issuing task");
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // Watch the record's writes (each a new resourceVersion) with their sizes while issuing.
    let mut writes: Vec<(Instant, usize)> = Vec::new();
    let mut last_version = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "{CERTIFICATES} certificates were not issued in 300 s{}",
            logs(&replicas)
        );
        if let Some((version, len, _)) = record(&configmaps).await
            && version != last_version
        {
            last_version = version;
            writes.push((Instant::now(), len));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiter.await.expect("issuance");
    let stopped = Instant::now();

    // Every write of a large record waited its size's share of the rate before the next one
    // (less 1 s for the lag of this poll and of the API server).
    let mut checked = 0;
    for pair in writes.windows(2) {
        let ((at, len), (next_at, _)) = (pair[0], pair[1]);
        let pace = Duration::from_secs_f64(len as f64 / BYTES_PER_SECOND).min(MAX_LAG);
        if pace >= Duration::from_secs(3) {
            checked += 1;
            let gap = next_at.duration_since(at);
            assert!(
                gap + Duration::from_secs(1) >= pace,
                "a record of {len} bytes was written again after {gap:?}, sooner than its pace {pace:?}; writes (bytes): {:?}",
                writes.iter().map(|(_, l)| l).collect::<Vec<_>>()
            );
        }
    }
    assert!(
        checked >= 2,
        "too few writes of a large record to judge the pace: {:?}",
        writes.iter().map(|(_, l)| l).collect::<Vec<_>>()
    );

    // Issuance over: within the lag, the record holds every certificate.
    loop {
        let lines = record(&configmaps).await.map_or(0, |r| r.2);
        if lines == CERTIFICATES {
            break;
        }
        assert!(
            stopped.elapsed() < MAX_LAG + Duration::from_secs(10),
            "the record holds {lines} of {CERTIFICATES} certificates {:?} after the last was issued{}",
            stopped.elapsed(),
            logs(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{CERTIFICATES} certificates issued; {} writes of the serials record while issuing, the last {} bytes; caught up {:?} after the last",
        writes.len(),
        writes.last().map_or(0, |w| w.1),
        stopped.elapsed()
    );
}
