//! The seam between identity and its consumers: what the tunnel, the Workload API (and later
//! SDS and xDS) need from the node agent. The current certificate for identity X (waiting up to
//! T, or not waiting at all), the trust bundle in force, and a watch of each for streams. Defined here, beside the identity types, so
//! those crates depend on this small interface and not on the agent.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::keys::WorkloadKey;
use crate::spiffe_id::SpiffeId;

/// A certificate the agent holds for one identity, with its private key. Immutable: a rotation
/// makes a new one, so whoever holds an `Arc` of the old one keeps a consistent pair.
#[derive(Debug)]
pub struct WorkloadCertificate {
    /// The identity it proves.
    pub id: SpiffeId,
    /// Leaf first, then intermediates (without the roots).
    pub chain: Vec<CertificateDer<'static>>,
    /// The roots the CA sent with it.
    pub roots: Vec<CertificateDer<'static>>,
    /// notBefore of the leaf.
    pub not_before: SystemTime,
    /// notAfter of the leaf.
    pub not_after: SystemTime,
    /// Serial of the leaf, lowercase hex.
    pub serial_hex: String,
    /// When the agent received it.
    pub received_at: SystemTime,
    key: WorkloadKey,
}

impl WorkloadCertificate {
    /// Bundles a verified chain with the key it certifies.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
        not_before: SystemTime,
        not_after: SystemTime,
        serial_hex: String,
        received_at: SystemTime,
        key: WorkloadKey,
    ) -> Self {
        Self {
            id,
            chain,
            roots,
            not_before,
            not_after,
            serial_hex,
            received_at,
            key,
        }
    }

    /// The private key (never logged, never served).
    pub fn key(&self) -> &WorkloadKey {
        &self.key
    }

    /// Whether `now` is inside the validity window.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Why a certificate could not be had, as a consumer needs to tell causes apart: a denial is
/// not fixed by waiting, a CA outage is, a clock skew is fixed on the node. The words for a
/// person travel beside it in [`Failure`]; code matches on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// The CA did not answer (refused, TLS failure, timeout, unavailable).
    CaUnreachable,
    /// The CA did not accept the node's credentials.
    Unauthenticated,
    /// The CA refused this node this identity.
    Denied,
    /// The CA refused the request as malformed.
    InvalidRequest,
    /// The CA took longer than the request's deadline.
    CaTimeout,
    /// The CA answered with another error.
    CaError,
    /// The node's token could not be read.
    Token,
    /// The node could not make a key or a CSR.
    KeyGeneration,
    /// The CA's answer was not a certificate chain.
    MalformedResponse,
    /// The certificate names another identity.
    WrongIdentity,
    /// The certificate certifies another key.
    WrongKey,
    /// The chain does not verify against this node's trust bundle.
    Untrusted,
    /// A fresh certificate is outside its validity by this node's clock: the clocks disagree.
    ClockSkew,
    /// TLS to the CA failed because the CA's own certificate is outside its validity by this
    /// node's clock: the CA is up, the clocks disagree.
    CaClockSkew,
    /// The certificate expired while its renewal was still in flight, with no failure to
    /// blame. (Once a renewal has failed, an expired identity's cause is that failure's.)
    Expired,
    /// The CA's CRL lists the certificate (it is replaced at once), or the CA refuses to
    /// issue a new one because an operator revoked the identity or node and denied reissue.
    Revoked,
}

