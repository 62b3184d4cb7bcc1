//! `zident ca --kubernetes` against a real kube-apiserver (scripts/k8s/; skipped with a message
//! when it is not built): pods enrolled, given addresses by the test as a kubelet would, moved
//! and deleted; a Service with a named target port; AuthorizationPolicies (L4, L7, unknown
//! action) from the real CRD's group; istiod's meshConfig edited; bad objects refused alone
//! with an Event on each; the API server stopped and started under the running CA.
//!
//! One test function: the phases share one CA and one API server (a test binary's server is
//! shared, and stopping it would disturb any test running beside).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use zident_ca::{KubernetesConfig, RunningCa};
use zident_mesh::{Action, MeshFile};
use zident_testkit::eventually;
use zident_testkit::kube_api::{KubeApi, create, install_policy_crd, pod, policy, run_pod};

const WAIT: Duration = Duration::from_secs(30);

fn mesh(ca: &RunningCa) -> Arc<MeshFile> {
    ca.state.subscribe_mesh().borrow().mesh.clone()
}

fn has_workload(ca: &RunningCa, name: &str, ip: &str) -> bool {
    mesh(ca)
        .workloads
        .iter()
        .any(|w| w.name == name && w.workload_ips.iter().any(|a| a.to_string() == ip))
}

fn debug(ca: &RunningCa) -> serde_json::Value {
    let addr = ca.metrics_addr.expect("metrics port");
    let (status, body) = zident_testkit::curl(&[&format!("http://{addr}/debug/kubernetes")]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("debug json")
}

fn findings(ca: &RunningCa) -> Vec<(String, String, String)> {
    debug(ca)["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_owned(),
                f["severity"].as_str().unwrap_or_default().to_owned(),
                f["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Replaces meshConfig (the `mesh` key of the ConfigMap `istio`) with `yaml`.
async fn set_mesh_config(config_maps: &Api<ConfigMap>, yaml: &str) {
    config_maps
        .patch(
            "istio",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"mesh": yaml}})),
        )
        .await
        .expect("edit meshConfig");
}

