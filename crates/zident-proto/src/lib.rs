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
