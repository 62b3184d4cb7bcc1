//! The rustls verifiers of the HBONE tunnel: both ends present X509-SVIDs.
//!
//! - Inbound, [`SpiffeClientVerifier`] requires a client certificate that is a valid SVID
//!   chaining to the current trust bundle (read at each handshake, so a bundle change — a new
//!   root in a rotation — applies to the next connection).
//! - Outbound, [`SpiffeServerVerifier`] requires the server's SVID to verify too, and its
//!   SPIFFE ID to be one of the identities expected for the destination; the DNS name rustls
//!   passes is ignored, because SPIFFE identities are not host names.
//!
//! Both refuse a certificate a CRL in force lists ([`RevocationSource`]), with rustls's
//! `Revoked` (the peer gets the `certificate_revoked` alert).
//!
//! Every refusal says why, so the access log and metrics can name the reason.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;
use zident_identity::{RevocationList, SpiffeId, SvidError, TrustBundle, verify_svid};

/// The handshake signature checks, the same in both verifiers: rustls's own, with the
/// verifier's `algorithms` (only the certificate checks are SPIFFE's).
macro_rules! signatures_by_rustls {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Gives the current trust bundle.
pub type BundleSource = Arc<dyn Fn() -> Arc<TrustBundle> + Send + Sync>;

/// Follows the CRLs in force (see [`CertificateProvider::watch_revocations`]).
///
/// [`CertificateProvider::watch_revocations`]: zident_identity::CertificateProvider::watch_revocations
pub type RevocationSource = watch::Receiver<Option<Arc<RevocationList>>>;

/// Refuses `leaf` if a CRL in `revocations` lists it: checked after the chain, so only a
/// certificate of a trusted root is looked up (one hash lookup, whatever the CRL's size).
fn check_revoked(
    revocations: &Option<RevocationSource>,
    leaf: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    match revocations.as_ref().map(|r| r.borrow().clone()) {
        Some(Some(list)) if list.is_revoked(leaf) => {
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        }
        _ => Ok(()),
    }
}

/// Whether `leaf` is listed by the CRLs in force now.
pub fn is_revoked(revocations: &RevocationSource, leaf: &[u8]) -> bool {
    revocations
        .borrow()
        .as_ref()
        .is_some_and(|list| list.is_revoked(leaf))
}

fn time(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs())
}

fn chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Vec<CertificateDer<'static>> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|c| c.clone().into_owned())
        .collect()
}

/// How far in the future a peer's notBefore may be by default: the most a CA backdates a
/// certificate (zident's and Istio's 2 minutes), so that a fresh certificate from a node whose
/// clock is somewhat ahead is not refused.
pub const SKEW_TOLERANCE: std::time::Duration = zident_identity::profile::MAX_BACKDATE;

/// Verifies `chain` at `now`, accepting a leaf whose notBefore is at most `tolerance` ahead
/// (then checked as at its notBefore, every other rule included).
fn verify_tolerant(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
    now: SystemTime,
    tolerance: std::time::Duration,
) -> Result<zident_identity::SvidInfo, SvidError> {
    match verify_svid(chain, bundle, now) {
        Err(SvidError::NotYetValid { wait, .. }) if wait <= tolerance => {
            verify_svid(chain, bundle, now + wait)
        }
        other => other,
    }
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

fn refuse_at(now: SystemTime) -> impl Fn(SvidError) -> rustls::Error {
    move |e| match e {
        // With the times, so the refusal can say how far off the clocks are.
        SvidError::Expired { not_after, .. } => {
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                time: unix(now),
                not_after: unix(not_after),
            })
        }
        SvidError::NotYetValid { not_before, .. } => {
            rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                time: unix(now),
                not_before: unix(not_before),
            })
        }
        other => refuse(other),
    }
}

fn refuse(e: SvidError) -> rustls::Error {
    let kind = match e {
        SvidError::Expired { .. } => CertificateError::Expired,
        SvidError::NotYetValid { .. } => CertificateError::NotValidYet,
        SvidError::UnknownIssuer => CertificateError::UnknownIssuer,
        SvidError::BadSignature => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// Requires and verifies the client's SVID (inbound).
pub struct SpiffeClientVerifier {
    bundle: BundleSource,
    algorithms: WebPkiSupportedAlgorithms,
    tolerance: std::time::Duration,
    revocations: Option<RevocationSource>,
}

impl std::fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .finish_non_exhaustive()
    }
}

impl SpiffeClientVerifier {
    /// A verifier against the bundle `bundle` returns at each handshake.
    pub fn new(bundle: BundleSource) -> Self {
        Self {
            bundle,
            algorithms: algorithms(),
            tolerance: SKEW_TOLERANCE,
            revocations: None,
        }
    }

    /// Accepts a client certificate whose notBefore is at most `tolerance` in the future.
    pub fn with_skew_tolerance(mut self, tolerance: std::time::Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Refuses a client certificate the CRLs of `revocations` list.
    pub fn with_revocations(mut self, revocations: RevocationSource) -> Self {
        self.revocations = Some(revocations);
        self
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = (self.bundle)();
        let now = time(now);
        verify_tolerant(
            &chain(end_entity, intermediates),
            &bundle,
            now,
            self.tolerance,
        )
        .map_err(refuse_at(now))?;
        check_revoked(&self.revocations, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    signatures_by_rustls!();
}

/// The server's SPIFFE ID is not one the client expected.
#[derive(Debug, thiserror::Error)]
#[error("the server presented {got}, but the destination's identities are {expected}")]
pub struct IdentityMismatch {
    /// What the server presented.
    pub got: SpiffeId,
    /// What was acceptable.
    pub expected: String,
}

/// Verifies the server's SVID and that it is one of the expected identities (outbound).
pub struct SpiffeServerVerifier {
    bundle: BundleSource,
    expected: Vec<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
    tolerance: std::time::Duration,
    revocations: Option<RevocationSource>,
}

impl std::fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl SpiffeServerVerifier {
    /// A verifier accepting any of `expected`, against the bundle `bundle` returns at each
    /// handshake.
    pub fn new(bundle: BundleSource, expected: Vec<SpiffeId>) -> Self {
        Self {
            bundle,
            expected,
            algorithms: algorithms(),
            tolerance: SKEW_TOLERANCE,
            revocations: None,
        }
    }

    /// Accepts a server certificate whose notBefore is at most `tolerance` in the future.
    pub fn with_skew_tolerance(mut self, tolerance: std::time::Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Refuses a server certificate the CRLs of `revocations` list.
    pub fn with_revocations(mut self, revocations: RevocationSource) -> Self {
        self.revocations = Some(revocations);
        self
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = (self.bundle)();
        let now = time(now);
        let info = verify_tolerant(
            &chain(end_entity, intermediates),
            &bundle,
            now,
            self.tolerance,
        )
        .map_err(refuse_at(now))?;
        if !self.expected.contains(&info.id) {
            let expected = self
                .expected
                .iter()
                .map(SpiffeId::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch {
                    got: info.id,
                    expected,
                })),
            )));
        }
        check_revoked(&self.revocations, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    signatures_by_rustls!();
}

/// The aws-lc-rs provider used for every tunnel TLS configuration.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
