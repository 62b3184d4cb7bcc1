//! Verifying an X509-SVID: the SPIFFE rules for the leaf, then the chain to a trust bundle.
//!
//! Every failure has its own variant, because "certificate invalid" tells an operator nothing;
//! "expired at 10:02:13" or "signed by a root this node does not trust" tells them what to fix.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::*;

use crate::bundle::TrustBundle;
use crate::format::{human, rfc3339, serial_hex, to_system_time};
use crate::spiffe_id::{IdError, SpiffeId};

/// Why a certificate chain is not a valid X509-SVID for a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificates at all.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// A certificate does not parse as DER X.509.
    #[error("certificate {index} of the chain is not valid DER X.509: {reason}")]
    Malformed {
        /// Position in the chain, 0 = leaf.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// The leaf is a CA certificate.
    #[error("the leaf is a CA certificate (basicConstraints CA=true); an SVID leaf must not be")]
    NotALeaf,
    /// The leaf has no URI SAN.
    #[error("the leaf has no URI SAN; an SVID carries exactly one SPIFFE ID")]
    NoUriSan,
    /// The leaf has several URI SANs.
    #[error("the leaf has {0} URI SANs; an SVID carries exactly one SPIFFE ID")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("the leaf's URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// The URI as found.
        uri: String,
        /// The rule it broke.
        reason: IdError,
    },
    /// The subject is empty and the SAN extension is not critical.
    #[error("the leaf has an empty subject, so its SAN extension must be critical")]
    SanNotCritical,
    /// No key usage extension.
    #[error("the leaf has no key usage extension; an SVID leaf needs digitalSignature")]
    KeyUsageMissing,
    /// The key usage extension is not critical.
    #[error("the leaf's key usage extension is not critical")]
    KeyUsageNotCritical,
    /// Key usage lacks digitalSignature.
    #[error("the leaf's key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// Key usage has keyCertSign or cRLSign.
    #[error("the leaf's key usage has {0}, which only a signing certificate may have")]
    ForbiddenKeyUsage(&'static str),
    /// An EKU extension without both serverAuth and clientAuth.
    #[error("the leaf's extended key usage lacks {0}")]
    ExtKeyUsageIncomplete(&'static str),
    /// notAfter is in the past.
    #[error("the leaf expired {} ago (notAfter {})", human(*.ago), rfc3339(*.not_after))]
    Expired {
        /// The leaf's notAfter.
        not_after: SystemTime,
        /// How long ago.
        ago: Duration,
    },
    /// notBefore is in the future.
    #[error("the leaf is not valid for another {} (notBefore {})", human(*.wait), rfc3339(*.not_before))]
    NotYetValid {
        /// The leaf's notBefore.
        not_before: SystemTime,
        /// How long until it is.
        wait: Duration,
    },
    /// The SPIFFE ID's trust domain is not the bundle's.
    #[error("the SVID is for trust domain {found:?}, but the bundle is for {expected:?}")]
    WrongTrustDomain {
        /// The bundle's trust domain.
        expected: String,
        /// The SVID's.
        found: String,
    },
    /// No root in the bundle signed this chain.
    #[error("the chain does not lead to any root in the trust bundle (unknown issuer)")]
    UnknownIssuer,
    /// A signature in the chain does not verify: the issuer's name matches a trusted
    /// certificate but its key does not (another CA of the same name, or tampering).
    #[error(
        "a signature in the chain does not verify with the trusted certificate of that name (signed by another CA with the same name, or tampered)"
    )]
    BadSignature,
    /// Any other path-validation failure (expired intermediate, bad constraints, ...).
    #[error("the chain is not valid: {0}")]
    InvalidChain(String),
}

