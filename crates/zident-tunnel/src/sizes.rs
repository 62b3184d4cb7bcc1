//! The data path's sizes, in one place: read buffers, TLS reads, and the HTTP/2 windows and
//! frames of HBONE connections. Each says why it is that size.

/// A busy tunnel reads its client in chunks up to this large: whole TLS records, large HTTP/2
/// frames, few system calls and wake-ups. A tunnel starts with [`FIRST_READ_BUFFER`] and grows
/// towards this only while reads fill its buffer, so idle tunnels stay small.
pub(crate) const COPY_BUFFER: usize = 256 * 1024;
/// The read buffer a tunnel starts with.
pub(crate) const FIRST_READ_BUFFER: usize = 16 * 1024;
/// Plain TCP (destinations with `protocol: TCP`) copies through buffers this large.
pub(crate) const PLAIN_COPY_BUFFER: usize = 64 * 1024;

/// TLS is read from the socket through a buffer this large. rustls asks for 4 KiB at a time,
/// so reading it straight from the socket costs about four system calls per 16 KiB record.
pub(crate) const TLS_READ_BUFFER: usize = 64 * 1024;

/// HTTP/2 settings of HBONE connections: ztunnel's large windows, so one tunnel can fill a fast
/// link without waiting for window updates, and 64 KiB frames. Larger frames make the receiver's
/// frame buffers large enough for glibc to map fresh pages for each (measured: 100,000 page
/// faults a second on the receiving agent, and a third less throughput).
pub(crate) mod window {
    /// Per-stream flow-control window.
    pub const STREAM: u32 = 4 * 1024 * 1024;
    /// Per-connection flow-control window.
    pub const CONNECTION: u32 = 16 * 1024 * 1024;
    /// Largest frame this end accepts: with its 9-byte header, a full frame is exactly 64 KiB
    /// of plaintext, four full TLS records that fit rustls's 64 KiB send buffer at once. (A
    /// 64 KiB frame left its last 9 bytes to a record, a write and a packet of their own.)
    pub const FRAME: u32 = 64 * 1024 - 9;
    /// Bytes buffered per stream before writes wait.
    pub const SEND_BUFFER: usize = 1024 * 1024;
}
