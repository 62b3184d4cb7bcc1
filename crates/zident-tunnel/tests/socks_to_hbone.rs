//! The whole path with a client nobody here wrote: `curl --socks5` from a workload address,
//! through outbound (SOCKS5 → HBONE mTLS) and inbound (HBONE → workload), to an HTTP server.
//! Refusals: an unknown source, a destination whose server presents another identity, and a
//! policy DENY.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_identity::{
    CertificateProvider, ProviderError, SpiffeId, TrustBundle, TrustDomain, WorkloadCertificate,
    WorkloadKey, profile,
};
use zident_mesh::MeshFile;
use zident_tunnel::inbound::{Inbound, LocalTarget};
use zident_tunnel::outbound::{Directory, Outbound, Route};
use zident_tunnel::policy::Authorizer;
use zident_tunnel::socks5::Target;

fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/{path}")).unwrap()
}

struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    fn new() -> Self {
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
    fn issue(&self, id: &SpiffeId) -> Arc<WorkloadCertificate> {
        let key = WorkloadKey::generate().unwrap();
        let now = SystemTime::now();
        let params = profile::leaf_params(
            id,
            now,
            Duration::from_secs(600),
            now + Duration::from_secs(86400),
        )
        .unwrap();
        let (nb, na) = (params.not_before.into(), params.not_after.into());
        let cert = params
            .signed_by(
                key.key_pair(),
                &Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap(),
            )
            .unwrap();
        let serial = zident_identity::check_leaf(cert.der()).unwrap().serial_hex;
        Arc::new(WorkloadCertificate::new(
            id.clone(),
            vec![cert.der().clone()],
            vec![],
            nb,
            na,
            serial,
            now,
            key,
        ))
    }
    fn bundle(&self) -> Arc<TrustBundle> {
        let mut b = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
        b.add_root(self.cert.der().clone()).unwrap();
        Arc::new(b)
    }
}

/// Certificates by identity, as the agent would hand them out.
struct Certs(Vec<(SpiffeId, Arc<WorkloadCertificate>)>);

impl CertificateProvider for Certs {
    async fn certificate(
        &self,
        id: &SpiffeId,
        _wait: Duration,
    ) -> Result<Arc<WorkloadCertificate>, ProviderError> {
        self.0
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| ProviderError::UnknownIdentity(id.clone()))
    }
}

struct Mesh {
    http: SocketAddr,
    inbound: SocketAddr,
}

impl Directory for Mesh {
    fn source(&self, ip: IpAddr) -> Option<SpiffeId> {
        (ip == IpAddr::from([127, 0, 0, 2])).then(|| id("ns/default/sa/frontend"))
    }
    fn route(&self, target: &Target) -> Option<Route> {
        let to_backend = |expected| Route {
            target: self.http,
            hbone: Some(self.inbound),
            expected,
        };
        match target {
            Target::Addr(a) if *a == self.http => {
                Some(to_backend(vec![id("ns/default/sa/backend")]))
            }
            Target::Host(h, 80) if h == "backend.default.svc.cluster.local" => {
                Some(to_backend(vec![id("ns/default/sa/backend")]))
            }
            // A destination whose identity is payments, but whose address is backend's.
            Target::Host(h, 80) if h == "payments.default.svc.cluster.local" => {
                Some(to_backend(vec![id("ns/default/sa/payments")]))
            }
            _ => None,
        }
    }
}

/// A minimal HTTP workload: answers every request with "hello from backend".
async fn http_workload(ip: [u8; 4]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
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
                let body = "hello from backend";
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    addr
}

fn authorizer(policies: &str) -> Arc<Authorizer> {
    let mesh = MeshFile::parse(
        Path::new("m.yaml"),
        &format!("trustDomain: cluster.local\npolicies:\n{policies}"),
    )
    .unwrap();
    Arc::new(Authorizer::new(&mesh).unwrap())
}

