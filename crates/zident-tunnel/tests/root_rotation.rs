//! Root rotation under traffic: the real CA and real agents on loopback, new tunneled
//! connections opened all the time between two nodes' workloads (certificates of 3 s), while
//! the CA's root goes through prepare → activate → retire, driven as `zident ca rotate` drives
//! it (on the data dir, the running CA picking the change up). No handshake and no connection
//! may fail; at the end every certificate chains to the new root and the old root is gone from
//! every agent's bundle. Also across a CA restart between prepare and activate, and for an
//! agent that was down during prepare and comes back with an out-of-date `CA_ROOT_CA`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{capture_logs, free_port, logged, socks_connect, tunnel_observed, until};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_agent::{AgentConfig, CaClientConfig, RunningAgent, TokenSource};
use zident_ca::dir_store;
use zident_ca::rotation::{self, Phase};
use zident_ca::{CaConfig, RunningCa, TtlPolicy};
use zident_identity::pem::certs_from_pem;
use zident_identity::{SpiffeId, TrustBundle, TrustDomain, verify_svid};
use zident_tunnel::Observer;
use zident_tunnel::RunningTunnel;

const TTL: Duration = Duration::from_secs(3);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

/// A mesh of three nodes: frontend on A, backend on B, extra on C.
fn mesh(dir: &Path, ip: impl Fn(u8) -> String) {
    let mesh = format!(
        "trustDomain: cluster.local\n\
nodes:\n- {{name: node-a, token: ta}}\n- {{name: node-b, token: tb}}\n- {{name: node-c, token: tc}}\n\
workloads:\n\
- {{uid: a, name: frontend, namespace: default, serviceAccount: frontend, node: node-a, workloadIps: ['{}'], protocol: HBONE}}\n\
- {{uid: b, name: backend, namespace: default, serviceAccount: backend, node: node-b, workloadIps: ['{}'], protocol: HBONE}}\n\
- {{uid: c, name: extra, namespace: default, serviceAccount: extra, node: node-c, workloadIps: ['{}'], protocol: HBONE}}\n",
        ip(1),
        ip(2),
        ip(3)
    );
    std::fs::write(dir.join("mesh.yaml"), mesh).unwrap();
}

fn ca_config(dir: &Path, listen: SocketAddr) -> CaConfig {
    let mut c = zident_testkit::ca::ca_config(dir);
    c.listen = listen;
    c.refresh_hint = Duration::from_secs(1);
    c.ttl = TtlPolicy {
        default_ttl: TTL,
        max_ttl: Duration::from_secs(4),
    };
    c.rotation.auto = false;
    c.rotation.activate_delay = Some(Duration::from_secs(2));
    c.rotation.retire_margin = Duration::from_secs(2);
    c.rotation.renewal_margin = Duration::from_secs(1);
    c
}

async fn start_agent(ca: &RunningCa, node: &str, token: &str, root_ca: PathBuf) -> RunningAgent {
    let dir = ca.root_cert_path.parent().unwrap().parent().unwrap();
    let client = CaClientConfig {
        address: format!("localhost:{}", ca.addr.port()),
        root_ca,
        token: TokenSource::Literal(token.into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(5),
        poll_bundle: true,
    };
    let mut c = AgentConfig::new(node, dir.join("mesh.yaml"), client);
    c.secret_ttl = TTL;
    (c.admin_addr, c.metrics_addr, c.readiness_addr) = (None, None, None);
    let a = RunningAgent::start(c, None).await.unwrap();
    until(&format!("{node} ready"), || a.manager.is_ready()).await;
    a
}

/// New tunneled connections from `from` to `to`, one after another on each of 4 tasks, plus
/// one long-lived tunnel that carries a message every 100 ms; every failure is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    async fn start(socks: SocketAddr, from: [u8; 4], to: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4u64 {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let message = format!("task {i} connection {n}\n");
                    let one = async {
                        let mut s = socks_connect(socks, from, to).await?;
                        s.write_all(message.as_bytes()).await?;
                        let mut back = vec![0u8; message.len()];
                        s.read_exact(&mut back).await?;
                        if back != message.as_bytes() {
                            return Err(std::io::Error::other("bytes changed on the way"));
                        }
                        Ok::<_, std::io::Error>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(10), one).await {
                        Ok(Ok(())) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => failures.lock().unwrap().push(format!("{message}: {e}")),
                        Err(_) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{message}: timed out")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        // The long-lived tunnel: opened once, kept across every phase.
        let mut long = socks_connect(socks, from, to).await.unwrap();
        let (stop2, failures2) = (stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let message = format!("long-lived message {n}\n");
                let mut back = vec![0u8; message.len()];
                let r = async {
                    long.write_all(message.as_bytes()).await?;
                    long.read_exact(&mut back).await
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(_)) if back == message.as_bytes() => {}
                    other => {
                        failures2
                            .lock()
                            .unwrap()
                            .push(format!("long-lived tunnel: {other:?}"));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
        Self {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn assert_no_failure(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "failed connections: {failures:#?}");
    }

    async fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.unwrap();
        }
        self.assert_no_failure();
        self.ok.load(Ordering::Relaxed)
    }
}

fn root_of(dir: &Path, generation: u32) -> CertificateDer<'static> {
    let pem =
        std::fs::read(dir_store::generation_dir(dir, generation).join("ca-cert.pem")).unwrap();
    certs_from_pem(&pem).unwrap().remove(0)
}

