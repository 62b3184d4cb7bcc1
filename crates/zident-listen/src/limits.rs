//! The limits every server zident runs takes, and their defaults in one place.

use std::time::Duration;

/// A connection with no request in flight for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many connections from one source address.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 512;
/// A TLS handshake (or a SOCKS5 greeting) that takes longer than this is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 request whose headers take longer than this to arrive is abandoned.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the same kind of line may be logged for one source.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Descriptors kept back from the connection cap for the process's own files and sockets.
pub const DESCRIPTOR_RESERVE: usize = 64;

/// Limits on a server's connections (every server zident runs takes the same ones).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// At most this many connections in all; `None`: the descriptor limit less a reserve.
    pub max_connections: Option<usize>,
    /// At most this many connections from one source address.
    pub max_per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            idle_timeout: IDLE_TIMEOUT,
            max_connections: None,
            max_per_source: MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

impl ConnectionLimits {
    /// The total cap in force: the configured one, or the soft `RLIMIT_NOFILE` (read from
    /// `/proc/self/limits`; 1024 when it cannot be read) less the descriptors the process holds
    /// already and [`DESCRIPTOR_RESERVE`] more for what it opens later.
    pub fn total(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let open = std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0);
            open_files_limit()
                .unwrap_or(1024)
                .saturating_sub(open + DESCRIPTOR_RESERVE)
                .max(1)
        })
    }
}

/// The soft limit on open files of this process.
pub(crate) fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    match soft {
        "unlimited" => Some(usize::MAX / 2),
        n => n.parse().ok(),
    }
}
