//! Checking what the CA sent before using it. A certificate for the wrong identity, for a key
//! that is not ours, or signed by a root this node does not trust is refused, and the old
//! certificate stays in use.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use zident_identity::pem::certs_from_pem;
use zident_identity::{
    Cause, SpiffeId, TrustBundle, WorkloadCertificate, WorkloadKey, verify_checked_svid_root,
};

/// Why a CA response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Nothing, or not PEM.
    #[error("the CA response is not a PEM certificate chain: {0}")]
    Malformed(String),
    /// The leaf names another identity.
    #[error("the CA issued a certificate for {got}, not for {wanted}")]
    WrongIdentity {
        /// Asked for.
        wanted: SpiffeId,
        /// Received.
        got: String,
    },
    /// The leaf certifies another key.
    #[error("the certificate's public key is not the key this agent generated for the request")]
    WrongKey,
    /// The chain does not verify to a trusted root, or breaks an SVID rule.
    #[error("the certificate does not verify against this node's trust bundle: {0}")]
    Untrusted(String),
    /// The leaf is expired or not valid yet by this node's clock: a fresh certificate, so the
    /// clocks of this node and the CA most likely disagree.
    #[error("the certificate is outside its validity by this node's clock: {0}")]
    OutsideValidity(zident_identity::SvidError),
}

impl ResponseError {
    /// The typed cause, for consumers and the metric's `reason`.
    pub fn cause(&self) -> Cause {
        match self {
            Self::Malformed(_) => Cause::MalformedResponse,
            Self::WrongIdentity { .. } => Cause::WrongIdentity,
            Self::WrongKey => Cause::WrongKey,
            Self::Untrusted(_) => Cause::Untrusted,
            Self::OutsideValidity(_) => Cause::ClockSkew,
        }
    }
}

/// Checks a response chain for `id` and `key` against `trust` at `now`, and returns the
/// certificate to use and the root of `trust` it chains to (the CA's signing root, which the
/// agent watches to notice a root rotation).
///
/// The leaf must chain to a root this node already trusts (`CA_ROOT_CA`, the CA's bundle
/// endpoint, configured roots). Roots that arrive only inside a response are not enough: a CA
/// (or whoever answers in its place) cannot make this node trust a new root by sending one.
pub fn check_response(
    id: &SpiffeId,
    key: WorkloadKey,
    chain_pem: &[String],
    trust: &TrustBundle,
    now: SystemTime,
) -> Result<(WorkloadCertificate, CertificateDer<'static>), ResponseError> {
    let mut elements = Vec::with_capacity(chain_pem.len());
    for (i, pem) in chain_pem.iter().enumerate() {
        let certs = certs_from_pem(pem.as_bytes())
            .map_err(|e| ResponseError::Malformed(format!("element {i}: {e}")))?;
        elements.push(certs);
    }
    let Some(first) = elements.first() else {
        return Err(ResponseError::Malformed("empty chain".into()));
    };
    let leaf = &first[0];
    // Istio puts the roots in the last element; everything between is intermediates.
    let (roots, intermediates): (Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) =
        if elements.len() > 1 {
            let roots = elements[elements.len() - 1].clone();
            let mids = elements[..elements.len() - 1]
                .iter()
                .flatten()
                .skip(1)
                .cloned()
                .collect();
            (roots, mids)
        } else {
            (vec![], first[1..].to_vec())
        };

    // The leaf is parsed once: its rules, identity and key, then the chain's signatures.
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| ResponseError::Malformed(e.to_string()))?;
    let leaf_info = zident_identity::check_parsed_leaf(&parsed)
        .map_err(|e| ResponseError::Untrusted(e.to_string()))?;
    if &leaf_info.id != id {
        return Err(ResponseError::WrongIdentity {
            wanted: id.clone(),
            got: leaf_info.id.to_string(),
        });
    }
    if parsed.public_key().raw != key.public_key_spki_der().as_slice() {
        return Err(ResponseError::WrongKey);
    }
    let mut path = vec![leaf.clone()];
    path.extend(intermediates);
    let (info, root) =
        verify_checked_svid_root(&path, leaf_info, trust, now).map_err(|e| match e {
            e @ (zident_identity::SvidError::Expired { .. }
            | zident_identity::SvidError::NotYetValid { .. }) => ResponseError::OutsideValidity(e),
            e => ResponseError::Untrusted(e.to_string()),
        })?;
    let root = root.clone();
    let cert = WorkloadCertificate::new(
        id.clone(),
        path,
        roots,
        info.not_before,
        info.not_after,
        info.serial_hex,
        now,
        key,
    );
    Ok((cert, root))
}
