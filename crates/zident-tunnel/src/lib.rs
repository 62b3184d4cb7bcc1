//! The HBONE tunnel's pieces. So far: authorization policy in ztunnel's local-config shape,
//! evaluated for each connection to a workload ([`policy`]), the rustls verifiers that make
//! both ends of a tunnel prove their SPIFFE identities ([`verify`]), and the inbound HBONE
//! server ([`inbound`]).

pub mod cidr;
pub mod inbound;
pub mod mesh_view;
pub mod node;
pub mod observe;
pub mod outbound;
pub mod policy;
pub mod sni;
pub mod socks5;
pub mod verify;

/// Each direction of a tunneled connection copies through one buffer this large: big enough
/// for whole TLS records and few system calls, allocated once per connection.
pub(crate) const COPY_BUFFER: usize = 64 * 1024;

/// HTTP/2 settings of HBONE connections, as ztunnel's: large windows and frames so one tunnel
/// can fill a fast link without waiting for window updates.
pub(crate) mod h2 {
    /// Per-stream flow-control window.
    pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    /// Per-connection flow-control window.
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    /// Largest DATA frame.
    pub const FRAME_SIZE: u32 = 1024 * 1024;
    /// Bytes buffered per stream before writes wait.
    pub const SEND_BUFFER: usize = 1024 * 1024;
}
