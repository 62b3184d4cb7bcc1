//! The agent's TLS to the CA. The CA's serving certificate must chain to a root of this node's
//! current trust bundle, not to a file read once at start: when the CA's root rotates, its
//! serving certificate is signed by the new root, which the node learned from the bundle
//! endpoint in the prepare phase, and the agent keeps renewing without a restart.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::trust::TrustStore;

/// Verifies the CA's certificate against the trust store as it is at each handshake.
pub struct BundleServerVerifier {
    trust: Arc<TrustStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The verifier for the bundle of this sequence number.
    cached: Mutex<Option<(u64, Arc<WebPkiServerVerifier>)>>,
}

impl std::fmt::Debug for BundleServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleServerVerifier")
            .finish_non_exhaustive()
    }
}

impl BundleServerVerifier {
    /// A verifier over `trust`.
    pub fn new(trust: Arc<TrustStore>) -> Self {
        Self {
            trust,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            cached: Mutex::new(None),
        }
    }

    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let bundle = self.trust.bundle();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((sequence, v)) = cached.as_ref()
            && *sequence == bundle.sequence()
        {
            return Ok(v.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        for root in bundle.roots() {
            // A root webpki cannot use as an anchor is skipped; the others still verify.
            let _ = roots.add(root.clone());
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("trust bundle unusable: {e}")))?;
        *cached = Some((bundle.sequence(), verifier.clone()));
        Ok(verifier)
    }
}

impl ServerCertVerifier for BundleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client TLS configuration for the CA (TLS 1.3, ALPN `h2` for gRPC, or `http/1.1`).
pub fn client_config(
    trust: Arc<TrustStore>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(BundleServerVerifier::new(trust)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
