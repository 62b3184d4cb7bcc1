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

/// Envoy's packages, nested as their names are, because generated code refers from one to
/// another by relative paths (SDS to the discovery messages).
pub mod envoy {
    #![allow(missing_docs, clippy::all)]
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
        pub mod secret {
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }
    pub mod extensions {
        pub mod transport_sockets {
            pub mod tls {
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
}

/// Envoy's aggregated discovery service (Delta xDS), the stream ztunnel and zident agents
/// receive the mesh on; and the state-of-the-world messages SDS uses.
pub use envoy::service::discovery::v3 as xds;

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

/// Envoy's TLS secrets (`envoy.extensions.transport_sockets.tls.v3.Secret`), what SDS carries.
pub use envoy::extensions::transport_sockets::tls::v3 as envoy_tls;

/// Envoy's Secret Discovery Service (`envoy.service.secret.v3.SecretDiscoveryService`).
pub use envoy::service::secret::v3 as sds;
