//! Root rotation of the self-signed authority, in three phases that never break a handshake:
//!
//! 1. **prepare**: a new root (a new *generation*) is made and published in the trust bundle
//!    beside the active one; `spiffe_sequence` increases; signing continues with the old key.
//! 2. **activate**: once agents have had time to fetch the bundle (at least one refresh hint),
//!    and every client that learns roots only from responses has renewed since prepare, new
//!    certificates are signed by the new key. The old root stays in the bundle.
//! 3. **retire**: once no certificate signed by the old key can still be valid (activation +
//!    the longest lifetime the CA issues), the old root leaves the bundle and its key is deleted.
//!
//! Each generation also has a JWT-SVID signing key, a key of its own, never the root's: it
//! goes through the same three phases with its root, so a prepared JWT key is in the bundle
//! before it signs, and a retired one leaves only when the longest lifetime the CA issues (X.509
//! or JWT) has passed since it last signed.
//!
//! This module holds the rules alone: [`plan`] is a function of the state, what was issued and
//! the time, and returns the [`Change`] a step makes. Where the state lives, and how a change is
//! committed atomically, is a [`RootStore`](crate::roots::store::RootStore)'s business (the data
//! dir in `dir_store`, PostgreSQL in `datastore`), so every store applies the same rules.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zident_identity::{TrustDomain, rfc3339, unix_seconds};

use crate::roots::files::FileError;
pub use crate::roots::generation::Generation;
use crate::roots::generation::{GenerationError, NewGeneration};
use crate::roots::ledger::{Issuance, Waiting};

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

/// A name that is not one of the phases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a rotation phase (prepare, activate, retire)")]
pub struct UnknownPhase(pub String);

impl std::str::FromStr for Phase {
    type Err = UnknownPhase;
    fn from_str(s: &str) -> Result<Self, UnknownPhase> {
        match s {
            "prepare" => Ok(Phase::Prepare),
            "activate" => Ok(Phase::Activate),
            "retire" => Ok(Phase::Retire),
            other => Err(UnknownPhase(other.to_owned())),
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
    /// A key or certificate could not be made.
    #[error(transparent)]
    Crypto(#[from] GenerationError),
    /// The store holds no rotation state yet.
    #[error("{0}")]
    NoState(String),
    /// The stored state changed between reading it and committing the step (another replica
    /// or `zident ca rotate` took a step); the step is planned again on the new state.
    #[error("the rotation state changed while this step was planned")]
    Conflict,
    /// The store could not be read or written (the database is away, a statement failed):
    /// the store's own error.
    #[error("{0}")]
    Store(Box<dyn std::error::Error + Send + Sync>),
}

/// A step to take: which, when, and by which rules.
#[derive(Debug, Clone)]
pub struct StepRequest {
    /// prepare, activate or retire.
    pub phase: Phase,
    /// The time it is taken at.
    pub now: SystemTime,
    /// Take it before it is safe.
    pub force: bool,
    /// The lifetime of a root `prepare` makes.
    pub root_lifetime: Duration,
    /// The rules to record in the state (a replica's own); `None` keeps the stored ones.
    pub timing: Option<Timing>,
}

/// What a step changes: the state to commit, the generation `prepare` made (to store before
/// the state that names it), and the generation `retire` dropped (whose keys go after the
/// commit).
#[derive(Debug, Clone)]
pub struct Change {
    /// The state after the step.
    pub state: RotationState,
    /// The new generation's material (prepare).
    pub made: Option<NewGeneration>,
    /// The generation that left the bundle (retire).
    pub retired: Option<Generation>,
}

/// Plans step `request` on `state`, given the latest issuance per identity (the rule that
/// waits for clients which learn roots only from responses). Refuses a step that does not
/// follow from the current phase and, unless forced, one taken before it is safe. Pure but
/// for the keys `prepare` generates.
pub fn plan(
    state: &RotationState,
    issued: &HashMap<String, Issuance>,
    request: &StepRequest,
) -> Result<Change, RotationError> {
    let StepRequest {
        phase,
        now,
        force,
        root_lifetime,
        timing,
    } = *request;
    let mut state = state.clone();
    if let Some(t) = timing {
        state.timing = t;
    }
    let at = unix_seconds(now);
    let mut made = None;
    let mut retired = None;
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
                RotationError::Refused(format!(
                    "the stored rotation state names trust domain {:?}: {e}",
                    state.trust_domain
                ))
            })?;
            let next = state
                .history
                .iter()
                .map(|e| e.generation)
                .chain([state.active])
                .max()
                .unwrap_or(1)
                + 1;
            made = Some(NewGeneration::make(&td, next, now, root_lifetime)?);
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
            let clients = clients_wait(&state, issued, at);
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
            retired = Some(old);
            state.sequence += 1;
            state.history.push(Event {
                phase: "retire".into(),
                generation: old,
                at,
            });
        }
    }
    Ok(Change {
        state,
        made,
        retired,
    })
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
    latest: &HashMap<String, Issuance>,
    at: u64,
) -> Vec<Waiting> {
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
    latest: &HashMap<String, Issuance>,
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

fn from_unix(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}
