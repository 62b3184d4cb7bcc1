//! Two agents (two nodes of one mesh file) and the real CA on loopback: curl from workload A's
//! address, through A's SOCKS5 and B's inbound HBONE, reaches an HTTP server that is workload B.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_agent::{AgentConfig, CaClientConfig, CertState, RunningAgent, TokenSource};
use zident_ca::{CaConfig, RunningCa};
use zident_tunnel::node::{RunningTunnel, TunnelConfig, start};

async fn agent(dir: &std::path::Path, ca: &RunningCa, node: &str, token: &str) -> RunningAgent {
    let client = CaClientConfig {
        address: format!("localhost:{}", ca.addr.port()),
        root_ca: ca.root_cert_path.clone(),
        token: TokenSource::Literal(token.into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(10),
        poll_bundle: true,
    };
    let mut c = AgentConfig::new(node, dir.join("mesh.yaml"), client);
    c.secret_ttl = Duration::from_secs(3600);
    (c.admin_addr, c.metrics_addr, c.readiness_addr) = (None, None, None);
    let a = RunningAgent::start(c, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.manager.is_ready() {
        assert!(Instant::now() < deadline, "{node} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.manager
            .snapshot()
            .iter()
            .all(|(_, s)| matches!(s.state, CertState::Available(_)))
    );
    a
}

async fn tunnel(a: &RunningAgent, node: &str, socks: bool, port: u16) -> RunningTunnel {
    let m = a.manager.clone();
    let current = Arc::new(move |id: &zident_identity::SpiffeId| m.current(id));
    let m = a.manager.clone();
    let bundle = Arc::new(move || m.trust().bundle());
    start(
        TunnelConfig {
            socks5_addr: socks.then(|| "127.0.0.1:0".parse().unwrap()),
            inbound_port: port,
        },
        node.into(),
        a.manager.clone(),
        current,
        bundle,
        a.mesh.clone(),
    )
    .await
    .unwrap()
}

async fn http_workload(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nI am B!\n")
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_workload_b_through_both_agents() {
    // Free ports, taken by binding and releasing: one HBONE port for every node, one for B.
    // A port free on every address that needs it (std's bind does not reuse addresses, so
    // what it can bind, tokio can too).
    let free = |_: [u8; 4]| {
        (0..100)
            .find_map(|_| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .ok()?
                    .local_addr()
                    .ok()?
                    .port();
                let all: Vec<_> = [[127, 0, 0, 12], [127, 0, 0, 13]]
                    .iter()
                    .map(|ip: &[u8; 4]| std::net::TcpListener::bind(SocketAddr::from((*ip, port))))
                    .collect::<Result<_, _>>()
                    .ok()?;
                drop(all);
                Some(port)
            })
            .expect("a free port")
    };
    let hbone_port = free([127, 0, 0, 13]);
    let http_port = free([127, 0, 0, 13]);
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
    let mut ca = CaConfig::new(dir.path().join("mesh.yaml"));
    ca.data_dir = dir.path().join("ca");
    ca.listen = "127.0.0.1:0".parse().unwrap();
    ca.metrics_addr = None;
    let ca = RunningCa::start(ca).await.unwrap();

    let a = agent(dir.path(), &ca, "node-a", "ta").await;
    let b = agent(dir.path(), &ca, "node-b", "tb").await;
    let ta = tunnel(&a, "node-a", true, hbone_port).await;
    let tb = tunnel(&b, "node-b", false, hbone_port).await;
    assert_eq!(
        tb.inbound,
        vec![SocketAddr::from(([127, 0, 0, 13], hbone_port))]
    );
    http_workload(SocketAddr::from(([127, 0, 0, 13], http_port))).await;
    let proxy = ta.socks5_addr.unwrap().to_string();

    let curl = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10"])
                .args(&args)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
        .await
        .unwrap()
    };
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
