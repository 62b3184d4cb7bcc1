//! Outbound: a local workload's connection leaves the node through an HBONE tunnel.
//!
//! A SOCKS5 listener takes the connection; the source workload is the one whose address it
//! came from (an unknown source is refused). The destination is resolved to the address to
//! dial, the identities its server may present, and whether it speaks HBONE at all. The tunnel
//! presents the source's current SVID, checks the server's SPIFFE ID is an expected one, and
//! sends `CONNECT ip:port`. HTTP/2 connections are pooled per (source certificate, HBONE
//! address, expected identities), so many tunnels share one TLS connection; a rotation of the
//! source certificate starts a new pooled connection, and open tunnels keep theirs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use zident_identity::{CertificateProvider, SpiffeId, WorkloadCertificate};

use crate::socks5::{self, Reply, Target};
use crate::verify::{BundleSource, SpiffeServerVerifier, provider};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CERTIFICATE_WAIT: Duration = Duration::from_secs(5);

/// How to reach a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The workload address and port (service ports already mapped).
    pub target: SocketAddr,
    /// `Some(addr)`: tunnel through HBONE at `addr` (the destination's `ip:15008`); `None`:
    /// plain TCP (the destination's protocol is TCP).
    pub hbone: Option<SocketAddr>,
    /// The identities the destination may present.
    pub expected: Vec<SpiffeId>,
}

/// Decides sources and routes from the mesh.
pub trait Directory: Send + Sync + 'static {
    /// The identity of the local workload at `ip`, if there is one.
    fn source(&self, ip: IpAddr) -> Option<SpiffeId>;
    /// How to reach `target`, if it is a known workload or service.
    fn route(&self, target: &Target) -> Option<Route>;
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct PoolKey {
    source: SpiffeId,
    serial: String,
    hbone: SocketAddr,
    expected: Vec<SpiffeId>,
}

/// The outbound side of the tunnel.
pub struct Outbound<P, D> {
    certificates: Arc<P>,
    directory: Arc<D>,
    bundle: BundleSource,
    pool: Mutex<HashMap<PoolKey, SendRequest<Empty<Bytes>>>>,
}

impl<P: CertificateProvider, D: Directory> Outbound<P, D> {
    /// An outbound tunnel over `certificates` and `directory`.
    pub fn new(certificates: Arc<P>, directory: Arc<D>, bundle: BundleSource) -> Self {
        Self {
            certificates,
            directory,
            bundle,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// Serves SOCKS5 on `listener` until the task is dropped.
    pub async fn serve_socks5(self: Arc<Self>, listener: TcpListener) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(self.clone().socks_connection(tcp, peer));
                    }
                    Err(e) => {
                        tracing::warn!(target: "zident::tunnel", "SOCKS5 accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }

    async fn socks_connection(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        let _ = client.set_nodelay(true);
        let target = match tokio::time::timeout(HANDSHAKE_TIMEOUT, socks5::accept(&mut client))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::warn!(target: "zident::tunnel", %peer, "outbound refused: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(target: "zident::tunnel", %peer, "outbound refused: SOCKS5 handshake timed out");
                return;
            }
        };
        let refuse = |reason: &'static str, code: Reply, detail: String| {
            tracing::warn!(target: "zident::tunnel", %peer, dst = %target, reason, "outbound refused: {detail}");
            code
        };
        let Some(source) = self.directory.source(peer.ip()) else {
            let code = refuse(
                "unknown_source",
                Reply::NotAllowed,
                format!("no local workload has address {}", peer.ip()),
            );
            let _ = socks5::reply(&mut client, code).await;
            return;
        };
        let Some(route) = self.directory.route(&target) else {
            let code = refuse(
                "unknown_destination",
                Reply::HostUnreachable,
                format!("{target} is not a known workload or service"),
            );
            let _ = socks5::reply(&mut client, code).await;
            return;
        };
        let started = Instant::now();
        match route.hbone {
            None => self.plain(client, peer, &source, &route).await,
            Some(hbone) => {
                self.tunnel(client, peer, &source, &route, hbone, started)
                    .await
            }
        }
    }

    async fn plain(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        source: &SpiffeId,
        route: &Route,
    ) {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(route.target)).await {
            Ok(Ok(mut upstream)) => {
                if socks5::reply(&mut client, Reply::Ok).await.is_ok() {
                    let r = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    tracing::info!(target: "zident::tunnel", %peer, src = %source, dst = %route.target, protocol = "TCP", ?r, "outbound connection");
                }
            }
            _ => {
                tracing::warn!(target: "zident::tunnel", src = %source, dst = %route.target, reason = "upstream_unreachable", "outbound refused: destination unreachable");
                let _ = socks5::reply(&mut client, Reply::Refused).await;
            }
        }
    }

