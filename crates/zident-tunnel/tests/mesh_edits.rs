//! No edit of the mesh file can break a node. A real CA and two real agents with their
//! tunnels run on one mesh file; the file is edited as a person would, mistakes included, and
//! everything is checked from outside: the CA's and agents' `/metrics` and `/debug/connections`
//! (read with curl), the Workload API sockets (read with the `spiffe` crate), and traffic
//! (curl through SOCKS5 and the two tunnels).
//!
//! - A refused edit (empty, truncated, a policy that cannot compile, two workloads on one
//!   address, a name that breaks Kubernetes' rules, a foreign trust domain, a file that drops
//!   an agent's node) is counted as rejected on every component that reads it, and nothing it
//!   held takes effect anywhere.
//! - Listeners and Workload API sockets follow workloads through a service-account rename, a
//!   move to another node and back, and a removal and re-add.
//! - Outbound tunnels leave from the source workload's own address, so `sourceIps` in ALLOW
//!   and DENY policies match the workload, as with ztunnel.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    agent_config, capture_logs, captured, curl, echo, free_port, http_workload, socks_connect,
    start_agent, tunnel_observed,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_agent::RunningAgent;
use zident_ca::RunningCa;
use zident_tunnel::ListenerPhase;
use zident_tunnel::{Direction, Observer, Reason};

