//! Workload keys and certificate signing requests.
//!
//! Each request for a certificate uses a fresh EC P-256 key, generated where it will be used
//! and never sent anywhere: the CA only ever sees the CSR, which proves possession of the key.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SignatureAlgorithm, SigningKey,
};
use zeroize::Zeroizing;

use crate::spiffe_id::SpiffeId;

/// The OID of the subjectAltName extension.
const OID_SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[error("key or CSR generation failed: {0}")]
pub struct KeyError(#[from] rcgen::Error);

/// A private key for one workload certificate, held by aws-lc (which wipes it when freed);
/// [`WorkloadKey::pkcs8_der`] hands out a zeroizing copy.
///
/// Generated with aws-lc directly rather than through rcgen's `KeyPair`, which serializes a
/// new key and parses it back (the parse checks the public key against the private one: a
/// second point multiplication, more than the generation itself, for every certificate an
/// agent asks for). rcgen signs the CSR through [`SigningKey`].
pub struct WorkloadKey {
    key: EcdsaKeyPair,
}

impl std::fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

impl PublicKeyData for WorkloadKey {
    fn der_bytes(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for WorkloadKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign(&SystemRandom::new(), msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}

impl WorkloadKey {
    /// Generates a fresh EC P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        Ok(Self {
            key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
                .map_err(|_| rcgen::Error::RingUnspecified)?,
        })
    }

    /// Builds a PEM CSR for `id`: empty subject and one critical URI SAN, as the X509-SVID
    /// standard asks of a certificate with an empty subject.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, KeyError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.custom_extensions = vec![uri_san_extension(id)];
        Ok(params.serialize_request(self)?.pem()?)
    }

    /// The DER SubjectPublicKeyInfo, to check that an issued certificate carries this key.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }

    /// The private key as PKCS#8 DER, in a buffer that is wiped when dropped.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        // Serializing a key aws-lc holds cannot fail; an empty key would be refused by
        // whoever reads it.
        Zeroizing::new(
            self.key
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .unwrap_or_default(),
        )
    }

    /// The key as an rcgen key pair (for signing certificates in tests and tools, and PEM),
    /// parsed from its PKCS#8 form.
    pub fn key_pair(&self) -> Result<KeyPair, KeyError> {
        let der = self.pkcs8_der();
        Ok(KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_slice()),
            &PKCS_ECDSA_P256_SHA256,
        )?)
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
    fn the_key_survives_pkcs8_and_signs_what_its_public_key_verifies() {
        let key = WorkloadKey::generate().unwrap();
        let again = key.key_pair().unwrap();
        assert_eq!(again.subject_public_key_info(), key.public_key_spki_der());
        let msg = b"zident";
        let sig = SigningKey::sign(&key, msg).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            key.der_bytes(),
        )
        .verify(msg, &sig)
        .unwrap();
        assert_ne!(
            WorkloadKey::generate().unwrap().public_key_spki_der(),
            key.public_key_spki_der(),
            "each key is new"
        );
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
