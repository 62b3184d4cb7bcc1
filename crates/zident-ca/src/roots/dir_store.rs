//! The root store of a CA without a database: its data dir. The rotation state is
//! `<data dir>/rotation.json`, written atomically under an exclusive lock (`rotation.lock`),
//! so `zident ca rotate` and a running CA's own schedule never interleave, and a restart
//! mid-rotation resumes where it was. Generation 1 is the original root in the data dir
//! (`ca-key.pem`, `ca-cert.pem`, `jwt-key.pem`); generation N > 1 lives in `roots/N/`.
//!
//! A step's commit point is the state file: a generation `prepare` made is written first (a
//! crash before the state names it leaves files nobody reads, made again by the next
//! prepare), the keys of a retired generation are deleted after.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use x509_parser::prelude::*;
use zeroize::Zeroizing;
use zident_identity::{TrustDomain, rfc3339, serial_hex, to_system_time};

use crate::persist::{create_private_dir, write_atomic};
use crate::roots::files::{CA_CERT, CA_KEY, FileError, JWT_KEY};
use crate::roots::generation::{NewGeneration, StoredGeneration, jwt_key_pem};
use crate::roots::rotation::{
    Change, Generation, Phase, RotationError, RotationState, StepRequest, Timing,
};
use crate::roots::store::{RootSnapshot, RootStore};

