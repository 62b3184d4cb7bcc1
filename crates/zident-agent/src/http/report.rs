//! The `/debug/certs` document: one serde type written by the admin endpoint and read by
//! `zident certs` (and, by the same keys, the dashboard), so both ends agree by construction.
//! Times are RFC 3339 strings in UTC, as a person and `jq` read them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;
use zident_identity::SpiffeId;
use zident_identity::pem::to_pem;

use crate::certs::manager::CertificateManager;
use crate::certs::worker::{CertState, IdentityStatus, RenewalEvent};
use crate::http::json::rfc3339;

/// `GET /debug/certs`: every identity of the node, the trust bundle, recent events, the clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertsReport {
    /// One entry per identity the node serves.
    pub certificates: Vec<IdentityReport>,
    /// The roots this node trusts.
    pub trust_bundle: Vec<CertificateReport>,
    /// Increases with every change of the bundle.
    pub trust_bundle_sequence: u64,
    /// Recent renewals, failures and early renewals, oldest first.
    pub events: Vec<RenewalEvent>,
    /// The agent's clock when it wrote this.
    pub now: String,
    /// The CA's clock minus this node's, in seconds; `None` until the CA has answered (and
    /// while a handshake failing on validity makes the last measure stale).
    pub clock_skew_seconds: Option<f64>,
    /// What a handshake that failed on the CA's certificate's validity implies: the offset is
    /// at least this far (positive: this node is behind). `None` once measured again.
    #[serde(default)]
    pub clock_skew_at_least_seconds: Option<f64>,
    /// Beyond this (seconds) the clocks count as skewed.
    pub clock_skew_threshold_seconds: f64,
    /// The `kid`s of the JWT-SVID keys this node trusts (from the CA's bundle).
    #[serde(default)]
    pub jwt_keys: Vec<String>,
    /// The JWT-SVIDs held for the node's workloads.
    #[serde(default)]
    pub jwt_svids: Vec<JwtSvidReport>,
    /// The CA's CRLs in force on this node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<CrlReport>,
}

/// The CRLs in force on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrlReport {
    /// Their CRL number (decimal).
    pub number: String,
    /// Their nextUpdate (RFC 3339).
    pub next_update: Option<String>,
    /// How many certificates they list.
    pub revoked: usize,
    /// Past their nextUpdate, with no newer one to be had (kept in force).
    pub stale: bool,
}

/// A JWT-SVID the agent holds (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtSvidReport {
    /// `sub`.
    pub spiffe_id: String,
    /// `aud`.
    pub audience: Vec<String>,
    /// The key that signed it.
    pub kid: String,
    /// `iat`.
    pub issued_at: String,
    /// `exp`.
    pub expires: String,
}

/// One identity: its state, and the last certificate received for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityReport {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// `Initializing`, `Available` or `Unavailable`.
    pub state: String,
    /// The agent's own identity rather than a workload's.
    pub own: bool,
    /// notBefore of the last certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// notAfter of the last certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// Serial of the last certificate, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// SHA-256 of the trust-bundle root the last certificate chains to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_sha256: Option<String>,
    /// The last certificate's chain, leaf first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<CertificateReport>,
    /// When the certificate will be renewed. (The key keeps ztunnel's word, "rotation".)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_at: Option<String>,
    /// When the next fetch is due (renewal or retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// Why it is Unavailable, or the last failure while the old certificate is still in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The stable label of that failure's cause (`ca_unreachable`, `permission_denied`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The CRLs in force list its certificate (it is being replaced).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// One certificate, as the admin endpoints describe it (never a key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificateReport {
    /// Subject DN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Issuer DN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Serial, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// notBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// notAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// SHA-256 of the DER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The certificate in PEM.
    pub pem: String,
    /// Why it could not be parsed, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CertificateReport {
    /// Describes one DER certificate.
    pub fn of(der: &[u8]) -> Self {
        let pem = to_pem("CERTIFICATE", der);
        match X509Certificate::from_der(der) {
            Ok((_, c)) => Self {
                subject: Some(c.subject().to_string()),
                issuer: Some(c.issuer().to_string()),
                serial_number: Some(zident_identity::serial_hex(c.raw_serial())),
                valid_from: Some(rfc3339(zident_identity::to_system_time(
                    c.validity().not_before,
                ))),
                valid_until: Some(rfc3339(zident_identity::to_system_time(
                    c.validity().not_after,
                ))),
                sha256: Some(zident_identity::fingerprint(der)),
                pem,
                error: None,
            },
            Err(e) => Self {
                pem,
                error: Some(e.to_string()),
                ..Self::default()
            },
        }
    }
}

impl IdentityReport {
    /// Describes one identity's status.
    pub fn of(
        id: &SpiffeId,
        s: &IdentityStatus,
        crl: Option<&zident_identity::RevocationList>,
    ) -> Self {
        let failure = match &s.state {
            CertState::Unavailable(f) => Some(f),
            _ => s.last_error.as_ref(),
        };
        let last = s.last.as_ref();
        Self {
            spiffe_id: id.to_string(),
            state: s.state.name().to_owned(),
            own: s.own,
            valid_from: last.map(|c| rfc3339(c.not_before)),
            valid_until: last.map(|c| rfc3339(c.not_after)),
            serial_number: last.map(|c| c.serial_hex.clone()),
            root_sha256: last.and(s.signing_root.clone()),
            chain: last
                .map(|c| c.chain.iter().map(|d| CertificateReport::of(d)).collect())
                .unwrap_or_default(),
            rotation_at: s.renewal_at.map(rfc3339),
            next_attempt: s.next_attempt.map(rfc3339),
            error: failure.map(|f| f.detail.clone()),
            cause: failure.map(|f| f.cause.label().to_owned()),
            revoked: crl.is_some_and(|l| {
                last.and_then(|c| c.chain.first())
                    .is_some_and(|leaf| l.is_revoked(leaf))
            }),
        }
    }
}

impl CertsReport {
    /// What `manager` holds now.
    pub(crate) fn of(manager: &CertificateManager) -> Self {
        let bundle = manager.trust().bundle();
        let crl = manager.trust().revocations();
        let now = SystemTime::now();
        Self {
            certificates: manager
                .snapshot()
                .iter()
                .map(|(id, s)| IdentityReport::of(id, s, crl.as_deref()))
                .collect(),
            trust_bundle: bundle
                .roots()
                .iter()
                .map(|r| CertificateReport::of(r))
                .collect(),
            trust_bundle_sequence: bundle.sequence(),
            events: manager.events(),
            now: rfc3339(SystemTime::now()),
            clock_skew_seconds: manager.ca().clock().offset(),
            clock_skew_at_least_seconds: manager.ca().clock().at_least(),
            clock_skew_threshold_seconds: manager.ca().clock().threshold().as_secs_f64(),
            jwt_keys: bundle
                .jwt_keys()
                .iter()
                .map(|k| k.kid().to_owned())
                .collect(),
            jwt_svids: manager
                .jwt_svids()
                .iter()
                .map(|j| JwtSvidReport {
                    spiffe_id: j.id.to_string(),
                    audience: j.audience.clone(),
                    kid: j.kid.clone(),
                    issued_at: rfc3339(j.issued_at),
                    expires: rfc3339(j.expiry),
                })
                .collect(),
            crl: crl.map(|l| CrlReport {
                number: l.number.to_string(),
                next_update: l.next_update.map(rfc3339),
                revoked: l.count,
                stale: l.next_update.is_some_and(|n| n <= now),
            }),
        }
    }
}
