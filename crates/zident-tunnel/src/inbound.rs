//! Inbound HBONE: where another node's tunnel delivers a connection for one of our workloads.
//!
//! TLS 1.3 only, ALPN `h2`. The server presents the destination workload's current SVID; the
//! client must present a valid SVID of a trusted trust domain. Each HTTP/2 `CONNECT` names the
//! destination as `ip:port`: 200 and then bytes both ways; 400 for a malformed request or an
//! address that is not a local workload; 401 when policy denies; 503 when the workload does not
//! answer. Each connection takes the certificate current when it starts; open ones keep theirs
//! across rotations. TLS configurations are built once per certificate, not per connection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use zident_identity::{SpiffeId, WorkloadCertificate, check_leaf};

use crate::policy::{Authorizer, Connection, Destination};
use crate::verify::{BundleSource, SpiffeClientVerifier, provider};

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A local workload, as inbound needs to know it.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    /// Its identity.
    pub id: SpiffeId,
    /// Its namespace (policy scope).
    pub namespace: String,
    /// The WorkloadSelector policies it names.
    pub policies: Vec<String>,
}

/// What the inbound listener of one workload address needs.
pub struct Inbound {
    /// The identity this listener serves as (the workload at its address).
    pub identity: SpiffeId,
    /// The identity's current certificate; `None` refuses connections (fail closed).
    pub certificate: Arc<dyn Fn() -> Option<Arc<WorkloadCertificate>> + Send + Sync>,
    /// The current trust bundle.
    pub bundle: BundleSource,
    /// The local workload at an address, if any.
    pub local: Arc<dyn Fn(IpAddr) -> Option<LocalTarget> + Send + Sync>,
    /// The current policies.
    pub authorizer: Arc<dyn Fn() -> Arc<Authorizer> + Send + Sync>,
    /// How long to wait for the workload to accept.
    pub connect_timeout: Duration,
    config: Mutex<Option<(String, Arc<rustls::ServerConfig>)>>,
}

impl Inbound {
    /// An inbound listener's state.
    pub fn new(
        identity: SpiffeId,
        certificate: Arc<dyn Fn() -> Option<Arc<WorkloadCertificate>> + Send + Sync>,
        bundle: BundleSource,
        local: Arc<dyn Fn(IpAddr) -> Option<LocalTarget> + Send + Sync>,
        authorizer: Arc<dyn Fn() -> Arc<Authorizer> + Send + Sync>,
    ) -> Self {
        Self {
            identity,
            certificate,
            bundle,
            local,
            authorizer,
            connect_timeout: Duration::from_secs(5),
            config: Mutex::new(None),
        }
    }

    /// The TLS configuration for `cert`, built on its first use.
    fn tls_config(
        &self,
        cert: &WorkloadCertificate,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut cached = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((serial, config)) = cached.as_ref()
            && *serial == cert.serial_hex
        {
            return Ok(config.clone());
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key().pkcs8_der().to_vec()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(self.bundle.clone())))
            .with_single_cert(cert.chain.clone(), key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        *cached = Some((cert.serial_hex.clone(), config.clone()));
        Ok(config)
    }

    /// Accepts connections until the task is dropped (which also ends its connections).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(self.clone().connection(tcp, peer));
                    }
                    Err(e) => {
                        tracing::warn!(target: "zident::tunnel", "inbound accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let Some(cert) = (self.certificate)() else {
            tracing::warn!(target: "zident::tunnel", %peer, "refused: {} has no valid certificate", self.identity);
            return;
        };
        let config = match self.tls_config(&cert) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target: "zident::tunnel", "cannot build TLS for {}: {e}", self.identity);
                return;
            }
        };
        let tls = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(config).accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(target: "zident::tunnel", %peer, reason = "tls_failure", "inbound TLS handshake refused: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "zident::tunnel", %peer, reason = "tls_failure", "inbound TLS handshake timed out");
                return;
            }
        };
        let source = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| check_leaf(c).ok())
            .map(|i| i.id);
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            let source = source.clone();
            async move { Ok::<_, Infallible>(this.request(source, peer, req).await) }
        });
        let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(e) = result {
            tracing::debug!(target: "zident::tunnel", %peer, "inbound connection ended: {e}");
        }
    }

    async fn request(
        &self,
        source: Option<SpiffeId>,
        peer: SocketAddr,
        req: Request<hyper::body::Incoming>,
    ) -> Response<Empty<Bytes>> {
        let status = |code: StatusCode| {
            let mut r = Response::new(Empty::new());
            *r.status_mut() = code;
            r
        };
        let src = source.as_ref().map(SpiffeId::as_str).unwrap_or("-");
        if req.method() != Method::CONNECT {
            tracing::warn!(target: "zident::tunnel", %peer, src, reason = "bad_request", "inbound: {} is not CONNECT", req.method());
            return status(StatusCode::BAD_REQUEST);
        }
        let Some(dst) = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        else {
            tracing::warn!(target: "zident::tunnel", %peer, src, reason = "bad_request", "inbound: CONNECT authority {:?} is not ip:port", req.uri());
            return status(StatusCode::BAD_REQUEST);
        };
        let Some(target) = (self.local)(dst.ip()) else {
            tracing::warn!(target: "zident::tunnel", %peer, src, %dst, reason = "bad_request", "inbound: {dst} is not a workload on this node");
            return status(StatusCode::BAD_REQUEST);
        };
        let decision = (self.authorizer)().authorize(
            Destination {
                namespace: &target.namespace,
                selected: &target.policies,
            },
            &Connection {
                source: source.as_ref(),
                source_addr: peer.ip(),
                destination: dst,
            },
        );
        for note in &decision.dry_run {
            tracing::info!(target: "zident::tunnel", src, dst = %target.id, "{note}");
        }
        if !decision.allowed {
            tracing::warn!(target: "zident::tunnel", src, dst = %target.id, dst_addr = %dst, reason = "policy_denied", "inbound: {}", decision.reason);
            return status(StatusCode::UNAUTHORIZED);
        }
        let upstream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(dst))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::warn!(target: "zident::tunnel", src, %dst, reason = "upstream_unreachable", "inbound: workload refused: {e}");
                return status(StatusCode::SERVICE_UNAVAILABLE);
            }
            Err(_) => {
                tracing::warn!(target: "zident::tunnel", src, %dst, reason = "upstream_unreachable", "inbound: workload did not answer within {:?}", self.connect_timeout);
                return status(StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let _ = upstream.set_nodelay(true);
        let (src, dst_id) = (src.to_owned(), target.id.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut tunnel = TokioIo::new(upgraded);
                    let mut upstream = upstream;
                    let outcome = tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await;
                    let (sent, received) =
                        outcome.as_ref().map(|(a, b)| (*a, *b)).unwrap_or((0, 0));
                    tracing::info!(
                        target: "zident::tunnel",
                        src = %src,
                        dst = %dst_id,
                        dst_addr = %dst,
                        bytes_in = sent,
                        bytes_out = received,
                        duration_ms = started.elapsed().as_millis() as u64,
                        outcome = if outcome.is_ok() { "closed" } else { "error" },
                        "inbound connection"
                    );
                }
                Err(e) => {
                    tracing::warn!(target: "zident::tunnel", src = %src, %dst, "inbound: CONNECT upgrade failed: {e}")
                }
            }
        });
        status(StatusCode::OK)
    }
}
