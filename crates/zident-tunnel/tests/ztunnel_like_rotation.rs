//! Root rotation is safe for clients that never read `/bundle`. ztunnel and istio-agent learn
//! their trust roots only from `CreateCertificate` responses (the roots at the end of
//! `cert_chain`), at their own renewal: half their certificate's life. Two such clients, written
//! here to behave exactly so (no bundle endpoint, trust replaced by each response's roots,
//! renewal at half-life), carry mutual-TLS traffic to each other through prepare → activate →
//! retire of the real CA. Activation is refused as too early while they still hold certificates
//! issued before prepare, and once it is allowed no handshake fails.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prost_types::{Struct, Value, value::Kind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zident_ca::dir_store;
use zident_ca::rotation::{self, Phase};
use zident_ca::{RunningCa, TtlPolicy};
use zident_identity::pem::certs_from_pem;
use zident_identity::{SpiffeId, TrustBundle, TrustDomain, WorkloadKey, check_leaf, verify_svid};
use zident_proto::istio_ca::IstioCertificateRequest;
use zident_proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use zident_tunnel::{SpiffeClientVerifier, SpiffeServerVerifier, crypto_provider};

const TTL: Duration = Duration::from_secs(10);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

/// What a ztunnel-like client holds: its certificate and key, and the roots of the last
/// response, which are all it trusts.
struct Held {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<TrustBundle>,
    not_before: SystemTime,
    not_after: SystemTime,
}

struct Client {
    id: SpiffeId,
    ca: String,
    root_ca: PathBuf,
    held: RwLock<Arc<Held>>,
}

impl Client {
    /// One CreateCertificate as ztunnel sends it (node token, ImpersonatedIdentity). The CA's
    /// TLS is checked with the current root-cert.pem, as a mounted CA_ROOT_CA file would be.
    async fn fetch(id: &SpiffeId, ca: &str, root_ca: &Path) -> Held {
        let key = WorkloadKey::generate().unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(root_ca).unwrap()))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{ca}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: key.csr_pem(id).unwrap(),
            validity_duration: TTL.as_secs() as i64,
            metadata: Some(Struct {
                fields: [(
                    "ImpersonatedIdentity".to_string(),
                    Value {
                        kind: Some(Kind::StringValue(id.to_string())),
                    },
                )]
                .into(),
            }),
        });
        req.metadata_mut()
            .insert("authorization", "Bearer tn".parse().unwrap());
        let chain = IstioCertificateServiceClient::new(channel)
            .create_certificate(req)
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        // Leaf first; the last element holds the roots (possibly several).
        let leaf = certs_from_pem(chain[0].as_bytes()).unwrap();
        let mut roots = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
        for r in certs_from_pem(chain.last().unwrap().as_bytes()).unwrap() {
            roots.add_root(r).unwrap();
        }
        let info = check_leaf(&leaf[0]).unwrap();
        Held {
            chain: leaf,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
            roots: Arc::new(roots),
            not_before: info.not_before,
            not_after: info.not_after,
        }
    }

    async fn start(id: SpiffeId, ca: &RunningCa) -> Arc<Self> {
        let (addr, root_ca) = (
            format!("127.0.0.1:{}", ca.addr.port()),
            ca.root_cert_path.clone(),
        );
        let held = Self::fetch(&id, &addr, &root_ca).await;
        let c = Arc::new(Self {
            id,
            ca: addr,
            root_ca,
            held: RwLock::new(Arc::new(held)),
        });
        // Renew at half-life, forever.
        let me = c.clone();
        tokio::spawn(async move {
            loop {
                let h = me.held();
                let half =
                    h.not_before + h.not_after.duration_since(h.not_before).unwrap_or_default() / 2;
                tokio::time::sleep(half.duration_since(SystemTime::now()).unwrap_or_default())
                    .await;
                let next = Self::fetch(&me.id, &me.ca, &me.root_ca).await;
                *me.held.write().unwrap() = Arc::new(next);
            }
        });
        c
    }

    fn held(&self) -> Arc<Held> {
        self.held.read().unwrap().clone()
    }

    fn bundle(self: &Arc<Self>) -> zident_tunnel::BundleSource {
        let me = self.clone();
        Arc::new(move || me.held().roots.clone())
    }
}

