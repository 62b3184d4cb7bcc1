//! The mesh from the control plane: the agent opens the same Delta xDS stream a ztunnel
//! opens to istiod (on the CA's address, with the CA's TLS and the same bearer token) and
//! keeps its mesh view from what arrives, so a node needs only `CA_ADDRESS`, `CA_ROOT_CA`,
//! `AUTH_TOKEN` and `NODE_NAME`.
//!
//! - `client`: the stream, reconnecting with backoff; every response is applied to a copy of
//!   the resources held, checked by the mesh rules, and then ACKed and put in force, or NACKed
//!   with the reason while the last good view stays;
//! - `bounds`: what the agent takes from a control plane, at most;
//! - `cache`: the last good view on disk, for a restart during a control-plane outage;
//! - `status`: what `/debug/connections` shows of the stream;
//! - `error`: a NACK's reason, why a stream ended, why the on-disk copy is unusable.

pub mod bounds;
mod cache;
pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod status;
