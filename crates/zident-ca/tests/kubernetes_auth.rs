//! `zident ca --kubernetes` as the cluster's identity authority, against a real kube-apiserver:
//! ServiceAccount tokens from the TokenRequest API, bound to pods on nodes n1 and n2, checked
//! by TokenReview for the audience `istio-ca`, and istiod's node authorizer from the pods the CA
//! watches.
//!
//! - the trusted node account's token on n1 gets the identities of pods on n1, and is refused one
//!   whose pods run only on n2 (the same account on n2 gets it);
//! - an untrusted ServiceAccount cannot impersonate; a workload's own token gets its own identity
//!   and nothing else;
//! - a token for another audience, an expired token, garbage, and the token of a pod deleted
//!   since are each refused, logged with their reason and counted by it;
//! - accepted tokens are answered from the cache, not by a TokenReview per request;
//! - a mesh file's static tokens keep working beside them;
//! - with the API server away, a new token gets `Unavailable` and a cached one keeps working;
//!   once it is back, the new token is reviewed.
//!
//! Needs the API server of scripts/k8s/build.sh; skipped with a message otherwise.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use tonic::Code;
use zident_ca::KubernetesConfig;
use zident_identity::WorkloadKey;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zident_testkit::kube_api::{KubeApi, create, namespace, pod, service_account};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_and_the_node_authorizer() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    zident_testkit::capture_logs("zident=info");
    let client = api.client().await;
    for ns in ["istio-system", "shop"] {
        namespace(&client, ns, json!({})).await;
    }
    for (ns, sa) in [
        ("istio-system", "ztunnel"),
        ("istio-system", "intruder"),
        ("shop", "web"),
        ("shop", "db"),
    ] {
        service_account(&client, ns, sa).await;
    }
    let system: Api<Pod> = Api::namespaced(client.clone(), "istio-system");
    let shop: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let uid = |p: Pod| p.metadata.uid.expect("a uid");
    let zt1 = uid(create(&system, pod("ztunnel-n1", Some("ztunnel"), "n1", json!({}))).await);
    let zt2 = uid(create(&system, pod("ztunnel-n2", Some("ztunnel"), "n2", json!({}))).await);
    let intr = uid(create(
        &system,
        pod("intruder-n1", Some("intruder"), "n1", json!({})),
    )
    .await);
    let web1 = uid(create(&shop, pod("web-1", Some("web"), "n1", json!({}))).await);
    create(&shop, pod("db-1", Some("db"), "n2", json!({}))).await;
    let gone = uid(create(&shop, pod("web-gone", Some("web"), "n1", json!({}))).await);
    let web2 = uid(create(&shop, pod("web-2", Some("web"), "n1", json!({}))).await);

    let token = |ns: &'static str, sa: &'static str, pod: Option<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let pod = pod.as_ref().map(|(n, u)| (*n, u.as_str()));
            api.token(&client, ns, sa, pod, "istio-ca").await
        }
    };
    let ztunnel_n1 = token("istio-system", "ztunnel", Some(("ztunnel-n1", zt1.clone()))).await;
    let ztunnel_n2 = token("istio-system", "ztunnel", Some(("ztunnel-n2", zt2))).await;
    let intruder = token("istio-system", "intruder", Some(("intruder-n1", intr))).await;
    let web = token("shop", "web", Some(("web-1", web1))).await;
    // Used only once the API server is away (a token of another pod: the same pod's would be
    // the same token, minted within the same second).
    let unseen = token("shop", "web", Some(("web-2", web2))).await;
    let web_gone = token("shop", "web", Some(("web-gone", gone))).await;
    let other_audience = api
        .token(
            &client,
            "istio-system",
            "ztunnel",
            Some(("ztunnel-n1", &zt1)),
            "some-other-service",
        )
        .await;
    let expired = api.expired(&ztunnel_n1);

    // The CA: the cluster, ztunnel's account trusted, and a mesh file with a static token for
    // a workload outside the cluster.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "trustDomain: cluster.local\n\
         identities:\n- {spiffeId: spiffe://cluster.local/ns/ext/sa/batch, token: token-batch}\n",
    )
    .unwrap();
    let mut config = common::config(dir.path());
    config.kubernetes = Some(KubernetesConfig {
        trusted_node_accounts: vec!["istio-system/ztunnel".parse().unwrap()],
        ..common::kube_config(api.kubeconfig())
    });
    let ca = common::start_ca(config).await;
    let mut grpc = IstioCertificateServiceClient::new(common::channel(&ca).await);
    let request = |token: &str, identity: &str, impersonate: bool| {
        let id = common::id(identity);
        let key = WorkloadKey::generate().unwrap();
        common::request(
            key.csr_pem(&id).unwrap(),
            3600,
            Some(token),
            impersonate.then_some(id.as_str()),
        )
    };
    let metrics = || {
        common::curl(
            &format!("http://{}/metrics", ca.metrics_addr.unwrap()),
            None,
        )
    };

    // The node account on n1: the identities of n1's pods, not n2's.
    grpc.create_certificate(request(&ztunnel_n1, "ns/shop/sa/web", true))
        .await
        .expect("ztunnel on n1 gets web (web-1 runs on n1)");
    common::expect_code(
        &mut grpc,
        request(&ztunnel_n1, "ns/shop/sa/db", true),
        Code::PermissionDenied,
    )
    .await;
    zident_testkit::logged(
        "no workload with identity spiffe://cluster.local/ns/shop/sa/db runs on node n1",
    )
    .await;
    grpc.create_certificate(request(&ztunnel_n2, "ns/shop/sa/db", true))
        .await
        .expect("ztunnel on n2 gets db (db-1 runs on n2)");
    revoking_a_node_names_what_its_service_account_tokens_obtained(
        &mut grpc,
        &dir.path().join("ca"),
        &request,
        [&ztunnel_n1, &ztunnel_n2, &web],
    )
    .await;

    // Only trusted accounts impersonate; a workload gets its own identity only.
    common::expect_code(
        &mut grpc,
        request(&intruder, "ns/shop/sa/web", true),
        Code::PermissionDenied,
    )
    .await;
    zident_testkit::logged("is not a trusted node account").await;
    grpc.create_certificate(request(&web, "ns/shop/sa/web", false))
        .await
        .expect("web's own token gets web");
    for (identity, impersonate) in [("ns/shop/sa/db", false), ("ns/shop/sa/web", true)] {
        common::expect_code(
            &mut grpc,
            request(&web, identity, impersonate),
            Code::PermissionDenied,
        )
        .await;
    }

    // Tokens the API server refuses, each with its reason.
    let refused_before = rejected(&metrics(), "token_refused");
    for (what, bad) in [
        ("another audience", other_audience.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "not-a-token"),
        ("a forged JWT", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
    ] {
        let message = common::expect_code(
            &mut grpc,
            request(bad, "ns/shop/sa/web", false),
            Code::Unauthenticated,
        )
        .await;
        assert_eq!(message, "bearer token refused", "{what}: told no more");
    }
    zident_testkit::logged("token audiences").await;
    zident_testkit::logged("expired").await;
    assert_eq!(
        rejected(&metrics(), "token_refused") - refused_before,
        4.0,
        "{}",
        metrics()
    );

    // A token bound to a pod works while the pod exists, and not once it is deleted (the CA
    // sees the deletion in its watch, before the API server's own review cache lets go).
    grpc.create_certificate(request(&web_gone, "ns/shop/sa/web", false))
        .await
        .expect("the pod's token works while the pod exists");
    shop.delete("web-gone", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match grpc
            .create_certificate(request(&web_gone, "ns/shop/sa/web", false))
            .await
        {
            Err(status) if status.code() == Code::PermissionDenied => break,
            Err(status) => panic!("refused for another reason: {status:?}"),
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a deleted pod's token still works after {WAIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    zident_testkit::logged("web-gone").await;

    // Accepted tokens come from the cache: five more requests, no TokenReview.
    let reviews = |answered: &str| review_count(&metrics(), answered, "accepted");
    let (api_before, cache_before) = (reviews("api"), reviews("cache"));
    for _ in 0..5 {
        grpc.create_certificate(request(&ztunnel_n1, "ns/shop/sa/web", true))
            .await
            .expect("issued");
    }
    assert_eq!(reviews("api"), api_before, "{}", metrics());
    assert_eq!(reviews("cache") - cache_before, 5.0, "{}", metrics());

    // A static token from the mesh file, beside the cluster's.
    grpc.create_certificate(request("token-batch", "ns/ext/sa/batch", false))
        .await
        .expect("the mesh file's identity token");

    // The API server away: a token the CA has not seen cannot be checked (Unavailable: retry,
    // not a verdict on the token), while a token it reviewed a moment ago keeps working.
    api.stop_apiserver().expect("stop the API server");
    let message = common::expect_code(
        &mut grpc,
        request(&unseen, "ns/shop/sa/web", false),
        Code::Unavailable,
    )
    .await;
    assert!(message.contains("retry"), "{message}");
    zident_testkit::logged("TokenReview failed").await;
    grpc.create_certificate(request(&ztunnel_n1, "ns/shop/sa/web", true))
        .await
        .expect("a cached token through the outage");
    api.start_apiserver().expect("start the API server again");
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(status) = grpc
        .create_certificate(request(&unseen, "ns/shop/sa/web", false))
        .await
    {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "the token is still not checked after the API server returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Revocation by node reaches certificates obtained with ServiceAccount tokens: the node is
/// the one the token's pod is scheduled on. A trusted node account's certificate for a pod on
/// n1 and a pod's own certificate on n1 are both n1's; n2's are untouched, and with the reissue
/// denied, every token of a pod on n1 is refused until the denial is lifted.
async fn revoking_a_node_names_what_its_service_account_tokens_obtained(
    grpc: &mut IstioCertificateServiceClient<tonic::transport::Channel>,
    data: &std::path::Path,
    request: &impl Fn(
        &str,
        &str,
        bool,
    ) -> tonic::Request<zident_proto::istio_ca::IstioCertificateRequest>,
    [ztunnel_n1, ztunnel_n2, web]: [&str; 3],
) {
    use zident_ca::revocation::{Reason, Subject, Target, list};
    grpc.create_certificate(request(web, "ns/shop/sa/web", false))
        .await
        .expect("web's own token (its pod runs on n1) gets web");
    // The ledger is appended by a thread of its own, within milliseconds of the issuance.
    let of_node = |node: &str| {
        zident_ca::ledger::certificates(data, std::time::SystemTime::now())
            .into_iter()
            .filter(|c| c.certificate.node.as_deref() == Some(node))
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    zident_testkit::eventually(WAIT, "the ledger names the nodes", || {
        of_node("n1").len() == 2 && of_node("n2").len() == 1
    })
    .await;
    assert_eq!(of_node("n2"), ["spiffe://cluster.local/ns/shop/sa/db"]);
    let revoked = list::revoke(
        data,
        &Target::Node("n1".into()),
        Reason::KeyCompromise,
        true,
        std::time::SystemTime::now(),
    )
    .expect("revoke node n1");
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    assert!(
        revoked
            .iter()
            .all(|r| r.id == "spiffe://cluster.local/ns/shop/sa/web"
                && r.node.as_deref() == Some("n1")),
        "{revoked:?}"
    );
    // The running CA reads the list within a second: n1's tokens are refused, n2's are not.
    let deadline = std::time::Instant::now() + WAIT;
    let message = loop {
        match grpc
            .create_certificate(request(ztunnel_n1, "ns/shop/sa/web", true))
            .await
        {
            Err(status) if status.code() == Code::PermissionDenied => {
                break status.message().to_owned();
            }
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node n1 is still served after {WAIT:?}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(message.contains("revoked: node n1"), "{message}");
    // A pod's own token on n1 is refused for the node's revocation, not for another reason.
    let message = common::expect_code(
        grpc,
        request(web, "ns/shop/sa/web", false),
        Code::PermissionDenied,
    )
    .await;
    assert!(message.contains("revoked: node n1"), "{message}");
    grpc.create_certificate(request(ztunnel_n2, "ns/shop/sa/db", true))
        .await
        .expect("node n2 is untouched");
    assert!(list::allow_reissue(data, &Subject::Node("n1".into())).expect("lift the denial"));
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(status) = grpc
        .create_certificate(request(ztunnel_n1, "ns/shop/sa/web", true))
        .await
    {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "node n1 is still refused {WAIT:?} after the denial was lifted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `zident_ca_requests_rejected{reason}`.
fn rejected(text: &str, reason: &str) -> f64 {
    common::series(
        text,
        &format!("zident_ca_requests_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// `zident_ca_token_reviews{answered, result}`.
fn review_count(text: &str, answered: &str, result: &str) -> f64 {
    common::series(
        text,
        &format!("zident_ca_token_reviews_total{{answered=\"{answered}\",result=\"{result}\"}}"),
    )
}
