//! Transparent capture: an iptables `REDIRECT` sends a workload's plain connection to the
//! agent's capture port, and the agent tunnels it to where it was going (`SO_ORIGINAL_DST`),
//! through the destination node's HBONE inbound. A connection made to the capture port itself,
//! not redirected, is refused with its reason.
//!
//! The redirect needs root and the iptables `nat` table (`.ci/run` installs iptables). Where
//! the kernel does not allow it, the test says so on stderr and checks only the refusal.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{agent, free_port, http_workload, start_ca, tunnel_with, until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use zident_tunnel::TunnelConfig;
use zident_tunnel::{Direction, Observer, Reason};

/// An iptables rule, deleted when dropped.
struct Rule(Vec<String>);

impl Rule {
    fn add(spec: &[String]) -> Result<Self, String> {
        let out = Command::new("iptables")
            .args(["-w", "-t", "nat", "-A", "OUTPUT"])
            .args(spec)
            .output()
            .map_err(|e| format!("iptables: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Self(spec.to_vec()))
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-D", "OUTPUT"])
            .args(&self.0)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_connections_are_tunneled_to_their_original_destination() {
    let hbone_port = free_port(&[[127, 0, 0, 22], [127, 0, 0, 23]]);
    let http_port = free_port(&[[127, 0, 0, 23]]);
    let capture_port = free_port(&[[127, 0, 0, 1]]);
    let dir = tempfile::tempdir().unwrap();
    let mesh = "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: ta}\n- {name: node-b, token: tb}\n\
workloads:\n\
- {uid: a, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['127.0.0.22'], protocol: HBONE}\n\
- {uid: b, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['127.0.0.23'], protocol: HBONE}\n";
    std::fs::write(dir.path().join("mesh.yaml"), mesh).unwrap();
    let ca = start_ca(dir.path()).await;
    let a = agent(dir.path(), &ca, "node-a", "ta", Duration::from_secs(3600)).await;
    let b = agent(dir.path(), &ca, "node-b", "tb", Duration::from_secs(3600)).await;
    let (oa, ob) = (Observer::new(), Observer::new());
    let capture = SocketAddr::from(([127, 0, 0, 1], capture_port));
    let ta = tunnel_with(
        &a,
        "node-a",
        TunnelConfig {
            socks5_addr: None,
            outbound_addr: Some(capture),
            inbound_port: hbone_port,
            inbound_addr: None,
            transparent_source: false,
            skew_tolerance: zident_tunnel::SKEW_TOLERANCE,
        },
        oa.clone(),
    )
    .await;
    assert_eq!(ta.outbound_addr, Some(capture));
    let tb = tunnel_with(
        &b,
        "node-b",
        TunnelConfig {
            socks5_addr: None,
            outbound_addr: None,
            inbound_port: hbone_port,
            inbound_addr: None,
            transparent_source: false,
            skew_tolerance: zident_tunnel::SKEW_TOLERANCE,
        },
        ob.clone(),
    )
    .await;
    http_workload(SocketAddr::from(([127, 0, 0, 23], http_port)), "I am B!\n").await;

    // Not redirected: the capture port cannot know where the client meant to go.
    let mut direct = tokio::net::TcpStream::connect(capture).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), direct.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?}");
    until("A counts the connection that was not redirected", || {
        oa.failure_count(Direction::Outbound, Reason::BadRequest) == 1
    })
    .await;

    // Workload A's connections to B's HTTP port go to A's capture port.
    let spec: Vec<String> = format!(
        "-p tcp -s 127.0.0.22 -d 127.0.0.23 --dport {http_port} -j REDIRECT --to-ports {capture_port}"
    )
    .split(' ')
    .map(String::from)
    .collect();
    let rule = match Rule::add(&spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIPPED the redirect half: iptables cannot add a nat rule here: {e}");
            return;
        }
    };
    for _ in 0..3 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 22], 0))).unwrap();
        let mut s = socket
            .connect(SocketAddr::from(([127, 0, 0, 23], http_port)))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.ends_with("I am B!\n"), "{answer}");
    }
    drop(rule);
    // Each went through B's inbound as the frontend: the tunnel, not the redirect alone.
    until("B served three tunnels", || {
        common::metrics_text(&ob).contains(
            "istio_tcp_connections_closed_total{reporter=\"destination\",\
source_principal=\"spiffe://cluster.local/ns/default/sa/frontend\",\
destination_principal=\"spiffe://cluster.local/ns/default/sa/backend\"} 3",
        )
    })
    .await;
    drop((ta, tb));
}
