//! Root rotation of the self-signed authority, in three phases that never break a handshake:
//!
//! 1. **prepare**: a new root (a new *generation*) is made and published in the trust bundle
//!    beside the active one; `spiffe_sequence` increases; signing continues with the old key.
//! 2. **activate**: once agents have had time to fetch the bundle (at least one refresh hint),
//!    new certificates are signed by the new key. The old root stays in the bundle.
//! 3. **retire**: once no certificate signed by the old key can still be valid (activation +
//!    the longest lifetime the CA issues), the old root leaves the bundle and its key is deleted.
//!
//! The state lives in `<data dir>/rotation.json`, written atomically under an exclusive lock
//! (`rotation.lock`), so `zident ca rotate` and a running CA's own schedule never interleave,
//! and a restart mid-rotation resumes where it was. Generation 1 is the original root in the
//! data dir (`ca-key.pem`, `ca-cert.pem`); generation N > 1 lives in `roots/N/`.
//!
//! Each generation also has a JWT-SVID signing key (`jwt-key.pem`), a key of its own, never
//! the root's: it goes through the same three phases with its root, so a prepared JWT key is
//! in the bundle before it signs, and a retired one leaves only when the longest lifetime the
//! CA issues (X.509 or JWT) has passed since it last signed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::KeyPair;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;
use zident_identity::{TrustDomain, profile, rfc3339, serial_hex, to_system_time};

use crate::persist::{create_private_dir, write_atomic};
use crate::roots::files::{CA_CERT, CA_KEY, FileError, JWT_KEY};

/// The state file.
pub const STATE_FILE: &str = "rotation.json";
const LOCK_FILE: &str = "rotation.lock";

/// A root generation: 1 is the original root, each prepare makes the next.
pub type Generation = u32;

/// One step of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Make and publish a new root.
    Prepare,
    /// Sign with the prepared root.
    Activate,
    /// Drop the previous root.
    Retire,
}

impl Phase {
    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Activate => "activate",
            Phase::Retire => "retire",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "prepare" => Ok(Phase::Prepare),
            "activate" => Ok(Phase::Activate),
            "retire" => Ok(Phase::Retire),
            other => Err(format!(
                "{other:?} is not a rotation phase (prepare, activate, retire)"
            )),
        }
    }
}

/// How long each phase waits, recorded in the state by the running CA so that `zident ca
/// rotate` run beside it applies the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds from prepare to the earliest activate (at least one bundle refresh hint).
    pub activate_delay_secs: u64,
    /// Seconds from activate to the earliest retire (the longest certificate lifetime issued,
    /// plus margin).
    pub retire_delay_secs: u64,
    /// Seconds added to a certificate's renewal point (half its life) before a client that
    /// learns roots only from responses is taken to have renewed.
    #[serde(default = "default_renewal_margin")]
    pub renewal_margin_secs: u64,
}

/// Added to the longest certificate lifetime before an old root may retire (the one default,
/// used by the CA's configuration and by a state file written before timings were recorded).
pub const RETIRE_MARGIN: Duration = Duration::from_secs(60);

/// The default of [`Timing::renewal_margin_secs`].
pub const RENEWAL_MARGIN_SECS: u64 = 60;

fn default_renewal_margin() -> u64 {
    RENEWAL_MARGIN_SECS
}

impl Default for Timing {
    fn default() -> Self {
        // The CA's defaults: refresh hint 5 min (twice), maximum lifetime 90 days (+ margin).
        Self {
            activate_delay_secs: 600,
            retire_delay_secs: zident_identity::profile::MAX_TTL.as_secs()
                + RETIRE_MARGIN.as_secs(),
            renewal_margin_secs: RENEWAL_MARGIN_SECS,
        }
    }
}

/// One thing that happened, kept in the state for `zident ca status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `prepare`, `activate` or `retire`.
    pub phase: String,
    /// The generation it concerned.
    pub generation: Generation,
    /// Unix seconds.
    pub at: u64,
}

/// The persisted rotation state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationState {
    /// The trust domain the roots are for.
    pub trust_domain: String,
    /// `spiffe_sequence` of the bundle; increases whenever its roots change.
    pub sequence: u64,
    /// The generation that signs.
    pub active: Generation,
    /// A new generation published but not yet signing.
    pub prepared: Option<Generation>,
    /// The generation that signed before the active one, still in the bundle.
    pub previous: Option<Generation>,
    /// Unix seconds from which `activate` is safe.
    pub activate_after: Option<u64>,
    /// Unix seconds from which `retire` is safe.
    pub retire_after: Option<u64>,
    /// The phase rules.
    #[serde(default)]
    pub timing: Timing,
    /// What happened, oldest first.
    #[serde(default)]
    pub history: Vec<Event>,
}

