//! Reading a certificate signing request the way a CA must: with suspicion.
//!
//! A CSR proves that its sender holds a private key (the signature) and says which identity it
//! wants (the URI SAN). Everything else it asks for — extensions, subject, key usages — is
//! ignored: the CA decides the certificate's contents, never the requester.

use rcgen::{
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm,
};
use x509_parser::oid_registry;
use x509_parser::prelude::*;

use crate::spiffe_id::{IdError, SpiffeId};

/// The largest PEM CSR accepted, in bytes. Real ones are under 2 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a CSR was refused. Each variant is a distinct reason, counted and logged by the CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {0} bytes; at most {MAX_CSR_BYTES} are accepted")]
    TooLarge(usize),
    /// Not a PEM `CERTIFICATE REQUEST` block.
    #[error("CSR is not a PEM \"CERTIFICATE REQUEST\": {0}")]
    NotPem(String),
    /// The DER inside does not parse as PKCS#10.
    #[error("CSR is not valid PKCS#10: {0}")]
    Malformed(String),
    /// The signature does not verify with the CSR's own key: no proof of possession.
    #[error("CSR signature does not verify with its public key (no proof of possession)")]
    BadSignature,
    /// The key type is not EC P-256, EC P-384 or RSA.
    #[error("CSR key type {0} is not accepted; use EC P-256, EC P-384 or RSA >= 2048 bits")]
    UnsupportedKey(String),
    /// RSA with a modulus under [`MIN_RSA_BITS`].
    #[error("CSR RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    RsaTooSmall(usize),
    /// No URI SAN at all.
    #[error("CSR has no URI SAN; it must name exactly one SPIFFE ID")]
    NoUriSan,
    /// More than one URI SAN.
    #[error("CSR has {0} URI SANs; it must name exactly one SPIFFE ID")]
    SeveralUriSans(usize),
    /// The URI SAN is not a valid workload SPIFFE ID.
    #[error("CSR URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// The URI as it appeared.
        uri: String,
        /// The rule it broke.
        reason: IdError,
    },
}

/// The subject public key of a verified CSR, in the form rcgen signs a certificate for.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    alg: &'static SignatureAlgorithm,
    key_bits: Vec<u8>,
    spki_der: Vec<u8>,
}

impl CsrPublicKey {
    /// The whole DER SubjectPublicKeyInfo, as it appears in the CSR and will in the certificate.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A CSR whose signature verified and which names exactly one valid SPIFFE ID.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The one identity requested.
    pub id: SpiffeId,
    /// The key the certificate will certify.
    pub public_key: CsrPublicKey,
}

/// Parses a PEM CSR, checks its size, signature, key type and URI SAN.
pub fn verify_csr_pem(pem: &str) -> Result<VerifiedCsr, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(pem.len()));
    }
    let (_, block) = parse_x509_pem(pem.as_bytes()).map_err(|e| CsrError::NotPem(e.to_string()))?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::NotPem(format!(
            "found a {:?} block instead",
            block.label
        )));
    }
    verify_csr_der(&block.contents)
}

/// As [`verify_csr_pem`], for DER input.
pub fn verify_csr_der(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let alg = accepted_key(spki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let id = the_one_uri_san(&csr)?;
    Ok(VerifiedCsr {
        id,
        public_key: CsrPublicKey {
            alg,
            key_bits: spki.subject_public_key.data.to_vec(),
            spki_der: spki.raw.to_vec(),
        },
    })
}

fn accepted_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<&'static SignatureAlgorithm, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC without a named curve".into()))?;
        if curve == oid_registry::OID_EC_P256 {
            Ok(&PKCS_ECDSA_P256_SHA256)
        } else if curve == oid_registry::OID_NIST_EC_P384 {
            Ok(&PKCS_ECDSA_P384_SHA384)
        } else {
            Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
        }
    } else if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if bits < MIN_RSA_BITS {
                    Err(CsrError::RsaTooSmall(bits))
                } else {
                    Ok(&PKCS_RSA_SHA256)
                }
            }
            _ => Err(CsrError::Malformed("unreadable RSA public key".into())),
        }
    } else {
        Err(CsrError::UnsupportedKey(alg.to_id_string()))
    }
}

