//! What the tunnel tests share: a test CA issuing SVIDs, mesh policies, free ports, small
//! workloads (echo, HTTP), curl, and real agents with their tunnels.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rcgen::{Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use zident_agent::{AgentConfig, CaClientConfig, RunningAgent, TokenSource};
use zident_ca::RunningCa;
use zident_identity::{
    CertState, CertificateProvider, ProviderError, SpiffeId, TrustBundle, TrustDomain,
    WorkloadCertificate, WorkloadKey, profile,
};
use zident_mesh::MeshFile;
use zident_tunnel::Observer;
use zident_tunnel::{Authorizer, Destinations, LocalTarget};
use zident_tunnel::{RunningTunnel, TunnelConfig, start};

/// `spiffe://cluster.local/<path>`.
pub fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/{path}")).unwrap()
}

/// A root for cluster.local that issues SVIDs of our profile.
pub struct Ca {
    key: KeyPair,
    pub cert: rcgen::Certificate,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = profile::root_params(
            &TrustDomain::new("cluster.local").unwrap(),
            SystemTime::now(),
            Duration::from_secs(86400),
        )
        .self_signed(&key)
        .unwrap();
        Self { key, cert }
    }

    /// A certificate for `path`, as the agent holds one.
    pub fn issue(&self, path: &str) -> Arc<WorkloadCertificate> {
        let id = id(path);
        let key = WorkloadKey::generate().unwrap();
        let now = SystemTime::now();
        let params = profile::leaf_params(
            &id,
            now,
            Duration::from_secs(600),
            now + Duration::from_secs(86400),
        )
        .unwrap();
        let (nb, na) = (params.not_before.into(), params.not_after.into());
        let issuer = Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let serial = zident_identity::check_leaf(cert.der()).unwrap().serial_hex;
        Arc::new(WorkloadCertificate::new(
            id,
            vec![cert.der().clone()],
            vec![],
            nb,
            na,
            serial,
            now,
            key,
        ))
    }

    /// A certificate for `path`, as rustls takes one.
    pub fn rustls_svid(
        &self,
        path: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let c = self.issue(path);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key().pkcs8_der().to_vec()));
        (c.chain.clone(), key)
    }

    /// A bundle of this root alone.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        let mut b = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
        b.add_root(self.cert.der().clone()).unwrap();
        Arc::new(b)
    }
}

/// Certificates by identity and the trust bundle, as the agent would hand them out; they never
/// change, so the watches hold their one value (the senders live as long as the provider).
pub struct Certs {
    certs: Vec<(SpiffeId, tokio::sync::watch::Sender<CertState>)>,
    bundle: tokio::sync::watch::Sender<Arc<zident_identity::TrustBundle>>,
}

impl Certs {
    pub fn new(
        certs: Vec<(SpiffeId, Arc<WorkloadCertificate>)>,
        bundle: Arc<zident_identity::TrustBundle>,
    ) -> Self {
        Self {
            certs: certs
                .into_iter()
                .map(|(id, c)| (id, tokio::sync::watch::Sender::new(CertState::Available(c))))
                .collect(),
            bundle: tokio::sync::watch::Sender::new(bundle),
        }
    }
}

impl Certs {
    /// Replaces `id`'s certificate, as a renewal would.
    pub fn replace(&self, id: &SpiffeId, cert: Arc<WorkloadCertificate>) {
        if let Some((_, c)) = self.certs.iter().find(|(i, _)| i == id) {
            c.send_replace(CertState::Available(cert));
        }
    }
}

impl CertificateProvider for Certs {
    async fn certificate(
        &self,
        id: &SpiffeId,
        _wait: Duration,
    ) -> Result<Arc<WorkloadCertificate>, ProviderError> {
        self.current(id)
            .ok_or_else(|| ProviderError::UnknownIdentity(id.clone()))
    }

    fn current(&self, id: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        match &*self.watch(id)?.borrow() {
            CertState::Available(c) => Some(c.clone()),
            _ => None,
        }
    }

    fn bundle(&self) -> Arc<zident_identity::TrustBundle> {
        self.bundle.borrow().clone()
    }

