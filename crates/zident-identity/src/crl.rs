//! CRLs as a node reads them: parsed, their signature verified against the certificates that
//! may sign them (the trust bundle's roots, and the intermediates of a plugged-in chain), and
//! turned into the set a handshake checks: (issuer, serial) pairs, looked up in constant time
//! whatever their number.
//!
//! A CRL whose signature no trusted certificate verifies, or whose nextUpdate has passed, is
//! refused whole: a node keeps the CRLs it has rather than take a forged or stale one.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use x509_parser::prelude::*;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::format::to_system_time;

/// Why fetched CRLs were refused; the ones in force stay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// Not PEM CRLs.
    #[error("not a PEM CRL: {0}")]
    Malformed(String),
    /// No certificate the node trusts signed it.
    #[error(
        "the CRL of {issuer} is not signed by any certificate of the trust bundle (forged, or from another CA)"
    )]
    UnknownSigner {
        /// The CRL's issuer name.
        issuer: String,
    },
    /// Its nextUpdate has passed.
    #[error("the CRL of {issuer} is stale: its nextUpdate ({next_update}) has passed")]
    Stale {
        /// The CRL's issuer name.
        issuer: String,
        /// Its nextUpdate, RFC 3339.
        next_update: String,
    },
    /// Its number is lower than the one in force: an older CRL replayed.
    #[error("the CRL of {issuer} has number {got}, older than the {held} in force")]
    Older {
        /// The CRL's issuer name.
        issuer: String,
        /// Its number.
        got: u128,
        /// The number in force.
        held: u128,
    },
}

/// The CRLs in force, checked.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    /// (issuer name DER, serial without leading zero bytes).
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
    /// Each issuer's CRL number.
    numbers: HashMap<Vec<u8>, u128>,
    /// The highest CRL number.
    pub number: u128,
    /// The earliest nextUpdate among them.
    pub next_update: Option<SystemTime>,
    /// How many certificates they list.
    pub count: usize,
    /// The PEM they were read from (what a node writes for a ztunnel's `CRL_PATH`).
    pub pem: String,
}

fn strip(serial: &[u8]) -> Vec<u8> {
    let start = serial
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    serial[start..].to_vec()
}