/// The signature algorithms accepted in a chain: ECDSA and RSA (PKCS#1 and PSS) with SHA-2,
/// and Ed25519, all from aws-lc-rs.
static VERIFICATION_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = {
    use webpki::aws_lc_rs::*;
    &[
        ECDSA_P256_SHA256,
        ECDSA_P256_SHA384,
        ECDSA_P384_SHA256,
        ECDSA_P384_SHA384,
        ECDSA_P521_SHA256,
        ECDSA_P521_SHA384,
        ECDSA_P521_SHA512,
        RSA_PKCS1_2048_8192_SHA256,
        RSA_PKCS1_2048_8192_SHA384,
        RSA_PKCS1_2048_8192_SHA512,
        RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        ED25519,
    ]
};

/// What a valid SVID says, read from its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// The one SPIFFE ID.
    pub id: SpiffeId,
    /// Serial number as lowercase hex.
    pub serial_hex: String,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

/// Verifies `chain` (leaf first) as an X509-SVID issued under `bundle` at time `now`, and
/// returns what its leaf says.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<SvidInfo, SvidError> {
    verify_svid_root(chain, bundle, now).map(|(info, _)| info)
}

/// [`verify_svid`], also returning the root of `bundle` the chain ends at. One chain
/// verification (an ECDSA verification per link) is most of an agent's work per certificate:
/// a caller that needs both the checks and the root asks once, not twice.
pub fn verify_svid_root<'b>(
    chain: &[CertificateDer<'_>],
    bundle: &'b TrustBundle,
    now: SystemTime,
) -> Result<(SvidInfo, &'b CertificateDer<'static>), SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
    let info = check_leaf(leaf_der)?;
    verify_checked_svid_root(chain, info, bundle, now)
}

/// [`verify_svid_root`] for a chain whose leaf (`chain[0]`) the caller has already read with
/// [`check_parsed_leaf`], giving `info`: an agent parses each issued leaf once, checks its
/// identity and key, and then has the chain verified, rather than parsing it three times.
pub fn verify_checked_svid_root<'b>(
    chain: &[CertificateDer<'_>],
    info: SvidInfo,
    bundle: &'b TrustBundle,
    now: SystemTime,
) -> Result<(SvidInfo, &'b CertificateDer<'static>), SvidError> {
    let leaf_der = chain.first().ok_or(SvidError::EmptyChain)?;
    for (index, der) in chain.iter().enumerate().skip(1) {
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed {
            index,
            reason: e.to_string(),
        })?;
    }
    check_time(&info, now)?;
    if info.id.trust_domain_str() != bundle.trust_domain().as_str() {
        return Err(SvidError::WrongTrustDomain {
            expected: bundle.trust_domain().to_string(),
            found: info.id.trust_domain_str().to_owned(),
        });
    }
    let root = chain_root(leaf_der, &chain[1..], bundle, now)?;
    Ok((info, root))
}

/// One rule of the X509-SVID standard applied to a leaf: `Ok(detail)` when it holds, the
/// specific error when it does not, `None` when it does not apply (a rule that depends on one
/// that already failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleResult {
    /// What the rule says, e.g. "exactly one URI SAN".
    pub rule: &'static str,
    /// The verdict.
    pub result: Option<Result<String, SvidError>>,
}

impl RuleResult {
    fn pass(rule: &'static str, detail: impl Into<String>) -> Self {
        Self {
            rule,
            result: Some(Ok(detail.into())),
        }
    }
    fn fail(rule: &'static str, e: SvidError) -> Self {
        Self {
            rule,
            result: Some(Err(e)),
        }
    }
    fn skip(rule: &'static str) -> Self {
        Self { rule, result: None }
    }
}

