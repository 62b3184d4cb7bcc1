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
//! - `snapshot`: the resource sets, their versions, and the difference between two of them;
//! - `types`: the type URLs and resource names both ends agree on.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod decode;
mod encode;
mod snapshot;
mod types;

pub use decode::{BadValue, DecodeError, Problem};
pub use snapshot::{Delta, Resource, Snapshot};

pub use types::{
    ADDRESS, AUTHORIZATION, MESH, MESH_RESOURCE, NODE, RUN_AS, TYPES, is_known_type, short_name,
};