    fn watch(&self, id: &SpiffeId) -> Option<tokio::sync::watch::Receiver<CertState>> {
        self.certs
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, c)| c.subscribe())
    }

    fn watch_bundle(&self) -> tokio::sync::watch::Receiver<Arc<zident_identity::TrustBundle>> {
        self.bundle.subscribe()
    }
}

/// An inbound listener's local workloads (fixed) and policies (replaceable), as a node's live
/// mesh would give them.
pub struct Locals {
    targets: Vec<(IpAddr, LocalTarget)>,
    policies: std::sync::RwLock<Arc<Authorizer>>,
}

impl Locals {
    /// The workloads at these addresses, under `policies`.
    pub fn new(targets: Vec<(IpAddr, LocalTarget)>, policies: Arc<Authorizer>) -> Self {
        Self {
            targets,
            policies: std::sync::RwLock::new(policies),
        }
    }

    /// Puts `policies` in force for new requests.
    pub fn set_policies(&self, policies: Arc<Authorizer>) {
        *self.policies.write().unwrap() = policies;
    }
}

impl Destinations for Locals {
    fn local_target(&self, ip: IpAddr) -> Option<LocalTarget> {
        self.targets
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, t)| t.clone())
    }

    fn authorizer(&self) -> Arc<Authorizer> {
        self.policies.read().unwrap().clone()
    }
}

/// Policies from the YAML of a mesh file's `policies:` list.
pub fn authorizer(policies: &str) -> Arc<Authorizer> {
    let yaml = format!(
        "trustDomain: cluster.local\nnodes: [{{name: n, token: t}}]\npolicies:\n{policies}"
    );
    let mesh = MeshFile::parse(Path::new("m.yaml"), &yaml).unwrap();
    Arc::new(Authorizer::new(&mesh))
}

/// A port that can be listened on at every one of `ips`, probed as the listeners bind (with
/// SO_REUSEADDR, so ports held only by TIME_WAIT connections count as free).
pub fn free_port(ips: &[[u8; 4]]) -> u16 {
    (0..100)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let held: Vec<tokio::net::TcpListener> = ips
                .iter()
                .map(|ip| {
                    let s = TcpSocket::new_v4()?;
                    s.set_reuseaddr(true)?;
                    s.bind(SocketAddr::from((*ip, port)))?;
                    s.listen(1)
                })
                .collect::<Result<_, std::io::Error>>()
                .ok()?;
            drop(held);
            Some(port)
        })
        .expect("a free port")
}

/// A TCP echo workload.
pub async fn echo(addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    bound
}

/// An HTTP workload answering every request with `body`.
pub async fn http_workload(addr: SocketAddr, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
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
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    bound
}

/// Runs curl with `args`: (an answer came, body + curl's messages).
pub async fn curl(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = zident_testkit::curl(&args);
        (code != 0, out)
    })
    .await
    .unwrap()
}

/// A real agent for `node` of `dir/mesh.yaml`, once all its identities have certificates.
pub async fn agent(
    dir: &Path,
    ca: &RunningCa,
    node: &str,
    token: &str,
    ttl: Duration,
) -> RunningAgent {
    let mut c = agent_config(dir, ca, node, token);
    c.secret_ttl = ttl;
    (c.admin_addr, c.metrics_addr, c.readiness_addr) = (None, None, None);
    start_agent(c).await
}

/// The configuration of an agent for `node` of `dir/mesh.yaml` against `ca`.
pub fn agent_config(dir: &Path, ca: &RunningCa, node: &str, token: &str) -> AgentConfig {
    let client = CaClientConfig {
        address: format!("localhost:{}", ca.addr.port()),
        root_ca: ca.root_cert_path.clone(),
        token: TokenSource::Literal(token.into()),
        cluster_id: "Kubernetes".into(),
        request_timeout: Duration::from_secs(10),
        poll_bundle: true,
    };
    AgentConfig::new(node, dir.join("mesh.yaml"), client)
}

