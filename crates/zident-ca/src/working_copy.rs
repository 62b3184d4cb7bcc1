//! The mark a replica leaves in its data dir: the dir is a working copy of a shared store
//! (PostgreSQL, or the Kubernetes API with `--roots-in-cluster`), which the replica overwrites
//! whenever the store changes. A command that changes a data dir (`zident ca rotate`,
//! `revoke`, `allow-reissue`) refuses such a dir and says which store to act on instead: a
//! change made there would apply to one replica, and only until the store's next change.

use std::path::Path;

use crate::persist::write_atomic;

/// The mark's file, in the data dir: one line naming the store.
pub const MARK_FILE: &str = "working-copy-of";

/// The shared store a replica's data dir copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedStore {
    /// A PostgreSQL datastore (`--datastore`).
    Datastore,
    /// The Kubernetes API, in this namespace (`--roots-in-cluster`).
    Kubernetes(String),
}

impl SharedStore {
    fn line(&self) -> String {
        match self {
            SharedStore::Datastore => "datastore\n".into(),
            SharedStore::Kubernetes(ns) => format!("kubernetes {ns}\n"),
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        match text.split_once(' ') {
            None if text == "datastore" => Some(SharedStore::Datastore),
            Some(("kubernetes", ns)) if !ns.trim().is_empty() => {
                Some(SharedStore::Kubernetes(ns.trim().to_owned()))
            }
            _ => None,
        }
    }

    /// How to act on this store instead of the data dir.
    fn instead(&self) -> String {
        match self {
            SharedStore::Datastore => {
                "a PostgreSQL datastore: give --datastore URL (or ZIDENT_DATASTORE) instead of --data-dir".into()
            }
            SharedStore::Kubernetes(ns) => format!(
                "the Kubernetes API: give --kubernetes --kubernetes-namespace {ns} instead of --data-dir"
            ),
        }
    }
}

/// Marks `data_dir` as a working copy of `store`, or (`None`, a CA of its own) clears the mark.
pub fn set(data_dir: &Path, store: Option<&SharedStore>) -> std::io::Result<()> {
    let path = data_dir.join(MARK_FILE);
    match store {
        Some(store) => write_atomic(&path, store.line().as_bytes(), 0o644),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// Refuses `data_dir` for `what` (a command that changes it) when it is a replica's working
/// copy, naming the store to act on instead.
pub fn refuse_copy(data_dir: &Path, what: &str) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(data_dir.join(MARK_FILE)) else {
        return Ok(());
    };
    let store = SharedStore::parse(&text);
    let instead = store
        .as_ref()
        .map(SharedStore::instead)
        .unwrap_or_else(|| "a shared store".into());
    Err(format!(
        "{what}: {} is a CA replica's working copy of {instead}. A change made here would apply to that replica alone, until the store's next change replaced it; nothing was changed. (A data dir that no replica uses any more: delete {MARK_FILE} in it.)",
        data_dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_dir_is_refused_with_the_store_to_use_and_a_cleared_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(refuse_copy(dir.path(), "revoke").is_ok());
        set(
            dir.path(),
            Some(&SharedStore::Kubernetes("istio-system".into())),
        )
        .unwrap();
        let e = refuse_copy(dir.path(), "revoke").unwrap_err();
        assert!(
            e.contains("--kubernetes --kubernetes-namespace istio-system")
                && e.contains("nothing was changed"),
            "{e}"
        );
        set(dir.path(), Some(&SharedStore::Datastore)).unwrap();
        assert!(
            refuse_copy(dir.path(), "rotate")
                .unwrap_err()
                .contains("--datastore URL")
        );
        set(dir.path(), None).unwrap();
        set(dir.path(), None).unwrap();
        assert!(refuse_copy(dir.path(), "revoke").is_ok());
    }
}
