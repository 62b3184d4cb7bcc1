//! `zident ca --kubernetes --roots-in-cluster`: the CA's state in the API server, so that a
//! cluster needs no PostgreSQL and no volume for it, and several replicas share it.
//!
//! - the roots Secret `zident-ca-roots` (see `secret_format`): every root generation with its
//!   keys and the rotation state, in one object written with the resourceVersion it was read
//!   at, so two replicas never make two roots or skip a phase (`store`);
//! - one ConfigMap per replica, `zident-ca-issued-<replica>`: what it issued, for the rule that
//!   activation waits for clients which learn roots only from responses (`issued_text`);
//! - one ConfigMap per replica, `zident-ca-serials-<replica>`: its valid certificates by
//!   serial, so that a revocation reaches them after the replica is gone (`serials_text`);
//! - the Lease `zident-ca-leader`: the replica holding it takes the scheduled rotation steps;
//!   when it dies another takes over within the Lease's duration (`replica`);
//! - the Secret `zident-ca-revocations`: the revocation list every replica signs its CRLs
//!   from, and operators' requests, each answered by every replica for what it issued
//!   (`revocations`).
//!
//! Each replica keeps a working copy in its data dir and serves from it, as a replica on
//! PostgreSQL does: issuance never waits on the API server, and a replica that loses the API
//! server keeps issuing, says it is degraded and takes no rotation step. Private keys are in
//! the Secret only: RBAC must keep `get` on Secrets in the CA's namespace to the CA's
//! ServiceAccount (and cluster admins).

mod issued_text;
mod record_pace;
pub(crate) mod replica;
pub mod revocations;
pub mod secret_format;
mod serials_text;
mod store;

pub use revocations::{ClusterRevocations, REVOCATIONS_SECRET, Request, RevocationSecret};
pub use store::{ClusterStoreError, ROOTS_SECRET, SecretRoots};

use std::time::Duration;

/// The Lease the replicas elect their leader with.
pub const LEADER_LEASE: &str = "zident-ca-leader";

/// How the CA keeps its state in the API server.
#[derive(Debug, Clone)]
pub struct ClusterStateConfig {
    /// This replica's name: its issued record and its identity in the Lease (the pod's name).
    pub replica: String,
    /// How long the Lease holds after each renewal; a dead leader is replaced within about
    /// this long.
    pub lease_duration: Duration,
}
