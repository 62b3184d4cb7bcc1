//! gRPC messages and services for the wire protocols zident speaks, generated at build time
//! from the definitions in `proto/` (no system `protoc` needed).

/// Istio's certificate service (`istio.v1.auth.IstioCertificateService`), spoken by
/// istio-agent and ztunnel to ask a CA for workload certificates.
pub mod istio_ca {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("istio.v1.auth");
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package), served by the agent to
/// SPIFFE-aware workloads over a Unix socket.
pub mod workload {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("_");
}

/// Envoy's aggregated discovery service (Delta xDS), the stream ztunnel and zident agents
/// receive the mesh on.
pub mod xds {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("envoy.service.discovery.v3");
}

/// Istio's workload and service resources (`istio.workload.Address`).
pub mod istio_workload {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("istio.workload");
}

/// Istio's authorization policies for ztunnel (`istio.security.Authorization`).
pub mod istio_security {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("istio.security");
}

/// zident's own resources on the same stream (mesh settings, nodes) and the agent's on-disk
/// cache of what it received.
pub mod zident_mesh {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("zident.mesh");
}

/// zident's own CA method for JWT-SVIDs (`zident.ca.v1.JwtSvidService`).
pub mod zident_ca {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("zident.ca.v1");
}