/// Whether `agent`'s current certificate for `who` chains to `root` alone.
fn chains_to(agent: &RunningAgent, who: &SpiffeId, root: &CertificateDer<'static>) -> bool {
    let Some(cert) = agent.manager.peek(who) else {
        return false;
    };
    let mut only = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
    only.add_root(root.clone()).unwrap();
    verify_svid(&cert.chain, &only, SystemTime::now()).is_ok()
}

fn roots(agent: &RunningAgent) -> Vec<CertificateDer<'static>> {
    agent.manager.trust().bundle().roots().to_vec()
}

/// Runs `phase` as `zident ca rotate` does, once it is safe.
async fn rotate(ca_dir: &Path, phase: Phase) -> rotation::RotationState {
    common::until_safe(ca_dir, phase).await;
    common::apply_phase(ca_dir, phase).await.unwrap()
}

/// Two nodes with tunnels, and traffic between them.
struct World {
    dir: tempfile::TempDir,
    ca: Option<RunningCa>,
    a: RunningAgent,
    b: RunningAgent,
    tunnels: (RunningTunnel, RunningTunnel),
    observers: (Arc<Observer>, Arc<Observer>),
    ip: [[u8; 4]; 3],
    hbone_port: u16,
    echo: SocketAddr,
}

async fn world(subnet: u8) -> World {
    let ip = [
        [127, subnet, 0, 1],
        [127, subnet, 0, 2],
        [127, subnet, 0, 3],
    ];
    let hbone_port = free_port(&ip);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), |i| {
        let [a, b, c, _] = ip[0];
        format!("{a}.{b}.{c}.{i}")
    });
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port(&[[127, 0, 0, 1]])));
    let ca = RunningCa::start(ca_config(dir.path(), listen))
        .await
        .unwrap();
    let root = ca.root_cert_path.clone();
    let a = start_agent(&ca, "node-a", "ta", root.clone()).await;
    let b = start_agent(&ca, "node-b", "tb", root).await;
    let observers = (Observer::new(), Observer::new());
    let ta = tunnel_observed(&a, "node-a", true, hbone_port, observers.0.clone()).await;
    let tb = tunnel_observed(&b, "node-b", false, hbone_port, observers.1.clone()).await;
    let echo = common::echo(SocketAddr::from((ip[1], 0))).await;
    World {
        dir,
        ca: Some(ca),
        a,
        b,
        tunnels: (ta, tb),
        observers,
        ip,
        hbone_port,
        echo,
    }
}