/// Applies every leaf rule of the X509-SVID standard; returns the SPIFFE ID if it could be
/// read, and each rule's verdict.
pub fn leaf_rules(cert: &X509Certificate<'_>) -> (Option<SpiffeId>, Vec<RuleResult>) {
    let mut out = Vec::new();
    let malformed = |e: X509Error| SvidError::Malformed {
        index: 0,
        reason: e.to_string(),
    };

    out.push(if cert.is_ca() {
        RuleResult::fail("not a CA certificate", SvidError::NotALeaf)
    } else {
        RuleResult::pass(
            "not a CA certificate",
            "basicConstraints CA=false or absent",
        )
    });

    let mut id = None;
    match cert.subject_alternative_name() {
        Err(e) => {
            out.push(RuleResult::fail("exactly one URI SAN", malformed(e)));
            out.push(RuleResult::skip("the URI SAN is a SPIFFE ID with a path"));
            out.push(RuleResult::skip("SAN critical when the subject is empty"));
        }
        Ok(san) => {
            let uris: Vec<&str> = san
                .iter()
                .flat_map(|s| s.value.general_names.iter())
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect();
            match uris.as_slice() {
                [] => {
                    out.push(RuleResult::fail("exactly one URI SAN", SvidError::NoUriSan));
                    out.push(RuleResult::skip("the URI SAN is a SPIFFE ID with a path"));
                }
                [uri] => {
                    out.push(RuleResult::pass("exactly one URI SAN", *uri));
                    out.push(match SpiffeId::new(uri).and_then(SpiffeId::require_path) {
                        Ok(parsed) => {
                            id = Some(parsed);
                            RuleResult::pass("the URI SAN is a SPIFFE ID with a path", *uri)
                        }
                        Err(reason) => RuleResult::fail(
                            "the URI SAN is a SPIFFE ID with a path",
                            SvidError::BadSpiffeId {
                                uri: (*uri).to_owned(),
                                reason,
                            },
                        ),
                    });
                }
                several => {
                    out.push(RuleResult::fail(
                        "exactly one URI SAN",
                        SvidError::SeveralUriSans(several.len()),
                    ));
                    out.push(RuleResult::skip("the URI SAN is a SPIFFE ID with a path"));
                }
            }
            let empty_subject = cert.subject().iter().next().is_none();
            out.push(match (empty_subject, san) {
                (false, _) => RuleResult::pass(
                    "SAN critical when the subject is empty",
                    "subject is not empty",
                ),
                (true, Some(s)) if s.critical => {
                    RuleResult::pass("SAN critical when the subject is empty", "critical")
                }
                (true, Some(_)) => RuleResult::fail(
                    "SAN critical when the subject is empty",
                    SvidError::SanNotCritical,
                ),
                (true, None) => RuleResult::skip("SAN critical when the subject is empty"),
            });
        }
    }

    match cert.key_usage() {
        Err(e) => out.push(RuleResult::fail("key usage present", malformed(e))),
        Ok(None) => {
            out.push(RuleResult::fail(
                "key usage present",
                SvidError::KeyUsageMissing,
            ));
            for rule in [
                "key usage critical",
                "key usage has digitalSignature",
                "key usage has neither keyCertSign nor cRLSign",
            ] {
                out.push(RuleResult::skip(rule));
            }
        }
        Ok(Some(ku)) => {
            out.push(RuleResult::pass(
                "key usage present",
                format!("{}", ku.value),
            ));
            out.push(if ku.critical {
                RuleResult::pass("key usage critical", "critical")
            } else {
                RuleResult::fail("key usage critical", SvidError::KeyUsageNotCritical)
            });
            out.push(if ku.value.digital_signature() {
                RuleResult::pass("key usage has digitalSignature", "set")
            } else {
                RuleResult::fail(
                    "key usage has digitalSignature",
                    SvidError::NoDigitalSignature,
                )
            });
            let rule = "key usage has neither keyCertSign nor cRLSign";
            out.push(if ku.value.key_cert_sign() {
                RuleResult::fail(rule, SvidError::ForbiddenKeyUsage("keyCertSign"))
            } else if ku.value.crl_sign() {
                RuleResult::fail(rule, SvidError::ForbiddenKeyUsage("cRLSign"))
            } else {
                RuleResult::pass(rule, "neither set")
            });
        }
    }

    let rule = "extended key usage, if present, has serverAuth and clientAuth";
    out.push(match cert.extended_key_usage() {
        Err(e) => RuleResult::fail(rule, malformed(e)),
        Ok(None) => RuleResult::pass(rule, "absent"),
        Ok(Some(eku)) if !eku.value.server_auth => {
            RuleResult::fail(rule, SvidError::ExtKeyUsageIncomplete("serverAuth"))
        }
        Ok(Some(eku)) if !eku.value.client_auth => {
            RuleResult::fail(rule, SvidError::ExtKeyUsageIncomplete("clientAuth"))
        }
        Ok(Some(_)) => RuleResult::pass(rule, "both present"),
    });
    (id, out)
}

