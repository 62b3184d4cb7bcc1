//! Two agents (two nodes of one mesh file) and the real CA on loopback: curl from workload A's
//! address, through A's SOCKS5 and B's inbound HBONE, reaches an HTTP server that is workload B.
//! Both tunnels count and list what they carry; B refuses a client without a certificate
//! (`openssl s_client`) and one from an untrusted root, each under its reason.

mod common;

use common::{
    Ca, agent, curl, free_port, http_workload, metrics_text, socks_connect, start_ca,
    tunnel_observed, until,
};

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_tunnel::{Direction, Observer, Reason};

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
    let (oa, ob) = (Observer::new(), Observer::new());
    let ta = tunnel_observed(&a, "node-a", true, hbone_port, oa.clone()).await;
    let tb = tunnel_observed(&b, "node-b", false, hbone_port, ob.clone()).await;
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
        proxy.clone(),
        format!("http://127.0.0.13:{http_port}/"),
    ])
    .await;
    assert!(!ok);
    assert_eq!(
        oa.failure_count(Direction::Outbound, Reason::UnknownSource),
        1
    );

    // Three tunnels carried bytes; each side counted them under both principals, and none is
    // open any more.
    let labels = "source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\",\
destination_principal=\"spiffe://cluster.local/ns/default/sa/backend\"";
    until("B counted three closed tunnels", || {
        metrics_text(&ob).contains(&format!(
            "istio_tcp_connections_closed_total{{reporter=\"destination\",{labels}}} 3"
        ))
    })
    .await;
    let a_text = metrics_text(&oa);
    assert!(
        a_text.contains(&format!(
            "istio_tcp_connections_opened_total{{reporter=\"source\",{labels}}} 3"
        )),
        "{a_text}"
    );
    assert!(oa.open_tunnels().is_empty() && ob.open_tunnels().is_empty());

    // An open tunnel is listed on both nodes while it lasts.
    let mut open = socks_connect(
        ta.socks5_addr.unwrap(),
        [127, 0, 0, 12],
        SocketAddr::from(([127, 0, 0, 13], http_port)),
    )
    .await
    .unwrap();
    until("both nodes list the open tunnel", || {
        oa.open_tunnels().len() == 1 && ob.open_tunnels().len() == 1
    })
    .await;
    let listed = &ob.open_tunnels()[0];
    assert_eq!(
        listed.source,
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    assert_eq!(
        listed.destination_addr,
        SocketAddr::from(([127, 0, 0, 13], http_port))
    );
    open.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    open.read_to_string(&mut answer).await.unwrap();
    assert!(answer.ends_with("I am B!\n"), "{answer}");
    drop(open);
    until("the tunnel leaves both tables", || {
        oa.open_tunnels().is_empty() && ob.open_tunnels().is_empty()
    })
    .await;

    // openssl s_client without -cert, a client nobody here wrote: B's handshake refuses it.
    let hbone = format!("127.0.0.13:{hbone_port}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .args(["20", "openssl", "s_client", "-connect", &hbone, "-tls1_3"])
            .args(["-alpn", "h2"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("CONNECTED"), "{text}");
    until("B counts the client without a certificate", || {
        ob.failure_count(Direction::Inbound, Reason::NoClientCertificate) == 1
    })
    .await;

    // A frontend SVID from another root of the same name, which B does not trust.
    let stranger = Ca::new();
    let (chain, key) = stranger.rustls_svid("ns/default/sa/frontend");
    let refused = common::present_to(
        &a,
        chain,
        key,
        "ns/default/sa/backend",
        SocketAddr::from(([127, 0, 0, 13], hbone_port)),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    until("B counts the untrusted root", || {
        ob.failure_count(Direction::Inbound, Reason::UntrustedRoot) == 1
    })
    .await;
    drop((ta, tb));
}
