//! File delivery: `svid.pem`, `svid_key.pem` and `bundle.pem` for programs that read PEM files.
//!
//! The files live in a versioned directory; `svid.pem` and friends are symlinks through
//! `.current`, which is switched to a new version by one atomic rename (the scheme Kubernetes
//! uses for secret volumes). So the key and the certificate change together: a reader that
//! opens both after a switch sees the new pair, never a new certificate with an old key.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use zident_identity::pem::{certs_to_pem, to_pem};
use zident_identity::{CertState, TrustBundle, WorkloadCertificate};

const FILES: [&str; 3] = ["svid.pem", "svid_key.pem", "bundle.pem"];
/// A post-rotation command that runs longer than this is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes one version of the files and switches `.current` to it.
pub fn write_version(
    dir: &Path,
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
) -> std::io::Result<()> {
    write_version_for(dir, cert, bundle, None)
}

/// [`write_version`], with the directory, the files and their links owned by `owner` (the
/// workload's declared user and group), so that it can read them without root.
pub fn write_version_for(
    dir: &Path,
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    owner: Option<crate::unix_users::RunAs>,
) -> std::io::Result<()> {
    let give = |path: &Path| -> std::io::Result<()> {
        match owner {
            Some(o) => std::os::unix::fs::lchown(path, Some(o.uid), o.gid),
            None => Ok(()),
        }
    };
    std::fs::create_dir_all(dir)?;
    give(dir)?;
    if owner.is_some() {
        super::traverse::traversable(dir, 2)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let version = format!(".v-{}-{}", cert.serial_hex, bundle.sequence());
    let vdir = dir.join(&version);
    if vdir.exists() {
        std::fs::remove_dir_all(&vdir)?;
    }
    std::fs::create_dir(&vdir)?;
    std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o700))?;
    give(&vdir)?;
    write_file(
        &vdir.join("svid.pem"),
        certs_to_pem(&cert.chain).as_bytes(),
        0o644,
    )?;
    write_file(
        &vdir.join("svid_key.pem"),
        to_pem("PRIVATE KEY", &cert.key().pkcs8_der()).as_bytes(),
        0o600,
    )?;
    write_file(&vdir.join("bundle.pem"), bundle.to_pem().as_bytes(), 0o644)?;
    for name in FILES {
        give(&vdir.join(name))?;
    }
    std::fs::File::open(&vdir)?.sync_all()?;

    // Switch: a new symlink renamed over `.current` in one step. Then each file's link, on
    // every write: whatever is in the way of one (a directory, a file, a link elsewhere,
    // left by hand or by another tool) is moved aside and reported, never left to break
    // the workload's reads.
    ensure_link(dir, ".current", Path::new(&version), &give)?;
    for name in FILES {
        ensure_link(dir, name, &Path::new(".current").join(name), &give)?;
    }
    std::fs::File::open(dir)?.sync_all()?;

    // Old versions are no longer reachable through `.current`.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".v-") && name != version {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Makes `dir/name` a symlink to `target`. A link already pointing there is kept. Anything
/// else at that path is moved to `dir/.<name>.displaced` (replacing an older one) and logged,
/// so nothing is deleted. The new link is renamed into place in one step.
fn ensure_link(
    dir: &Path,
    name: &str,
    target: &Path,
    give: &impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let link = dir.join(name);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&link)? == target {
                return Ok(());
            }
            // `.current` moves to each new version; a file's link pointing elsewhere is
            // someone else's.
            if name != ".current" {
                displace(dir, name, &link, "a link to somewhere else")?;
            }
        }
        Ok(m) => {
            let what = if m.is_dir() { "a directory" } else { "a file" };
            displace(dir, name, &link, what)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = dir.join(format!(".{}.tmp", name.trim_start_matches('.')));
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp)?;
    give(&tmp)?;
    std::fs::rename(&tmp, &link)
}

/// Moves `link` (what is in the way, described by `what`) to `dir/.<name>.displaced`.
fn displace(dir: &Path, name: &str, link: &Path, what: &str) -> std::io::Result<()> {
    let aside = dir.join(format!(".{}.displaced", name.trim_start_matches('.')));
    match std::fs::symlink_metadata(&aside) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&aside)?,
        Ok(_) => std::fs::remove_file(&aside)?,
        Err(_) => {}
    }
    std::fs::rename(link, &aside)?;
    tracing::warn!(
        target: "zident::identity",
        path = %link.display(),
        moved_to = %aside.display(),
        "{what} was in the way of an SVID file: moved aside, and the file linked again"
    );
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Keeps one workload's files current until the identity is forgotten or `stop` fires; runs
/// `command` (with `sh -c`) after each write.
pub async fn keep_files(
    dir: PathBuf,
    mut status: watch::Receiver<CertState>,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
    mut stop: watch::Receiver<bool>,
    command: Option<String>,
    owner: Option<crate::unix_users::RunAs>,
) {
    let mut written: Option<(String, u64)> = None;
    loop {
        let todo = {
            let s = status.borrow_and_update();
            let b = bundle.borrow_and_update();
            match &*s {
                CertState::Available(c)
                    if written != Some((c.serial_hex.clone(), b.sequence())) =>
                {
                    Some((c.clone(), b.clone()))
                }
                _ => None,
            }
        };
        if let Some((cert, b)) = todo {
            let (d, c2, b2) = (dir.clone(), cert.clone(), b.clone());
            match tokio::task::spawn_blocking(move || write_version_for(&d, &c2, &b2, owner)).await
            {
                Ok(Ok(())) => {
                    written = Some((cert.serial_hex.clone(), b.sequence()));
                    tracing::info!(target: "zident::identity", dir = %dir.display(), serial = %cert.serial_hex, "wrote SVID files for {}", cert.id);
                    if let Some(cmd) = &command {
                        run_command(cmd, &dir, &cert).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(target: "zident::identity", "cannot write SVID files in {}: {e}", dir.display())
                }
                Err(e) => {
                    tracing::error!(target: "zident::identity", "SVID file writer failed: {e}")
                }
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = bundle.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn run_command(cmd: &str, dir: &Path, cert: &WorkloadCertificate) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("ZIDENT_SVID_DIR", dir)
        .env("ZIDENT_SPIFFE_ID", cert.id.as_str())
        .env("ZIDENT_SERIAL", &cert.serial_hex)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(target: "zident::identity", "post-rotation command succeeded for {}", cert.id)
        }
        Ok(Ok(out)) => tracing::warn!(
            target: "zident::identity",
            "post-rotation command {cmd:?} failed for {} ({}): {}",
            cert.id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(Err(e)) => {
            tracing::warn!(target: "zident::identity", "cannot run post-rotation command {cmd:?}: {e}")
        }
        Err(_) => {
            tracing::warn!(target: "zident::identity", "post-rotation command {cmd:?} took longer than {COMMAND_TIMEOUT:?} and was killed")
        }
    }
}
