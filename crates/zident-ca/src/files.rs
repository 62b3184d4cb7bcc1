//! The names of the CA's key and certificate files: Istio's (`cacerts`), used both in the data
//! dir and in a plugged-in `ROOT_CA_DIR`. Their own module, because the authority that reads
//! them and the root rotation that writes new generations of them both need them.

/// The signing certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// The signing key.
pub const CA_KEY: &str = "ca-key.pem";
/// The trust bundle clients use as `CA_ROOT_CA`.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The chain from the signing certificate up to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";