/// Waits until Secret `name` exists (`present`) or is gone; the Secret when it exists.
async fn wait_for_secret(secrets: &Api<Secret>, name: &str, present: bool) -> Secret {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = secrets.get_opt(name).await.expect("get the Secret");
        match (got, present) {
            (Some(s), true) => return s,
            (None, false) => return Secret::default(),
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Secret {name} never {}",
            if present { "written" } else { "deleted" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_the_mesh() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    install_policy_crd(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in [
        ("istio-system", json!({})),
        ("shop", json!({"istio.io/dataplane-mode": "ambient"})),
        ("plain", json!({})),
    ] {
        create(
            &namespaces,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": labels}}),
        )
        .await;
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "istio-system");
    create(
        &config_maps,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio"},
               "data": {"mesh": "trustDomain: cluster.local\naccessLogFile: /dev/stdout\n"}}),
    )
    .await;

    // A policy refused before the CA starts is counted like one refused later.
    Api::<DynamicObject>::namespaced_with(
        client.clone(),
        "shop",
        &zident_kube::authorization_policy_resource(),
    )
    .create(
        &PostParams::default(),
        &policy("early-typo", json!({"action": "ALOW"})),
    )
    .await
    .expect("create policy");

    // The mesh file adds the nodes' tokens; the cluster gives everything else.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "trustDomain: cluster.local\nnodes:\n- {name: node-a, token: token-a}\n- {name: node-b, token: token-b}\n",
    )
    .unwrap();
    let mut config = common::config(dir.path());
    config.kubernetes = Some(common::kube_config(api.kubeconfig()));
    let ca = common::start_ca(config).await;

    // Pods become workloads once they run with an address; their identity is their SA.
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let plain: Api<Pod> = Api::namespaced(client.clone(), "plain");
    create(
        &shop,
        pod("front", Some("front"), "node-a", json!({"app": "front"})),
    )
    .await;
    create(
        &shop,
        pod("back", Some("back"), "node-b", json!({"app": "back"})),
    )
    .await;
    create(&plain, pod("outside", Some("x"), "node-a", json!({}))).await;
    create(
        &plain,
        pod(
            "optin",
            Some("y"),
            "node-b",
            json!({"istio.io/dataplane-mode": "ambient"}),
        ),
    )
    .await;
    create(
        &shop,
        pod(
            "optout",
            Some("z"),
            "node-b",
            json!({"istio.io/dataplane-mode": "none"}),
        ),
    )
    .await;
    assert!(!has_workload(&ca, "front", "10.1.0.1"), "not running yet");
    run_pod(&shop, "front", "10.1.0.1").await;
    run_pod(&shop, "back", "10.1.0.2").await;
    run_pod(&plain, "outside", "10.1.0.3").await;
    run_pod(&plain, "optin", "10.1.0.4").await;
    run_pod(&shop, "optout", "10.1.0.5").await;
    eventually(WAIT, "running pods in the mesh", || {
        has_workload(&ca, "front", "10.1.0.1")
            && has_workload(&ca, "back", "10.1.0.2")
            && has_workload(&ca, "optin", "10.1.0.4")
    })
    .await;
    let m = mesh(&ca);
    assert!(
        !m.workloads
            .iter()
            .any(|w| w.name == "outside" || w.name == "optout")
    );
    let front = m.workloads.iter().find(|w| w.name == "front").unwrap();
    assert_eq!(
        front.spiffe_id(&m.trust_domain).unwrap().to_string(),
        "spiffe://cluster.local/ns/shop/sa/front"
    );
    assert_eq!(front.node, "node-a");
    assert!(!front.uid.is_empty());
    assert_eq!(m.nodes.len(), 2, "the file's nodes stay");

    // A Service with a selector and a named target port, resolved on each backend.
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "back"},
               "spec": {"selector": {"app": "back"}, "clusterIP": "10.96.0.50",
                        "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await;
    let key = "shop/back.shop.svc.cluster.local";
    eventually(WAIT, "the service and its backend", || {
        let m = mesh(&ca);
        m.services
            .iter()
            .any(|s| s.hostname == "back.shop.svc.cluster.local" && s.vips == ["/10.96.0.50"])
            && m.workloads.iter().any(|w| {
                w.name == "back" && w.services.get(key) == Some(&BTreeMap::from([(80, 8080)]))
            })
    })
    .await;

    // Policies: an L4 DENY is enforced as written; an ALLOW with an HTTP method is kept with
    // that rule dropped (it can never match) and says so; an unknown action is refused alone.
    let policies: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &zident_kube::authorization_policy_resource(),
    );
    for p in [
        policy(
            "deny-plain",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["plain"]}}]}]}),
        ),
        policy(
            "allow-get",
            json!({"selector": {"matchLabels": {"app": "back"}},
                   "rules": [{"to": [{"operation": {"methods": ["GET"]}}]},
                             {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/front"]}}]}]}),
        ),
        policy("typo", json!({"action": "BLOCK"})),
    ] {
        policies
            .create(&PostParams::default(), &p)
            .await
            .expect("create policy");
    }
    eventually(WAIT, "the policies", || {
        let m = mesh(&ca);
        m.policies.iter().any(|p| p.name == "deny-plain")
            && m.policies.iter().any(|p| p.name == "allow-get")
    })
    .await;
    let m = mesh(&ca);
    let deny = m.policies.iter().find(|p| p.name == "deny-plain").unwrap();
    assert_eq!(deny.action, Action::Deny);
    assert_eq!(deny.rules.len(), 1);
    let allow = m.policies.iter().find(|p| p.name == "allow-get").unwrap();
    assert_eq!(
        allow.rules.len(),
        1,
        "the GET rule is dropped, the principal rule stays"
    );
    assert!(!m.policies.iter().any(|p| p.name == "typo"));
    let back = m.workloads.iter().find(|w| w.name == "back").unwrap();
    assert_eq!(
        back.authorization_policies,
        vec!["shop/allow-get".to_string()]
    );

    // Bad pods are refused alone: no service account; an address another pod already has.
    create(&shop, pod("no-sa", None, "node-a", json!({}))).await;
    run_pod(&shop, "no-sa", "10.1.0.9").await;
    create(&shop, pod("thief", Some("thief"), "node-b", json!({}))).await;
    run_pod(&shop, "thief", "10.1.0.1").await;
    eventually(WAIT, "each bad object found", || {
        let f = findings(&ca);
        let has =
            |n: &str, sev: &str, r: &str| f.iter().any(|x| x == &(n.into(), sev.into(), r.into()));
        has("no-sa", "refused", "NoServiceAccount")
            && has("thief", "refused", "DuplicateAddress")
            && has("typo", "refused", "UnknownAction")
            && has("allow-get", "degraded", "UnsupportedValue")
    })
    .await;
    let m = mesh(&ca);
    assert!(
        !m.workloads
            .iter()
            .any(|w| w.name == "no-sa" || w.name == "thief")
    );
    assert!(
        has_workload(&ca, "front", "10.1.0.1"),
        "the first holder keeps its address"
    );
    for (name, reason) in [("no-sa", "NoServiceAccount"), ("thief", "DuplicateAddress")] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let events = events_for(&client, "shop", name).await;
            if let Some(e) = events.first() {
                assert_eq!(e.type_.as_deref(), Some("Warning"));
                assert_eq!(e.reason.as_deref(), Some(reason));
                assert!(e.note.as_deref().is_some_and(|n| !n.is_empty()));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no Event on pod {name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let policy_events = events_for(&client, "shop", "typo").await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut policy_events = policy_events;
    while policy_events.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no Event on the policy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        policy_events = events_for(&client, "shop", "typo").await;
    }
    assert_eq!(policy_events[0].reason.as_deref(), Some("UnknownAction"));
    let metrics =
        zident_testkit::curl(&[&format!("http://{}/metrics", ca.metrics_addr.unwrap())]).1;
    assert!(
        metrics.contains(
            "zident_ca_kubernetes_objects_refused_total{kind=\"Pod\",reason=\"NoServiceAccount\",severity=\"refused\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "zident_ca_kubernetes_objects_refused_total{kind=\"AuthorizationPolicy\",reason=\"UnknownAction\",severity=\"refused\"} 2"
        ),
        "the policy refused at start and the one refused later: {metrics}"
    );

    // meshConfig edited: its certificates join the mesh; a trust domain change is refused
    // and the last good settings stay.
    let certificates = "certificates:\n\
        - {secretName: dns.webhook, dnsNames: [webhook.istio-system.svc]}\n\
        - {secretName: dns.taken, dnsNames: [taken.istio-system.svc]}\n";
    Api::<Secret>::namespaced(client.clone(), "istio-system")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "dns.taken"},
                "stringData": {"note": "not zident's"}
            }))
            .unwrap(),
        )
        .await
        .expect("a Secret someone else made");
    set_mesh_config(&config_maps, certificates).await;
    eventually(WAIT, "meshConfig's certificates", || {
        mesh(&ca)
            .certificates
            .iter()
            .any(|c| c.secret_name == "dns.webhook")
    })
    .await;
    // Each is issued and written as a kubernetes.io/tls Secret in the namespace its names name;
    // a Secret of that name that zident did not make is left alone.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "istio-system");
    let tls = wait_for_secret(&secrets, "dns.webhook", true).await;
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = tls.data.expect("data");
    let chain = String::from_utf8_lossy(&data["tls.crt"].0).into_owned();
    let leaf = zident_identity::pem::certs_from_pem(chain.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf[0]).unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(san.contains("webhook.istio-system.svc"), "{san}");
    assert!(String::from_utf8_lossy(&data["tls.key"].0).contains("PRIVATE KEY"));
    assert_eq!(
        String::from_utf8_lossy(&data["ca.crt"].0).trim(),
        ca.state.authority().bundle().to_pem().trim()
    );
    let taken = secrets
        .get("dns.taken")
        .await
        .expect("the Secret made before");
    assert_eq!(
        taken.data.expect("data")["note"].0,
        b"not zident's",
        "not overwritten"
    );
    // An entry removed from meshConfig: its Secret goes; put back: it comes back.
    set_mesh_config(&config_maps, "certificates: []\n").await;
    wait_for_secret(&secrets, "dns.webhook", false).await;
    assert!(
        secrets.get_opt("dns.taken").await.expect("get").is_some(),
        "a Secret zident did not make is never deleted"
    );
    set_mesh_config(&config_maps, certificates).await;
    wait_for_secret(&secrets, "dns.webhook", true).await;
    set_mesh_config(&config_maps, "trustDomain: other.example\n").await;
    eventually(WAIT, "the trust domain change refused", || {
        findings(&ca)
            .iter()
            .any(|(n, _, r)| n == "istio" && r == "TrustDomainChange")
    })
    .await;
    assert!(
        mesh(&ca)
            .certificates
            .iter()
            .any(|c| c.secret_name == "dns.webhook")
    );

    // A pod moves (new address), one is deleted, a namespace leaves the mesh.
    run_pod(&shop, "back", "10.1.0.22").await;
    shop.delete("front", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually(WAIT, "the move and the deletion", || {
        has_workload(&ca, "back", "10.1.0.22")
            && !has_workload(&ca, "back", "10.1.0.2")
            && !mesh(&ca).workloads.iter().any(|w| w.name == "front")
    })
    .await;
    namespaces
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio.io/dataplane-mode": null}}})),
        )
        .await
        .expect("unlabel namespace");
    eventually(WAIT, "the namespace's pods leave", || {
        let m = mesh(&ca);
        !m.workloads.iter().any(|w| w.namespace == "shop") && has_workload(&ca, "optin", "10.1.0.4")
    })
    .await;

    // The API server goes away: the CA keeps its view and says it is stale; when the server
    // returns, the CA resyncs by itself and later changes arrive.
    let before = mesh(&ca);
    api.stop_apiserver().expect("stop the API server");
    eventually(Duration::from_secs(90), "the view marked stale", || {
        debug(&ca)["stale"] == json!(true)
    })
    .await;
    let (status, body) =
        zident_testkit::curl(&[&format!("http://{}/ready", ca.metrics_addr.unwrap())]);
    assert_eq!(status, 200, "still serving: {body}");
    assert!(body.contains("stale"), "{body}");
    assert_eq!(*mesh(&ca), *before, "the last good view stays in force");
    api.start_apiserver().expect("start the API server again");
    eventually(Duration::from_secs(90), "the view fresh again", || {
        debug(&ca)["stale"] == json!(false)
    })
    .await;
    create(
        &plain,
        pod(
            "after",
            Some("after"),
            "node-a",
            json!({"istio.io/dataplane-mode": "ambient"}),
        ),
    )
    .await;
    run_pod(&plain, "after", "10.1.0.30").await;
    eventually(WAIT, "a pod made after the outage", || {
        has_workload(&ca, "after", "10.1.0.30")
    })
    .await;

    // The API alone, no mesh file: the trust domain is meshConfig's (now other.example), there
    // is no node token, and the enrolled pods are the mesh.
    let alone = tempfile::tempdir().unwrap();
    let mut config = common::config(alone.path());
    config.kubernetes = Some(KubernetesConfig {
        with_mesh_file: false,
        ..common::kube_config(api.kubeconfig())
    });
    let ca2 = common::start_ca(config).await;
    let m = mesh(&ca2);
    assert_eq!(m.trust_domain.as_str(), "other.example");
    assert!(m.nodes.is_empty() && m.identities.is_empty());
    let mut names: Vec<&str> = m.workloads.iter().map(|w| w.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["after", "optin"]);
    let after = m.workloads.iter().find(|w| w.name == "after").unwrap();
    assert_eq!(
        after.spiffe_id(&m.trust_domain).unwrap().to_string(),
        "spiffe://other.example/ns/plain/sa/after"
    );
}
