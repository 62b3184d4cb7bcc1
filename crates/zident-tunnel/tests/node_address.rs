//! A node that gives a shared HBONE address (`nodes[].address`, `--inbound-addr`): other nodes
//! tunnel to that address for all its workloads, and its one listener presents the certificate
//! of the workload named in SNI. A service's traffic is spread over its healthy backends.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{agent, curl, free_port, http_workload, start_ca, tunnel_with, until};
use zident_tunnel::TunnelConfig;
use zident_tunnel::{Direction, Observer, Reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_node_address_serves_every_workload_as_itself() {
    let hbone_port = free_port(&[[127, 0, 0, 43]]);
    let http_port = free_port(&[[127, 0, 0, 44], [127, 0, 0, 45], [127, 0, 0, 46]]);
    let dir = tempfile::tempdir().unwrap();
    let mesh = format!(
        "trustDomain: cluster.local\n\
nodes:\n- {{name: node-a, token: ta}}\n- {{name: node-b, token: tb, address: 127.0.0.43}}\n\
workloads:\n\
- {{uid: a, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['127.0.0.42'], protocol: HBONE}}\n\
- {{uid: b1, name: backend-1, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['127.0.0.44'], protocol: HBONE,\n   services: {{'default/backend.svc': {{80: {http_port}}}}}}}\n\
- {{uid: b2, name: backend-2, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['127.0.0.46'], protocol: HBONE,\n   services: {{'default/backend.svc': {{80: {http_port}}}}}}}\n\
- {{uid: b3, name: backend-3, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['127.0.0.47'], protocol: HBONE, status: Unhealthy,\n   services: {{'default/backend.svc': {{80: {http_port}}}}}}}\n\
- {{uid: p, name: payments, namespace: default, serviceAccount: payments, node: node-b, workloadIps: ['127.0.0.45'], protocol: HBONE}}\n\
services:\n- {{name: backend, namespace: default, hostname: backend.svc, vips: ['/127.10.0.44'], ports: {{80: {http_port}}}}}\n"
    );
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(dir.path()).await;
    let a = agent(dir.path(), &ca, "node-a", "ta", Duration::from_secs(3600)).await;
    let b = agent(dir.path(), &ca, "node-b", "tb", Duration::from_secs(3600)).await;
    let (oa, ob) = (Observer::new(), Observer::new());
    let ta = tunnel_with(
        &a,
        "node-a",
        TunnelConfig {
            socks5_addr: Some("127.0.0.1:0".parse().unwrap()),
            outbound_addr: None,
            inbound_port: hbone_port,
            inbound_addr: None,
            transparent_source: false,
            skew_tolerance: zident_tunnel::SKEW_TOLERANCE,
        },
        oa.clone(),
    )
    .await;
    let shared = SocketAddr::from(([127, 0, 0, 43], hbone_port));
    let tb = tunnel_with(
        &b,
        "node-b",
        TunnelConfig {
            socks5_addr: None,
            outbound_addr: None,
            inbound_port: hbone_port,
            inbound_addr: Some(shared),
            transparent_source: false,
            skew_tolerance: zident_tunnel::SKEW_TOLERANCE,
        },
        ob.clone(),
    )
    .await;
    // One listener, on the node's address, for all four workloads.
    assert_eq!(tb.inbound, vec![shared]);
    for (ip, body) in [
        ([127, 0, 0, 44], "backend-1\n"),
        ([127, 0, 0, 46], "backend-2\n"),
        ([127, 0, 0, 47], "backend-3\n"),
        ([127, 0, 0, 45], "payments\n"),
    ] {
        http_workload(SocketAddr::from((ip, http_port)), body).await;
    }
    let proxy = ta.socks5_addr.unwrap().to_string();
    let get = |url: String| {
        curl(vec![
            "--interface".into(),
            "127.0.0.42".into(),
            "--socks5".into(),
            proxy.clone(),
            url,
        ])
    };

    // Each workload by its address: the identity check on A passes only if B presented the
    // certificate of the workload named in SNI.
    let (ok, out) = get(format!("http://127.0.0.45:{http_port}/")).await;
    assert!(ok, "{out}");
    assert_eq!(out, "payments\n");
    let (ok, out) = get(format!("http://127.0.0.44:{http_port}/")).await;
    assert!(ok, "{out}");
    assert_eq!(out, "backend-1\n");

    // The service VIP: round robin over the two healthy backends, never the unhealthy one.
    let mut seen = BTreeMap::new();
    for _ in 0..6 {
        let (ok, out) = get("http://127.10.0.44/".into()).await;
        assert!(ok, "{out}");
        *seen.entry(out).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> =
        [("backend-1\n".into(), 3), ("backend-2\n".into(), 3)].into();
    assert_eq!(seen, expected);

    // B served everything through the shared address with no refusal; A saw none either.
    until("B closed seven tunnels to the backend identity", || {
        common::metrics_text(&ob).contains("istio_tcp_connections_closed_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\",destination_principal=\"spiffe://cluster.local/ns/default/sa/backend\"} 7")
    })
    .await;
    for r in [
        Reason::BadRequest,
        Reason::IdentityMismatch,
        Reason::TlsFailure,
    ] {
        assert_eq!(ob.failure_count(Direction::Inbound, r), 0);
        assert_eq!(oa.failure_count(Direction::Outbound, r), 0);
    }

    // openssl s_client without a name: the shared listener cannot tell whom to present.
    let addr = shared.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args([
                "20",
                "openssl",
                "s_client",
                "-connect",
                &addr,
                "-tls1_3",
                "-noservername",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !out.status.success()
            || !String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE")
    );
    until("B refuses the nameless hello", || {
        ob.failure_count(Direction::Inbound, Reason::BadRequest) == 1
    })
    .await;
    drop((ta, tb));
}
