//! The mesh file: one YAML file that tells `zident ca`, `zident agent` and `zident up` who
//! runs where (see `docs/mesh-file.md`).
//!
//! Its `workloads`, `policies` and `services` take the shape of ztunnel's local configuration,
//! so an existing ztunnel local config loads unchanged; zident adds `trustDomain`, `nodes`,
//! `identities` and `caCertificates`. Keys ztunnel defines but zident does not use are accepted
//! and ignored; any other key is an error naming the key and its line, because a typo in a
//! policy must not silently switch it off.
//!
//! A file is checked whole before anyone uses it (see `check.rs` for the rules): an edit
//! applies everywhere, or nowhere. A node reads an accepted mesh through one [`NodeView`],
//! whatever its [`MeshOrigin`] (a file, or the control plane).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod check;
mod cidr;
mod error;
mod file;
mod load;
mod locate;
mod names;
mod node_view;
mod origin;
mod policy;
pub mod watch;

pub use cidr::{Cidr, CidrError};
pub use names::{DnsNameError, NameError, check_dns_name, check_label, check_subdomain};
pub use node_view::{NodeView, NodeViewError};
pub use origin::MeshOrigin;

pub use file::{
    CallerToken, DEFAULT_TRUST_DOMAIN, DnsCertificate, HealthStatus, IdentityEntry, MeshError,
    MeshFile, Node, Protocol, Service, UnixId, Workload, WorkloadIdError, default_trust_domain,
    parse_vip,
};
pub use policy::{
    Action, Authorization, Ignored, RbacMatch, Scope, ServiceAccountMatch, StringMatch,
};