fn the_one_uri_san(csr: &X509CertificationRequest<'_>) -> Result<SpiffeId, CsrError> {
    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push(*uri);
                }
            }
        }
    }
    match uris.as_slice() {
        [] => Err(CsrError::NoUriSan),
        [uri] => SpiffeId::new(uri)
            .and_then(SpiffeId::require_path)
            .map_err(|reason| CsrError::BadSpiffeId {
                uri: (*uri).to_owned(),
                reason,
            }),
        several => Err(CsrError::SeveralUriSans(several.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WorkloadKey;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://cluster.local/ns/default/sa/web").unwrap()
    }

    fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> String {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = sans;
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn accepts_our_own_csr() {
        let key = WorkloadKey::generate().unwrap();
        let csr = verify_csr_pem(&key.csr_pem(&id()).unwrap()).unwrap();
        assert_eq!(csr.id, id());
        assert_eq!(
            csr.public_key.spki_der(),
            key.public_key_spki_der().as_slice()
        );
    }

    #[test]
    fn accepts_p384_and_ignores_other_names() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let pem = csr_with(
            &key,
            vec![
                uri(id().as_str()),
                SanType::DnsName("x.example".try_into().unwrap()),
            ],
        );
        assert_eq!(verify_csr_pem(&pem).unwrap().id, id());
    }

    #[test]
    fn refuses_each_bad_csr_with_its_reason() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let two = csr_with(
            &key,
            vec![uri(id().as_str()), uri("spiffe://cluster.local/x")],
        );
        assert_eq!(
            verify_csr_pem(&two).unwrap_err(),
            CsrError::SeveralUriSans(2)
        );
        let none = csr_with(&key, vec![SanType::DnsName("a.b".try_into().unwrap())]);
        assert_eq!(verify_csr_pem(&none).unwrap_err(), CsrError::NoUriSan);
        let bad_id = csr_with(&key, vec![uri("spiffe://Cluster.local/a")]);
        assert!(matches!(
            verify_csr_pem(&bad_id).unwrap_err(),
            CsrError::BadSpiffeId { .. }
        ));
        let no_path = csr_with(&key, vec![uri("spiffe://cluster.local")]);
        assert!(matches!(
            verify_csr_pem(&no_path).unwrap_err(),
            CsrError::BadSpiffeId {
                reason: IdError::MissingPath,
                ..
            }
        ));
        assert!(matches!(
            verify_csr_pem("garbage").unwrap_err(),
            CsrError::NotPem(_)
        ));
        let big = "A".repeat(MAX_CSR_BYTES + 1);
        assert_eq!(
            verify_csr_pem(&big).unwrap_err(),
            CsrError::TooLarge(MAX_CSR_BYTES + 1)
        );
        let cert_block = crate::pem::to_pem("CERTIFICATE", &[0x30, 0]);
        assert!(matches!(
            verify_csr_pem(&cert_block).unwrap_err(),
            CsrError::NotPem(_)
        ));
        let junk = crate::pem::to_pem("CERTIFICATE REQUEST", b"\x30\x03abc");
        assert!(matches!(
            verify_csr_pem(&junk).unwrap_err(),
            CsrError::Malformed(_)
        ));
    }

    #[test]
    fn refuses_a_tampered_signature() {
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(&id()).unwrap();
        let (_, block) = parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents.clone();
        // Flip a bit in the last byte of the signature.
        let last = der.len() - 1;
        der[last] ^= 1;
        assert_eq!(verify_csr_der(&der).unwrap_err(), CsrError::BadSignature);
    }
}