/// The state file.
pub const STATE_FILE: &str = "rotation.json";
const LOCK_FILE: &str = "rotation.lock";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RotationError + '_ {
    move |source| {
        RotationError::from(FileError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// The directory of a generation's `ca-key.pem` and `ca-cert.pem`.
pub fn generation_dir(data_dir: &Path, generation: Generation) -> PathBuf {
    if generation <= 1 {
        data_dir.to_owned()
    } else {
        data_dir.join("roots").join(generation.to_string())
    }
}

/// An exclusive lock on a data dir's rotation state, released when dropped.
pub struct StateLock {
    _file: File,
}

/// Takes the rotation lock of `data_dir`, waiting for another holder to finish.
pub fn lock(data_dir: &Path) -> Result<StateLock, RotationError> {
    create_private_dir(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    file.lock().map_err(io(&path))?;
    Ok(StateLock { _file: file })
}

/// The state of `data_dir`, if it has one.
pub fn read_state(data_dir: &Path) -> Result<Option<RotationState>, RotationError> {
    let path = data_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            RotationError::from(FileError::Invalid {
                path,
                message: format!("not a rotation state: {e}"),
            })
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Writes the state atomically (the commit point of every step).
pub fn write_state(data_dir: &Path, state: &RotationState) -> Result<(), RotationError> {
    let path = data_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).map_err(|e| {
        RotationError::from(FileError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })
    })?;
    write_atomic(&path, &json, 0o644).map_err(io(&path))
}

/// The state of `data_dir`, created for generation 1 if it has none; records `timing` (the
/// running CA's rules). Called by the CA at start, under the lock.
pub fn ensure_state(
    data_dir: &Path,
    trust_domain: &TrustDomain,
    timing: Timing,
) -> Result<RotationState, RotationError> {
    let _lock = lock(data_dir)?;
    let existing = read_state(data_dir)?;
    let fresh = existing.is_none();
    let mut state = existing.unwrap_or_else(|| RotationState::initial(trust_domain));
    if state.trust_domain != trust_domain.as_str() {
        return Err(RotationError::from(FileError::Invalid {
            path: data_dir.join(STATE_FILE),
            message: format!(
                "the roots here are for trust domain {}, but the mesh file says {trust_domain}",
                state.trust_domain
            ),
        }));
    }
    if fresh || state.timing != timing {
        state.timing = timing;
        write_state(data_dir, &state)?;
    }
    Ok(state)
}

/// Applies `phase` to the self-signed roots in `data_dir` at `now`: the rules of
/// [`rotation::plan`](crate::roots::rotation::plan) on this store, for `zident ca rotate` and
/// the CA's schedule. Refuses a step that does not follow from the current phase, and (unless
/// `force`) one taken before it is safe.
pub fn apply(
    data_dir: &Path,
    phase: Phase,
    now: SystemTime,
    force: bool,
    root_lifetime: Duration,
) -> Result<RotationState, RotationError> {
    let store = DirStore::new(data_dir);
    let request = StepRequest {
        phase,
        now,
        force,
        root_lifetime,
        timing: None,
    };
    // As `store::take_step`, without a runtime: the CLI and tests call this directly.
    for _ in 0..5 {
        let snapshot = store.read()?.ok_or_else(|| no_state(data_dir))?;
        let change = crate::roots::rotation::plan(&snapshot.state, &snapshot.issued, &request)?;
        match store.write(&snapshot.state, &change) {
            Ok(()) => return Ok(change.state),
            Err(RotationError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(RotationError::Conflict)
}

fn no_state(data_dir: &Path) -> RotationError {
    RotationError::NoState(format!(
        "{} has no {STATE_FILE}: start `zident ca --data-dir {}` once first",
        data_dir.display(),
        data_dir.display()
    ))
}

/// The data dir as a [`RootStore`].
#[derive(Debug, Clone)]
pub struct DirStore {
    data_dir: PathBuf,
}

impl DirStore {
    /// The store in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
        }
    }

    /// The state and the ledger, read now (blocking).
    pub fn read(&self) -> Result<Option<RootSnapshot>, RotationError> {
        Ok(read_state(&self.data_dir)?.map(|state| RootSnapshot {
            state,
            issued: crate::roots::ledger::load(&self.data_dir),
        }))
    }

    /// Commits `change` under the rotation lock if the state is still `base` (blocking).
    pub fn write(&self, base: &RotationState, change: &Change) -> Result<(), RotationError> {
        let dir = &self.data_dir;
        let _lock = lock(dir)?;
        if read_state(dir)?.as_ref() != Some(base) {
            return Err(RotationError::Conflict);
        }
        if let Some(g) = &change.made {
            write_generation(&generation_dir(dir, g.generation), g)?;
        }
        write_state(dir, &change.state)?;
        if let Some(old) = change.retired {
            // After the commit: the keys of a retired generation are of no further use.
            for name in [CA_KEY, JWT_KEY] {
                let key = generation_dir(dir, old).join(name);
                if let Err(e) = std::fs::remove_file(&key)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(target: "zident::ca", path = %key.display(), "cannot delete the retired generation's key: {e}");
                }
            }
        }
        Ok(())
    }
}

/// The stored material of `which` in `data_dir`: each generation's certificate (required)
/// and the keys still on disk.
pub fn read_generations(
    data_dir: &Path,
    which: &[Generation],
) -> Result<Vec<StoredGeneration>, RotationError> {
    let optional = |path: PathBuf| -> Result<Option<Zeroizing<Vec<u8>>>, RotationError> {
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    };
    which
        .iter()
        .map(|&generation| {
            let dir = generation_dir(data_dir, generation);
            let cert_path = dir.join(CA_CERT);
            let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
            Ok(StoredGeneration {
                generation,
                cert_pem: String::from_utf8_lossy(&cert).into_owned(),
                key_pem: optional(dir.join(CA_KEY))?,
                jwt_key_pem: optional(dir.join(JWT_KEY))?,
            })
        })
        .collect()
}

/// Writes `generations` into `data_dir` as a working copy of another store (a replica's, of
/// PostgreSQL or of the API server): each certificate, then its keys (0600; a key the store no
/// longer holds, a retired root's, is deleted). A file already holding the same bytes is left
/// alone, so an unchanged copy is not rewritten.
pub fn write_generations(
    data_dir: &Path,
    generations: &[StoredGeneration],
) -> Result<(), RotationError> {
    for g in generations {
        let dir = generation_dir(data_dir, g.generation);
        create_private_dir(&dir).map_err(io(&dir))?;
        let cert_path = dir.join(CA_CERT);
        if std::fs::read(&cert_path).ok().as_deref() != Some(g.cert_pem.as_bytes()) {
            write_atomic(&cert_path, g.cert_pem.as_bytes(), 0o644).map_err(io(&cert_path))?;
        }
        for (name, key) in [(CA_KEY, &g.key_pem), (JWT_KEY, &g.jwt_key_pem)] {
            let key_path = dir.join(name);
            match key {
                Some(key) => {
                    if std::fs::read(&key_path).ok().as_deref() != Some(&key[..]) {
                        write_atomic(&key_path, key, 0o600).map_err(io(&key_path))?;
                    }
                }
                None => match std::fs::remove_file(&key_path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io(&key_path)(e));
                    }
                    _ => {}
                },
            }
        }
    }
    Ok(())
}

impl RootStore for DirStore {
    async fn generations(
        &mut self,
        which: &[Generation],
    ) -> Result<Vec<StoredGeneration>, RotationError> {
        let (dir, which) = (self.data_dir.clone(), which.to_vec());
        tokio::task::spawn_blocking(move || read_generations(&dir, &which))
            .await
            .map_err(|e| RotationError::Store(Box::new(e)))?
    }

