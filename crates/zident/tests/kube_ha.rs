//! Three `zident ca --kubernetes --roots-in-cluster` replicas on a real API server and nothing
//! else (no database, no shared volume): one root however they start, one leader, the leader
//! killed (kill -9) mid-rotation and another replica finishing the rotation exactly once, and
//! `istio-ca-root-cert` following every phase in every namespace, repaired when edited, made
//! in a new namespace, and replicas that keep issuing while the API server is away.
//!
//! Needs the API server `scripts/k8s/build.sh` builds (.ci/run builds it); skipped with a
//! message without it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use zident_testkit::kube_api::{KubeApi, namespace};
use zident_testkit::kube_replica::{CaReplica, lease_holder, logs, until_replicas};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(60);
const NS: &str = "zident-ha";
const ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";

/// Prepare 27 s after a root is made (half of its 60 s and the 6 s it is backdated); activate
/// 2 s after prepare; retire 6 s after activate (certificates live at most 4 s, then a 2 s
/// margin): the next prepare comes 15 s after the first rotation ends. The Lease lapses 3 s
/// after its holder's last renewal.
const FLAGS: &[&str] = &[
    "--root-lifetime",
    "60s",
    "--rotate-at",
    "0.5",
    "--bundle-refresh-hint",
    "1s",
    "--max-ttl",
    "4s",
    "--default-ttl",
    "4s",
    "--retire-margin",
    "2s",
    "--leader-lease",
    "3s",
];

async fn issue(r: &CaReplica) -> Result<Vec<String>, String> {
    let root = r.root_pem();
    zident_testkit::ca::request_certificate(r.port, root.as_bytes(), "token-a", ID, 4).await
}

/// The cluster as the test reads it.
struct Cluster {
    secrets: Api<Secret>,
    client: kube::Client,
}

impl Cluster {
    /// The roots Secret's rotation state (JSON) and the keys it holds.
    async fn roots(&self) -> Option<(serde_json::Value, Vec<String>)> {
        let secret = self.secrets.get_opt("zident-ca-roots").await.ok()??;
        let data = secret.data?;
        let state = serde_json::from_slice(&data.get("rotation.json")?.0).ok()?;
        Some((state, data.keys().cloned().collect()))
    }

    /// The active and the prepared generation.
    async fn phase(&self) -> (u64, Option<u64>) {
        let state = self.roots().await.map(|(s, _)| s).unwrap_or_default();
        (
            state["active"].as_u64().unwrap_or(0),
            state["prepared"].as_u64(),
        )
    }

    async fn holder(&self) -> Option<String> {
        lease_holder(&self.client, NS).await
    }

    /// How many roots `istio-ca-root-cert` holds in `ns` (0 when there is none).
    async fn published_roots(&self, ns: &str) -> usize {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        api.get_opt("istio-ca-root-cert")
            .await
            .ok()
            .flatten()
            .and_then(|cm| cm.data?.remove("root-cert.pem"))
            .map_or(0, |pem| pem.matches("BEGIN CERTIFICATE").count())
    }
}