    async fn tunnel(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        source: &SpiffeId,
        route: &Route,
        hbone: SocketAddr,
        started: Instant,
    ) {
        let cert = match self
            .certificates
            .certificate(source, CERTIFICATE_WAIT)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "zident::tunnel", src = %source, dst = %route.target, reason = "no_certificate", "outbound refused (fail closed): {e}");
                let _ = socks5::reply(&mut client, Reply::Failure).await;
                return;
            }
        };
        let mut sender = match self.sender(&cert, hbone, &route.expected).await {
            Ok(s) => s,
            Err((reason, e)) => {
                tracing::warn!(target: "zident::tunnel", src = %source, dst = %route.target, reason, "outbound refused: {e}");
                let _ = socks5::reply(&mut client, Reply::NotAllowed).await;
                return;
            }
        };
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(route.target.to_string())
            .body(Empty::new());
        let response = match request {
            Ok(req) => sender.send_request(req).await,
            Err(e) => {
                tracing::error!(target: "zident::tunnel", "cannot build CONNECT: {e}");
                let _ = socks5::reply(&mut client, Reply::Failure).await;
                return;
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "zident::tunnel", src = %source, dst = %route.target, reason = "tunnel_failed", "outbound: CONNECT failed: {e}");
                let _ = socks5::reply(&mut client, Reply::Failure).await;
                return;
            }
        };
        let code = match response.status() {
            StatusCode::OK => Reply::Ok,
            StatusCode::UNAUTHORIZED => Reply::NotAllowed,
            StatusCode::SERVICE_UNAVAILABLE => Reply::Refused,
            _ => Reply::Failure,
        };
        if code != Reply::Ok {
            let reason = match response.status() {
                StatusCode::UNAUTHORIZED => "policy_denied",
                StatusCode::SERVICE_UNAVAILABLE => "upstream_unreachable",
                _ => "bad_request",
            };
            tracing::warn!(target: "zident::tunnel", src = %source, dst = %route.target, reason, status = %response.status(), "outbound refused by the destination");
            let _ = socks5::reply(&mut client, code).await;
            return;
        }
        let upgraded = match hyper::upgrade::on(response).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(target: "zident::tunnel", "outbound: upgrade failed: {e}");
                let _ = socks5::reply(&mut client, Reply::Failure).await;
                return;
            }
        };
        if socks5::reply(&mut client, Reply::Ok).await.is_err() {
            return;
        }
        let mut tunnel = TokioIo::new(upgraded);
        let outcome = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await;
        let (sent, received) = outcome.as_ref().map(|(a, b)| (*a, *b)).unwrap_or((0, 0));
        tracing::info!(
            target: "zident::tunnel",
            %peer,
            src = %source,
            dst = %route.target,
            dst_identities = ?route.expected.iter().map(SpiffeId::as_str).collect::<Vec<_>>(),
            bytes_out = sent,
            bytes_in = received,
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = if outcome.is_ok() { "closed" } else { "error" },
            "outbound connection"
        );
    }

    /// A pooled HTTP/2 connection for this certificate, destination and expected identities.
    async fn sender(
        &self,
        cert: &WorkloadCertificate,
        hbone: SocketAddr,
        expected: &[SpiffeId],
    ) -> Result<SendRequest<Empty<Bytes>>, (&'static str, String)> {
        let key = PoolKey {
            source: cert.id.clone(),
            serial: cert.serial_hex.clone(),
            hbone,
            expected: expected.to_vec(),
        };
        {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            // Drop connections that ended, and this source's connections made with a certificate
            // that is no longer its current one (their open tunnels carry on regardless).
            pool.retain(|k, s| {
                !s.is_closed() && (k.source != key.source || k.serial == key.serial)
            });
            if let Some(s) = pool.get(&key)
                && s.is_ready()
            {
                return Ok(s.clone());
            }
        }
        let key_der =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key().pkcs8_der().to_vec()));
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ("tls_failure", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
                self.bundle.clone(),
                expected.to_vec(),
            )))
            .with_client_auth_cert(cert.chain.clone(), key_der)
            .map_err(|e| ("tls_failure", e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connect = async {
            let tcp = TcpStream::connect(hbone)
                .await
                .map_err(|e| ("upstream_unreachable", format!("cannot reach {hbone}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            // SPIFFE identities are checked by the verifier; the name is only for SNI.
            let name = ServerName::IpAddress(hbone.ip().into());
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let text = e.to_string();
                    let reason = if text.contains("IdentityMismatch") {
                        "identity_mismatch"
                    } else {
                        "tls_failure"
                    };
                    (reason, format!("TLS to {hbone}: {text}"))
                })?;
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ("tls_failure", format!("HTTP/2 to {hbone}: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, (&'static str, String)>(sender)
        };
        let sender = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| {
                (
                    "upstream_unreachable",
                    format!("no answer from {hbone} within {HANDSHAKE_TIMEOUT:?}"),
                )
            })??;
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, sender.clone());
        Ok(sender)
    }
}
