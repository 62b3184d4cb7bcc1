//! What the CA has in force, shared by the publisher that makes it and the services that read
//! it (the certificate service's denials, `/crl`).

use crate::revocation::crl::CrlSet;
use crate::revocation::list::Revocations;

/// The list, and the CRLs signed for it.
#[derive(Debug, Default)]
pub struct Published {
    /// Revoked certificates and denials.
    pub list: Revocations,
    /// The CRLs; `None` until the first is signed.
    pub crls: Option<CrlSet>,
}