    async fn state(&mut self) -> Result<Option<RotationState>, RotationError> {
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || read_state(&dir))
            .await
            .map_err(|e| RotationError::Store(Box::new(e)))?
    }

    async fn snapshot(&mut self) -> Result<Option<RootSnapshot>, RotationError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read())
            .await
            .map_err(|e| RotationError::Store(Box::new(e)))?
    }

    async fn commit(&mut self, base: &RotationState, change: &Change) -> Result<(), RotationError> {
        let (store, base, change) = (self.clone(), base.clone(), change.clone());
        tokio::task::spawn_blocking(move || store.write(&base, &change))
            .await
            .map_err(|e| RotationError::Store(Box::new(e)))?
    }
}

/// Gives the active and the prepared generation a JWT signing key where they have a root key
/// but no JWT key (a data dir from before JWT-SVIDs). Says whether it made one. Under the
/// rotation lock, so only one process makes each key.
pub fn ensure_jwt_keys(data_dir: &Path, state: &RotationState) -> Result<bool, RotationError> {
    let _lock = lock(data_dir)?;
    let mut made = false;
    for generation in std::iter::once(state.active).chain(state.prepared) {
        let dir = generation_dir(data_dir, generation);
        if dir.join(CA_KEY).exists() && !dir.join(JWT_KEY).exists() {
            make_jwt_key(&dir)?;
            tracing::info!(target: "zident::ca", generation, "made a JWT-SVID signing key for this root generation");
            made = true;
        }
    }
    Ok(made)
}

/// Writes a new JWT signing key to `dir/jwt-key.pem` (0600).
pub fn make_jwt_key(dir: &Path) -> Result<(), RotationError> {
    let path = dir.join(JWT_KEY);
    write_atomic(&path, &jwt_key_pem()?, 0o600).map_err(io(&path))
}

/// Makes a self-signed root in `dir` (key first, then the JWT key, then the certificate; all
/// replaced if a crashed prepare left them half-made).
pub fn make_root(
    dir: &Path,
    td: &TrustDomain,
    generation: Generation,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(), RotationError> {
    write_generation(dir, &NewGeneration::make(td, generation, now, lifetime)?)
}

/// Writes a generation's material into `dir`: the keys (0600) before the certificate (0644).
fn write_generation(dir: &Path, g: &NewGeneration) -> Result<(), RotationError> {
    create_private_dir(dir).map_err(io(dir))?;
    for (name, bytes, mode) in [
        (CA_KEY, &g.key_pem[..], 0o600),
        (JWT_KEY, &g.jwt_key_pem[..], 0o600),
        (CA_CERT, g.cert_pem.as_bytes(), 0o644),
    ] {
        let path = dir.join(name);
        write_atomic(&path, bytes, mode).map_err(io(&path))?;
    }
    Ok(())
}

/// What `zident ca status` shows of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationStatus {
    /// The generation.
    pub generation: Generation,
    /// `active`, `prepared`, `previous` or `retired`.
    pub phase: &'static str,
    /// The root's serial, hex.
    pub serial: String,
    /// The root's notAfter.
    pub not_after: String,
    /// The certificate file.
    pub certificate: PathBuf,
    /// Whether the key is still on disk.
    pub has_key: bool,
    /// The `kid` of the generation's JWT-SVID key, while it is on disk.
    pub jwt_kid: Option<String>,
}

