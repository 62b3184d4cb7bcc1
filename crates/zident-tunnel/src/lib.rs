//! The HBONE tunnel's pieces. So far: authorization policy in ztunnel's local-config shape,
//! evaluated for each connection to a workload ([`policy`]), and the rustls verifiers that make
//! both ends of a tunnel prove their SPIFFE identities ([`verify`]).

pub mod cidr;
pub mod policy;
pub mod verify;
