//! `zident ca --kubernetes` with two nodes, each in its own network namespace: the pods the test
//! creates in a real kube-apiserver (and runs, as a kubelet would, by patching their status)
//! reach both agents over xDS; traffic crosses nodes between the pods' addresses; a DENY
//! AuthorizationPolicy created in the API server is enforced by the receiving node, lifted when
//! changed in place to name another principal, enforced again when changed back, and lifted when
//! deleted; an ALLOW policy with L7 fields fails closed (its rule matches nothing, so the pod it
//! selects takes no one); a pod that comes and goes appears and disappears on the other node; a
//! Service whose target port is named reaches the pod's port of that name through its cluster
//! IP; a namespace unenrolled takes its pods out of both nodes' views; a `caCertificates` edit
//! of istiod's meshConfig reaches the agents' trust bundles and leaves them when removed; the
//! API server stops and starts under the running mesh without a dropped request.
//!
//! With `ZTUNNEL_BIN` naming a ztunnel built from istio/ztunnel, a third node runs it (dedicated
//! mode, for a pod of its own, authenticated by the pod's ServiceAccount token, which the CA
//! checks by TokenReview): its `/config_dump` lists the cluster's pods and follows a pod
//! that comes and goes after it started, traffic flows both ways between it and the zident
//! agents' pods, and a DENY policy from the CRD is enforced by it.
//!
//! Needs root (namespaces) and the API server of scripts/k8s/build.sh; skipped with a message
//! otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use zident_testkit::eventually;
use zident_testkit::kube_api::{
    KubeApi, create, install_policy_crd, namespace, pod, policy, run_pod, service_account,
};
use zident_testkit::netns::{Lan, NsProcess, curl_in, ip, whoami_server};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(30);

/// The CA, in the test's own namespace (it reaches the API server on loopback and the nodes
/// over the bridge); killed when dropped.
struct Ca(Child);

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A zident agent for `node`; its inbound HBONE port takes tunnels at its pods' own addresses
/// (port 15008), where a ztunnel sends them as well.
fn agent(dir: &Path, node: &str, ns: &str) -> NsProcess {
    let root = dir.join("ca/root-cert.pem");
    let wapi = dir.join(format!("{node}/wapi"));
    let cache = dir.join(format!("{node}/xds.pb"));
    NsProcess::spawn(
        ns,
        Path::new(BIN),
        &[
            "agent",
            "--node",
            node,
            "--ca-address",
            "10.87.0.1:15012",
            "--ca-root-ca",
            s(&root),
            "--auth-token",
            &format!("token-{}", &node[5..]),
            "--no-capture",
            "--secret-ttl",
            "1h",
            "--workload-api-dir",
            s(&wapi),
            "--xds-cache",
            s(&cache),
        ],
        &dir.join(format!("{node}.log")),
    )
}