/// One connection from `client` to `server` (listening at `addr`), each side presenting its
/// current certificate and trusting only its own roots-from-responses.
async fn one_connection(
    server: &Arc<Client>,
    client: &Arc<Client>,
    listener: &tokio::net::TcpListener,
) -> Result<(), String> {
    let s = server.held();
    let mut sc = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(server.bundle())))
        .with_single_cert(s.chain.clone(), s.key.clone_key())
        .unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec()];
    let c = client.held();
    let cc = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            client.bundle(),
            vec![server.id.clone()],
        )))
        .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = async {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(sc))
            .accept(tcp)
            .await
            .map_err(|e| format!("server side: {e}"))?;
        let mut b = [0u8; 4];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&b).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())
    };
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
            .connect(ServerName::try_from("a.hbone").unwrap(), tcp)
            .await
            .map_err(|e| format!("client side: {e}"))?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 4];
        tls.read_exact(&mut b)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(())
    };
    let (a, c) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, connect)
    })
    .await
    .map_err(|_| "timed out".to_string())?;
    a.and(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_learn_roots_only_from_responses_never_fail_through_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "trustDomain: cluster.local\nnodes:\n- {name: node-z, token: tn}\n\
workloads:\n\
- {uid: a, name: a, namespace: default, serviceAccount: a, node: node-z, workloadIps: ['127.0.5.2']}\n\
- {uid: b, name: b, namespace: default, serviceAccount: b, node: node-z, workloadIps: ['127.0.5.3']}\n",
    )
    .unwrap();
    let mut config = zident_testkit::ca::ca_config(dir.path());
    config.refresh_hint = Duration::from_secs(1);
    config.ttl = TtlPolicy {
        default_ttl: TTL,
        max_ttl: TTL,
    };
    config.rotation.auto = false;
    config.rotation.activate_delay = Some(Duration::from_secs(1));
    config.rotation.retire_margin = Duration::from_secs(1);
    config.rotation.renewal_margin = Duration::from_secs(1);
    let ca = RunningCa::start(config).await.unwrap();
    let ca_dir = dir.path().join("ca");

    let a = Client::start(id("a"), &ca).await;
    let b = Client::start(id("b"), &ca).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    one_connection(&a, &b, &listener).await.unwrap();

    // Traffic, b → a, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let traffic = {
        let (a, b, stop, ok, failures) = (
            a.clone(),
            b.clone(),
            stop.clone(),
            ok.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one_connection(&a, &b, &listener).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Prepare right after both renewed, so that both still hold pre-prepare certificates
    // when the bundle rule is met.
    common::apply_phase(&ca_dir, Phase::Prepare).await.unwrap();
    let state = dir_store::read_state(&ca_dir).unwrap().unwrap();
    let activate_after = state.activate_after.unwrap();
    while zident_identity::unix_seconds(SystemTime::now()) < activate_after {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The bundle rule alone would allow it; the clients still wait: refused, with the count.
    let waiting = rotation::clients_wait(
        &state,
        &zident_ca::ledger::load(&ca_dir),
        zident_identity::unix_seconds(SystemTime::now()),
    );
    assert_eq!(
        waiting.len(),
        2,
        "a and b hold pre-prepare certificates: {waiting:?}"
    );
    let refused = common::apply_phase(&ca_dir, Phase::Activate)
        .await
        .unwrap_err();
    assert!(
        refused.contains("too early: 2 identities") && refused.contains("have not renewed since"),
        "{refused}"
    );
    // Both ztunnel-like clients renew at half-life and so learn the new root.
    common::until_safe(&ca_dir, Phase::Activate).await;
    assert_eq!(a.held().roots.roots().len(), 2, "a trusts both roots");
    assert_eq!(b.held().roots.roots().len(), 2, "b trusts both roots");
    common::apply_phase(&ca_dir, Phase::Activate).await.unwrap();
    // New certificates are signed under generation 2.
    let gen2 = certs_from_pem(&std::fs::read(ca_dir.join("roots/2/ca-cert.pem")).unwrap()).unwrap();
    let mut only_gen2 = TrustBundle::new(TrustDomain::new("cluster.local").unwrap());
    only_gen2.add_root(gen2[0].clone()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while verify_svid(&a.held().chain, &only_gen2, SystemTime::now()).is_err()
        || verify_svid(&b.held().chain, &only_gen2, SystemTime::now()).is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no generation-2 certificates"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::until_safe(&ca_dir, Phase::Retire).await;
    common::apply_phase(&ca_dir, Phase::Retire).await.unwrap();
    // Both renew once more and trust the new root alone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.held().roots.roots().len() != 1 || b.held().roots.roots().len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old root never left the responses"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let more = ok.load(Ordering::Relaxed) + 20;
    while ok.load(Ordering::Relaxed) < more {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "traffic ran");
    drop(ca);
}
