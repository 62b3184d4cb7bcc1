//! A new root generation's material, made in memory: the self-signed root certificate, its
//! key and the generation's JWT-SVID signing key. Every root store writes the same material
//! its own way (files in the data dir, sealed rows in the database), so making it does no I/O.

use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use zeroize::Zeroizing;
use zident_identity::{TrustDomain, profile};

/// A root generation: 1 is the original root, each prepare makes the next.
pub type Generation = u32;

/// A key or certificate could not be made (the crypto library refused).
#[derive(Debug, thiserror::Error)]
#[error("cannot make a root generation: {0}")]
pub struct GenerationError(String);

/// What `prepare` (or a CA's first start) makes for one generation.
#[derive(Clone)]
pub struct NewGeneration {
    /// The generation.
    pub generation: Generation,
    /// The self-signed root certificate, PEM.
    pub cert_pem: String,
    /// The root's private key, PEM (PKCS#8).
    pub key_pem: Zeroizing<Vec<u8>>,
    /// The generation's JWT-SVID signing key, PEM.
    pub jwt_key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for NewGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewGeneration")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl NewGeneration {
    /// A fresh key pair, a root for `td` valid from `now` for `lifetime`, and a JWT key.
    pub fn make(
        td: &TrustDomain,
        generation: Generation,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, GenerationError> {
        let key = KeyPair::generate().map_err(|e| GenerationError(e.to_string()))?;
        let cert = profile::generation_root_params(td, generation, now, lifetime)
            .self_signed(&key)
            .map_err(|e| GenerationError(e.to_string()))?;
        Ok(Self {
            generation,
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem().into_bytes()),
            jwt_key_pem: jwt_key_pem()?,
        })
    }
}

/// A new JWT-SVID signing key, PEM: for a new generation, or for one made before JWT-SVIDs.
pub fn jwt_key_pem() -> Result<Zeroizing<Vec<u8>>, GenerationError> {
    zident_identity::jwt::JwtSigner::generate_pem()
        .map(|pem| Zeroizing::new(pem.as_bytes().to_vec()))
        .map_err(|e| GenerationError(e.to_string()))
}

/// A generation as a store holds it: its root certificate, and its keys while it may still
/// sign (`None` once retired; the JWT key also for a generation made before JWT-SVIDs). The
/// authority is loaded from these, whichever store they came from.
#[derive(Clone)]
pub struct StoredGeneration {
    /// The generation.
    pub generation: Generation,
    /// The root certificate, PEM.
    pub cert_pem: String,
    /// The root's key, PEM.
    pub key_pem: Option<Zeroizing<Vec<u8>>>,
    /// The JWT-SVID signing key, PEM.
    pub jwt_key_pem: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for StoredGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredGeneration")
            .field("generation", &self.generation)
            .field("has_key", &self.key_pem.is_some())
            .field("has_jwt_key", &self.jwt_key_pem.is_some())
            .finish()
    }
}
