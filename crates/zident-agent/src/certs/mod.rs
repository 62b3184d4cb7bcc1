//! The certificates of this node's identities: one task per identity that fetches, checks and
//! renews its certificate ([`worker`]), the store that starts and forgets those tasks and is the
//! node's [`CertificateProvider`](zident_identity::CertificateProvider) ([`manager`]), and the
//! small pure parts they use: when to renew ([`schedule`]), how many fetches at once and in what
//! order ([`gate`]), what a CA answer must pass ([`validate`]), and which root the CA signs under
//! ([`signing_root`]). JWT-SVIDs are fetched on demand and cached ([`jwt`]).
//!
//! "Renewal" here is a leaf certificate replaced at half its lifetime; "rotation" in the CA is a
//! root changing. (Log lines and metric names keep ztunnel's word, "certificate rotation", so
//! that dashboards built for it keep working.)

pub(crate) mod gate;
pub(crate) mod jwt;
pub(crate) mod manager;
pub(crate) mod schedule;
pub(crate) mod signing_root;
pub(crate) mod validate;
pub(crate) mod worker;
