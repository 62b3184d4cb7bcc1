//! The mesh from a Kubernetes API server, as istiod builds it for ztunnel: pods enrolled by the
//! `istio.io/dataplane-mode=ambient` label become workloads (their ServiceAccount is their
//! identity), Services become VIPs with their backends, `security.istio.io/v1`
//! AuthorizationPolicies become the L4 policy ztunnel enforces, and istiod's mesh ConfigMap gives
//! the trust domain, extra roots and DNS certificates.
//!
//! - `source`: the watchers (list-then-watch reflectors, never polling) and their health;
//! - `translate`: objects to mesh parts, pure, with a [`Finding`] per object refused or partly
//!   enforced (`workloads`, `services`, `policy`, `mesh_config` do one kind each);
//! - `combine`: the cluster's parts and a mesh file's as one mesh checked whole, leaving out an
//!   object that breaks a rule instead of refusing them all;
//! - `events`: findings as Kubernetes Events on their objects;
//! - `token_review`: who a bearer token belongs to (a TokenReview, cached by digest), and
//!   `pods`: the watched pods as the node authorizer asks about them;
//! - `root_config_maps`: the CA's roots as `istio-ca-root-cert` in every namespace;
//! - `state_secret`, `issued_records`, `lease`: the CA's own state in the API server (its
//!   roots in a Secret, what each replica issued, the leader's Lease), each write made with
//!   the resourceVersion it was decided on; `call` sorts what a call's failure means.
//!
//! The CA runs this; agents and ztunnels never talk to the API server: they follow the CA's xDS
//! stream and present their tokens to the CA.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod call;
mod changes;
mod combine;
mod connection;
mod error;
mod events;
mod finding;
mod issued_records;
mod lease;
pub mod mesh_config;
mod pods;
mod policy;
pub mod root_config_maps;
mod services;
mod source;
mod state_secret;
mod token_review;
mod translate;
mod workloads;

pub use call::CallError;
pub use changes::{Follow, KindChanges};
pub use combine::{Combined, combine};
pub use connection::{Connection, REQUEST_TIMEOUT};
pub use error::SourceError;
pub use events::EventPublisher;
pub use finding::{Finding, ObjectRef, Severity};
pub use issued_records::{ISSUED, IssuedRecords, RecordKind, SERIALS, replica_of};
pub use lease::{Holder, LeaderLease};
pub use mesh_config::{MeshConfigError, MeshSettings};
pub use pods::{PodDirectory, PodFacts};
pub use root_config_maps::{Round, Targets, publish_roots};
pub use services::DOMAIN_SUFFIX;
pub use source::{
    SourceConfig, SourceStatus, WatchHealth, Watching, authorization_policy_resource,
};
pub use state_secret::{StateSecret, Versioned};
pub use token_review::{Answered, PodBinding, ReviewError, Reviewed, TokenReviewer};
pub use translate::{ClusterMesh, Objects, translate};
pub use workloads::{AMBIENT, CLUSTER_ID, DATAPLANE_MODE, NONE};