impl RevocationList {
    /// Reads the PEM CRLs in `pem`, each verified against one of `signers` (DER certificates)
    /// and current at `now`; with `held`, a CRL older than the one in force for its issuer is
    /// refused too.
    pub fn from_pem(
        pem: &str,
        signers: &[rustls_pki_types::CertificateDer<'_>],
        now: SystemTime,
        held: Option<&RevocationList>,
    ) -> Result<Self, CrlError> {
        let mut blocks = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| CrlError::Malformed(e.to_string()))?;
            if block.label == "X509 CRL" {
                blocks.push(block.contents);
            }
        }
        let mut list = Self::from_der(&blocks, signers, now, held)?;
        list.pem = pem.to_owned();
        Ok(list)
    }

    /// [`Self::from_pem`] for CRLs in DER, one per element.
    pub fn from_der(
        crls: &[Vec<u8>],
        signers: &[rustls_pki_types::CertificateDer<'_>],
        now: SystemTime,
        held: Option<&RevocationList>,
    ) -> Result<Self, CrlError> {
        let parsed_signers: Vec<X509Certificate<'_>> = signers
            .iter()
            .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
            .collect();
        let mut list = RevocationList::default();
        for der in crls {
            let (_, crl) = CertificateRevocationList::from_der(der)
                .map_err(|e| CrlError::Malformed(e.to_string()))?;
            let issuer_raw = crl.issuer().as_raw().to_vec();
            let issuer = crl.issuer().to_string();
            let signed = parsed_signers.iter().any(|s| {
                s.subject().as_raw() == issuer_raw.as_slice()
                    && crl.verify_signature(s.public_key()).is_ok()
            });
            if !signed {
                return Err(CrlError::UnknownSigner { issuer });
            }
            let next_update = crl.next_update().map(to_system_time);
            if let Some(next) = next_update
                && next <= now
            {
                return Err(CrlError::Stale {
                    issuer,
                    next_update: crate::format::rfc3339(next),
                });
            }
            let number = crl
                .crl_number()
                .and_then(|n| u128::try_from(n).ok())
                .unwrap_or(0);
            if let Some(held) = held.and_then(|h| h.numbers.get(&issuer_raw))
                && number < *held
            {
                return Err(CrlError::Older {
                    issuer,
                    got: number,
                    held: *held,
                });
            }
            for r in crl.iter_revoked_certificates() {
                list.revoked
                    .insert((issuer_raw.clone(), strip(r.raw_serial())));
            }
            list.numbers.insert(issuer_raw, number);
            list.number = list.number.max(number);
            list.next_update = match (list.next_update, next_update) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if list.numbers.is_empty() {
            return Err(CrlError::Malformed("no X509 CRL block".into()));
        }
        list.count = list.revoked.len();
        Ok(list)
    }

    /// Whether the certificate `der` is listed (by its issuer's CRL).
    pub fn is_revoked(&self, der: &[u8]) -> bool {
        if self.revoked.is_empty() {
            return false;
        }
        match X509Certificate::from_der(der) {
            Ok((_, cert)) => self.is_revoked_parsed(&cert),
            Err(_) => false,
        }
    }

    /// Whether `cert` is listed.
    pub fn is_revoked_parsed(&self, cert: &X509Certificate<'_>) -> bool {
        self.revoked
            .contains(&(cert.issuer().as_raw().to_vec(), strip(cert.raw_serial())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{generation_root_params, leaf_params};
    use crate::{SpiffeId, TrustDomain};
    use rcgen::{
        CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
        RevokedCertParams, SerialNumber,
    };
    use std::time::{Duration, UNIX_EPOCH};

    struct Root {
        der: rustls_pki_types::CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn root(generation: u32, now: SystemTime) -> Root {
        let td: TrustDomain = "td".parse().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = generation_root_params(&td, generation, now, Duration::from_secs(86400))
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        Root {
            issuer: Issuer::from_ca_cert_der(&der, key).unwrap(),
            der,
        }
    }

    fn leaf(root: &Root, now: SystemTime) -> Vec<u8> {
        let id: SpiffeId = "spiffe://td/w".parse().unwrap();
        let key = KeyPair::generate().unwrap();
        leaf_params(
            &id,
            now,
            Duration::from_secs(3600),
            now + Duration::from_secs(86400),
        )
        .unwrap()
        .signed_by(&key, &root.issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    fn crl(
        root: &Root,
        serials: &[&[u8]],
        number: u64,
        this: SystemTime,
        next: SystemTime,
    ) -> String {
        CertificateRevocationListParams {
            this_update: this.into(),
            next_update: next.into(),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: this.into(),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&root.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn serial(der: &[u8]) -> Vec<u8> {
        let (_, c) = X509Certificate::from_der(der).unwrap();
        c.raw_serial().to_vec()
    }

    #[test]
    fn a_crl_is_taken_only_signed_by_a_trusted_root_current_and_not_older_than_the_one_held() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let (a, b) = (root(1, now), root(2, now));
        let (revoked, kept) = (leaf(&a, now), leaf(&a, now));
        let hour = Duration::from_secs(3600);
        let pem = crl(&a, &[&serial(&revoked)], 5, now - hour, now + hour);

        let list =
            RevocationList::from_pem(&pem, &[a.der.clone(), b.der.clone()], now, None).unwrap();
        assert!(list.is_revoked(&revoked));
        assert!(!list.is_revoked(&kept));
        assert_eq!((list.count, list.number), (1, 5));
        assert_eq!(list.next_update, Some(now + hour));

        // Signed by a root this node does not trust: refused.
        let err =
            RevocationList::from_pem(&pem, std::slice::from_ref(&b.der), now, None).unwrap_err();
        assert!(matches!(err, CrlError::UnknownSigner { .. }), "{err}");
        // A CRL of b's name forged with another key.
        let forger = root(2, now);
        let forged = crl(&forger, &[&serial(&kept)], 9, now - hour, now + hour);
        let err = RevocationList::from_pem(&forged, &[a.der.clone(), b.der.clone()], now, None)
            .unwrap_err();
        assert!(matches!(err, CrlError::UnknownSigner { .. }), "{err}");
        // Past its nextUpdate.
        let err =
            RevocationList::from_pem(&pem, std::slice::from_ref(&a.der), now + 2 * hour, None)
                .unwrap_err();
        assert!(matches!(err, CrlError::Stale { .. }), "{err}");
        // Older than the one in force.
        let older = crl(&a, &[], 4, now - hour, now + hour);
        let err = RevocationList::from_pem(&older, std::slice::from_ref(&a.der), now, Some(&list))
            .unwrap_err();
        assert!(
            matches!(
                err,
                CrlError::Older {
                    got: 4,
                    held: 5,
                    ..
                }
            ),
            "{err}"
        );
        // Not a CRL at all.
        assert!(
            RevocationList::from_pem("hello", std::slice::from_ref(&a.der), now, None).is_err()
        );
    }
}
