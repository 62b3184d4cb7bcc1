//! The seam between the rotation rules and where roots live. A [`RootStore`] reads a snapshot
//! (the rotation state and what was issued) and commits a planned [`Change`] atomically, or
//! refuses it with [`RotationError::Conflict`] when the stored state is no longer the one the
//! change was planned on. [`take_step`] plans with [`rotation::plan`] and commits, planning
//! again after a conflict, so two writers (two replicas, a replica and `zident ca rotate`)
//! never make two roots or skip a phase, whatever the store.
//!
//! Stores: the data directory (`dir_store`, files under a lock) and PostgreSQL
//! (`datastore::store`, rows in one transaction). A new home for roots implements this trait
//! and nothing else changes.

use std::collections::HashMap;
use std::future::Future;

use crate::roots::generation::{Generation, StoredGeneration};
use crate::roots::ledger::Issuance;
use crate::roots::rotation::{self, Change, RotationError, RotationState, StepRequest};

/// What a store holds for the rules to plan on.
#[derive(Debug, Clone)]
pub struct RootSnapshot {
    /// The rotation state.
    pub state: RotationState,
    /// The latest certificate issued per identity, by every replica sharing the store.
    pub issued: HashMap<String, Issuance>,
}

/// Where a CA's root generations and rotation state live.
pub trait RootStore {
    /// The stored rotation state alone (cheap: what a schedule polls); `None` before the first
    /// root exists.
    fn state(&mut self) -> impl Future<Output = Result<Option<RotationState>, RotationError>>;

    /// The stored state and what was issued; `None` before the first root exists.
    fn snapshot(&mut self) -> impl Future<Output = Result<Option<RootSnapshot>, RotationError>>;

    /// The material of generations `which` (those in the bundle, for loading the authority):
    /// certificates, and keys where the store still holds them.
    fn generations(
        &mut self,
        which: &[Generation],
    ) -> impl Future<Output = Result<Vec<StoredGeneration>, RotationError>>;

    /// Commits `change`, planned on `base`, as one atomic step: a generation `prepare` made is
    /// stored before the state that names it; a generation `retire` dropped loses its keys.
    /// Fails with [`RotationError::Conflict`], changing nothing, when the stored state is no
    /// longer `base`.
    fn commit(
        &mut self,
        base: &RotationState,
        change: &Change,
    ) -> impl Future<Output = Result<(), RotationError>>;
}

/// How many times a step is planned again after another writer's commit got in first.
const ATTEMPTS: usize = 5;

/// Takes `request` on `store`: plans it on a fresh snapshot and commits it, again on a fresh
/// snapshot if another writer changed the state meanwhile (the step is then judged on what
/// that writer left: a second `prepare` is refused, not made twice).
pub async fn take_step(
    store: &mut impl RootStore,
    request: &StepRequest,
) -> Result<RotationState, RotationError> {
    for _ in 0..ATTEMPTS {
        let snapshot = store.snapshot().await?.ok_or_else(|| {
            RotationError::NoState(
                "no roots are stored yet: start `zident ca` once first, so that it makes the first root"
                    .into(),
            )
        })?;
        let change = rotation::plan(&snapshot.state, &snapshot.issued, request)?;
        match store.commit(&snapshot.state, &change).await {
            Ok(()) => return Ok(change.state),
            Err(RotationError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    // Every attempt lost to another writer: say so as a conflict; the caller may try again.
    Err(RotationError::Conflict)
}
