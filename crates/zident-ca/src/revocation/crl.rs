//! X.509 v2 CRLs (RFC 5280 section 5), one per key whose certificates may still be valid: the
//! signer, and during a rotation's overlap the previous root, so a certificate of the old root
//! revoked after activation is listed by a CRL that the old root signed and every holder of
//! that root can check. Each carries its CRL number, thisUpdate, nextUpdate, the signer's key
//! identifier and each entry's reason code.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use zident_identity::profile::backdate_for;

use crate::revocation::list::Revoked;
use crate::roots::authority::{Authority, AuthorityError};

/// One signed CRL.
#[derive(Debug, Clone)]
pub struct SignedCrl {
    /// Its signer's key identifier, hex.
    pub issuer: String,
    /// DER.
    pub der: Vec<u8>,
    /// PEM (`X509 CRL`).
    pub pem: String,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// The CRLs in force, signed together.
#[derive(Debug, Clone)]
pub struct CrlSet {
    /// One per signing key; the current signer's first.
    pub crls: Vec<SignedCrl>,
    /// Their CRL number.
    pub number: u64,
    /// When they were signed (their thisUpdate is a little before, for clocks behind).
    pub signed_at: SystemTime,
    /// Their nextUpdate (the earliest, if a signer expires sooner).
    pub next_update: SystemTime,
}

impl CrlSet {
    /// Every CRL, PEM, one after the other (what `/crl`, `crl.pem` and ztunnel's `CRL_PATH`
    /// hold).
    pub fn pem(&self) -> String {
        self.crls.iter().map(|c| c.pem.as_str()).collect()
    }

    /// How many certificates they list.
    pub fn revoked(&self) -> usize {
        self.crls.iter().map(|c| c.revoked).sum()
    }
}

/// Signs the CRLs of `authority`'s keys for `revoked` at `now`, numbered `number`, valid for
/// `validity` (never past a signer's own notAfter). A revoked certificate whose signer the CA
/// no longer holds (retired: it cannot be valid anywhere) is left out.
pub fn sign(
    authority: &Authority,
    revoked: &[Revoked],
    number: u64,
    now: SystemTime,
    validity: Duration,
) -> Result<CrlSet, AuthorityError> {
    let this_update = now - backdate_for(validity);
    let mut crls = Vec::new();
    let mut next_update_all = now + validity;
    for signer in authority.crl_signers() {
        let key_id = zident_identity::hex(signer.key_id);
        let next_update = (now + validity).min(signer.not_after);
        if next_update <= now {
            continue;
        }
        next_update_all = next_update_all.min(next_update);
        let entries: Vec<RevokedCertParams> = revoked
            .iter()
            .filter(|r| r.issuer == key_id)
            .filter_map(|r| {
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&unhex(&r.serial)?),
                    revocation_time: (std::time::UNIX_EPOCH + Duration::from_secs(r.revoked_at))
                        .into(),
                    reason_code: Some(r.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: KeyIdMethod::PreSpecified(signer.key_id.to_vec()),
        };
        let count = params.revoked_certs.len();
        let crl = params.signed_by(signer.issuer).map_err(|e| {
            AuthorityError::Sign(format!(
                "cannot sign a CRL with the key {key_id} (its certificate must allow cRLSign): {e}"
            ))
        })?;
        let pem = crl
            .pem()
            .map_err(|e| AuthorityError::Sign(format!("cannot encode a CRL: {e}")))?;
        crls.push(SignedCrl {
            issuer: key_id,
            der: crl.der().to_vec(),
            pem,
            revoked: count,
        });
    }
    Ok(CrlSet {
        crls,
        number,
        signed_at: now,
        next_update: next_update_all,
    })
}

/// Bytes of lowercase hex; `None` when it is not.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
