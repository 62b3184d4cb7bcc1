//! Everything this node knows of its CA: the gRPC client that asks it for certificates
//! ([`client`]), the TLS that connection uses ([`tls`]), the trust bundle checked against
//! ([`trust`]) and kept fresh from the CA's `/bundle` ([`bundle_poll`]), the CA's CRLs
//! ([`crl_poll`]), both fetched over [`https_get`], requests that end in one frame
//! ([`ends_early`]), and how far the CA's clock is from this
//! node's ([`clock`]).

pub(crate) mod bundle_poll;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod crl_poll;
pub(crate) mod endpoints;
pub(crate) mod ends_early;
pub(crate) mod https_get;
pub(crate) mod tls;
pub(crate) mod trust;