/// Every generation of `data_dir` that is or was in the bundle, newest first.
pub fn status(data_dir: &Path, state: &RotationState) -> Vec<GenerationStatus> {
    let mut generations: Vec<Generation> = state
        .history
        .iter()
        .map(|e| e.generation)
        .chain(state.in_bundle())
        .collect();
    generations.sort_unstable();
    generations.dedup();
    generations.reverse();
    generations
        .into_iter()
        .map(|g| {
            let dir = generation_dir(data_dir, g);
            let cert = dir.join(CA_CERT);
            let (serial, not_after) = std::fs::read(&cert)
                .ok()
                .and_then(|pem| zident_identity::pem::certs_from_pem(&pem).ok())
                .and_then(|c| c.into_iter().next())
                .and_then(|der| {
                    X509Certificate::from_der(&der).ok().map(|(_, c)| {
                        (
                            serial_hex(c.raw_serial()),
                            rfc3339(to_system_time(c.validity().not_after)),
                        )
                    })
                })
                .unwrap_or_else(|| ("?".into(), "?".into()));
            let phase = if g == state.active {
                "active"
            } else if Some(g) == state.prepared {
                "prepared"
            } else if Some(g) == state.previous {
                "previous"
            } else {
                "retired"
            };
            GenerationStatus {
                generation: g,
                phase,
                serial,
                not_after,
                certificate: cert,
                has_key: dir.join(CA_KEY).exists(),
                jwt_kid: std::fs::read(dir.join(JWT_KEY))
                    .ok()
                    .and_then(|pem| zident_identity::jwt::JwtSigner::from_pem(&pem).ok())
                    .map(|k| k.public().kid().to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roots::rotation::RENEWAL_MARGIN_SECS;
    use zident_identity::unix_seconds;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn setup() -> (tempfile::TempDir, SystemTime) {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("cluster.local").unwrap();
        make_root(dir.path(), &td, 2, SystemTime::now(), YEAR).unwrap();
        let timing = Timing {
            renewal_margin_secs: RENEWAL_MARGIN_SECS,
            activate_delay_secs: 10,
            retire_delay_secs: 100,
        };
        ensure_state(dir.path(), &td, timing).unwrap();
        (dir, SystemTime::now())
    }

    #[test]
    fn phases_go_in_order_and_wait_until_safe() {
        let (dir, t0) = setup();
        let d = dir.path();
        let refused = |r: Result<RotationState, RotationError>, needle: &str| {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        refused(
            apply(d, Phase::Activate, t0, false, YEAR),
            "run `prepare` first",
        );
        refused(
            apply(d, Phase::Retire, t0, false, YEAR),
            "nothing to retire",
        );

        assert_eq!(read_state(d).unwrap().unwrap().next_step(), None);
        let s = apply(d, Phase::Prepare, t0, false, YEAR).unwrap();
        assert_eq!((s.active, s.prepared, s.sequence), (1, Some(2), 2));
        assert_eq!(
            s.next_step(),
            Some((Phase::Activate, 2, unix_seconds(t0) + 10)),
            "what the schedule and `zident ca status` go by"
        );
        assert!(d.join("roots/2/ca-key.pem").exists());
        refused(
            apply(d, Phase::Prepare, t0, false, YEAR),
            "already prepared",
        );
        // Too early, and nothing changed by the refusal.
        refused(apply(d, Phase::Activate, t0, false, YEAR), "too early");
        assert_eq!(read_state(d).unwrap().unwrap(), s);

        let s = apply(
            d,
            Phase::Activate,
            t0 + Duration::from_secs(10),
            false,
            YEAR,
        )
        .unwrap();
        assert_eq!((s.active, s.previous, s.sequence), (2, Some(1), 2));
        assert_eq!(
            s.next_step(),
            Some((Phase::Retire, 1, unix_seconds(t0) + 10 + 100))
        );
        refused(apply(d, Phase::Prepare, t0, false, YEAR), "retire it first");
        refused(
            apply(d, Phase::Retire, t0 + Duration::from_secs(20), false, YEAR),
            "too early",
        );
        let s = apply(d, Phase::Retire, t0 + Duration::from_secs(110), false, YEAR).unwrap();
        assert_eq!((s.active, s.previous, s.sequence), (2, None, 3));
        assert!(!d.join(CA_KEY).exists(), "the retired key is deleted");
        assert!(!d.join(JWT_KEY).exists(), "and its JWT key");
        assert!(d.join("roots/2").join(JWT_KEY).exists());
        assert!(d.join(CA_CERT).exists(), "its certificate is kept");

        let st = status(d, &s);
        let phases: Vec<_> = st
            .iter()
            .map(|g| (g.generation, g.phase, g.has_key))
            .collect();
        assert_eq!(phases, vec![(2, "active", true), (1, "retired", false)]);

        // The next rotation makes generation 3.
        let s = apply(
            d,
            Phase::Prepare,
            t0 + Duration::from_secs(120),
            false,
            YEAR,
        )
        .unwrap();
        assert_eq!(s.prepared, Some(3));
    }

    #[test]
    fn force_skips_the_wait_and_a_foreign_trust_domain_is_refused() {
        let (dir, t0) = setup();
        let d = dir.path();
        apply(d, Phase::Prepare, t0, false, YEAR).unwrap();
        apply(d, Phase::Activate, t0, true, YEAR).unwrap();
        apply(d, Phase::Retire, t0, true, YEAR).unwrap();
        let other = TrustDomain::new("other.example").unwrap();
        let e = ensure_state(d, &other, Timing::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust domain cluster.local"), "{e}");
    }
}
