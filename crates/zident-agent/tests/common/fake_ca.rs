//! A CA that misbehaves on purpose: a real gRPC server over TLS speaking Istio's certificate
//! service, answering with what a broken or hostile CA might send.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use zident_identity::{SpiffeId, TrustDomain, profile, verify_csr_pem};
use zident_proto::istio_ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use zident_proto::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};

/// How the fake CA misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Signs a certificate for another identity.
    WrongIdentity,
    /// Signs with a root the agent does not trust (and sends that root).
    ForeignRoot,
    /// Certifies a key other than the CSR's.
    WrongKey,
    /// Behaves, but backdates by 120 s whatever the TTL (as some CAs do).
    Backdated,
    /// Behaves, but answers each request 50 ms late, as a loaded CA, so that requests in
    /// flight pile up and can be counted.
    Slow,
}

struct Ca {
    key: KeyPair,
    der: rcgen::Certificate,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let der = profile::root_params(
            &TrustDomain::new("cluster.local").unwrap(),
            SystemTime::now(),
            Duration::from_secs(86400),
        )
        .self_signed(&key)
        .unwrap();
        Self { key, der }
    }
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_ca_cert_der(self.der.der(), &self.key).unwrap()
    }
}

struct Service {
    mode: Mode,
    trusted: Arc<Ca>,
    foreign: Arc<Ca>,
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    in_flight: Arc<InFlight>,
}

/// Requests being answered now, and the most there ever were at once.
#[derive(Default)]
pub struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    pub most: std::sync::atomic::AtomicUsize,
}

/// Counts a request in flight until dropped.
struct Answering<'a>(&'a InFlight);

impl<'a> Answering<'a> {
    fn new(in_flight: &'a InFlight) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = in_flight.now.fetch_add(1, SeqCst) + 1;
        in_flight.most.fetch_max(now, SeqCst);
        Self(in_flight)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Service {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _answering = Answering::new(&self.in_flight);
        if self.mode == Mode::Slow {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let req = request.into_inner();
        let csr = verify_csr_pem(&req.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = SystemTime::now();
        let ttl = Duration::from_secs(req.validity_duration.max(1) as u64);
        let (id, ca) = match self.mode {
            Mode::WrongIdentity => (
                SpiffeId::new("spiffe://cluster.local/ns/default/sa/admin").unwrap(),
                &self.trusted,
            ),
            Mode::ForeignRoot => (csr.id.clone(), &self.foreign),
            _ => (csr.id.clone(), &self.trusted),
        };
        let mut params =
            profile::leaf_params(&id, now, ttl, now + Duration::from_secs(86400)).unwrap();
        if self.mode == Mode::Backdated {
            params.not_before = time::OffsetDateTime::from(now - Duration::from_secs(120));
        }
        let cert = if self.mode == Mode::WrongKey {
            let other = KeyPair::generate().unwrap();
            params.signed_by(&other, &ca.issuer()).unwrap()
        } else {
            params.signed_by(&csr.public_key, &ca.issuer()).unwrap()
        };
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![cert.pem(), ca.der.pem()],
        }))
    }
}

/// A running fake CA: its address, the root the agent should trust (PEM), and a request count.
pub struct FakeCa {
    pub addr: std::net::SocketAddr,
    pub trusted_root_pem: String,
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    pub in_flight: Arc<InFlight>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeCa {
    /// An agent configuration for the mesh file `dir/mesh.yaml`, trusting this CA's root
    /// (written to `dir`), with certificates of `ttl` and no bundle polling.
    pub fn agent_config(&self, dir: &std::path::Path, ttl: Duration) -> zident_agent::AgentConfig {
        let root = dir.join(format!("root-{}.pem", self.addr.port()));
        std::fs::write(&root, &self.trusted_root_pem).unwrap();
        let mut config = super::agent_config(
            &dir.join("mesh.yaml"),
            &root,
            &format!("localhost:{}", self.addr.port()),
            ttl,
        );
        config.ca.poll_bundle = false;
        config
    }
}

pub async fn start(mode: Mode) -> FakeCa {
    let trusted = Arc::new(Ca::new());
    let foreign = Arc::new(Ca::new());
    // The TLS serving certificate, for localhost, from the trusted root.
    let serving_key = KeyPair::generate().unwrap();
    let serving = profile::serving_params(
        &TrustDomain::new("cluster.local").unwrap(),
        &["localhost".to_string()],
        SystemTime::now(),
        Duration::from_secs(3600),
        SystemTime::now() + Duration::from_secs(86400),
    )
    .unwrap()
    .signed_by(&serving_key, &trusted.issuer())
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let in_flight = Arc::new(InFlight::default());
    let service = Service {
        mode,
        trusted: trusted.clone(),
        foreign,
        requests: requests.clone(),
        in_flight: in_flight.clone(),
    };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        serving.pem(),
        serving_key.serialize_pem(),
    ));
    let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(IstioCertificateServiceServer::new(service))
            .serve_with_incoming(incoming)
            .await;
    });
    FakeCa {
        addr,
        trusted_root_pem: trusted.der.pem(),
        requests,
        in_flight,
        task,
    }
}
