//! The names both ends of the stream agree on: the type URLs ztunnel subscribes to, zident's
//! own, and the fixed resource and extension names.

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
