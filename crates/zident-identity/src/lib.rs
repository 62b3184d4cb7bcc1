//! The SPIFFE identity core of zident.
//!
//! Everything here is pure computation — no sockets, files or clocks of its own — so the
//! rules that decide who is who can be tested exhaustively and reused by the CA, the node
//! agent, the tunnel and the command-line tools:
//!
//! - [`SpiffeId`] and [`TrustDomain`]: IDs validated per the SPIFFE-ID standard;
//! - [`WorkloadKey`]: fresh EC P-256 keys and CSRs with one critical URI SAN;
//! - [`verify_csr_pem`]: how a CA reads a CSR (proof of possession, one SPIFFE ID);
//! - [`profile`]: what the issued certificates contain;
//! - [`verify_svid`]: an X509-SVID checked against a [`TrustBundle`] at a given time;
//! - [`rfc3339`], [`serial_hex`], [`human`] and the rest of `format`: how numbers and times
//!   are written everywhere;
//! - [`TrustBundle`]: several roots, as PEM or SPIFFE bundle JSON, and the JWT-SVID keys;
//! - [`jwt`]: JWT-SVIDs signed, read and validated;
//! - [`RevocationList`]: CRLs verified against the trust bundle, and the serials they list;
//! - [`CertificateProvider`]: how the tunnel and the Workload API ask the agent for a
//!   workload's current certificate.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod bearer;
mod bundle;
mod crl;
mod csr;
mod format;
pub mod inspect;
pub mod jwt;
mod keys;
pub mod pem;
pub mod profile;
mod provider;
mod rustls_key;
mod spiffe_id;
mod svid;

pub use bearer::BearerDigest;
pub use bundle::{BundleError, TrustBundle};
pub use crl::{CrlError, RevocationList};
pub use csr::{CsrError, CsrPublicKey, MAX_CSR_BYTES, VerifiedCsr, verify_csr_der, verify_csr_pem};
pub use format::{
    fingerprint, hex, human, parse_rfc3339, rfc3339, serial_hex, to_system_time, unix_seconds,
};
pub use keys::{KeyError, WorkloadKey, uri_san_extension};
pub use provider::{
    Cause, CertState, CertificateProvider, Failure, ProviderError, WorkloadCertificate,
};
pub use spiffe_id::{IdError, MAX_ID_BYTES, SpiffeId, TrustDomain};
pub use svid::{
    RuleResult, SvidError, SvidInfo, chain_root, check_leaf, check_parsed_leaf, check_time,
    leaf_rules, verify_chain, verify_checked_svid_root, verify_svid, verify_svid_root,
};

/// Re-exported so callers name one version of the DER types.
pub use rustls_pki_types::CertificateDer;
