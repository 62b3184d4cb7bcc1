//! The process's open-files limit, raised to what the system allows before any server starts.
//!
//! Every tunnel holds two descriptors (the workload's socket and its share of an HBONE
//! connection) and every server caps its connections by the soft `RLIMIT_NOFILE` less a
//! reserve. Most systems start a process with a soft limit of 1,024 and a hard limit far above
//! it; left there, a node agent would refuse its thousandth connection while the kernel allows
//! half a million. ztunnel, Envoy and Go's runtime raise the soft limit to the hard one at start,
//! and so does zident: a limit the operator set (`ulimit -Hn`, systemd's `LimitNOFILE`, a
//! container runtime's) is kept, since the hard limit is theirs.

use std::io;

/// The soft limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit the process started with.
    pub from: u64,
    /// The soft limit now in force (the hard limit, or `fs.nr_open` when that is unlimited).
    pub to: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. An unlimited hard limit is read as the
/// kernel's ceiling, `/proc/sys/fs/nr_open` (Linux refuses a soft limit above it).
pub fn raise_to_hard_limit() -> io::Result<Raised> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, aligned value.
    #[allow(unsafe_code)]
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let from = limit.rlim_cur;
    let mut to = limit.rlim_max;
    if to == libc::RLIM_INFINITY {
        to = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if to <= from {
        return Ok(Raised { from, to: from });
    }
    limit.rlim_cur = to;
    // SAFETY: setrlimit reads one `rlimit` through a pointer to a live, aligned value.
    #[allow(unsafe_code)]
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Raised { from, to })
}