/// The mesh every test starts from: frontend on node-a, backend on node-b, both HBONE, on
/// addresses of `net` (127.0.<net>.2 and .3), no policy.
fn base(net: u8) -> String {
    format!(
        "\
trustDomain: cluster.local
nodes:
- name: node-a
  token: ta
- name: node-b
  token: tb
workloads:
- uid: fe
  name: frontend
  namespace: default
  serviceAccount: frontend
  node: node-a
  workloadIps: [\"127.0.{net}.2\"]
  protocol: HBONE
- uid: be
  name: backend
  namespace: default
  serviceAccount: backend
  node: node-b
  workloadIps: [\"127.0.{net}.3\"]
  protocol: HBONE
policies: []
"
    )
}

/// A running CA, two agents with tunnels, and the backend's HTTP workload.
struct Mesh {
    dir: tempfile::TempDir,
    net: u8,
    http_port: u16,
    ca: RunningCa,
    a: RunningAgent,
    b: RunningAgent,
    ta: Option<zident_tunnel::RunningTunnel>,
    tb: Option<zident_tunnel::RunningTunnel>,
    oa: Arc<Observer>,
    ob: Arc<Observer>,
}

impl Mesh {
    async fn start(net: u8) -> Self {
        capture_logs("zident=info");
        let hbone_port = free_port(&[[127, 0, net, 2], [127, 0, net, 3]]);
        let http_port = free_port(&[[127, 0, net, 3]]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), base(net)).unwrap();
        let mut config = zident_testkit::ca::ca_config(dir.path());
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        let ca = zident_testkit::ca::start_ca(config).await;
        let a = agent(dir.path(), &ca, "node-a", "ta").await;
        let b = agent(dir.path(), &ca, "node-b", "tb").await;
        let (oa, ob) = (Observer::new(), Observer::new());
        let ta = tunnel_observed(&a, "node-a", true, hbone_port, oa.clone()).await;
        let tb = tunnel_observed(&b, "node-b", false, hbone_port, ob.clone()).await;
        http_workload(SocketAddr::from(([127, 0, net, 3], http_port)), "backend\n").await;
        Self {
            dir,
            net,
            http_port,
            ca,
            a,
            b,
            ta: Some(ta),
            tb: Some(tb),
            oa,
            ob,
        }
    }

    fn mesh_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    /// The Workload API socket directory of `node` (each agent has its own, as on real
    /// nodes).
    fn sockets(&self, node: &str) -> PathBuf {
        self.dir.path().join("sockets").join(node)
    }

    /// curl from the frontend's address through node-a's SOCKS5 to `ip:port`.
    async fn get(&self, ip: &str, port: u16) -> (bool, String) {
        let proxy = self.ta.as_ref().unwrap().socks5_addr.unwrap();
        curl(vec![
            "--interface".into(),
            format!("127.0.{}.2", self.net),
            "--socks5".into(),
            proxy.to_string(),
            format!("http://{ip}:{port}/"),
        ])
        .await
    }

    /// curl to the backend; true when it answered.
    async fn backend_answers(&self) -> bool {
        let (ok, out) = self
            .get(&format!("127.0.{}.3", self.net), self.http_port)
            .await;
        ok && out.contains("backend")
    }

    /// Waits until the backend answers through both tunnels.
    async fn until_backend_answers(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.backend_answers().await {
            assert!(Instant::now() < deadline, "backend never answered: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (CA, agent A, agent B) mesh reloads with `outcome`, read from their `/metrics`.
    async fn reloads(&self, outcome: &str) -> (u64, u64, u64) {
        let ca = scrape(self.ca.metrics_addr.unwrap()).await;
        let a = scrape(self.a.metrics_addr.unwrap()).await;
        let b = scrape(self.b.metrics_addr.unwrap()).await;
        (
            metric(
                &ca,
                "zident_ca_config_reloads_total{",
                &["source=\"mesh\"", &format!("outcome=\"{outcome}\"")],
            ),
            metric(
                &a,
                "zident_config_reloads_total{",
                &[&format!("outcome=\"{outcome}\"")],
            ),
            metric(
                &b,
                "zident_config_reloads_total{",
                &[&format!("outcome=\"{outcome}\"")],
            ),
        )
    }

    /// Writes `yaml` and waits until each component has counted one more reload of `outcome`
    /// for it (the CA and agent B see the `b_ca` outcome, agent A `a`).
    async fn edit(&self, yaml: &str, ca_b: &str, a: &str) {
        let before_ca_b = self.reloads(ca_b).await;
        let before_a = self.reloads(a).await;
        std::fs::write(self.mesh_path(), yaml).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now_ca_b = self.reloads(ca_b).await;
            let now_a = self.reloads(a).await;
            if now_ca_b.0 > before_ca_b.0 && now_ca_b.2 > before_ca_b.2 && now_a.1 > before_a.1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the edit was not counted {ca_b} (CA, B) and {a} (A): before {before_ca_b:?}/{before_a:?}, now {now_ca_b:?}/{now_a:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The SPIFFE ID the Workload API socket of `default/<name>` serves, once it serves.
    async fn socket_identity(&self, name: &str) -> String {
        let node = if name == "frontend" {
            "node-a"
        } else {
            "node-b"
        };
        let path = self
            .sockets(node)
            .join("default")
            .join(name)
            .join("agent.sock");
        let endpoint = format!("unix:{}", path.display());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = spiffe::WorkloadApiClient::connect_to(&endpoint).await
                && let Ok(Ok(svid)) =
                    tokio::time::timeout(Duration::from_secs(5), c.fetch_x509_svid()).await
            {
                return svid.spiffe_id().to_string();
            }
            assert!(Instant::now() < deadline, "no Workload API at {endpoint}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the socket of `default/<name>` serves `id`.
    async fn until_socket_serves(&self, name: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.socket_identity(name).await;
            if got == id {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the socket of {name} serves {got}, not {id}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The state of the inbound listener on `ip` in a node's listener table (what
/// `/debug/connections` shows under `listeners.inbound` in `zident agent`), if it has one.
fn listener(o: &Observer, ip: &str) -> Option<(ListenerPhase, u32)> {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    o.listeners()
        .list()
        .into_iter()
        .find(|l| l.addr.ip() == ip)
        .map(|l| (l.state, l.attempts))
}

/// A real agent with its admin, metrics and Workload API sockets on, once it is ready.
async fn agent(dir: &Path, ca: &RunningCa, node: &str, token: &str) -> RunningAgent {
    let mut c = agent_config(dir, ca, node, token);
    c.secret_ttl = Duration::from_secs(3600);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    (c.admin_addr, c.metrics_addr, c.readiness_addr) = (Some(any), Some(any), None);
    c.delivery.socket_dir = Some(dir.join("sockets").join(node));
    c.delivery.svid_dir = Some(dir.join("svids").join(node));
    start_agent(c).await
}

/// `GET /metrics` with curl.
async fn scrape(addr: SocketAddr) -> String {
    let (ok, out) = curl(vec![format!("http://{addr}/metrics")]).await;
    assert!(ok, "{out}");
    out
}

/// The value of the sample whose line starts with `prefix` and holds every label in
/// `labels`; 0 when there is none yet.
fn metric(text: &str, prefix: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_changes_nothing_anywhere() {
    let m = Mesh::start(1).await;
    m.until_backend_answers("at start").await;
    assert_eq!(
        m.socket_identity("frontend").await,
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    let good = base(1);
    let serials = |a: &RunningAgent| {
        let mut s: Vec<String> = a
            .manager
            .snapshot()
            .into_iter()
            .filter_map(|(id, _)| a.manager.peek(&id).map(|c| c.serial_hex.clone()))
            .collect();
        s.sort();
        s
    };
    let (serials_a, serials_b) = (serials(&m.a), serials(&m.b));

    // Each of these is refused by the CA and both agents.
    let deny_broken = good.replace(
        "policies: []\n",
        "policies:\n- name: deny-frontend\n  namespace: default\n  action: Deny\n  rules:\n  - - - sourceIps: [10.0.0.0/33]\n",
    );
    let bad_edits = [
        ("an empty file", String::new()),
        ("a lone document marker", "---\n".to_string()),
        ("a policy that cannot compile", deny_broken),
        (
            "two workloads on one address",
            good.replace("127.0.1.3", "127.0.1.2"),
        ),
        (
            "a service account that breaks Kubernetes' rule",
            good.replace("serviceAccount: frontend", "serviceAccount: \"front/end\""),
        ),
        (
            "a foreign trust domain",
            good.replace(
                "  node: node-b\n",
                "  node: node-b\n  trustDomain: other.org\n",
            ),
        ),
        (
            "two workloads with one uid",
            good.replace("uid: be", "uid: fe"),
        ),
    ];
    for (what, yaml) in &bad_edits {
        m.edit(yaml, "rejected", "rejected").await;
        assert!(m.backend_answers().await, "after {what}, traffic stopped");
        assert_eq!(
            m.socket_identity("frontend").await,
            "spiffe://cluster.local/ns/default/sa/frontend",
            "after {what}"
        );
        assert_eq!(
            m.socket_identity("backend").await,
            "spiffe://cluster.local/ns/default/sa/backend"
        );
    }
    assert!(captured().contains("mesh file change rejected, keeping the last good configuration"));
    assert!(
        captured().contains("prefix length too long"),
        "the reason is logged"
    );

    // A file that no longer names node-a is a valid mesh for the CA and node-b, but agent A
    // refuses it rather than drop every workload it serves.
    let without_a = "trustDomain: cluster.local\nnodes:\n- {name: node-b, token: tb}\n\
workloads:\n- {uid: be, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: [\"127.0.1.3\"], protocol: HBONE}\n";
    m.edit(without_a, "applied", "rejected").await;
    assert!(captured().contains("does not name this agent's node \"node-a\""));
    assert_eq!(
        m.socket_identity("frontend").await,
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    // Applied, it would have closed node-a's listener for the frontend.
    assert_eq!(
        listener(&m.oa, "127.0.1.2"),
        Some((ListenerPhase::Listening, 0))
    );

    // Nothing any refused edit held took effect: the same certificates (no identity was
    // forgotten and fetched again), and a good edit still applies.
    m.edit(&good, "applied", "applied").await;
    m.until_backend_answers("after the good edit").await;
    assert_eq!(serials(&m.a), serials_a, "agent A kept its certificates");
    assert_eq!(serials(&m.b), serials_b, "agent B kept its certificates");

    // The policy fixed: now it applies, and is enforced.
    let deny = good.replace(
        "policies: []\n",
        "policies:\n- name: deny-frontend\n  namespace: default\n  action: Deny\n  rules:\n  - - - principals: [{Exact: cluster.local/ns/default/sa/frontend}]\n",
    );
    let denied_before = m.ob.failure_count(Direction::Inbound, Reason::PolicyDenied);
    m.edit(&deny, "applied", "applied").await;
    assert!(!m.backend_answers().await, "the DENY policy is enforced");
    assert_eq!(
        m.ob.failure_count(Direction::Inbound, Reason::PolicyDenied),
        denied_before + 1
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_sockets_follow_workloads() {
    let m = Mesh::start(2).await;
    m.until_backend_answers("at start").await;
    let good = base(2);

    // Rename the backend's service account: its address stays served (as the new identity),
    // and its Workload API socket serves the new identity.
    let renamed = good.replace("serviceAccount: backend", "serviceAccount: backend-v2");
    m.edit(&renamed, "applied", "applied").await;
    m.until_backend_answers("after the rename").await;
    m.until_socket_serves("backend", "spiffe://cluster.local/ns/default/sa/backend-v2")
        .await;
    // The listener was never closed: it serves the new identity, bound on the first try.
    assert_eq!(
        listener(&m.ob, "127.0.2.3"),
        Some((ListenerPhase::Listening, 0))
    );

    // Move the backend to node-a, and back.
    let moved = renamed.replace(
        "  node: node-b\n  workloadIps: [\"127.0.2.3\"]",
        "  node: node-a\n  workloadIps: [\"127.0.2.3\"]",
    );
    assert_ne!(moved, renamed);
    m.edit(&moved, "applied", "applied").await;
    m.until_backend_answers("moved to node-a").await;
    // node-a listens there now; node-b no longer wants the address.
    let (oa, ob) = (m.oa.clone(), m.ob.clone());
    common::until("the address moves to node-a's listeners", || {
        listener(&oa, "127.0.2.3").map(|l| l.0) == Some(ListenerPhase::Listening)
            && listener(&ob, "127.0.2.3").is_none()
    })
    .await;
    m.edit(&renamed, "applied", "applied").await;
    m.until_backend_answers("moved back to node-b").await;
    common::until("the address moves back to node-b's listeners", || {
        listener(&ob, "127.0.2.3").map(|l| l.0) == Some(ListenerPhase::Listening)
            && listener(&oa, "127.0.2.3").is_none()
    })
    .await;
    m.until_socket_serves("backend", "spiffe://cluster.local/ns/default/sa/backend-v2")
        .await;

    // Remove it, and add it again.
    let removed: String = {
        let start = renamed.find("- uid: be").unwrap();
        let end = renamed.find("policies:").unwrap();
        format!("{}{}", &renamed[..start], &renamed[end..])
    };
    m.edit(&removed, "applied", "applied").await;
    assert!(
        !m.backend_answers().await,
        "a removed workload is no destination"
    );
    // Its socket and its SVID files (the private key among them) go.
    let socket = m.sockets("node-b").join("default/backend/agent.sock");
    let files = m.dir.path().join("svids/node-b/default/backend");
    let deadline = Instant::now() + Duration::from_secs(20);
    while socket.exists() || files.exists() {
        assert!(
            Instant::now() < deadline,
            "the removed workload's socket or files stay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.edit(&renamed, "applied", "applied").await;
    m.until_backend_answers("re-added").await;
    m.until_socket_serves("backend", "spiffe://cluster.local/ns/default/sa/backend-v2")
        .await;
    // The files come back, for the identity it has now.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pem = std::fs::read_to_string(files.join("svid.pem")).unwrap_or_default();
        let ok = zident_identity::pem::certs_from_pem(pem.as_bytes())
            .ok()
            .and_then(|c| c.first().and_then(|c| zident_identity::check_leaf(c).ok()))
            .is_some_and(|leaf| leaf.id.as_str().ends_with("/sa/backend-v2"));
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the re-added workload's files never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ips_match_the_source_workload() {
    let m = Mesh::start(3).await;
    m.until_backend_answers("at start").await;
    let good = base(3);
    let policy = |action: &str, range: &str| {
        good.replace(
            "policies: []\n",
            &format!("policies:\n- name: by-source\n  namespace: default\n  scope: Namespace\n  action: {action}\n  rules:\n  - - - sourceIps: [{range}]\n"),
        )
    };

    // ALLOW only the frontend's own address: allowed, since the tunnel leaves from it.
    m.edit(&policy("Allow", "127.0.3.2/32"), "applied", "applied")
        .await;
    assert!(
        m.backend_answers().await,
        "ALLOW sourceIps matches the source workload"
    );
    // The inbound side names the source workload, found by the connection's source address.
    assert!(
        captured().contains("src_workload=default/frontend"),
        "{}",
        captured()
    );
    // ALLOW another address only: denied.
    m.edit(&policy("Allow", "127.0.3.9/32"), "applied", "applied")
        .await;
    assert!(
        !m.backend_answers().await,
        "ALLOW of another address denies"
    );
    // DENY the frontend's address: denied.
    m.edit(&policy("Deny", "127.0.3.2/32"), "applied", "applied")
        .await;
    assert!(
        !m.backend_answers().await,
        "DENY sourceIps matches the source workload"
    );
    // DENY another address: allowed.
    m.edit(&policy("Deny", "127.0.3.9/32"), "applied", "applied")
        .await;
    assert!(m.backend_answers().await);
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_tunnels_are_logged_and_socks_replies_say_why() {
    let mut m = Mesh::start(4).await;
    m.until_backend_answers("at start").await;
    let echo_port = free_port(&[[127, 0, 4, 3]]);
    echo(SocketAddr::from(([127, 0, 4, 3], echo_port))).await;
    let target = SocketAddr::from(([127, 0, 4, 3], echo_port));
    let proxy = m.ta.as_ref().unwrap().socks5_addr.unwrap();

    // 200 tunnels on one pooled HBONE connection, each carrying a byte.
    const N: usize = 200;
    let mut open = Vec::new();
    for _ in 0..N {
        let mut s = socks_connect(proxy, [127, 0, 4, 2], target).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        open.push(s);
    }
    let ob = m.ob.clone();
    common::until("B lists every tunnel", || ob.open_tunnels().len() == N).await;

    // node-a's tunnel goes away at once (its HBONE connection with it): node-b logs the end
    // of every tunnel and counts it.
    m.ta.take();
    common::until("B closes every tunnel", || ob.open_tunnels().is_empty()).await;
    // Each side's line for each tunnel: node-b's inbound lines, node-a's outbound ones (its
    // tasks were dropped with its tunnel, so they are "tunnel cut" lines).
    let needle = format!("dst_addr={target}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs = captured();
        let ends = |side: &str| {
            logs.lines()
                .filter(|l| l.contains(&needle) && l.contains(side))
                .filter(|l| l.contains("inbound connection") || l.contains("tunnel cut"))
                .count()
        };
        let (inbound, outbound) = (ends("inbound"), ends("outbound"));
        if inbound == N && outbound == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{inbound} inbound and {outbound} outbound of {N} tunnels logged their end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(open);

    // A fresh node-a tunnel; node-b's tunnel goes down: SOCKS5 says the host is unreachable or
    // refused (RFC 1928 0x04/0x05), not "not allowed by ruleset" (0x02, for policy only).
    let ta = tunnel_observed(
        &m.a,
        "node-a",
        true,
        m.tb.as_ref().unwrap().inbound[0].port(),
        Observer::new(),
    )
    .await;
    let hbone_b = m.tb.as_ref().unwrap().inbound[0];
    m.tb.take();
    // Dropping a tunnel aborts its listener task; the socket closes when the runtime drops
    // it. Until then a connection may still land on it (and fail in TLS, a general failure).
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(hbone_b).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "node-b's HBONE listener {hbone_b} still accepts after its tunnel stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = socks_connect(ta.socks5_addr.unwrap(), [127, 0, 4, 2], target)
        .await
        .unwrap_err()
        .to_string();
    let refusals: Vec<String> = captured()
        .lines()
        .filter(|l| l.contains("outbound refused") && l.contains(&target.to_string()))
        .map(str::to_owned)
        .collect();
    assert!(
        err == "SOCKS5 reply 5" || err == "SOCKS5 reply 4",
        "{err}; refusals logged: {refusals:#?}"
    );
    drop(ta);
    drop(m);
}
