//! istiod's plugged-in CA on a real API server: with the Secret `cacerts` in the control plane's
//! namespace, `zident ca --kubernetes` signs with it instead of making its own root, follows the
//! Secret's changes with the plugged-in rules (a new intermediate is applied, a key that does not
//! match its certificate is refused while the current keys keep signing), and keeps the last keys
//! when the Secret is deleted.
//!
//! Needs the API server of scripts/k8s/build.sh and the openssl command line; skipped with a
//! message without the server.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use zident_ca::KubernetesConfig;
use zident_testkit::kube_api::{KubeApi, namespace};

const WAIT: Duration = Duration::from_secs(30);

fn cacerts_secret(dir: &Path) -> Secret {
    let file = |name: &str| ByteString(std::fs::read(dir.join(name)).expect("cacerts file"));
    let data: BTreeMap<String, ByteString> = [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ]
    .iter()
    .map(|k| (k.to_string(), file(k)))
    .collect();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("cacerts".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cacerts_secret_signs_and_its_changes_follow_the_plugged_in_rules() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let kube = api.client().await;
    namespace(&kube, "istio-system", serde_json::json!({})).await;
    let (work, files) = plugged_in_fixture();
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "istio-system");
    secrets
        .create(&PostParams::default(), &cacerts_secret(&files))
        .await
        .expect("create cacerts");

    let mut config = config(work.path());
    config.kubernetes = Some(KubernetesConfig {
        with_mesh_file: true,
        ..kube_config(api.kubeconfig())
    });
    let ca = start_ca(config).await;
    assert!(
        matches!(ca.state.authority().mode(), zident_ca::Mode::PluggedIn(_)),
        "the Secret's CA signs"
    );
    let root = std::fs::read_to_string(files.join("root-cert.pem")).unwrap();
    assert_eq!(
        ca.state.authority().bundle().to_pem().trim(),
        root.trim(),
        "the Secret's root is the bundle"
    );
    let mut grpc = client(&ca).await;
    let (_, chain) = issue_frontend(&mut grpc, 600).await;
    assert!(
        issuer_cn(&chain[0]).contains("Intermediate One"),
        "{chain:?}"
    );

    // A new intermediate under the same root, written to the Secret: applied.
    make_intermediate(&files, "Intermediate Two");
    secrets
        .replace("cacerts", &PostParams::default(), &cacerts_secret(&files))
        .await
        .expect("update cacerts");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, chain) = issue_frontend(&mut grpc, 600).await;
        if issuer_cn(&chain[0]).contains("Intermediate Two") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new intermediate never signs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A key that does not match its certificate: refused, the current keys keep signing.
    zident_testkit::openssl(
        &files,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca-key.pem",
        ],
    );
    secrets
        .replace("cacerts", &PostParams::default(), &cacerts_secret(&files))
        .await
        .expect("update cacerts");
    let metrics_url = format!("http://{}/metrics", ca.metrics_addr.expect("metrics"));
    eventually(WAIT, "the mismatched key is refused", || {
        curl(&metrics_url, None)
            .contains("zident_ca_config_reloads_total{source=\"root_ca_dir\",outcome=\"rejected\"}")
    })
    .await;
    let (_, chain) = issue_frontend(&mut grpc, 600).await;
    assert!(issuer_cn(&chain[0]).contains("Intermediate Two"));

    // Deleted: the last keys stay in force.
    secrets
        .delete("cacerts", &DeleteParams::default())
        .await
        .expect("delete cacerts");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (_, chain) = issue_frontend(&mut grpc, 600).await;
        assert!(issuer_cn(&chain[0]).contains("Intermediate Two"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