impl RotationState {
    /// Generation 1 active, nothing in rotation: a CA's state before its first rotation.
    pub fn initial(trust_domain: &TrustDomain) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            sequence: 1,
            active: 1,
            prepared: None,
            previous: None,
            activate_after: None,
            retire_after: None,
            timing: Timing::default(),
            history: vec![],
        }
    }

    /// The generations in the trust bundle, the active one first.
    pub fn in_bundle(&self) -> Vec<Generation> {
        std::iter::once(self.active)
            .chain(self.previous)
            .chain(self.prepared)
            .collect()
    }

    /// The step that comes next, the generation it acts on, and the unix second from which it
    /// is safe. `None` when nothing is in rotation: prepare is then due by the active root's
    /// age, which the state does not hold.
    pub fn next_step(&self) -> Option<(Phase, Generation, u64)> {
        match (self.prepared, self.previous) {
            (Some(g), _) => Some((Phase::Activate, g, self.activate_after.unwrap_or(0))),
            (None, Some(g)) => Some((Phase::Retire, g, self.retire_after.unwrap_or(0))),
            (None, None) => None,
        }
    }

    /// Where rotation stands, in a word.
    pub fn phase(&self) -> &'static str {
        match (self.prepared, self.previous) {
            (Some(_), _) => "prepared",
            (None, Some(_)) => "activated",
            (None, None) => "steady",
        }
    }
}

