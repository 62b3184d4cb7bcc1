//! PEM and DER helpers: certificates travel as PEM on the Istio wire and in files, as DER
//! everywhere else.

use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a PEM input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The text is not valid PEM (bad base64, unterminated block, ...).
    #[error("malformed PEM: {0}")]
    Malformed(String),
    /// Valid PEM, but no `CERTIFICATE` block in it.
    #[error("no CERTIFICATE block found")]
    NoCertificates,
}

/// Every `CERTIFICATE` block in `pem`, in order. Other blocks (keys, CSRs) are skipped.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificates);
    }
    Ok(certs)
}

/// Certificates from a file's bytes that may be PEM (one or more blocks) or a single DER
/// certificate.
pub fn certs_from_pem_or_der(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateDer::from(bytes.to_vec())]);
    }
    certs_from_pem(bytes)
}

/// Encodes DER as one PEM block with the given label (`CERTIFICATE`, `PRIVATE KEY`, ...),
/// 64 characters a line, ending in a newline.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Encodes certificates as concatenated `CERTIFICATE` blocks.
pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs
        .into_iter()
        .map(|c| to_pem("CERTIFICATE", c.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_several_certificates() {
        let a = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        let b = CertificateDer::from((0..200u8).collect::<Vec<_>>());
        let pem = certs_to_pem([&a, &b]);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(certs_from_pem(pem.as_bytes()).unwrap(), vec![a, b]);
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(certs_from_pem(b"hello"), Err(PemError::NoCertificates));
        let key_only = to_pem("PRIVATE KEY", &[1, 2, 3]);
        assert_eq!(
            certs_from_pem(key_only.as_bytes()),
            Err(PemError::NoCertificates)
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            certs_from_pem(broken.as_bytes()),
            Err(PemError::Malformed(_))
        ));
    }
}
