//! Revocation: the operator decides (`zident ca revoke`), the CA signs and publishes CRLs.
//!
//! - `reason`: RFC 5280's reason codes, by their names;
//! - `list`: what is revoked and whose reissue is denied, kept in `<data dir>/revocations.json`
//!   and changed by `zident ca revoke` / `zident ca allow-reissue` (beside a running CA, as
//!   `zident ca rotate` is): a serial, every valid certificate of an identity, or every one a
//!   node's token obtained (the ledger names each certificate it issued);
//! - `crl`: X.509 v2 CRLs, one per key that signed certificates still valid (the signer, and
//!   the previous root during a rotation's overlap), with CRL number, thisUpdate, nextUpdate,
//!   authority key identifier and reason codes;
//! - `published`: what is in force (the list and its CRLs), as the services read it;
//! - `publisher`: the running CA follows the list, signs again on every change and before
//!   nextUpdate, serves the CRLs at `/crl` and `/crl.der` and writes `<data dir>/crl.pem` (the
//!   file a ztunnel's `CRL_PATH` reads), and refuses a denied identity's or node's requests.

pub mod crl;
pub mod list;
pub mod published;
pub mod publisher;
pub mod reason;

pub use crl::{CrlSet, SignedCrl};
pub use list::{Denial, Revocations, RevokeError, Revoked, Subject, Target};
pub use published::Published;
pub use reason::Reason;
