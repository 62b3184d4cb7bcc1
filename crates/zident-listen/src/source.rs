//! Who a connection comes from, as the per-source cap and the log gate count it: an address for
//! a TCP server, a user for a Unix socket (where every caller has the same empty address, and
//! the kernel vouches for the user instead).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The source of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A TCP peer's address.
    Addr(IpAddr),
    /// A Unix-socket peer's user id (`SO_PEERCRED`).
    User(u32),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Addr(ip) => ip.fmt(f),
            Source::User(uid) => write!(f, "uid {uid}"),
        }
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        Source::Addr(ip)
    }
}

impl From<SocketAddr> for Source {
    fn from(peer: SocketAddr) -> Self {
        Source::Addr(peer.ip())
    }
}