impl World {
    fn ca(&self) -> &RunningCa {
        self.ca.as_ref().unwrap()
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    async fn traffic(&self) -> Traffic {
        let t = Traffic::start(self.tunnels.0.socks5_addr.unwrap(), self.ip[0], self.echo).await;
        let before = t.ok();
        until("traffic flows", || t.ok() > before + 20).await;
        t
    }

    /// After a whole rotation: no tunnel failure on either side, every certificate from the
    /// new root, and the old root in no bundle. With `ca_restarted`, renewals that found the
    /// CA down are allowed (but no TLS failure towards it).
    async fn assert_rotated(
        &self,
        old: &CertificateDer<'static>,
        new: &CertificateDer<'static>,
        ca_restarted: bool,
    ) {
        let (frontend, backend) = (id("frontend"), id("backend"));
        until("both agents drop the retired root", || {
            !roots(&self.a).contains(old) && !roots(&self.b).contains(old)
        })
        .await;
        assert_eq!(roots(&self.a), vec![new.clone()]);
        assert_eq!(roots(&self.b), vec![new.clone()]);
        assert!(chains_to(&self.a, &frontend, new));
        assert!(chains_to(&self.b, &backend, new));
        for o in [&self.observers.0, &self.observers.1] {
            let text = common::metrics_text(o);
            assert!(!text.contains("zident_tunnel_failures_total{"), "{text}");
        }
        for agent in [&self.a, &self.b] {
            let failed: Vec<_> = agent
                .manager
                .events()
                .into_iter()
                .filter(|e| e.outcome != zident_agent::EventOutcome::Completed)
                .filter(|e| {
                    let outage = e.detail.starts_with("CA unreachable")
                        && !e.detail.contains("certificate")
                        && !e.detail.contains("Issuer");
                    !(ca_restarted && outage)
                })
                .collect();
            assert!(failed.is_empty(), "{failed:?}");
        }
    }
}

/// prepare: both agents trust both roots; activate: both identities renew from the new root.
async fn prepare_and_activate(w: &World, old: &CertificateDer<'static>) -> CertificateDer<'static> {
    let state = rotate(&w.ca_dir(), Phase::Prepare).await;
    assert_eq!(state.sequence, 2);
    let new = root_of(&w.ca_dir(), 2);
    until("both agents trust the new root", || {
        roots(&w.a).contains(&new) && roots(&w.b).contains(&new)
    })
    .await;
    // Signing has not moved: certificates still come from the old root.
    assert!(chains_to(&w.a, &id("frontend"), old));
    new
}

async fn activate_and_retire(w: &World, new: &CertificateDer<'static>) {
    rotate(&w.ca_dir(), Phase::Activate).await;
    until("both identities renew from the new root", || {
        chains_to(&w.a, &id("frontend"), new) && chains_to(&w.b, &id("backend"), new)
    })
    .await;
    let state = rotate(&w.ca_dir(), Phase::Retire).await;
    assert_eq!((state.active, state.previous, state.sequence), (2, None, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rotation_under_traffic_fails_nothing() {
    let w = world(61).await;
    let old = root_of(&w.ca_dir(), 1);
    let traffic = w.traffic().await;
    let new = prepare_and_activate(&w, &old).await;
    activate_and_retire(&w, &new).await;
    w.assert_rotated(&old, &new, false).await;
    let before = traffic.ok();
    until("traffic flows after the retire", || {
        traffic.ok() > before + 20
    })
    .await;
    let done = traffic.finish().await;
    assert!(done > 100, "only {done} connections");
    // The CA's published bundle file holds the new root alone.
    let published = certs_from_pem(&std::fs::read(&w.ca().root_cert_path).unwrap()).unwrap();
    assert_eq!(published, vec![new]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_restart_between_prepare_and_activate_resumes_the_rotation() {
    let mut w = world(62).await;
    let old = root_of(&w.ca_dir(), 1);
    let traffic = w.traffic().await;
    let new = prepare_and_activate(&w, &old).await;

    // Restart the CA on the same address: it comes back in the prepared phase.
    let listen = w.ca().addr;
    w.ca = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let restarted = loop {
        match RunningCa::start(ca_config(w.dir.path(), listen)).await {
            Ok(ca) => break ca,
            // The old listener may take a moment to close.
            Err(e) => assert!(Instant::now() < deadline, "CA restart: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.ca = Some(restarted);
    let bundle = w.ca().state.authority().bundle().clone();
    assert_eq!(bundle.sequence(), 2);
    assert_eq!(bundle.roots().len(), 2);

    activate_and_retire(&w, &new).await;
    w.assert_rotated(&old, &new, true).await;
    traffic.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_down_during_prepare_recovers_when_restarted() {
    capture_logs("zident::identity=info");
    let w = world(63).await;
    let old = root_of(&w.ca_dir(), 1);
    // Node C's operator copied root-cert.pem once; it will not be updated.
    let stale = w.dir.path().join("c-root-cert.pem");
    std::fs::copy(&w.ca().root_cert_path, &stale).unwrap();
    let c = start_agent(w.ca(), "node-c", "tc", stale.clone()).await;
    drop(c);

    let traffic = w.traffic().await;
    let new = prepare_and_activate(&w, &old).await;
    rotate(&w.ca_dir(), Phase::Activate).await;
    until("A and B renew from the new root", || {
        chains_to(&w.a, &id("frontend"), &new) && chains_to(&w.b, &id("backend"), &new)
    })
    .await;

    // C comes back knowing only the old root: it reaches the CA (whose serving certificate the
    // old root still signs during the overlap), learns the new root, says so, and gets a
    // certificate from it.
    let c = start_agent(w.ca(), "node-c", "tc", stale).await;
    logged("the CA's trust bundle differs from CA_ROOT_CA").await;
    until("C's identity renews from the new root", || {
        chains_to(&c, &id("extra"), &new)
    })
    .await;
    assert!(roots(&c).contains(&new));

    // C's tunnel works with the others: A reaches C's workload.
    let tc = tunnel_observed(&c, "node-c", false, w.hbone_port, Observer::new()).await;
    let c_echo = common::echo(SocketAddr::from((w.ip[2], 0))).await;
    let mut s = socks_connect(w.tunnels.0.socks5_addr.unwrap(), w.ip[0], c_echo)
        .await
        .unwrap();
    s.write_all(b"hello C\n").await.unwrap();
    let mut back = [0u8; 8];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello C\n");

    // Nobody else noticed.
    let state = rotate(&w.ca_dir(), Phase::Retire).await;
    assert_eq!(state.previous, None);
    w.assert_rotated(&old, &new, false).await;
    until("C drops the retired root too", || !roots(&c).contains(&old)).await;
    traffic.finish().await;
    drop(tc);
}