/// Checks the X509-SVID rules on a leaf alone (no chain, no clock): the first rule that fails.
pub fn check_leaf(der: &[u8]) -> Result<SvidInfo, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::Malformed {
        index: 0,
        reason: e.to_string(),
    })?;
    check_parsed_leaf(&cert)
}

/// [`check_leaf`] of a leaf the caller has parsed (and reads more of).
pub fn check_parsed_leaf(cert: &X509Certificate<'_>) -> Result<SvidInfo, SvidError> {
    let (id, rules) = leaf_rules(cert);
    if let Some(e) = rules
        .into_iter()
        .find_map(|r| r.result.and_then(Result::err))
    {
        return Err(e);
    }
    let id = id.ok_or(SvidError::NoUriSan)?;
    Ok(SvidInfo {
        id,
        serial_hex: serial_hex(cert.raw_serial()),
        not_before: to_system_time(cert.validity().not_before),
        not_after: to_system_time(cert.validity().not_after),
    })
}

/// Whether `now` is inside the leaf's validity window.
pub fn check_time(info: &SvidInfo, now: SystemTime) -> Result<(), SvidError> {
    if let Ok(ago) = now.duration_since(info.not_after)
        && !ago.is_zero()
    {
        return Err(SvidError::Expired {
            not_after: info.not_after,
            ago,
        });
    }
    if let Ok(wait) = info.not_before.duration_since(now)
        && !wait.is_zero()
    {
        return Err(SvidError::NotYetValid {
            not_before: info.not_before,
            wait,
        });
    }
    Ok(())
}

/// Verifies that `leaf` chains through `intermediates` to a root of `bundle` at `now`.
pub fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), SvidError> {
    chain_root(leaf, intermediates, bundle, now).map(|_| ())
}

/// Verifies the chain as [`verify_chain`] does, and returns the root of `bundle` it ends at:
/// the root that signs, which is what changes when a root rotation activates.
pub fn chain_root<'b>(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &'b TrustBundle,
    now: SystemTime,
) -> Result<&'b CertificateDer<'static>, SvidError> {
    let anchors = bundle.trust_anchors();
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| SvidError::Malformed {
        index: 0,
        reason: format!("{e:?}"),
    })?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let path = ee
        .verify_for_usage(
            VERIFICATION_ALGS,
            anchors,
            intermediates,
            UnixTime::since_unix_epoch(since_epoch),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => SvidError::UnknownIssuer,
            webpki::Error::InvalidSignatureForPublicKey => SvidError::BadSignature,
            webpki::Error::CertExpired { not_after, .. } => SvidError::InvalidChain(format!(
                "a certificate in the chain expired at {}",
                rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.as_secs()))
            )),
            webpki::Error::CertNotValidYet { not_before, .. } => SvidError::InvalidChain(format!(
                "a certificate in the chain is not valid before {}",
                rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(not_before.as_secs()))
            )),
            other => SvidError::InvalidChain(format!("{other:?}")),
        })?;
    let anchor = path.anchor();
    bundle
        .roots()
        .iter()
        .find(|root| {
            webpki::anchor_from_trusted_cert(root).is_ok_and(|a| {
                a.subject == anchor.subject
                    && a.subject_public_key_info == anchor.subject_public_key_info
            })
        })
        .ok_or(SvidError::UnknownIssuer)
}
