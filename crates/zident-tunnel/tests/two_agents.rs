//! Two agents (two nodes of one mesh file) and the real CA on loopback: curl from workload A's
//! address, through A's SOCKS5 and B's inbound HBONE, reaches an HTTP server that is workload B.

mod common;

use common::{agent, curl, free_port, http_workload, start_ca, tunnel};

use std::net::SocketAddr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_workload_b_through_both_agents() {
    // Free ports, taken by binding and releasing: one HBONE port for every node, one for B.
    let hbone_port = free_port(&[[127, 0, 0, 12], [127, 0, 0, 13]]);
    let http_port = free_port(&[[127, 0, 0, 13]]);
    let dir = tempfile::tempdir().unwrap();
    let mesh = format!(
        "trustDomain: cluster.local\n\
nodes:\n- {{name: node-a, token: ta}}\n- {{name: node-b, token: tb}}\n\
workloads:\n\
- {{uid: a, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['127.0.0.12'], protocol: HBONE}}\n\
- {{uid: b, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['127.0.0.13'], protocol: HBONE,\n   services: {{'default/backend.default.svc.cluster.local': {{80: {http_port}}}}}}}\n\
services:\n- {{name: backend, namespace: default, hostname: backend.default.svc.cluster.local, vips: ['/127.10.0.13'], ports: {{80: {http_port}}}}}\n\
policies:\n- name: only-frontend\n  namespace: default\n  scope: Namespace\n  action: Allow\n  \
rules:\n  - - - principals: [{{Exact: \"cluster.local/ns/default/sa/frontend\"}}]\n"
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(dir.path()).await;

    let a = agent(dir.path(), &ca, "node-a", "ta", Duration::from_secs(3600)).await;
    let b = agent(dir.path(), &ca, "node-b", "tb", Duration::from_secs(3600)).await;
    let ta = tunnel(&a, "node-a", true, hbone_port).await;
    let tb = tunnel(&b, "node-b", false, hbone_port).await;
    assert_eq!(
        tb.inbound,
        vec![SocketAddr::from(([127, 0, 0, 13], hbone_port))]
    );
    http_workload(SocketAddr::from(([127, 0, 0, 13], http_port)), "I am B!\n").await;
    let proxy = ta.socks5_addr.unwrap().to_string();

    // By workload address, by service VIP (port 80 mapped to the target port), by host name.
    for url in [
        format!("http://127.0.0.13:{http_port}/"),
        "http://127.10.0.13/".to_string(),
    ] {
        let (ok, out) = curl(vec![
            "--interface".into(),
            "127.0.0.12".into(),
            "--socks5".into(),
            proxy.clone(),
            url,
        ])
        .await;
        assert!(ok, "{out}");
        assert_eq!(out, "I am B!\n");
    }
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.12".into(),
        "--socks5-hostname".into(),
        proxy.clone(),
        "http://backend.default.svc.cluster.local/".into(),
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(out, "I am B!\n");

    // An address that is not a workload of this node's mesh: refused at the source.
    let (ok, _) = curl(vec![
        "--interface".into(),
        "127.0.0.14".into(),
        "--socks5".into(),
        proxy,
        format!("http://127.0.0.13:{http_port}/"),
    ])
    .await;
    assert!(!ok);
    drop((ta, tb));
}
