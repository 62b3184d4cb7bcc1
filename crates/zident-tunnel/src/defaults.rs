//! The tunnel's default addresses, in one place: `zident agent`'s flags and `zident up` read
//! these (ztunnel's ports).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// SOCKS5 for local workloads' outbound connections.
pub const SOCKS5_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15080));
/// Outbound connections redirected by iptables/nftables (`SO_ORIGINAL_DST`).
pub const OUTBOUND_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001));
/// The HBONE port on every workload address (the same on every node).
pub const INBOUND_PORT: u16 = 15008;
