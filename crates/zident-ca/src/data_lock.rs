//! One CA per data dir. Two CAs on one data dir would each sign with keys the other may
//! replace, and each apply rotation steps on its own schedule; the second one to start is
//! refused instead, naming the process that holds the dir.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::persist::create_private_dir;

/// The lock file in the data dir; it holds the pid of the CA that owns the dir.
pub const LOCK_FILE: &str = "ca.lock";

/// Why the data dir could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another CA holds it.
    #[error(
        "the data dir {dir} is in use by another zident CA{holder}: stop that CA, or give this one its own --data-dir"
    )]
    InUse {
        /// The data dir.
        dir: PathBuf,
        /// " (pid N)" when the holder wrote its pid.
        holder: String,
    },
    /// The lock file could not be made or locked.
    #[error("cannot lock the data dir: {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The data dir, held for as long as this lives (the OS releases it if the process dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// How long a lock held by this very process is waited for (see [`take`]).
const SAME_PROCESS_GRACE: Duration = Duration::from_secs(2);

/// Takes `dir` for this CA, creating it if needed; refused at once if another process holds it.
///
/// A lock that this process itself holds is waited for, briefly: a CA stopped and started
/// again in one process (tests, an embedding program) has closed its lock file, but a child
/// that another thread was starting at that moment may still hold a copy of the descriptor
/// until it `exec`s, and the lock lives as long as any copy does. A second CA really running
/// in this process is still refused, after [`SAME_PROCESS_GRACE`].
pub fn take(dir: &Path) -> Result<DataDirLock, DataDirError> {
    let deadline = Instant::now() + SAME_PROCESS_GRACE;
    loop {
        match take_once(dir) {
            Err(DataDirError::InUse { holder, .. })
                if holder == holder_text(std::process::id()) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn holder_text(pid: u32) -> String {
    format!(" (pid {pid})")
}

fn take_once(dir: &Path) -> Result<DataDirLock, DataDirError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    create_private_dir(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map(holder_text)
                .unwrap_or_default();
            return Err(DataDirError::InUse {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ca");
        let first = take(&data).unwrap();
        let err = take(&data).unwrap_err().to_string();
        assert!(err.contains("in use by another zident CA"), "{err}");
        assert!(
            err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(first);
        take(&data).unwrap();
    }

    #[test]
    fn a_copy_of_this_process_s_descriptor_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ca");
        let first = take(&data).unwrap();
        // What a child being spawned holds until it execs: a copy of the descriptor.
        let copy = first._file.try_clone().unwrap();
        drop(first);
        let err = take_once(&data).unwrap_err().to_string();
        assert!(err.contains("in use"), "the copy holds the lock: {err}");
        // The copy goes away while `take` is already retrying (it starts at once and the copy
        // lives 200 ms more): taken, not refused. Either order must end in the lock taken.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(copy);
        });
        take(&data).expect("taken once the copy is gone");
        releaser.join().unwrap();
    }
}
