//! A real CA and a real agent on loopback, and helpers to wait for what they do.

#![allow(dead_code)]

pub mod fake_ca;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zident_agent::{
    AgentConfig, CaClientConfig, CertState, RenewalPolicy, RunningAgent, TokenSource,
};
use zident_ca::RunningCa;
use zident_identity::SpiffeId;

pub const NODE: &str = "node-a";
pub const TOKEN: &str = "token-node-a";

/// A mesh with `n` extra workloads on node-a besides frontend and backend.
pub fn mesh(extra: usize) -> String {
    let mut s = String::from(
        "trustDomain: cluster.local\n\
nodes:\n\
- {name: node-a, token: token-node-a, spiffeId: 'spiffe://cluster.local/ns/zident-system/sa/agent'}\n\
- {name: node-b, token: token-node-b}\n\
workloads:\n\
- {uid: fe, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['127.0.0.2'], protocol: HBONE}\n\
- {uid: be, name: backend, namespace: default, serviceAccount: backend, node: node-a, workloadIps: ['127.0.0.3'], protocol: HBONE}\n\
- {uid: fe2, name: frontend-2, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['127.0.0.4'], protocol: HBONE}\n\
- {uid: other, name: other, namespace: default, serviceAccount: other, node: node-b, workloadIps: ['127.0.0.5'], protocol: HBONE}\n",
    );
    for i in 0..extra {
        s.push_str(&format!(
            "- {{uid: w{i}, name: w{i}, namespace: load, serviceAccount: sa{i}, node: node-a}}\n"
        ));
    }
    s
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/{s}")).unwrap()
}

/// The identities node-a has in `mesh(0)`: frontend, backend, and the agent's own.
pub fn local_ids() -> HashSet<SpiffeId> {
    [
        id("ns/default/sa/frontend"),
        id("ns/default/sa/backend"),
        id("ns/zident-system/sa/agent"),
    ]
    .into()
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: Option<RunningCa>,
    pub ca_addr: std::net::SocketAddr,
}

impl World {
    pub async fn new(extra: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), mesh(extra)).unwrap();
        let ca = start_ca(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
        let ca_addr = ca.addr;
        Self {
            dir,
            ca: Some(ca),
            ca_addr,
        }
    }

    pub fn mesh_path(&self) -> PathBuf {
        self.dir.path().join("mesh.yaml")
    }

    pub fn root_ca(&self) -> PathBuf {
        self.dir.path().join("ca/root-cert.pem")
    }

    pub fn stop_ca(&mut self) {
        self.ca = None;
    }

    pub async fn restart_ca(&mut self) {
        self.ca = Some(start_ca(self.dir.path(), self.ca_addr).await);
    }

    /// Agent configuration: TTL `ttl`, quick retries, ephemeral ports.
    pub fn agent_config(&self, ttl: Duration) -> AgentConfig {
        agent_config(
            &self.mesh_path(),
            &self.root_ca(),
            &format!("localhost:{}", self.ca_addr.port()),
            ttl,
        )
    }
}

/// A started agent of `world` with certificates of `ttl` and a Workload API socket per workload
/// under the returned directory.
pub async fn agent_with_sockets(world: &World, ttl: Duration) -> (RunningAgent, PathBuf) {
    let sockets = world.dir.path().join("wl");
    let mut config = world.agent_config(ttl);
    config.delivery = zident_agent::workload_api::DeliveryConfig {
        socket_dir: Some(sockets.clone()),
        ..Default::default()
    };
    (start_agent(config).await, sockets)
}

pub fn agent_config(mesh: &Path, root_ca: &Path, ca_address: &str, ttl: Duration) -> AgentConfig {
    let ca = CaClientConfig {
        address: ca_address.to_string(),
        root_ca: root_ca.to_owned(),
        token: TokenSource::Literal(TOKEN.into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(10),
        poll_bundle: true,
    };
    let mut c = AgentConfig::new(NODE, mesh, ca);
    c.secret_ttl = ttl;
    c.renewal = RenewalPolicy {
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        ..RenewalPolicy::default()
    };
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    c.admin_addr = Some(any);
    c.metrics_addr = Some(any);
    c.readiness_addr = Some(any);
    c
}

pub async fn start_ca(dir: &Path, listen: std::net::SocketAddr) -> RunningCa {
    let mut c = zident_testkit::ca::ca_config(dir);
    c.listen = listen;
    c.refresh_hint = Duration::from_secs(1);
    // JWT-SVIDs short enough that a test sees one refreshed at half its life.
    c.jwt_ttl = Duration::from_secs(20);
    // The CA may be restarted on the same port right after stopping.
    zident_testkit::ca::start_ca(c).await
}

pub async fn start_agent(config: AgentConfig) -> RunningAgent {
    RunningAgent::start(config, None)
        .await
        .expect("agent starts")
}

pub use zident_testkit::eventually;

/// An agent of `world` with certificates of lifetime `ttl`, once every identity is Available.
pub async fn available_agent(world: &World, ttl: Duration) -> RunningAgent {
    let agent = start_agent(world.agent_config(ttl)).await;
    eventually(Duration::from_secs(30), "all Available", || {
        all_available(&agent)
    })
    .await;
    agent
}

pub fn state_of(agent: &RunningAgent, id: &SpiffeId) -> Option<zident_agent::IdentityStatus> {
    agent
        .manager
        .snapshot()
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
}

pub fn all_available(agent: &RunningAgent) -> bool {
    let snap = agent.manager.snapshot();
    !snap.is_empty()
        && snap
            .iter()
            .all(|(_, s)| matches!(s.state, CertState::Available(_)))
}

pub fn serial_of(agent: &RunningAgent, id: &SpiffeId) -> Option<String> {
    match state_of(agent, id)?.state {
        CertState::Available(c) => Some(c.serial_hex.clone()),
        _ => None,
    }
}

/// Captures this test process's logs (the agent's among them) at info.
pub fn logs() {
    zident_testkit::capture_logs("info");
}

/// Everything logged so far.
pub fn log_text() -> String {
    zident_testkit::captured()
}

/// `GET url` with curl: (status, body).
pub fn curl(url: &str) -> (u16, String) {
    zident_testkit::curl(&[url])
}
