//! Heap settings for the tunnel's data path.
//!
//! A tunnel carrying bulk data allocates read buffers of up to 256 KiB and TLS records of
//! 16 KiB, and frees them as soon as the bytes have moved on. With glibc's defaults, buffers
//! above 128 KiB are `mmap`ed and unmapped each time, and the top of the heap is given back to
//! the kernel whenever 128 KiB of it is free. Either way the next buffer lands on fresh pages:
//! the agents spent about a sixth of their time in page faults and clearing pages (`perf record`
//! during `scripts/bench-tunnel`), and throughput was a third lower.
//!
//! So the process keeps buffers of up to [`MMAP_THRESHOLD`] on the heap, and gives the top of
//! the heap back only when more than [`TRIM_THRESHOLD`] of it is free. The cost is at most that
//! much memory kept after a burst of traffic. Anyone who sets glibc's malloc tunables
//! (`GLIBC_TUNABLES=glibc.malloc.…`) keeps their own settings.

/// Allocations up to this size come from the heap, not from `mmap`.
pub const MMAP_THRESHOLD: usize = 1 << 20;
/// Free memory at the top of the heap kept before it is given back to the kernel.
pub const TRIM_THRESHOLD: usize = 16 << 20;
/// Extra memory asked of the kernel each time the heap grows.
pub const TOP_PAD: usize = 4 << 20;

/// What [`tune`] did, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// The settings above are in force.
    Applied,
    /// `GLIBC_TUNABLES` sets malloc tunables: they are left as they are.
    LeftToGlibcTunables,
    /// Not glibc, or glibc refused a setting: the allocator's defaults stay.
    Unavailable,
}

/// Applies the settings; call once, before any thread starts.
pub fn tune() -> Tuning {
    tune_unless(std::env::var("GLIBC_TUNABLES").ok().as_deref())
}

fn tune_unless(glibc_tunables: Option<&str>) -> Tuning {
    if glibc_tunables.is_some_and(|t| t.contains("glibc.malloc.")) {
        return Tuning::LeftToGlibcTunables;
    }
    apply()
}

// The largest tunnel read buffer, with the allocator's overhead, stays below the threshold.
const _: () = assert!(MMAP_THRESHOLD >= zident_tunnel::COPY_BUFFER + 4096);
const _: () = assert!(TRIM_THRESHOLD >= MMAP_THRESHOLD);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Tuning {
    let settings = [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_TOP_PAD, TOP_PAD),
    ];
    for (param, value) in settings {
        let Ok(value) = libc::c_int::try_from(value) else {
            return Tuning::Unavailable;
        };
        // SAFETY: mallopt only changes allocator parameters, under the allocator's own lock;
        // it has no pointer arguments and is called before the runtime starts its threads.
        if unsafe { libc::mallopt(param, value) } != 1 {
            return Tuning::Unavailable;
        }
    }
    Tuning::Applied
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_settings_unless_the_operator_set_malloc_tunables() {
        let expected = if cfg!(all(target_os = "linux", target_env = "gnu")) {
            Tuning::Applied
        } else {
            Tuning::Unavailable
        };
        assert_eq!(tune_unless(None), expected);
        assert_eq!(tune_unless(Some("glibc.rtld.nns=2")), expected);
        assert_eq!(
            tune_unless(Some("glibc.malloc.trim_threshold=1048576")),
            Tuning::LeftToGlibcTunables
        );
    }
}