fn admin(ns: &str, path: &str) -> serde_json::Value {
    let (code, body) = curl_in(ns, &[&format!("http://127.0.0.1:15000{path}")]);
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn workload_names(ns: &str) -> Vec<String> {
    let mut names: Vec<String> = admin(ns, "/config_dump")["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The names of the workloads a ztunnel holds, from its `/config_dump`.
fn ztunnel_names(ns: &str) -> Vec<String> {
    let (code, body) = curl_in(ns, &["http://127.0.0.1:15000/config_dump"]);
    if code != 200 {
        return Vec::new();
    }
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut names: Vec<String> = dump["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// ztunnel in dedicated mode for pod `zt-app` (ServiceAccount `zt`) on node-z, with nothing
/// but the CA's address, its root and `token`: the pod's projected ServiceAccount token, which
/// the CA checks by TokenReview.
fn ztunnel(bin: &Path, dir: &Path, ns: &str, token: &str) -> NsProcess {
    let root = dir.join("ca/root-cert.pem");
    std::fs::write(dir.join("zt.token"), token).expect("token file");
    NsProcess::spawn(
        ns,
        Path::new("env"),
        &[
            "XDS_ADDRESS=https://10.87.0.1:15012",
            "CA_ADDRESS=https://10.87.0.1:15012",
            &format!("XDS_ROOT_CA={}", s(&root)),
            &format!("CA_ROOT_CA={}", s(&root)),
            &format!("AUTH_TOKEN={}", s(&dir.join("zt.token"))),
            "PROXY_MODE=dedicated",
            "PROXY_WORKLOAD_INFO=shop/zt-app/zt",
            "UNSTABLE_ENABLE_SOCKS5=true",
            // Without a CNI to route replies, the app must answer ztunnel, not the peer.
            "ENABLE_ORIG_SRC=false",
            "NODE_NAME=node-z",
            "INSTANCE_IP=10.87.3.10",
            "RUST_LOG=info",
            s(bin),
            "proxy",
            "ztunnel",
        ],
        &dir.join("ztunnel.log"),
    )
}

/// A self-signed CA certificate in PEM, unrelated to the mesh's CA: an extra root for
/// meshConfig's `caCertificates`.
fn extra_root_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "extra root for the kube_nodes test",
    );
    let key = rcgen::KeyPair::generate().expect("key");
    params.self_signed(&key).expect("self-signed").pem()
}

/// `zident_tunnel_failures{reason="policy_denied"}` on the node in `ns`, summed.
fn policy_denials(ns: &str) -> f64 {
    let (_, metrics) = curl_in(ns, &["http://127.0.0.1:15020/metrics"]);
    metrics
        .lines()
        .filter(|l| l.starts_with("zident_tunnel_failures") && l.contains("policy_denied"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates AuthorizationPolicy `name` with `spec` in the policies' namespace.
async fn put_policy(policies: &Api<DynamicObject>, name: &str, spec: serde_json::Value) {
    policies
        .create(&PostParams::default(), &policy(name, spec))
        .await
        .expect("create policy");
}

/// Deletes AuthorizationPolicy `name`.
async fn drop_policy(policies: &Api<DynamicObject>, name: &str) {
    policies
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete policy");
}

fn ready(ns: &str) -> bool {
    curl_in(ns, &["http://127.0.0.1:15021/healthz/ready"]).0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_from_the_api_server_carry_traffic_across_nodes() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let mut lan = match Lan::new("zk", 87) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIPPED: cannot make network namespaces here ({e}); run as root");
            return;
        }
    };
    let ztunnel_bin = std::env::var_os("ZTUNNEL_BIN").map(PathBuf::from);
    if ztunnel_bin.is_none() {
        eprintln!(
            "(no ZTUNNEL_BIN: the real ztunnel node is left out; set it to a ztunnel built from istio/ztunnel)"
        );
    }
    lan.host_leg(1).expect("the test's namespace on the bridge");
    let a = lan.node("a", 2).expect("node-a namespace");
    let b = lan.node("b", 3).expect("node-b namespace");
    let z = lan.node("z", 4).expect("node-z namespace");
    ip(&["-n", &z, "addr", "add", "10.87.3.10/32", "dev", "lo"]).expect("pod address");
    ip(&["-n", &z, "route", "add", "10.87.1.0/24", "via", "10.87.0.2"]).expect("route");
    ip(&["-n", &z, "route", "add", "10.87.2.0/24", "via", "10.87.0.3"]).expect("route");
    ip(&["-n", &a, "route", "add", "10.87.3.0/24", "via", "10.87.0.4"]).expect("route");
    ip(&["-n", &b, "route", "add", "10.87.3.0/24", "via", "10.87.0.4"]).expect("route");
    // Pod addresses live on each node's loopback; replies find their way back over the bridge.
    for (ns, addr) in [
        (&a, "10.87.1.10/32"),
        (&b, "10.87.2.10/32"),
        (&b, "10.87.2.11/32"),
        (&b, "10.87.2.12/32"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", "lo"]).expect("pod address");
    }
    ip(&["-n", &b, "route", "add", "10.87.1.0/24", "via", "10.87.0.2"]).expect("route");
    ip(&["-n", &a, "route", "add", "10.87.2.0/24", "via", "10.87.0.3"]).expect("route");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();

    // The cluster: an enrolled namespace, a client pod on node-a and a server pod on node-b.
    let client = api.client().await;
    install_policy_crd(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespace(
        &client,
        "shop",
        json!({"istio.io/dataplane-mode": "ambient"}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    create(
        &pods,
        pod("c", Some("client"), "node-a", json!({"app": "c"})),
    )
    .await;
    create(
        &pods,
        pod("s", Some("server"), "node-b", json!({"app": "s"})),
    )
    .await;
    run_pod(&pods, "c", "10.87.1.10").await;
    run_pod(&pods, "s", "10.87.2.10").await;
    let mut base = vec!["c", "s"];
    let mut zt_token = String::new();
    if ztunnel_bin.is_some() {
        // ztunnel's pod, with the token the kubelet would project for it (audience istio-ca).
        service_account(&client, "shop", "zt").await;
        let zt_pod = create(
            &pods,
            pod("zt-app", Some("zt"), "node-z", json!({"app": "zt"})),
        )
        .await;
        run_pod(&pods, "zt-app", "10.87.3.10").await;
        base.push("zt-app");
        let uid = zt_pod.metadata.uid.expect("a uid");
        zt_token = api
            .token(&client, "shop", "zt", Some(("zt-app", &uid)), "istio-ca")
            .await;
    }
    let with = |extra: &str| {
        let mut v: Vec<String> = base.iter().map(|n| n.to_string()).collect();
        v.push(extra.to_owned());
        v.sort();
        v
    };

    // The CA: the cluster's pods, the file's nodes and their tokens (ServiceAccount tokens,
    // ztunnel's, are checked with the API server).
    std::fs::write(
        dir.join("mesh.yaml"),
        "nodes:\n- {name: node-a, token: token-a}\n\
         - {name: node-b, token: token-b}\n",
    )
    .expect("mesh file");
    let ca_log = dir.join("ca.log");
    let log = std::fs::File::create(&ca_log).expect("ca log");
    let _ca = Ca(Command::new(BIN)
        .args([
            "ca",
            "--kubernetes",
            "--kubeconfig",
            s(&api.kubeconfig()),
            "--config",
            s(&dir.join("mesh.yaml")),
            "--data-dir",
            s(&dir.join("ca")),
            "--listen",
            "10.87.0.1:15012",
            "--dns-name",
            "10.87.0.1",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the CA"));
    let root = dir.join("ca/root-cert.pem");
    eventually(DEADLINE, "the CA publishes its root", || root.exists()).await;
    let _agent_a = agent(dir, "node-a", &a);
    let _agent_b = agent(dir, "node-b", &b);
    let _server = whoami_server(&b, "10.87.2.10", "s", dir);
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!(
            "--- ca ---\n{}\n--- node-a ---\n{}\n--- node-b ---\n{}\n--- ztunnel ---\n{}",
            read("ca.log"),
            read("node-a.log"),
            read("node-b.log"),
            read("ztunnel.log")
        )
    };
    let fetch = || {
        curl_in(
            &a,
            &[
                "--interface",
                "10.87.1.10",
                "--socks5",
                "127.0.0.1:15080",
                "http://10.87.2.10:8080/whoami",
            ],
        )
    };

    eventually(DEADLINE, "both agents ready with the pods", || {
        ready(&a) && ready(&b) && workload_names(&a) == base
    })
    .await;
    eventually(DEADLINE, "the server answers on its own node", || {
        curl_in(&b, &["http://10.87.2.10:8080/whoami"]).0 == 200
    })
    .await;
    let (code, body) = fetch();
    assert_eq!((code, body.as_str()), (200, "s"), "{}", logs());

    // A DENY policy created in the API server is enforced by node-b; changed in place to name
    // another principal it lets the client through, changed back it refuses it again, and
    // deleted it is lifted.
    let policies: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &zident_kube::authorization_policy_resource(),
    );
    let deny_from = |principal: &str| json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": [principal]}}]}]});
    put_policy(
        &policies,
        "no-client",
        deny_from("cluster.local/ns/shop/sa/client"),
    )
    .await;
    eventually(DEADLINE, "the DENY policy enforced", || fetch().0 != 200).await;
    let denied_before = policy_denials(&b);
    assert!(denied_before > 0.0, "refused for the policy");
    let change_to = |principal: &str| {
        let patch = json!({"spec": deny_from(principal)});
        let policies = policies.clone();
        async move {
            policies
                .patch("no-client", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("change the policy in place");
        }
    };
    change_to("cluster.local/ns/shop/sa/nobody").await;
    eventually(DEADLINE, "the policy changed to another principal", || {
        fetch().0 == 200
    })
    .await;
    change_to("cluster.local/ns/shop/sa/client").await;
    eventually(DEADLINE, "the policy changed back", || fetch().0 != 200).await;
    drop_policy(&policies, "no-client").await;
    eventually(DEADLINE, "the DENY policy lifted", || fetch().0 == 200).await;

    // An ALLOW policy with an L7 field (HTTP methods, which a node enforcing at L4 cannot
    // check) fails closed as ztunnel's translation does: its rule matches nothing, so the pod
    // it selects takes no one, until the policy goes.
    put_policy(
        &policies,
        "get-only",
        json!({"selector": {"matchLabels": {"app": "s"}}, "action": "ALLOW",
                       "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    )
    .await;
    let denied = policy_denials(&b);
    eventually(DEADLINE, "the L7 ALLOW policy fails closed", || {
        fetch().0 != 200
    })
    .await;
    assert!(
        policy_denials(&b) > denied,
        "refused by node-b for the policy, not for another reason"
    );
    drop_policy(&policies, "get-only").await;
    eventually(DEADLINE, "the L7 policy lifted", || fetch().0 == 200).await;

    // A pod comes and goes; the other node sees both.
    create(
        &pods,
        pod("s2", Some("server"), "node-b", json!({"app": "s"})),
    )
    .await;
    run_pod(&pods, "s2", "10.87.2.11").await;
    eventually(DEADLINE, "node-a sees the new pod", || {
        workload_names(&a) == with("s2")
    })
    .await;
    pods.delete("s2", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually(DEADLINE, "node-a sees it gone", || {
        workload_names(&a) == base
    })
    .await;

    // A Service whose target port is named: its cluster IP, port 80, reaches the selected
    // pod's port named `http` (8080), resolved per pod.
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let web = create(
        &services,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "s"},
                        "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}),
    )
    .await;
    let vip = web
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the API server gives the Service a cluster IP");
    let via_service = || {
        curl_in(
            &a,
            &[
                "--interface",
                "10.87.1.10",
                "--socks5",
                "127.0.0.1:15080",
                &format!("http://{vip}:80/whoami"),
            ],
        )
    };
    eventually(DEADLINE, "the Service reaches the pod's named port", || {
        via_service() == (200, "s".to_owned())
    })
    .await;

    // A namespace enrolled, then unenrolled: its pod joins both nodes' views, then leaves.
    namespace(
        &client,
        "lab",
        json!({"istio.io/dataplane-mode": "ambient"}),
    )
    .await;
    let lab_pods: Api<Pod> = Api::namespaced(client.clone(), "lab");
    create(
        &lab_pods,
        pod("l", Some("lab"), "node-b", json!({"app": "l"})),
    )
    .await;
    run_pod(&lab_pods, "l", "10.87.2.12").await;
    eventually(DEADLINE, "both nodes see the lab pod", || {
        workload_names(&a) == with("l") && workload_names(&b) == with("l")
    })
    .await;
    namespaces
        .patch(
            "lab",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"istio.io/dataplane-mode": null}}})),
        )
        .await
        .expect("unenroll the namespace");
    eventually(
        DEADLINE,
        "the unenrolled namespace leaves both nodes",
        || workload_names(&a) == base && workload_names(&b) == base,
    )
    .await;

    // istiod's meshConfig names an extra root: both agents trust it, then drop it when the
    // ConfigMap no longer does. Traffic is unaffected.
    let extra_root = extra_root_pem();
    namespace(&client, "istio-system", json!({})).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "istio-system");
    let mesh_config = |mesh: String| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio"},
               "data": {"mesh": mesh}})
    };
    create(
        &config_maps,
        mesh_config(format!(
            "caCertificates:\n- pem: |\n{}",
            extra_root
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )),
    )
    .await;
    let trusts_extra = |ns: &str| {
        admin(ns, "/debug/certs")["trust_bundle"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["pem"]
                    .as_str()
                    .is_some_and(|p| p.trim() == extra_root.trim())
            })
    };
    eventually(
        DEADLINE,
        "both agents trust meshConfig's extra root",
        || trusts_extra(&a) && trusts_extra(&b),
    )
    .await;
    config_maps
        .replace(
            "istio",
            &PostParams::default(),
            &serde_json::from_value(mesh_config(String::new())).expect("config map"),
        )
        .await
        .expect("edit meshConfig");
    eventually(
        DEADLINE,
        "both agents drop the root meshConfig no longer names",
        || !trusts_extra(&a) && !trusts_extra(&b),
    )
    .await;
    let (code, body) = fetch();
    assert_eq!((code, body.as_str()), (200, "s"), "{}", logs());

    // The API server goes away and comes back: traffic between existing pods never stops, and
    // a pod made afterwards reaches the nodes.
    let five_fetches = |when: &str| {
        for _ in 0..5 {
            let (code, body) = fetch();
            assert_eq!((code, body.as_str()), (200, "s"), "{when}: {}", logs());
        }
    };
    api.stop_apiserver().expect("stop the API server");
    five_fetches("during the outage");
    api.start_apiserver().expect("start the API server again");
    five_fetches("after the outage");
    create(
        &pods,
        pod("s3", Some("server"), "node-b", json!({"app": "s"})),
    )
    .await;
    run_pod(&pods, "s3", "10.87.2.11").await;
    eventually(
        Duration::from_secs(90),
        "a pod made after the outage",
        || workload_names(&a) == with("s3"),
    )
    .await;

    if let Some(bin) = &ztunnel_bin {
        real_ztunnel(bin, dir, &a, &z, &zt_token, &pods, &policies, &logs).await;
    }
}

/// A real ztunnel follows the same CA: it lists the cluster's pods, carries traffic both ways
/// with the zident agents, and enforces a DENY policy from the CRD.
#[allow(clippy::too_many_arguments)]
async fn real_ztunnel(
    bin: &Path,
    dir: &Path,
    a: &str,
    z: &str,
    token: &str,
    pods: &Api<Pod>,
    policies: &Api<DynamicObject>,
    logs: &dyn Fn() -> String,
) {
    let zt = ztunnel(bin, dir, z, token);
    eventually(DEADLINE, "ztunnel is ready", || {
        curl_in(z, &["http://127.0.0.1:15021/healthz/ready"]).0 == 200
    })
    .await;
    eventually(DEADLINE, "ztunnel lists the pods", || {
        ztunnel_names(z) == ["c", "s", "s3", "zt-app"]
    })
    .await;
    // A pod that comes and goes after ztunnel started.
    create(
        pods,
        pod("s4", Some("server"), "node-b", json!({"app": "s"})),
    )
    .await;
    run_pod(pods, "s4", "10.87.2.14").await;
    eventually(DEADLINE, "ztunnel sees a new pod", || {
        ztunnel_names(z) == ["c", "s", "s3", "s4", "zt-app"]
    })
    .await;
    pods.delete("s4", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually(DEADLINE, "ztunnel sees it gone", || {
        ztunnel_names(z) == ["c", "s", "s3", "zt-app"]
    })
    .await;
    let _app = whoami_server(z, "10.87.3.10", "zt", dir);
    eventually(DEADLINE, "the app behind ztunnel answers", || {
        curl_in(z, &["http://10.87.3.10:8080/whoami"]).0 == 200
    })
    .await;
    // ztunnel -> zident.
    let (code, body) = curl_in(
        z,
        &[
            "--socks5",
            "127.0.0.1:15080",
            "http://10.87.2.10:8080/whoami",
        ],
    );
    assert_eq!((code, body.as_str()), (200, "s"), "{}", logs());
    // zident -> ztunnel.
    let to_zt = || {
        curl_in(
            a,
            &[
                "--interface",
                "10.87.1.10",
                "--socks5",
                "127.0.0.1:15080",
                "http://10.87.3.10:8080/whoami",
            ],
        )
    };
    let (code, body) = to_zt();
    assert_eq!((code, body.as_str()), (200, "zt"), "{}", logs());
    // Its certificate was issued to its pod's ServiceAccount token, reviewed by the API server.
    let ca_log = std::fs::read_to_string(dir.join("ca.log")).unwrap_or_default();
    assert!(
        ca_log.lines().any(|l| l.contains("issued certificate")
            && l.contains("spiffe://cluster.local/ns/shop/sa/zt")
            && l.contains("service account shop/zt (pod zt-app)")),
        "{}",
        logs()
    );
    // A DENY policy from the CRD, selecting ztunnel's pod, enforced by ztunnel.
    put_policy(policies, "no-client-to-zt", json!({"selector": {"matchLabels": {"app": "zt"}}, "action": "DENY",
                       "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]})).await;
    eventually(DEADLINE, "ztunnel enforces the DENY policy", || {
        to_zt().0 != 200
    })
    .await;
    eventually(DEADLINE, "ztunnel says it was the policy", || {
        zt.output().contains("policy rejection")
    })
    .await;
    drop_policy(policies, "no-client-to-zt").await;
    eventually(DEADLINE, "ztunnel lifts it", || to_zt().0 == 200).await;
    assert!(
        !zt.output().contains("NACK") && !zt.output().contains("rejected"),
        "{}",
        logs()
    );
}
