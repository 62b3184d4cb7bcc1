//! Why the tunnel could not start, or could not index a mesh file.

use std::net::SocketAddr;

/// Why the tunnel of a node (`node::start`) could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A port could not be bound.
    #[error(
        "cannot listen for {what} on {addr}: {source} (is another zident or ztunnel running there?)"
    )]
    Listen {
        /// Which listener: `HBONE`, `SOCKS5`, `captured outbound traffic`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mesh file cannot be indexed for routing.
    #[error(transparent)]
    View(#[from] ViewError),
}

/// A mesh file entry the tunnel cannot route with. The mesh file's own checks refuse such a
/// file first, so this is a guard, not a path users meet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// A service VIP is not `network/ip`.
    #[error("service {service}: VIP {vip:?} is not network/ip")]
    Vip {
        /// `namespace/name`.
        service: String,
        /// The VIP as written.
        vip: String,
    },
    /// A service subjectAltName is not a SPIFFE ID.
    #[error("service {service}: subjectAltNames {name:?}: {message}")]
    SubjectAltName {
        /// `namespace/name`.
        service: String,
        /// The name as written.
        name: String,
        /// What is wrong.
        message: String,
    },
}
