//! istiod's plugged-in CA on a cluster: the Secret `cacerts` in the control plane's namespace
//! (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, optionally `cert-chain.pem`). When it exists at
//! start, `zident ca --kubernetes` signs with it instead of a self-signed root, as istiod does.
//!
//! Its keys are written into `<data dir>/cacerts/` and the CA runs on that directory as it runs
//! on `ROOT_CA_DIR`: every change of the Secret rewrites the files, and the CA's file watcher
//! applies it with the plugged-in rules (a change that would break handshakes is refused, the
//! current keys keep signing, and the log says which step to take first; see
//! `roots/plugged.rs`). A Secret deleted while the CA runs leaves the last keys in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zident_kube::{Connection, StateSecret};

use crate::error::CaError;
use crate::persist::{create_private_dir, write_atomic};
use crate::roots::files::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};

/// The Secret's name, istiod's.
pub const SECRET: &str = "cacerts";
/// The keys read from it, each written as the file of the same name.
const KEYS: [&str; 4] = [ROOT_CERT, CERT_CHAIN, CA_CERT, CA_KEY];
/// Keys the Secret must hold.
const REQUIRED: [&str; 3] = [CA_CERT, CA_KEY, ROOT_CERT];
/// How often the Secret is read for changes.
const POLL: Duration = Duration::from_secs(2);

/// The directory the Secret's files are written to.
pub(crate) fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cacerts")
}

/// What the files hold, by key.
type Files = BTreeMap<String, Vec<u8>>;

/// Reads the Secret at start. `Some((dir, files))` when it exists (its files then written into
/// `dir`), `None` when it does not (the CA makes its own roots).
pub(crate) async fn materialize(
    connection: &Connection,
    namespace: &str,
    data_dir: &Path,
) -> Result<Option<(PathBuf, Files)>, CaError> {
    let secret = StateSecret::new(connection, namespace, SECRET);
    let read = secret.read().await.map_err(|e| {
        CaError::ClusterState(format!(
            "cannot read {} (istiod's plugged-in CA): {e}; the CA's account needs `get` on it",
            secret.describe()
        ))
    })?;
    let Some(v) = read else { return Ok(None) };
    let files = usable(&v.data).map_err(|missing| {
        CaError::ClusterState(format!(
            "{} lacks {missing}: a plugged-in CA needs ca-cert.pem, ca-key.pem and root-cert.pem (and cert-chain.pem for an intermediate)",
            secret.describe()
        ))
    })?;
    let dir = dir(data_dir);
    write(&dir, &files)
        .map_err(|e| CaError::ClusterState(format!("cannot write {}: {e}", dir.display())))?;
    tracing::info!(target: "zident::ca", secret = %secret.describe(), dir = %dir.display(), "signing with the plugged-in CA of the Secret (istiod's cacerts)");
    Ok(Some((dir, files)))
}

/// Keeps `dir` equal to the Secret for as long as it runs, from `written` (what start-up wrote).
pub(crate) async fn follow(
    connection: Connection,
    namespace: String,
    dir: PathBuf,
    written: Files,
) {
    let secret = StateSecret::new(&connection, &namespace, SECRET);
    let mut written = written;
    let mut said: Option<String> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let problem = match secret.read().await {
            Ok(Some(v)) => match usable(&v.data) {
                Ok(files) if files == written => None,
                Ok(files) => match write(&dir, &files) {
                    Ok(()) => {
                        tracing::info!(target: "zident::ca", secret = %secret.describe(), "the plugged-in CA's Secret changed; its files are rewritten and checked by the plugged-in rules");
                        written = files;
                        None
                    }
                    Err(e) => Some(format!("cannot write {}: {e}", dir.display())),
                },
                Err(missing) => Some(format!(
                    "{} lacks {missing}; the last keys stay in force",
                    secret.describe()
                )),
            },
            Ok(None) => Some(format!(
                "{} was deleted; the last keys stay in force (restart the CA to make its own roots)",
                secret.describe()
            )),
            Err(e) => Some(format!("cannot read {}: {e}", secret.describe())),
        };
        // Each problem is said once, not every two seconds.
        if problem != said {
            if let Some(p) = &problem {
                tracing::warn!(target: "zident::ca", "{p}");
            }
            said = problem;
        }
    }
}

/// The Secret's files, or the first required key it lacks.
fn usable(data: &BTreeMap<String, Vec<u8>>) -> Result<Files, &'static str> {
    if let Some(missing) = REQUIRED.iter().find(|k| !data.contains_key(**k)) {
        return Err(missing);
    }
    Ok(KEYS
        .iter()
        .filter_map(|k| Some((k.to_string(), data.get(*k)?.clone())))
        .collect())
}

/// Writes `files` into `dir` (the key 0600), the root first and the signing key last, and
/// removes `cert-chain.pem` when the Secret has none. The CA's watcher applies the whole burst
/// once it settles.
fn write(dir: &Path, files: &Files) -> std::io::Result<()> {
    create_private_dir(dir)?;
    for key in KEYS {
        let path = dir.join(key);
        match files.get(key) {
            Some(bytes) if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) => {
                let mode = if key == CA_KEY { 0o600 } else { 0o644 };
                write_atomic(&path, bytes, mode)?;
            }
            Some(_) => {}
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_without_a_required_key_is_named_and_cert_chain_is_optional() {
        let mut data: BTreeMap<String, Vec<u8>> = [
            (CA_CERT.to_string(), b"cert".to_vec()),
            (ROOT_CERT.to_string(), b"root".to_vec()),
            ("unrelated".to_string(), b"x".to_vec()),
        ]
        .into();
        assert_eq!(usable(&data), Err(CA_KEY));
        data.insert(CA_KEY.into(), b"key".to_vec());
        let files = usable(&data).unwrap();
        assert_eq!(files.len(), 3, "the unrelated key is not a file");

        let dir = tempfile::tempdir().unwrap();
        let with_chain = {
            let mut f = files.clone();
            f.insert(CERT_CHAIN.into(), b"chain".to_vec());
            f
        };
        write(dir.path(), &with_chain).unwrap();
        assert!(dir.path().join(CERT_CHAIN).exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write(dir.path(), &files).unwrap();
        assert!(
            !dir.path().join(CERT_CHAIN).exists(),
            "a chain the Secret dropped is removed"
        );
    }
}
