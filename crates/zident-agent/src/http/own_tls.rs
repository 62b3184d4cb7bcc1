//! Serving with the agent's own certificate: a rustls resolver that always presents the
//! current certificate of the agent's identity, rebuilt only when it rotates.

use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use zident_identity::{CertificateProvider, SpiffeId};

use crate::certs::manager::CertificateManager;

/// Presents the agent's own current certificate.
pub struct OwnCertResolver {
    manager: Arc<CertificateManager>,
    id: SpiffeId,
    cache: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for OwnCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnCertResolver")
            .field("id", &self.id)
            .finish()
    }
}

impl OwnCertResolver {
    /// A resolver for `id`'s certificate in `manager`.
    pub fn new(manager: Arc<CertificateManager>, id: SpiffeId) -> Self {
        Self {
            manager,
            id,
            cache: Mutex::new(None),
        }
    }
}

impl ResolvesServerCert for OwnCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No valid certificate: the handshake fails (fail closed).
        let cert = self.manager.current(&self.id)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((serial, key)) = cache.as_ref()
            && *serial == cert.serial_hex
        {
            return Some(key.clone());
        }
        let built = cert.certified_key().ok()?;
        *cache = Some((cert.serial_hex.clone(), built.clone()));
        Some(built)
    }
}