/// Starts an agent and waits until all its identities have certificates.
pub async fn start_agent(c: AgentConfig) -> RunningAgent {
    let node = c.node.clone();
    let a = RunningAgent::start(c, None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.manager.is_ready() {
        assert!(Instant::now() < deadline, "{node} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a
}

/// The tunnel of an agent's node, as `zident agent` starts it (no capture listener).
pub async fn tunnel(a: &RunningAgent, node: &str, socks: bool, port: u16) -> RunningTunnel {
    tunnel_observed(a, node, socks, port, Observer::new()).await
}

/// [`tunnel`], reporting to `observer`.
pub async fn tunnel_observed(
    a: &RunningAgent,
    node: &str,
    socks: bool,
    port: u16,
    observer: Arc<Observer>,
) -> RunningTunnel {
    let config = TunnelConfig {
        socks5_addr: socks.then(|| "127.0.0.1:0".parse().unwrap()),
        outbound_addr: None,
        inbound_port: port,
        inbound_addr: None,
        transparent_source: false,
        skew_tolerance: zident_tunnel::SKEW_TOLERANCE,
    };
    tunnel_with(a, node, config, observer).await
}

/// The tunnel of an agent's node with `config`, reporting to `observer`.
pub async fn tunnel_with(
    a: &RunningAgent,
    node: &str,
    config: TunnelConfig,
    observer: Arc<Observer>,
) -> RunningTunnel {
    assert_eq!(
        a.mesh.borrow().node(),
        node,
        "the agent's view is of this node"
    );
    start(
        config,
        a.manager.clone(),
        a.mesh.clone(),
        observer,
        a.connections.clone(),
    )
    .await
    .unwrap()
}

/// The real CA on `dir/mesh.yaml`, on an ephemeral port.
pub async fn start_ca(dir: &Path) -> RunningCa {
    zident_testkit::ca::start_ca(zident_testkit::ca::ca_config(dir)).await
}

/// A SOCKS5 CONNECT from `from` through `proxy` to `target`; the open stream once the proxy
/// answered success.
pub async fn socks_connect(
    proxy: SocketAddr,
    from: [u8; 4],
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let mut s = socket.connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting).await?;
    let SocketAddr::V4(v4) = target else {
        return Err(std::io::Error::other("IPv4 targets only"));
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS5 reply {}", reply[1])));
    }
    Ok(s)
}

/// Waits until `done` holds, failing with `what` after 20 s.
pub async fn until(what: &str, done: impl FnMut() -> bool) {
    zident_testkit::eventually(Duration::from_secs(20), what, done).await
}

/// The Prometheus text of an observer's metrics.
pub fn metrics_text(observer: &Observer) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    observer.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[allow(unused_imports)]
pub use zident_testkit::{capture_logs, captured, logged};

/// Takes root rotation step `phase` on the CA data dir `dir`, as `zident ca rotate` does (a
/// running CA picks it up), refusing what is not safe yet.
pub async fn apply_phase(
    dir: &Path,
    phase: zident_ca::rotation::Phase,
) -> Result<zident_ca::rotation::RotationState, String> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        zident_ca::dir_store::apply(
            &dir,
            phase,
            SystemTime::now(),
            false,
            Duration::from_secs(3600),
        )
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

/// Waits until `phase` is safe by every rule the CA applies, as `zident ca status` reports it:
/// for activation, the bundle rule and every client having renewed since prepare (from the
/// CA's ledger).
pub async fn until_safe(dir: &Path, phase: zident_ca::rotation::Phase) {
    use zident_ca::dir_store;
    use zident_ca::rotation::{self, Phase};
    loop {
        let state = dir_store::read_state(dir).unwrap().unwrap();
        let now = zident_identity::unix_seconds(SystemTime::now());
        let safe = match phase {
            Phase::Prepare => 0,
            Phase::Activate => {
                rotation::activation_safe_at(&state, &zident_ca::ledger::load(dir), now).unwrap()
            }
            Phase::Retire => state.retire_after.unwrap(),
        };
        if now >= safe {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TLS 1.3 handshake to the HBONE port `addr` presenting `chain`/`key`, expecting the server
/// to be `expected` under `agent`'s trust bundle, then one read: `Err` when the server refused
/// this end (in TLS 1.3 the client learns it on its first read).
pub async fn present_to(
    agent: &RunningAgent,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    expected: &str,
    addr: SocketAddr,
) -> std::io::Result<usize> {
    let m = agent.manager.clone();
    let config = rustls::ClientConfig::builder_with_provider(zident_tunnel::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(zident_tunnel::SpiffeServerVerifier::new(
            Arc::new(move || m.trust().bundle()),
            vec![id(expected)],
        )))
        .with_client_auth_cert(chain, key)
        .map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))?
}
