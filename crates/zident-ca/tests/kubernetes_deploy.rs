//! The manifests in `deploy/kubernetes`, against a real kube-apiserver and the kubectl built
//! from the same source (scripts/k8s/build.sh):
//!
//! - `kubectl apply --dry-run=server -k` accepts every object (the server validates and
//!   defaults each one), and a real apply stores them;
//! - `kubectl auth can-i --as=` the CA's ServiceAccount allows every call the CA makes and
//!   refuses calls outside its ClusterRole; the agent's account may call nothing;
//! - the CA runs under its own account's token, with nothing but that role: it lists and watches
//!   every kind, stores its root in its Secret, takes its Lease, writes `istio-ca-root-cert`,
//!   records an Event on a refused pod, reviews a node agent's token to issue it a certificate,
//!   and records what it issued.
//!
//! Needs the API server and kubectl of scripts/k8s/build.sh; skipped with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::Api;
use serde_json::json;
use zident_ca::KubernetesConfig;
use zident_identity::WorkloadKey;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zident_testkit::kube_api::{
    KubeApi, create, install_policy_crd, namespace, pod, run_pod, service_account,
};

const WAIT: Duration = Duration::from_secs(30);
const CA_ACCOUNT: &str = "system:serviceaccount:istio-system:zident-ca";
const AGENT_ACCOUNT: &str = "system:serviceaccount:istio-system:zident-agent";

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Runs kubectl as the admin: success and output.
fn kubectl(api: &KubeApi, args: &[&str]) -> (bool, String) {
    let out = api
        .kubectl()
        .expect("kubectl")
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_install_and_grant_exactly_what_the_ca_uses() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    if api.kubectl().is_none() {
        eprintln!("SKIPPED: no kubectl beside the API server (scripts/k8s/build.sh builds it)");
        return;
    }
    let dir = manifests();
    let dir = dir.to_str().expect("utf-8 path");
    let client = api.client().await;
    // The CRD an Istio install brings (the CA watches AuthorizationPolicies when it is served).
    install_policy_crd(&client).await;

    // The namespace first: a dry run creates nothing, so the objects in it would find none.
    let (ok, out) = kubectl(api, &["apply", "-f", &format!("{dir}/namespace.yaml")]);
    assert!(ok, "{out}");
    let (ok, out) = kubectl(api, &["apply", "--dry-run=server", "-k", dir]);
    assert!(ok, "server-side dry run: {out}");
    for object in [
        "serviceaccount/zident-ca",
        "clusterrole.rbac.authorization.k8s.io/zident-ca",
        "clusterrolebinding.rbac.authorization.k8s.io/zident-ca",
        "configmap/istio",
        "role.rbac.authorization.k8s.io/zident-ca",
        "rolebinding.rbac.authorization.k8s.io/zident-ca",
        "service/zident-ca",
        "deployment.apps/zident-ca",
        "serviceaccount/zident-agent",
        "daemonset.apps/zident-agent",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(object) && l.contains("(server dry run)")),
            "{object} in the dry run: {out}"
        );
    }
    let (ok, out) = kubectl(api, &["apply", "-k", dir]);
    assert!(ok, "apply: {out}");

    // Every call the CA makes is allowed to its account; calls outside its role are not.
    // `ns` "": across all namespaces, as the CA's watches ask.
    let can = |who: &str, verb: &str, resource: &str, ns: &str| {
        let scope = if ns.is_empty() {
            vec!["--all-namespaces"]
        } else {
            vec!["-n", ns]
        };
        let mut args = vec!["auth", "can-i", verb, resource, "--as", who];
        args.extend(scope);
        let (ok, out) = kubectl(api, &args);
        // The answer is the first line; kubectl may add a warning after it.
        (ok, out.lines().next().unwrap_or_default().to_owned())
    };
    for (verb, resource) in [
        ("list", "namespaces"),
        ("watch", "namespaces"),
        ("list", "pods"),
        ("watch", "pods"),
        ("list", "services"),
        ("watch", "services"),
        ("list", "authorizationpolicies.security.istio.io"),
        ("watch", "authorizationpolicies.security.istio.io"),
        ("list", "configmaps"),
        ("watch", "configmaps"),
        ("create", "configmaps"),
        ("update", "configmaps"),
        ("create", "tokenreviews.authentication.k8s.io"),
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
    ] {
        for ns in ["istio-system", "shop", ""] {
            assert_eq!(
                can(CA_ACCOUNT, verb, resource, ns),
                (true, "yes".to_owned()),
                "the CA needs {verb} {resource} in {ns}"
            );
        }
    }
    // Its own state, in its namespace, by name where RBAC can say so.
    for (verb, resource) in [
        ("get", "secrets/zident-ca-roots"),
        ("update", "secrets/zident-ca-roots"),
        ("get", "secrets/zident-ca-revocations"),
        ("update", "secrets/zident-ca-revocations"),
        ("watch", "secrets/zident-ca-revocations"),
        ("get", "secrets/cacerts"),
        ("create", "secrets"),
        ("get", "leases.coordination.k8s.io/zident-ca-leader"),
        ("update", "leases.coordination.k8s.io/zident-ca-leader"),
        ("create", "leases.coordination.k8s.io"),
        ("delete", "configmaps"),
    ] {
        assert_eq!(
            can(CA_ACCOUNT, verb, resource, "istio-system"),
            (true, "yes".to_owned()),
            "the CA needs {verb} {resource} in istio-system"
        );
    }
    for (verb, resource) in [
        ("get", "secrets/cacerts-of-someone"),
        ("update", "secrets/cacerts"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        (
            "update",
            "leases.coordination.k8s.io/kube-controller-manager",
        ),
    ] {
        assert_eq!(
            can(CA_ACCOUNT, verb, resource, "istio-system"),
            (false, "no".to_owned()),
            "the CA must not {verb} {resource} in istio-system"
        );
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("get", "secrets/zident-ca-roots"),
        ("list", "secrets"),
        ("create", "secrets"),
        ("create", "leases.coordination.k8s.io"),
        ("create", "pods"),
        ("delete", "pods"),
        ("update", "pods"),
        ("patch", "namespaces"),
        ("delete", "configmaps"),
        ("create", "serviceaccounts/token"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("update", "authorizationpolicies.security.istio.io"),
        ("create", "events"),
    ] {
        assert_eq!(
            can(CA_ACCOUNT, verb, resource, "shop"),
            (false, "no".to_owned()),
            "the CA must not {verb} {resource}"
        );
    }
    // The optional grant for meshConfig's DNS certificates: write Secrets, never read them.
    let (ok, out) = kubectl(
        api,
        &["apply", "-f", &format!("{dir}/dns-certificates-rbac.yaml")],
    );
    assert!(ok, "{out}");
    for (verb, allowed) in [
        ("create", true),
        ("update", true),
        ("delete", true),
        ("get", false),
        ("list", false),
        ("watch", false),
    ] {
        let answer = if allowed { "yes" } else { "no" };
        assert_eq!(
            can(CA_ACCOUNT, verb, "secrets", "shop"),
            (allowed, answer.to_owned()),
            "with dns-certificates-rbac.yaml: {verb} secrets"
        );
    }
    let (ok, out) = kubectl(
        api,
        &["delete", "-f", &format!("{dir}/dns-certificates-rbac.yaml")],
    );
    assert!(ok, "{out}");
    for (verb, resource) in [
        ("list", "pods"),
        ("get", "configmaps"),
        ("create", "tokenreviews.authentication.k8s.io"),
    ] {
        assert_eq!(
            can(AGENT_ACCOUNT, verb, resource, "istio-system"),
            (false, "no".to_owned()),
            "the agent calls nothing: {verb} {resource}"
        );
    }

    // The CA under its own account. An enrolled namespace with a pod it must refuse (no
    // ServiceAccount: an Event), and one it must serve a node agent for.
    namespace(
        &client,
        "shop",
        json!({"istio.io/dataplane-mode": "ambient"}),
    )
    .await;
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    create(&shop, pod("no-sa", None, "n1", json!({}))).await;
    run_pod(&shop, "no-sa", "10.9.0.1").await;
    service_account(&client, "shop", "web").await;
    create(&shop, pod("web-1", Some("web"), "n1", json!({}))).await;
    let system: Api<Pod> = Api::namespaced(client.clone(), "istio-system");
    let agent_pod = create(
        &system,
        pod("zident-agent-n1", Some("zident-agent"), "n1", json!({})),
    )
    .await;
    let agent_token = api
        .token(
            &client,
            "istio-system",
            "zident-agent",
            Some(("zident-agent-n1", &agent_pod.metadata.uid.expect("uid"))),
            "istio-ca",
        )
        .await;
    let ca_token = api
        .token(
            &client,
            "istio-system",
            "zident-ca",
            None,
            "https://kubernetes.default.svc",
        )
        .await;
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("kubeconfig");
    api.kubeconfig_with_token(&kubeconfig, &ca_token);
    let mut config = common::config(work.path());
    config.kubernetes = Some(KubernetesConfig {
        with_mesh_file: false,
        trusted_node_accounts: vec!["istio-system/zident-agent".parse().unwrap()],
        state: Some(zident_ca::cluster_state::ClusterStateConfig {
            replica: "zident-ca-0".into(),
            lease_duration: Duration::from_secs(15),
        }),
        ..common::kube_config(kubeconfig)
    });
    // It starts: every kind listed and watched, its roots made and stored, under its account.
    let ca = common::start_ca(config).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "istio-system");
    let stored = secrets
        .get("zident-ca-roots")
        .await
        .expect("the roots Secret");
    let stored_root = stored
        .data
        .as_ref()
        .and_then(|d| d.get("root-1.pem"))
        .map(|pem| String::from_utf8_lossy(&pem.0).into_owned());
    assert_eq!(
        stored_root.as_deref().map(str::trim),
        Some(ca.state.authority().bundle().to_pem().trim()),
        "the CA serves the root it stored"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "istio-system");
    let deadline = std::time::Instant::now() + WAIT;
    while leases
        .get_opt("zident-ca-leader")
        .await
        .expect("get the Lease")
        .and_then(|l| l.spec?.holder_identity)
        .as_deref()
        != Some("zident-ca-0")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the CA takes the Lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // istio-ca-root-cert written.
    let roots = ca.state.authority().bundle().to_pem();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let held = cms
            .get_opt("istio-ca-root-cert")
            .await
            .expect("get")
            .and_then(|c| c.data?.get("root-cert.pem").cloned());
        if held.as_deref() == Some(roots.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no istio-ca-root-cert in shop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An Event on the refused pod.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let events = Api::<Event>::namespaced(client.clone(), "shop")
            .list(&Default::default())
            .await
            .expect("list events");
        if events.items.iter().any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("no-sa")
                && e.reason.as_deref() == Some("NoServiceAccount")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Event on the refused pod"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A node agent's token reviewed, and a certificate for a pod on its node.
    let mut grpc = IstioCertificateServiceClient::new(common::channel(&ca).await);
    let id = common::id("ns/shop/sa/web");
    let key = WorkloadKey::generate().unwrap();
    grpc.create_certificate(common::request(
        key.csr_pem(&id).unwrap(),
        3600,
        Some(&agent_token),
        Some(id.as_str()),
    ))
    .await
    .expect("the agent's token is reviewed under the CA's account");
    // What it issued is recorded under its account.
    let records: Api<ConfigMap> = Api::namespaced(client.clone(), "istio-system");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = records
            .get_opt("zident-ca-issued-zident-ca-0")
            .await
            .expect("get the issued record")
            .and_then(|c| c.data?.remove("issued"))
            .unwrap_or_default();
        if text.contains(id.as_str()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no issued record: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