impl Cause {
    /// A short, stable label: the `reason` of metrics, and what scripts match on.
    pub fn label(self) -> &'static str {
        match self {
            Self::CaUnreachable => "ca_unreachable",
            Self::Unauthenticated => "unauthenticated",
            Self::Denied => "permission_denied",
            Self::InvalidRequest => "invalid_argument",
            Self::CaTimeout => "timeout",
            Self::CaError => "ca_error",
            Self::Token => "token",
            Self::KeyGeneration => "keygen",
            Self::MalformedResponse => "malformed_response",
            Self::WrongIdentity => "wrong_identity",
            Self::WrongKey => "wrong_key",
            Self::Untrusted => "untrusted_chain",
            Self::ClockSkew => "outside_validity",
            Self::CaClockSkew => "clock_skew",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// Whether waiting for the CA can cure it (it did not answer), as opposed to a refusal or a
    /// fault on this node.
    pub fn waits_on_ca(self) -> bool {
        self == Self::CaUnreachable
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A failure to get a certificate: the typed cause, and what happened in words for a person
/// (rendered from the underlying error where it happened; never parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Failure {
    /// What kind of failure.
    pub cause: Cause,
    /// What happened, for logs and the admin endpoints.
    pub detail: String,
}

impl Failure {
    /// A failure of `cause`, described by `detail`.
    pub fn new(cause: Cause, detail: impl Into<String>) -> Self {
        Self {
            cause,
            detail: detail.into(),
        }
    }
}

/// Why no certificate could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The identity is not one this node serves.
    #[error("{0} is not an identity of any workload on this node")]
    UnknownIdentity(SpiffeId),
    /// The identity has no valid certificate; the failure says why (CA down, denied, ...).
    #[error("no valid certificate for {id}: {failure}")]
    Unavailable {
        /// The identity.
        id: SpiffeId,
        /// The last failure.
        failure: Failure,
    },
    /// Still fetching after the wait.
    #[error("no certificate for {0} yet (still being fetched)")]
    Pending(SpiffeId),
}

/// The state of one identity's certificate, as its consumers see it.
#[derive(Debug, Clone)]
pub enum CertState {
    /// The first certificate has not arrived yet.
    Initializing,
    /// A valid certificate is in use.
    Available(Arc<WorkloadCertificate>),
    /// No valid certificate; the failure says why.
    Unavailable(Failure),
}

impl CertState {
    /// `Initializing`, `Available` or `Unavailable`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Initializing => "Initializing",
            Self::Available(_) => "Available",
            Self::Unavailable(_) => "Unavailable",
        }
    }

    /// Whether `other` says the same to a consumer: the same certificate (not merely an equal
    /// one), or the same failure. A consumer is told only of real changes.
    pub fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Initializing, Self::Initializing) => true,
            (Self::Available(a), Self::Available(b)) => Arc::ptr_eq(a, b),
            (Self::Unavailable(a), Self::Unavailable(b)) => a == b,
            _ => false,
        }
    }
}

/// Hands out the current certificate for an identity, and the trust bundle: the one seam
/// through which the tunnel, the Workload API and the SVID files get identity.
pub trait CertificateProvider: Send + Sync + 'static {
    /// The current certificate for `id`. If there is none yet, or it is Unavailable, asks for
    /// one at once (real-time priority) and waits up to `wait` for it.
    fn certificate(
        &self,
        id: &SpiffeId,
        wait: Duration,
    ) -> impl Future<Output = Result<Arc<WorkloadCertificate>, ProviderError>> + Send;

    /// The current valid certificate for `id`, without waiting (a TLS handshake in progress
    /// cannot wait). When there is none, a retry is asked for at once; `None` fails closed.
    fn current(&self, id: &SpiffeId) -> Option<Arc<WorkloadCertificate>>;

    /// The trust bundle in force, read at each handshake so that a change (a new root in a
    /// rotation) applies to the next connection.
    fn bundle(&self) -> Arc<crate::bundle::TrustBundle>;

    /// Follows `id`'s certificate: the receiver sees each change of state (a renewal is a new
    /// `Available`), and closes when the identity is no longer served. `None` when it is not
    /// served now. Streams (the Workload API, SVID files) push on each change.
    fn watch(&self, id: &SpiffeId) -> Option<watch::Receiver<CertState>>;

    /// Follows the trust bundle: each change (a root added or retired) is a new value.
    fn watch_bundle(&self) -> watch::Receiver<Arc<crate::bundle::TrustBundle>>;

    /// Follows the CRLs in force (verified against the trust bundle): each change is a new
    /// value; `None` while there are none. A tunnel refuses a revoked peer's handshake and
    /// closes its open connections with one when a new list names it. A provider without
    /// revocation never changes it.
    fn watch_revocations(&self) -> watch::Receiver<Option<Arc<crate::crl::RevocationList>>> {
        watch::channel(None).1
    }

    /// A JWT-SVID for `id` accepted by `audience`, with at least half of its lifetime left.
    /// A provider that issues none says so.
    fn jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
    ) -> impl Future<Output = Result<Arc<crate::jwt::SignedJwt>, ProviderError>> + Send {
        let id = id.clone();
        let _ = audience;
        async move {
            Err(ProviderError::Unavailable {
                id,
                failure: Failure::new(Cause::CaError, "this provider issues no JWT-SVIDs"),
            })
        }
    }
}
