//! Workload keys and certificate signing requests.
//!
//! Each request for a certificate uses a fresh EC P-256 key, generated where it will be used
//! and never sent anywhere: the CA only ever sees the CSR, which proves possession of the key.

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256,
    PublicKeyData,
};
use zeroize::Zeroizing;

use crate::spiffe_id::SpiffeId;

/// The OID of the subjectAltName extension.
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[error("key or CSR generation failed: {0}")]
pub struct KeyError(#[from] rcgen::Error);

/// A private key for one workload certificate. The secret is held by rcgen's key pair, which
/// zeroizes it when dropped; [`WorkloadKey::pkcs8_der`] hands out a zeroizing copy.
pub struct WorkloadKey {
    key: KeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

impl WorkloadKey {
    /// Generates a fresh EC P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        })
    }

    /// Builds a PEM CSR for `id`: empty subject and one critical URI SAN, as the X509-SVID
    /// standard asks of a certificate with an empty subject.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, KeyError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.custom_extensions = vec![uri_san_extension(id)];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// The DER SubjectPublicKeyInfo, to check that an issued certificate carries this key.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// The private key as PKCS#8 DER, in a buffer that is wiped when dropped.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.serialize_der())
    }

    /// The underlying rcgen key pair (for signing certificates in tests and tools).
    pub fn key_pair(&self) -> &KeyPair {
        &self.key
    }
}

/// A critical subjectAltName extension holding exactly one URI: the SPIFFE ID.
pub fn uri_san_extension(id: &SpiffeId) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(OID_SUBJECT_ALT_NAME, general_names_uri(id));
    ext.set_criticality(true);
    ext
}

/// DER of `GeneralNames ::= SEQUENCE { [6] IA5String uri }`.
fn general_names_uri(id: &SpiffeId) -> Vec<u8> {
    let uri = id.as_str().as_bytes();
    let mut inner = vec![0x86];
    push_der_len(&mut inner, uri.len());
    inner.extend_from_slice(uri);
    let mut out = vec![0x30];
    push_der_len(&mut out, inner.len());
    out.extend_from_slice(&inner);
    out
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        // SPIFFE IDs are at most 2048 bytes, so two length bytes always suffice.
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn csr_has_empty_subject_and_one_critical_uri_san() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/frontend").unwrap();
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(&id).unwrap();
        let (_, block) = parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&block.contents).unwrap();
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0);
        assert_eq!(info.subject_pki.raw, key.public_key_spki_der().as_slice());
        let exts: Vec<_> = csr.requested_extensions().unwrap().collect();
        assert_eq!(exts.len(), 1);
        let ParsedExtension::SubjectAlternativeName(san) = exts[0] else {
            panic!("expected a SAN, got {:?}", exts[0]);
        };
        assert_eq!(
            san.general_names,
            vec![GeneralName::URI(
                "spiffe://cluster.local/ns/default/sa/frontend"
            )]
        );
        // Criticality is not in ParsedExtension: read the raw extension.
        let raw = csr
            .certification_request_info
            .iter_attributes()
            .find_map(|a| match a.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(r) => Some(r.extensions.clone()),
                _ => None,
            })
            .unwrap();
        assert!(raw[0].critical);
    }

    #[test]
    fn long_ids_encode_with_multi_byte_lengths() {
        let long = format!("spiffe://example.org/{}", "a".repeat(300));
        let id = SpiffeId::new(&long).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let pem = key.csr_pem(&id).unwrap();
        let (_, block) = parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&block.contents).unwrap();
        let ext = csr.requested_extensions().unwrap().next().unwrap();
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            panic!("no SAN")
        };
        assert_eq!(san.general_names, vec![GeneralName::URI(long.as_str())]);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let key = WorkloadKey::generate().unwrap();
        let s = format!("{key:?}");
        assert!(!s.contains("PRIVATE"));
        assert!(key.pkcs8_der().len() > 100);
    }
}
