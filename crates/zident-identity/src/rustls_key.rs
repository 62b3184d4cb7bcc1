//! A workload certificate as rustls serves it: its chain and a signing key, without a copy of
//! the private key that outlives the moment it is read.
//!
//! rustls takes a private key as `PrivateKeyDer`, which does not wipe what it owns when
//! dropped; building one from an owned copy of the PKCS#8 bytes (as the tunnel's TLS
//! configurations and the agent's own endpoints each did) left that copy in freed memory for
//! every certificate. Here the PKCS#8 form lives only in a buffer wiped on drop, and aws-lc
//! reads it from a borrow.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::provider::WorkloadCertificate;

impl WorkloadCertificate {
    /// The chain and its key for a rustls certificate resolver (`rustls::sign::SingleCertAndKey`
    /// for a configuration of one certificate). Fails if the key is not the one the leaf
    /// certifies, as rustls's `with_single_cert` does.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, rustls::Error> {
        let pkcs8 = self.key().pkcs8_der();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)?;
        let certified = CertifiedKey::new(self.chain.clone(), signer);
        certified.keys_match()?;
        Ok(Arc::new(certified))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rcgen::{Issuer, KeyPair};

    use crate::{SpiffeId, TrustDomain, WorkloadCertificate, WorkloadKey, profile};

    /// A certificate held with `held` as its private key: a leaf for that key, or with
    /// `for_another_key`, for a key of its own.
    fn held_with(held: WorkloadKey, for_another_key: bool) -> WorkloadCertificate {
        let another = WorkloadKey::generate().unwrap();
        let certified = if for_another_key { &another } else { &held };
        let td = TrustDomain::new("cluster.local").unwrap();
        let now = SystemTime::now();
        let root_key = KeyPair::generate().unwrap();
        let root = profile::root_params(&td, now, Duration::from_secs(3600))
            .self_signed(&root_key)
            .unwrap();
        let issuer = Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
        let id = SpiffeId::new("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let params = profile::leaf_params(
            &id,
            now,
            Duration::from_secs(600),
            now + Duration::from_secs(3600),
        )
        .unwrap();
        let leaf = params.signed_by(certified, &issuer).unwrap();
        WorkloadCertificate::new(
            id,
            vec![leaf.der().clone()],
            vec![root.der().clone()],
            now,
            now + Duration::from_secs(600),
            "01".into(),
            now,
            held,
        )
    }

    #[test]
    fn the_leaf_and_its_own_key_make_a_key_that_signs_for_it() {
        let key = WorkloadKey::generate().unwrap();
        let spki = key.public_key_spki_der();
        let cert = held_with(key, false);
        let certified = cert.certified_key().unwrap();
        assert_eq!(certified.cert, cert.chain);
        let public = certified
            .key
            .public_key()
            .expect("aws-lc names its public key");
        assert_eq!(public.as_ref(), spki.as_slice());
    }

    #[test]
    fn a_key_the_leaf_does_not_certify_is_refused() {
        let err = held_with(WorkloadKey::generate().unwrap(), true)
            .certified_key()
            .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)
            ),
            "{err:?}"
        );
    }
}
