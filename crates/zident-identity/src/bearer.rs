//! A bearer token's SHA-256: what the CA keys tokens by (the mesh file's, and the answers it
//! caches for ServiceAccount tokens), computed once per request. Looking up digests rather than
//! tokens keeps a comparison's timing independent of how much of a guessed token is right, and
//! keeps tokens themselves out of the CA's maps.

use aws_lc_rs::digest;

/// SHA-256 of a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BearerDigest([u8; 32]);

impl BearerDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> Self {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }
}
