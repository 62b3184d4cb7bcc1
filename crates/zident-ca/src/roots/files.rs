//! The names of the CA's key and certificate files: Istio's (`cacerts`), used both in the data
//! dir and in a plugged-in `ROOT_CA_DIR`. Their own module, because the authority that reads
//! them and the root rotation that writes new generations of them both need them.

/// The signing certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// The signing key.
pub const CA_KEY: &str = "ca-key.pem";
/// The key that signs JWT-SVIDs, one per root generation (zident's own; Istio has none).
pub const JWT_KEY: &str = "jwt-key.pem";
/// The trust bundle clients use as `CA_ROOT_CA`.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The chain from the signing certificate up to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// A file of the CA's that could not be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's contents are unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}
