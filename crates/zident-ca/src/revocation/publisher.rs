//! The running CA's side of revocation: it follows `<data dir>/revocations.json` (watched, so
//! a list replaced by `zident ca revoke` or copied there by a shared store's replica is signed
//! at once; and read every second, should the watch miss one), signs the CRLs again on every change, on every change of its keys, and at half their
//! validity even when nothing changed (so a CRL is always well before its nextUpdate), keeps
//! them for `/crl` and `/crl.der`, writes `<data dir>/crl.pem` for those who mount it (a
//! ztunnel's `CRL_PATH`), and holds the denials the certificate service checks.
//!
//! A list that cannot be read leaves the last one in force and says so once; a CRL that cannot
//! be signed leaves the last CRLs in force (the denials still follow the list).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::persist::write_atomic;
use crate::revocation::crl;
use crate::revocation::list::{REVOCATIONS_FILE, Revocations};
use crate::revocation::published::Published;
use crate::state::CaState;

/// The CRL file in the data dir.
pub const CRL_FILE: &str = "crl.pem";
/// How often the list is read.
const POLL: Duration = Duration::from_secs(1);

/// Follows the list and keeps the CRLs signed, for as long as the task runs.
pub(crate) async fn run(state: Arc<CaState>, data_dir: PathBuf, validity: Duration) {
    let mut keys = state.subscribe_authority();
    // Without the watch (no inotify), the one-second look alone.
    let (_watcher, mut replaced) = match zident_mesh::watch::watch_dir(
        &data_dir,
        vec![REVOCATIONS_FILE.into()],
    ) {
        Ok((w, changes)) => (Some(w), Some(changes)),
        Err(e) => {
            tracing::warn!(target: "zident::ca", "cannot watch {REVOCATIONS_FILE} in {}: {e}; it is read every second", data_dir.display());
            (None, None)
        }
    };
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut number = 0u64;
    let mut said: Option<String> = None;
    let mut read_stamp: Option<FileStamp> = None;
    loop {
        let keys_changed = tokio::select! {
            _ = ticker.tick() => false,
            Some(()) = next_change(&mut replaced) => false,
            changed = keys.changed() => changed.is_ok(),
        };
        // The file is read and parsed again only when it was replaced (every writer replaces it
        // atomically, so a new inode, size or mtime says so); otherwise the list in force is
        // pruned and re-signed as due.
        let stamp = file_stamp(&data_dir.join(REVOCATIONS_FILE));
        let now = SystemTime::now();
        let loaded = if stamp.is_some() && stamp == read_stamp {
            Ok(Ok(state.revocations().list.clone()))
        } else {
            let dir = data_dir.clone();
            tokio::task::spawn_blocking(move || Revocations::load(&dir)).await
        };
        let mut list = match loaded {
            Ok(Ok(list)) => {
                read_stamp = stamp;
                list
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if said.as_ref() != Some(&e) {
                    tracing::error!(target: "zident::ca", "the revocation list cannot be read: {e}; the last one stays in force");
                    said = Some(e);
                }
                continue;
            }
            Err(_) => continue,
        };
        list.prune(now);
        let published = state.revocations();
        let changed = list != published.list;
        let due = match &published.crls {
            None => true,
            Some(set) => now >= set.signed_at + validity / 2 || now >= set.next_update,
        };
        if !(changed || due || keys_changed) {
            continue;
        }
        number = (number + 1).max(unix_millis(now));
        let authority = state.authority();
        let crls = match crl::sign(&authority, &list.revoked, number, now, validity) {
            Ok(set) => {
                said = None;
                Some(set)
            }
            Err(e) => {
                let e = e.to_string();
                if said.as_ref() != Some(&e) {
                    tracing::error!(target: "zident::ca", "cannot sign the CRLs: {e}; the last ones stay in force");
                    said = Some(e);
                }
                published.crls.clone()
            }
        };
        if let Some(set) = &crls {
            let path = data_dir.join(CRL_FILE);
            let pem = set.pem();
            let written =
                tokio::task::spawn_blocking(move || write_atomic(&path, pem.as_bytes(), 0o644))
                    .await;
            if let Ok(Err(e)) = written {
                tracing::error!(target: "zident::ca", "cannot write {CRL_FILE} in the data dir: {e}");
            }
            state.metrics.set_crls(set);
            if changed {
                tracing::info!(
                    target: "zident::ca",
                    crl_number = set.number,
                    revoked = set.revoked(),
                    denied = list.denied.len(),
                    "revocations changed: CRLs signed again"
                );
            }
        }
        state.set_revocations(Published { list, crls });
    }
}

/// The next change the watch reports; never, without a watch (or once it ended).
async fn next_change(watch: &mut Option<tokio::sync::mpsc::UnboundedReceiver<()>>) -> Option<()> {
    match watch {
        Some(changes) => match changes.recv().await {
            Some(()) => Some(()),
            None => {
                *watch = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// What tells a replaced file from the one read before: inode, size, mtime.
type FileStamp = (u64, u64, Option<SystemTime>);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()))
}

/// Milliseconds since the Unix epoch: a CRL number that grows across restarts (RFC 5280
/// 5.2.3 asks for monotonically increasing numbers).
fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
