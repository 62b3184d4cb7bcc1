//! The seam between identity and its consumers: what the tunnel (and later SDS and xDS) need
//! from the node agent. The current certificate for identity X (waiting up to T, or not
//! waiting at all), and the trust bundle in force. Defined here, beside the identity types, so
//! those crates depend on this small interface and not on the agent.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

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

/// Why no certificate could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The identity is not one this node serves.
    #[error("{0} is not an identity of any workload on this node")]
    UnknownIdentity(SpiffeId),
    /// The identity has no valid certificate; the reason says why (CA down, denied, ...).
    #[error("no valid certificate for {id}: {reason}")]
    Unavailable {
        /// The identity.
        id: SpiffeId,
        /// The last failure.
        reason: String,
    },
    /// Still fetching after the wait.
    #[error("no certificate for {0} yet (still being fetched)")]
    Pending(SpiffeId),
}

/// Hands out the current certificate for an identity, and the trust bundle.
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
}