/// Everything the tunnel logs in this test.
fn logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("zident::tunnel=info")
            .with_ansi(false)
            .with_writer(move || Writer(w.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct Writer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until the logs contain `needle`.
async fn logged(needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn curl(args: Vec<String>) -> (bool, String) {
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_socks5_and_hbone_reaches_the_workload() {
    logs();
    let ca = Arc::new(Ca::new());
    let bundle = ca.bundle();
    let backend_cert = ca.issue(&id("ns/default/sa/backend"));
    let frontend_cert = ca.issue(&id("ns/default/sa/frontend"));

    // Workload B and its node's inbound, on B's address.
    let http = http_workload([127, 0, 0, 3]).await;
    let policies = Arc::new(RwLock::new(authorizer("  []\n")));
    let p = policies.clone();
    let b = bundle.clone();
    let inbound = Arc::new(Inbound::new(
        id("ns/default/sa/backend"),
        Arc::new(move || Some(backend_cert.clone())),
        Arc::new(move || b.clone()),
        Arc::new(|ip: IpAddr| {
            (ip == IpAddr::from([127, 0, 0, 3])).then(|| LocalTarget {
                id: id("ns/default/sa/backend"),
                namespace: "default".into(),
                policies: vec![],
            })
        }),
        Arc::new(move || p.read().unwrap().clone()),
    ));
    let inbound_listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let inbound_addr = inbound_listener.local_addr().unwrap();
    tokio::spawn(inbound.serve(inbound_listener));

    // Node A's outbound.
    let b = bundle.clone();
    let outbound = Arc::new(Outbound::new(
        Arc::new(Certs(vec![(id("ns/default/sa/frontend"), frontend_cert)])),
        Arc::new(Mesh {
            http,
            inbound: inbound_addr,
        }),
        Arc::new(move || b.clone()),
    ));
    let socks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socks_addr = socks.local_addr().unwrap();
    tokio::spawn(outbound.serve_socks5(socks));
    let proxy = socks_addr.to_string();

    // From workload A's address, by IP and by service name; twice, over the pooled connection.
    for _ in 0..2 {
        let (ok, out) = curl(vec![
            "--interface".into(),
            "127.0.0.2".into(),
            "--socks5".into(),
            proxy.clone(),
            format!("http://{http}/"),
        ])
        .await;
        assert!(ok, "{out}");
        assert_eq!(out, "hello from backend");
    }
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5-hostname".into(),
        proxy.clone(),
        "http://backend.default.svc.cluster.local/".into(),
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(out, "hello from backend");

    // Both ends logged the tunnel with both principals.
    logged("inbound connection").await;
    logged("src=spiffe://cluster.local/ns/default/sa/frontend dst=spiffe://cluster.local/ns/default/sa/backend").await;
    logged("outbound connection").await;

    // An unknown source address is refused.
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.9".into(),
        "--socks5".into(),
        proxy.clone(),
        format!("http://{http}/"),
    ])
    .await;
    assert!(!ok, "{out}");
    logged("reason=\"unknown_source\"").await;

    // The server presents backend's SVID where payments was expected: refused.
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5-hostname".into(),
        proxy.clone(),
        "http://payments.default.svc.cluster.local/".into(),
    ])
    .await;
    assert!(!ok, "{out}");
    logged("reason=\"identity_mismatch\"").await;

    // A DENY policy at the destination: refused (401 on the wire, "not allowed" to SOCKS).
    *policies.write().unwrap() = authorizer(
        "- name: no-frontend\n  namespace: default\n  scope: Namespace\n  action: Deny\n  \
rules:\n  - - - principals: [{Exact: \"cluster.local/ns/default/sa/frontend\"}]\n",
    );
    let (ok, out) = curl(vec![
        "--interface".into(),
        "127.0.0.2".into(),
        "--socks5".into(),
        proxy,
        format!("http://{http}/"),
    ])
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("SOCKS5"), "{out}");
    logged("reason=\"policy_denied\"").await;
}
