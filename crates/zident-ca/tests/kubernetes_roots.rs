//! The CA's roots in every namespace, against a real kube-apiserver: `istio-ca-root-cert`
//! (`root-cert.pem`) appears in each namespace but the ones istiod skips, is put back when edited
//! or deleted, reaches a namespace made later, and follows a root rotation (prepare adds the new
//! root, retire removes the old).
//!
//! Needs the API server of scripts/k8s/build.sh; skipped with a message otherwise.

mod common;

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use zident_ca::KubernetesConfig;
use zident_ca::dir_store;
use zident_ca::rotation::Phase;
use zident_testkit::kube_api::{KubeApi, namespace};

const WAIT: Duration = Duration::from_secs(30);
const NAME: &str = "istio-ca-root-cert";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_has_the_roots_in_force() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    for ns in ["istio-system", "shop"] {
        namespace(&client, ns, json!({})).await;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), "trustDomain: cluster.local\n").unwrap();
    let mut config = common::config(dir.path());
    config.kubernetes = Some(KubernetesConfig {
        with_mesh_file: false,
        ..common::kube_config(api.kubeconfig())
    });
    let ca = common::start_ca(config).await;
    let roots = || ca.state.authority().bundle().to_pem();
    let held = |ns: &'static str| {
        let client = client.clone();
        async move {
            let cms: Api<ConfigMap> = Api::namespaced(client, ns);
            cms.get_opt(NAME)
                .await
                .expect("get")
                .and_then(|c| c.data?.get("root-cert.pem").cloned())
        }
    };
    let until = |what: &'static str, ns: &'static str, want: Option<String>| async move {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let got = held(ns).await;
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: namespace {ns} holds {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // Every namespace but the system ones.
    for ns in ["default", "istio-system", "shop"] {
        until("created", ns, Some(roots())).await;
    }
    for ns in ["kube-system", "kube-public", "kube-node-lease"] {
        assert_eq!(held(ns).await, None, "istiod leaves {ns} alone");
    }

    // Edited: put back. Deleted: made again.
    let shop: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let mut edited = shop.get(NAME).await.unwrap();
    edited
        .data
        .get_or_insert_with(Default::default)
        .insert("root-cert.pem".into(), "not a root".into());
    shop.replace(NAME, &PostParams::default(), &edited)
        .await
        .unwrap();
    until("repaired", "shop", Some(roots())).await;
    let default: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    default
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    until("made again", "default", Some(roots())).await;

    // A namespace made later gets one.
    namespace(&client, "late", json!({})).await;
    until("a new namespace", "late", Some(roots())).await;

    // A rotation: prepare adds the new root everywhere, retire removes the old.
    let data = dir.path().join("ca");
    let year = Duration::from_secs(365 * 24 * 3600);
    let before = roots();
    dir_store::apply(&data, Phase::Prepare, SystemTime::now(), true, year).unwrap();
    common::eventually(WAIT, "the CA holds two roots", || {
        roots().matches("BEGIN CERTIFICATE").count() == 2
    })
    .await;
    let both = roots();
    assert!(
        both.contains(before.trim()),
        "the old root stays at prepare"
    );
    for ns in ["default", "istio-system", "shop", "late"] {
        until("prepare", ns, Some(both.clone())).await;
    }
    dir_store::apply(&data, Phase::Activate, SystemTime::now(), true, year).unwrap();
    dir_store::apply(&data, Phase::Retire, SystemTime::now(), true, year).unwrap();
    common::eventually(WAIT, "the CA holds the new root alone", || {
        let r = roots();
        r.matches("BEGIN CERTIFICATE").count() == 1 && !r.contains(before.trim())
    })
    .await;
    for ns in ["default", "istio-system", "shop", "late"] {
        until("retire", ns, Some(roots())).await;
    }

    let text = common::curl(
        &format!("http://{}/metrics", ca.metrics_addr.unwrap()),
        None,
    );
    for change in ["created", "repaired", "updated"] {
        let line = format!("zident_ca_root_config_map_writes_total{{change=\"{change}\"}}");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{change} counted: {text}"
        );
    }
}
