//! The CA's TLS port: gRPC (the Istio certificate service, xDS), the trust bundle endpoint
//! (`GET /bundle`, `GET /bundle.pem`) and the CRLs (`GET /crl`, PEM, every signing key's;
//! `GET /crl.der`, the signer's) on one listener, TLS 1.3 only.
//!
//! The CA serves TLS with a certificate it issues to itself; the certificate sits behind a
//! resolver so it can be replaced (renewal, a new plugged-in key) without a restart.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::KeyPair;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use zident_identity::profile;
use zident_proto::istio_ca::istio_certificate_service_server::IstioCertificateServiceServer;
use zident_proto::zident_ca::jwt_svid_service_server::JwtSvidServiceServer;

use crate::coalesce::CoalescedWrites;
use crate::jwt_service::JwtService;
use crate::roots::authority::Authority;
use crate::service::{CaService, PeerAddr};
use crate::state::CaState;
use crate::xds::XdsService;
use zident_listen::{Connections, InFlight, Slot};

/// The largest gRPC request accepted. A CSR is at most 16 KiB; the rest is headroom.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Lifetime of the CA's own serving certificate; renewed at half of it.
pub const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The CA's serving certificate, replaceable while connections are being accepted.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    dns_names: Vec<String>,
}

impl ServingCert {
    /// Issues a first serving certificate from `authority` for `dns_names`.
    pub fn new(authority: &Authority, dns_names: Vec<String>) -> Result<Self, ServingError> {
        let key = issue_serving(authority, &dns_names)?;
        Ok(Self {
            current: RwLock::new(Arc::new(key)),
            dns_names,
        })
    }

    /// Issues a fresh serving certificate and uses it for new connections.
    pub fn renew(&self, authority: &Authority) -> Result<(), ServingError> {
        let key = issue_serving(authority, &self.dns_names)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Why the CA's own serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// A key could not be generated.
    #[error("cannot make a key for the serving certificate: {0}")]
    Key(rcgen::Error),
    /// The profile refuses the names or lifetime.
    #[error("the serving certificate: {0}")]
    Profile(#[from] zident_identity::profile::ProfileError),
    /// The authority cannot sign it.
    #[error("cannot sign the serving certificate: {0}")]
    Sign(#[from] crate::roots::authority::AuthorityError),
    /// rustls does not take the key.
    #[error("rustls refuses the serving key: {0}")]
    Rustls(#[from] rustls::Error),
}

fn issue_serving(
    authority: &Authority,
    dns_names: &[String],
) -> Result<CertifiedKey, ServingError> {
    let key = KeyPair::generate().map_err(ServingError::Key)?;
    let params = profile::serving_params(
        authority.bundle().trust_domain(),
        dns_names,
        SystemTime::now(),
        SERVING_CERT_TTL,
        authority.serving_signer_not_after(),
    )?;
    let (cert, above) = authority.sign_serving(&params, &key)?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(above);
    // Wiped once aws-lc has read it (`PrivateKeyDer` does not wipe what it owns).
    let der = zeroize::Zeroizing::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    )));
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The rustls configuration: TLS 1.3 only, ALPN h2 then http/1.1, no client certificates
/// (callers authenticate with bearer tokens, as Istio's do).
pub fn tls_config(cert: Arc<ServingCert>) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTP routes: the gRPC services (certificates, JWT-SVIDs, xDS) and the bundle endpoints.
pub(crate) fn router(state: Arc<CaState>, xds: XdsService) -> axum::Router {
    let grpc = IstioCertificateServiceServer::new(CaService::new(state.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let jwt = JwtSvidServiceServer::new(JwtService::new(state.clone()))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let json_state = state.clone();
    let (crl_state, der_state) = (state.clone(), state.clone());
    tonic::service::Routes::new(grpc)
        .add_service(xds)
        .add_service(jwt)
        .into_axum_router()
        .route(
            "/bundle",
            get(move || async move {
                match json_state.bundle_json() {
                    Ok(json) => {
                        ([(header::CONTENT_TYPE, "application/json")], json).into_response()
                    }
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }),
        )
        .route(
            "/bundle.pem",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/x-pem-file")],
                    state.authority().bundle().to_pem(),
                )
            }),
        )
        .route(
            "/crl",
            get(move |headers: axum::http::HeaderMap| async move {
                let published = crl_state.revocations();
                let Some(set) = published.crls.as_ref() else {
                    return no_crl_yet();
                };
                // Agents poll every second: the CRL number is the entity tag, and an
                // unchanged CRL costs a 304 and no body.
                let tag = format!("\"{}\"", set.number);
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == tag.as_bytes())
                {
                    return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
                }
                (
                    [
                        (header::CONTENT_TYPE, "application/x-pem-file".to_owned()),
                        (header::ETAG, tag),
                    ],
                    set.pem(),
                )
                    .into_response()
            }),
        )
        .route(
            "/crl.der",
            get(move || async move {
                // DER holds one CRL: the current signer's (during a rotation's overlap, `/crl`
                // holds the previous root's too).
                match der_state
                    .revocations()
                    .crls
                    .as_ref()
                    .and_then(|s| s.crls.first())
                {
                    Some(crl) => (
                        [(header::CONTENT_TYPE, "application/pkix-crl")],
                        crl.der.clone(),
                    )
                        .into_response(),
                    None => no_crl_yet(),
                }
            }),
        )
}

/// The answer before the first CRL is signed (within a second of the start).
fn no_crl_yet() -> axum::response::Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "no CRL is signed yet; the CA signs its first within a second of starting",
    )
        .into_response()
}

/// Accepts connections until the task is dropped; dropping it also ends every connection
/// it started. `connections` bounds how many there are and closes idle ones.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    connections: Arc<Connections>,
) {
    zident_listen::accept_loop(listener, connections, "CA", move |tcp, peer, slot| {
        serve_connection(tcp, peer, acceptor.clone(), router.clone(), slot)
    })
    .await
}

/// How long a connection asked to close may finish its requests.
const GRACE: Duration = Duration::from_secs(10);

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    router: axum::Router,
    slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::select! {
        done = tokio::time::timeout(zident_listen::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(target: "zident::ca", %peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(target: "zident::ca", %peer, "TLS handshake timed out");
                return;
            }
        },
        _ = slot.closing() => return,
    };
    let tracker = slot.tracker();
    let service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        // In flight until the response is ready (and, for a stream, until the stream ends:
        // its handler keeps a clone): the connection is not idle meanwhile.
        let busy = Arc::new(tracker.busy());
        req.extensions_mut().insert(InFlight::new(busy.clone()));
        let answer = router.clone().oneshot(req);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(zident_listen::HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(
        TokioIo::new(CoalescedWrites::new(tls)),
        TowerToHyperService::new(service),
    );
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        closing = slot.closing() => {
            if closing == zident_listen::Closing::Evicted {
                return;
            }
            tracing::debug!(target: "zident::ca", %peer, "closing an idle connection");
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(GRACE, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(target: "zident::ca", %peer, "connection ended: {e}");
    }
}

/// Renews the CA's own serving certificate at half its lifetime, for as long as the CA runs.
pub(crate) async fn renew_serving_cert(state: Arc<CaState>, serving: Arc<ServingCert>) {
    loop {
        tokio::time::sleep(SERVING_CERT_TTL / 2).await;
        match serving.renew(&state.authority()) {
            Ok(()) => tracing::info!(target: "zident::ca", "renewed the CA's serving certificate"),
            Err(e) => {
                tracing::error!(target: "zident::ca", "cannot renew the CA's serving certificate: {e}")
            }
        }
    }
}
