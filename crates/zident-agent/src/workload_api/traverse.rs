//! Directories a workload's own user passes through to reach its sockets and SVID files:
//! searchable by everyone, listable by nobody else. Used by the socket binder and by the SVID
//! files alike.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Adds search (x) permission for everyone to the `levels` directories above `dir`, so that a
/// workload's own user reaches its directory; listing them stays closed.
pub(crate) fn traversable(dir: &Path, levels: usize) -> std::io::Result<()> {
    for ancestor in dir.ancestors().skip(1).take(levels) {
        let mode = std::fs::metadata(ancestor)?.permissions().mode();
        if mode & 0o111 != 0o111 {
            std::fs::set_permissions(
                ancestor,
                std::fs::Permissions::from_mode((mode | 0o111) & 0o7777),
            )?;
        }
    }
    Ok(())
}
