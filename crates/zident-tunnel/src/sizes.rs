//! The data path's sizes, in one place: read buffers, TLS reads, and the HTTP/2 windows and
//! frames of HBONE connections. Each says why it is that size.

/// The read buffers of a tunnel, smallest first. A tunnel starts with the first and moves to
/// the next each time a read fills its buffer, so an idle or chatty tunnel holds 1 KiB while a
/// bulk transfer reads in chunks of 256 KiB: whole TLS records, large HTTP/2 frames, few system
/// calls and wake-ups. (ztunnel's steps are the same sizes; a tunnel that started at 16 KiB held
/// 2.5 times ztunnel's memory per idle tunnel.)
pub(crate) const READ_BUFFERS: [usize; 3] = [1024, 16 * 1024, 256 * 1024];

/// Bytes received on a stream that are written to the workload in one system call, at most:
/// every DATA frame already received goes out in one `writev`, up to this much.
pub(crate) const WRITE_GATHER: usize = 1024 * 1024;
/// At most this many frames in one `writev` (the kernel takes up to 1,024 slices).
pub(crate) const WRITE_SLICES: usize = 64;

/// TLS is read from the socket through a buffer this large, held only while bytes flow
/// (`read_ahead.rs`). rustls asks for 4 KiB at a time, so reading it straight from the socket
/// costs about four system calls per 16 KiB record.
pub(crate) const TLS_READ_BUFFER: usize = 64 * 1024;

/// HTTP/2 settings of HBONE connections: ztunnel's, so one tunnel can fill a fast link without
/// waiting for window updates, and a sender's whole read (up to 256 KiB) travels as one frame.
pub(crate) mod window {
    /// Per-stream flow-control window.
    pub const STREAM: u32 = 4 * 1024 * 1024;
    /// Per-connection flow-control window.
    pub const CONNECTION: u32 = 16 * 1024 * 1024;
    /// Largest frame this end accepts (ztunnel's). With 64 KiB frames a 256 KiB read left as
    /// four frames and arrived as four writes to the workload: 21 writes and 18 context
    /// switches per MiB on the receiving node against ztunnel's 6 and 5. (Frames this large
    /// made glibc's malloc map fresh pages for each; jemalloc reuses them.)
    pub const FRAME: u32 = 1024 * 1024;
    /// Bytes buffered per stream before writes wait.
    pub const SEND_BUFFER: usize = 1024 * 1024;
}