/// Polls `check` until it holds, for up to `DEADLINE`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    replicas: &[CaReplica],
    check: impl FnMut() -> F,
) {
    until_replicas(what, replicas, DEADLINE, check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_the_api_server_alone_share_one_root_and_survive_the_leader_killed_mid_rotation()
 {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    namespace(&client, NS, json!({})).await;
    namespace(&client, "shop", json!({})).await;
    let cluster = Cluster {
        secrets: Api::namespaced(client.clone(), NS),
        client: client.clone(),
    };
    let base = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        base.path().join("mesh.yaml"),
        "trustDomain: cluster.local\nnodes:\n- {name: node-a, token: token-a}\n\
         workloads:\n- {uid: fe, name: frontend, namespace: default, serviceAccount: frontend, node: node-a}\n",
    )
    .expect("mesh file");

    // Three replicas started at once race to make the first root: one wins, all serve it.
    let mut replicas: Vec<CaReplica> = ["ca-0", "ca-1", "ca-2"]
        .iter()
        .map(|n| CaReplica::start(BIN, api, base.path(), NS, n, FLAGS))
        .collect();
    until("three replicas serve", &replicas, || async {
        replicas.iter().all(CaReplica::serving)
    })
    .await;
    let (state, keys) = cluster.roots().await.expect("the roots Secret");
    assert_eq!(state["active"], 1);
    let certs: Vec<&String> = keys.iter().filter(|k| k.ends_with(".pem")).collect();
    assert_eq!(certs, ["root-1.pem"], "one root: {keys:?}");
    assert!(keys.contains(&"root-1.key".to_string()) && keys.contains(&"jwt-1.key".to_string()));
    let first = replicas[0].root_pem();
    assert!(first.contains("BEGIN CERTIFICATE"));
    assert!(
        replicas.iter().all(|r| r.root_pem() == first),
        "every replica serves the one root{}",
        logs(&replicas)
    );
    for r in &replicas {
        assert!(
            issue(r).await.is_ok(),
            "{} issues{}",
            r.name,
            logs(&replicas)
        );
    }
    until("one leader holds the Lease", &replicas, || async {
        cluster.holder().await.is_some()
    })
    .await;
    // What each replica issued is in its own record, for the leader's activation rule.
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    until("each replica records what it issued", &replicas, || async {
        let mut all = true;
        for r in &replicas {
            let text = records
                .get_opt(&format!("zident-ca-issued-{}", r.name))
                .await
                .ok()
                .flatten()
                .and_then(|cm| cm.data?.remove("issued"))
                .unwrap_or_default();
            all &= text.contains(ID);
        }
        all
    })
    .await;
    until("istio-ca-root-cert holds the root", &replicas, || async {
        cluster.published_roots("shop").await == 1
    })
    .await;

    // The leader prepares; every namespace's ConfigMap gets the new root beside the old.
    until("generation 2 is prepared", &replicas, || async {
        cluster.phase().await == (1, Some(2))
    })
    .await;
    until("istio-ca-root-cert holds both roots", &replicas, || async {
        cluster.published_roots("shop").await == 2
    })
    .await;
    // The leader is killed before it activates.
    let leader = cluster.holder().await.expect("a leader");
    let i = replicas
        .iter()
        .position(|r| r.name == leader)
        .expect("the leader is one of the replicas");
    replicas[i].kill9();
    let killed_at = Instant::now();
    let dead = replicas.remove(i);
    until("another replica takes the Lease", &replicas, || async {
        cluster.holder().await.is_some_and(|h| h != leader)
    })
    .await;
    eprintln!(
        "the Lease moved from {leader} to {} {:?} after kill -9",
        cluster.holder().await.unwrap_or_default(),
        killed_at.elapsed()
    );
    // The survivors issue on; the new leader activates and, once the longest certificate the
    // old root signed is over, retires it: the ConfigMaps keep the new root alone.
    for r in &replicas {
        assert!(issue(r).await.is_ok(), "{} issues", r.name);
    }
    until("generation 2 is active", &replicas, || async {
        cluster.phase().await.0 >= 2
    })
    .await;
    until(
        "generation 1 is retired and its keys are gone",
        &replicas,
        || async {
            cluster.roots().await.is_some_and(|(state, keys)| {
                let retired = state["history"].as_array().is_some_and(|h| {
                    h.iter()
                        .any(|e| e["phase"] == "retire" && e["generation"] == 1)
                });
                retired && !keys.contains(&"root-1.key".to_string())
            })
        },
    )
    .await;
    until(
        "istio-ca-root-cert holds the new root alone",
        &replicas,
        || async { cluster.published_roots("shop").await == 1 },
    )
    .await;
    let (state, _) = cluster.roots().await.expect("the roots Secret");
    let steps: Vec<(String, u64)> = state["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| {
            (
                e["phase"].as_str().unwrap_or_default().to_owned(),
                e["generation"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // The first rotation's steps came first, and no step was ever taken twice.
    assert_eq!(
        steps[..3],
        [
            ("prepare".to_string(), 2),
            ("activate".to_string(), 2),
            ("retire".to_string(), 1)
        ],
        "{steps:?}{}",
        logs(&replicas)
    );
    let mut unique = steps.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), steps.len(), "a step taken twice: {steps:?}");
    until(
        "every survivor serves one root, not the first",
        &replicas,
        || async {
            let pem = replicas[0].root_pem();
            pem != first
                && pem.matches("BEGIN CERTIFICATE").count() == 1
                && replicas.iter().all(|r| r.root_pem() == pem)
        },
    )
    .await;
    for r in &replicas {
        let issued = issue(r).await;
        assert!(
            issued.is_ok(),
            "{} issues under the new root: {issued:?}{}",
            r.name,
            logs(&replicas)
        );
    }

    // An edited ConfigMap is put back; a namespace made now gets one.
    let shop: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    shop.patch(
        "istio-ca-root-cert",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"root-cert.pem": "edited"}})),
    )
    .await
    .expect("edit the ConfigMap");
    until("the edited ConfigMap is repaired", &replicas, || async {
        cluster.published_roots("shop").await == 1
    })
    .await;
    namespace(&client, "late", json!({})).await;
    until("a new namespace gets the ConfigMap", &replicas, || async {
        cluster.published_roots("late").await == 1
    })
    .await;

    // The API server goes away: every replica keeps issuing from its working copy, says it is
    // degraded, and gives up the lead; when the server returns, they recover by themselves.
    api.stop_apiserver().expect("stop the API server");
    let ready = |r: &CaReplica| {
        zident_testkit::curl(&[&format!("http://127.0.0.1:{}/ready", r.metrics_port)])
    };
    until("every replica says it is degraded", &replicas, || async {
        replicas.iter().all(|r| {
            let (code, body) = ready(r);
            code == 503 && body.contains("degraded") && body.contains("taking no rotation step")
        })
    })
    .await;
    for r in &replicas {
        assert!(
            issue(r).await.is_ok(),
            "{} issues without the API server",
            r.name
        );
        let metrics =
            zident_testkit::curl(&[&format!("http://127.0.0.1:{}/metrics", r.metrics_port)]).1;
        assert!(
            metrics.contains("zident_ca_leader 0"),
            "{}: {metrics}",
            r.name
        );
    }
    api.start_apiserver().expect("start the API server again");
    until(
        "the replicas recover and one leads again",
        &replicas,
        || async { replicas.iter().all(CaReplica::serving) && cluster.holder().await.is_some() },
    )
    .await;
    drop(dead);
}
