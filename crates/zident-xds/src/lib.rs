//! The mesh on the wire: [`Snapshot`] holds a mesh as the named, versioned resources of
//! Istio's workload xDS (`istio.workload.Address`, `istio.security.Authorization`) plus two of
//! zident's own (`zident.mesh.Mesh`, `zident.mesh.Node`), and turns them back into a
//! [`zident_mesh::MeshFile`].
//!
//! One conversion for both ends: `zident ca` encodes the mesh it holds and sends each stream
//! what changed; an agent applies what it receives to its own snapshot and decodes it into the
//! same `MeshFile` a mesh file gives, checked by the same rules. Whatever reads the mesh after
//! that (certificates, the Workload API, the tunnel's routes and policies) cannot tell where
//! it came from.
//!
//! - `encode`: mesh → protobuf messages, and the names ztunnel keys them by;
//! - `decode`: protobuf messages → mesh, refusing what the mesh rules would refuse;
//! - `snapshot`: the resource sets, their versions, and the difference between two of them.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod decode;
mod encode;
mod snapshot;

pub use decode::DecodeError;
pub use snapshot::{Delta, Resource, Snapshot};

/// Workloads and services (`istio.workload.Address`), as ztunnel subscribes to them.
pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
/// Authorization policies (`istio.security.Authorization`), as ztunnel subscribes to them.
pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
/// The mesh's trust domain and extra roots: one resource named [`MESH_RESOURCE`].
pub const MESH: &str = "type.googleapis.com/zident.mesh.Mesh";
/// The mesh's nodes (names, shared inbound addresses, own identities; never tokens).
pub const NODE: &str = "type.googleapis.com/zident.mesh.Node";
/// The name of the workload extension that carries the user and group it runs as.
pub const RUN_AS: &str = "zident.run_as";
/// The name of the one [`MESH`] resource.
pub const MESH_RESOURCE: &str = "mesh";

/// Every type, in the order a new stream is sent them.
pub const TYPES: [&str; 4] = [MESH, NODE, ADDRESS, AUTHORIZATION];

/// The short name of a type (`address`, `authorization`, `mesh`, `node`), for metric labels
/// and admin output; `unknown` for any other.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        ADDRESS => "address",
        AUTHORIZATION => "authorization",
        MESH => "mesh",
        NODE => "node",
        _ => "unknown",
    }
}

/// Whether zident serves resources of `type_url`.
pub fn is_known_type(type_url: &str) -> bool {
    TYPES.contains(&type_url)
}
