//! The HBONE tunnel's pieces. So far: authorization policy in ztunnel's local-config shape,
//! evaluated for each connection to a workload ([`policy`]), the rustls verifiers that make
//! both ends of a tunnel prove their SPIFFE identities ([`verify`]), and the inbound HBONE
//! server ([`inbound`]).

pub mod cidr;
pub mod inbound;
pub mod mesh_view;
pub mod node;
pub mod outbound;
pub mod policy;
pub mod socks5;
pub mod verify;