/// Why a rotation step was refused or failed. Nothing changes when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A file could not be read or written, or the state file or a key is unusable.
    #[error(transparent)]
    File(#[from] FileError),
    /// The step does not follow from the current phase, or is not yet safe.
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RotationError + '_ {
    move |source| {
        RotationError::from(FileError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

use zident_identity::unix_seconds;

fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
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

/// Applies `phase` to the self-signed roots in `data_dir` at `now`. Refuses a step that does
/// not follow from the current phase, and (unless `force`) one taken before it is safe.
pub fn apply(
    data_dir: &Path,
    phase: Phase,
    now: SystemTime,
    force: bool,
    root_lifetime: Duration,
) -> Result<RotationState, RotationError> {
    let _lock = lock(data_dir)?;
    let mut state = read_state(data_dir)?.ok_or_else(|| {
        RotationError::Refused(format!(
            "{} has no {STATE_FILE}: start `zident ca --data-dir {}` once first",
            data_dir.display(),
            data_dir.display()
        ))
    })?;
    let at = unix_seconds(now);
    match phase {
        Phase::Prepare => {
            if let Some(p) = state.prepared {
                return Err(RotationError::Refused(format!(
                    "generation {p} is already prepared; activate it next"
                )));
            }
            if let Some(p) = state.previous {
                return Err(RotationError::Refused(format!(
                    "generation {p} is still in the bundle from the last rotation; retire it first"
                )));
            }
            let td = TrustDomain::new(&state.trust_domain).map_err(|e| {
                RotationError::from(FileError::Invalid {
                    path: data_dir.join(STATE_FILE),
                    message: e.to_string(),
                })
            })?;
            let next = state
                .history
                .iter()
                .map(|e| e.generation)
                .chain([state.active])
                .max()
                .unwrap_or(1)
                + 1;
            make_root(
                &generation_dir(data_dir, next),
                &td,
                next,
                now,
                root_lifetime,
            )?;
            state.prepared = Some(next);
            state.sequence += 1;
            state.activate_after = Some(at + state.timing.activate_delay_secs);
            state.history.push(Event {
                phase: "prepare".into(),
                generation: next,
                at,
            });
        }
        Phase::Activate => {
            let Some((Phase::Activate, next, after)) = state.next_step() else {
                return Err(RotationError::Refused(
                    "no generation is prepared; run `prepare` first".into(),
                ));
            };
            if at < after && !force {
                return Err(RotationError::Refused(format!(
                    "too early: agents may not have fetched generation {next}'s root yet; activation is safe from {}, or pass --force",
                    safe_from(after, at)
                )));
            }
            let clients = clients_wait(&state, &crate::roots::ledger::load(data_dir), at);
            if let Some(last) = clients.last()
                && !force
            {
                return Err(RotationError::Refused(format!(
                    "too early: {} identities hold a certificate issued before generation {next} was prepared and have not renewed since (clients that learn roots only from CreateCertificate responses, like ztunnel and istio-agent, do not trust the new root yet), e.g. {}; activation is safe when they have renewed, at the latest from {}, or pass --force (`zident ca status --json` lists them)",
                    clients.len(),
                    clients[0].id,
                    safe_from(last.renews_by, at)
                )));
            }
            state.previous = Some(state.active);
            state.active = next;
            state.prepared = None;
            state.activate_after = None;
            state.retire_after = Some(at + state.timing.retire_delay_secs);
            state.history.push(Event {
                phase: "activate".into(),
                generation: next,
                at,
            });
        }
        Phase::Retire => {
            let Some((Phase::Retire, old, after)) = state.next_step() else {
                return Err(RotationError::Refused(
                    "no previous generation is in the bundle; nothing to retire".into(),
                ));
            };
            if at < after && !force {
                return Err(RotationError::Refused(format!(
                    "too early: certificates signed by generation {old} may be valid until {}; retire then, or pass --force",
                    safe_from(after, at)
                )));
            }
            state.previous = None;
            state.retire_after = None;
            state.sequence += 1;
            state.history.push(Event {
                phase: "retire".into(),
                generation: old,
                at,
            });
        }
    }
    write_state(data_dir, &state)?;
    if phase == Phase::Retire
        && let Some(event) = state.history.last()
    {
        // After the commit: the keys of a retired generation are of no further use.
        for name in [CA_KEY, JWT_KEY] {
            let key = generation_dir(data_dir, event.generation).join(name);
            if let Err(e) = std::fs::remove_file(&key)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(target: "zident::ca", path = %key.display(), "cannot delete the retired generation's key: {e}");
            }
        }
    }
    Ok(state)
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
    let pem = zident_identity::jwt::JwtSigner::generate_pem().map_err(|e| {
        RotationError::from(FileError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })
    })?;
    write_atomic(&path, pem.as_bytes(), 0o600).map_err(io(&path))
}

/// When generation `prepared` was prepared (Unix seconds), from the history.
pub fn prepared_at(state: &RotationState) -> Option<u64> {
    let g = state.prepared?;
    state
        .history
        .iter()
        .rev()
        .find(|e| e.phase == "prepare" && e.generation == g)
        .map(|e| e.at)
}

/// While a generation is prepared: the identities (from the CA's ledger `latest`) that may
/// not trust it yet because they learn roots only from responses and have not renewed since
/// prepare, each with the time by which it will have; sorted, the last is the time after which
/// activation is safe regardless. Empty when nothing is prepared or nobody waits.
pub fn clients_wait(
    state: &RotationState,
    latest: &std::collections::HashMap<String, crate::roots::ledger::Issuance>,
    at: u64,
) -> Vec<crate::roots::ledger::Waiting> {
    match prepared_at(state) {
        Some(prepared) => {
            crate::roots::ledger::waiting(latest, prepared, at, state.timing.renewal_margin_secs)
        }
        None => Vec::new(),
    }
}

/// When activation is safe by both rules: the bundle rule (`activate_after`) and every client
/// having renewed since prepare (or its renewal point having passed).
pub fn activation_safe_at(
    state: &RotationState,
    latest: &std::collections::HashMap<String, crate::roots::ledger::Issuance>,
    at: u64,
) -> Option<u64> {
    let (phase, _, after) = state.next_step()?;
    if phase != Phase::Activate {
        return None;
    }
    let clients = clients_wait(state, latest, at)
        .last()
        .map(|w| w.renews_by)
        .unwrap_or(0);
    Some(after.max(clients))
}

/// `after` (unix seconds) as a time and how far off it is from `at`, for refusals.
fn safe_from(after: u64, at: u64) -> String {
    format!(
        "{} (in {}s)",
        rfc3339(from_unix(after)),
        after.saturating_sub(at)
    )
}

/// Makes a self-signed root in `dir` (key first, then certificate; both replaced if a crashed
/// prepare left them half-made).
pub fn make_root(
    dir: &Path,
    td: &TrustDomain,
    generation: Generation,
    now: SystemTime,
    lifetime: Duration,
) -> Result<(), RotationError> {
    create_private_dir(dir).map_err(io(dir))?;
    let key = KeyPair::generate().map_err(|e| {
        RotationError::from(FileError::Invalid {
            path: dir.join(CA_KEY),
            message: e.to_string(),
        })
    })?;
    let key_path = dir.join(CA_KEY);
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
    make_jwt_key(dir)?;
    let cert = profile::generation_root_params(td, generation, now, lifetime)
        .self_signed(&key)
        .map_err(|e| {
            RotationError::from(FileError::Invalid {
                path: dir.join(CA_CERT),
                message: e.to_string(),
            })
        })?;
    let cert_path = dir.join(CA_CERT);
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))
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
