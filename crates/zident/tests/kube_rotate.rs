//! `zident ca rotate|status --kubernetes` on a real API server: an operator takes the rotation
//! steps of replicas run with `--roots-in-cluster` (which rotate on no schedule here), by the
//! same rules as on a data dir: a step out of order or not yet safe is refused and changes
//! nothing, `--force` takes it, and every replica puts each step in force.
//!
//! Needs the API server `scripts/k8s/build.sh` builds (.ci/run builds it); skipped with a
//! message without it.

use std::process::Command;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use zident_identity::{TrustBundle, TrustDomain, chain_root, pem::certs_from_pem};
use zident_testkit::kube_api::{KubeApi, namespace};
use zident_testkit::kube_replica::{CaReplica, ca_command, logs, until_replicas};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(60);
const NS: &str = "zident-rotate";
const ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
/// No schedule: only the operator's commands rotate. A retire is safe only 600 s after the
/// activation, so one taken at once is refused whatever the machine's speed.
const FLAGS: &[&str] = &[
    "--no-auto-rotate",
    "--max-ttl",
    "600s",
    "--default-ttl",
    "600s",
];

/// `zident ca <args> --kubernetes …` against the test's API server: exit code and output.
fn ca(api: &KubeApi, args: &[&str]) -> (i32, String) {
    ca_command(BIN, api, NS, args)
}

/// The roots Secret's rotation state (JSON) and its data.
async fn roots(secrets: &Api<Secret>) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let secret = secrets
        .get("zident-ca-roots")
        .await
        .expect("the roots Secret");
    let data: Vec<(String, Vec<u8>)> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let state = data
        .iter()
        .find(|(k, _)| k == "rotation.json")
        .and_then(|(_, v)| serde_json::from_slice(v).ok())
        .expect("rotation.json");
    (state, data)
}

/// The active and the prepared generation.
async fn phase(secrets: &Api<Secret>) -> (u64, Option<u64>) {
    let (state, _) = roots(secrets).await;
    (
        state["active"].as_u64().unwrap_or(0),
        state["prepared"].as_u64(),
    )
}

/// Whether replica `r` issues a certificate that generation `g`'s root (from the Secret) signed.
async fn issues_under(r: &CaReplica, secrets: &Api<Secret>, g: u64) -> bool {
    let (_, data) = roots(secrets).await;
    let Some((_, root)) = data.iter().find(|(k, _)| *k == format!("root-{g}.pem")) else {
        return false;
    };
    let mut bundle = TrustBundle::new(TrustDomain::new("cluster.local").expect("trust domain"));
    for der in certs_from_pem(root).expect("the root's PEM") {
        bundle.add_root(der).expect("a root");
    }
    let served = r.root_pem();
    let Ok(chain) =
        zident_testkit::ca::request_certificate(r.port, served.as_bytes(), "token-a", ID, 60).await
    else {
        return false;
    };
    let leaf = certs_from_pem(chain[0].as_bytes()).expect("the leaf's PEM");
    chain_root(&leaf[0], &[], &bundle, SystemTime::now()).is_ok()
}

/// Polls `check` until it holds, for up to `DEADLINE`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    replicas: &[CaReplica],
    check: impl FnMut() -> F,
) {
    until_replicas(what, replicas, DEADLINE, check).await
}

fn roots_served(r: &CaReplica) -> usize {
    r.root_pem().matches("BEGIN CERTIFICATE").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rotates_the_roots_in_the_cluster_by_the_rules_of_a_data_dir() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    namespace(&client, NS, json!({})).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let base = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        base.path().join("mesh.yaml"),
        "trustDomain: cluster.local\nnodes:\n- {name: node-a, token: token-a}\n\
         workloads:\n- {uid: fe, name: frontend, namespace: default, serviceAccount: frontend, node: node-a}\n",
    )
    .expect("mesh file");
    let replicas: Vec<CaReplica> = ["ca-0", "ca-1"]
        .iter()
        .map(|n| CaReplica::start(BIN, api, base.path(), NS, n, FLAGS))
        .collect();
    until("two replicas serve", &replicas, || async {
        replicas.iter().all(CaReplica::serving)
    })
    .await;

    let (code, out) = ca(api, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "CA roots in the Secret zident-ca-roots of namespace {NS}: trust domain cluster.local, phase steady, active generation 1"
        )),
        "{out}"
    );

    // Out of order: refused, nothing written.
    let (code, out) = ca(api, &["rotate", "activate"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("no generation is prepared"), "{out}");
    assert_eq!(phase(&secrets).await, (1, None));

    // Prepare: committed to the Secret, and both replicas publish the new root beside the old.
    let (code, out) = ca(api, &["rotate", "prepare"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "committed to the Secret zident-ca-roots in namespace {NS}"
        )) && out.contains("Phase prepared"),
        "{out}"
    );
    assert_eq!(phase(&secrets).await, (1, Some(2)));
    until("both replicas publish two roots", &replicas, || async {
        replicas.iter().all(|r| roots_served(r) == 2)
    })
    .await;
    let (code, out) = ca(api, &["rotate", "prepare"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("generation 2 is already prepared"), "{out}");

    // Activating before agents can have fetched the new root: refused, with the time it is safe.
    let (code, out) = ca(api, &["rotate", "activate"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("too early") && out.contains("or pass --force"),
        "{out}"
    );
    assert_eq!(phase(&secrets).await, (1, Some(2)));
    let (code, out) = ca(api, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("phase prepared") && out.contains("next: activate generation 2 (safe from"),
        "{out}"
    );
    let (code, out) = ca(api, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(status["phase"], "prepared", "{out}");
    assert_eq!(status["state"]["prepared"], 2, "{out}");
    assert!(status["activate_safe_at"].as_u64().is_some(), "{out}");

    // --force: every replica signs with generation 2.
    let (code, out) = ca(api, &["rotate", "activate", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(phase(&secrets).await, (2, None));
    for r in &replicas {
        until(
            &format!("{} issues under generation 2", r.name),
            &replicas,
            || issues_under(r, &secrets, 2),
        )
        .await;
    }

    // Retiring while certificates of the old root may be valid: refused; forced, the old root
    // leaves every replica's bundle and its keys leave the Secret.
    let (code, out) = ca(api, &["rotate", "retire"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("too early"), "{out}");
    let (code, out) = ca(api, &["rotate", "retire", "--force"]);
    assert_eq!(code, 0, "{out}");
    let (state, data) = roots(&secrets).await;
    assert!(state["previous"].is_null(), "{state}");
    let keys: Vec<&str> = data.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&"root-2.key") && !keys.contains(&"root-1.key"),
        "{keys:?}"
    );
    until(
        "both replicas publish the new root alone",
        &replicas,
        || async { replicas.iter().all(|r| roots_served(r) == 1) },
    )
    .await;
    for r in &replicas {
        assert!(
            issues_under(r, &secrets, 2).await,
            "{} issues under generation 2{}",
            r.name,
            logs(&replicas)
        );
    }
    let (code, out) = ca(api, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("phase steady, active generation 2")
            && out.contains("prepare generation 2")
            && out.contains("activate generation 2")
            && out.contains("retire generation 1"),
        "{out}"
    );

    // A replica's data dir is its working copy: rotate there is refused and names the cluster.
    let out = Command::new(BIN)
        .args(["ca", "rotate", "prepare", "--data-dir"])
        .arg(base.path().join("ca-0"))
        .output()
        .expect("zident runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("--kubernetes --kubernetes-namespace {NS}"))
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(phase(&secrets).await, (2, None));
}
