//! The API server as a [`RootStore`]: the roots Secret (see `secret_format`) read with its
//! resourceVersion and replaced only at it, and what every replica issued from their records.
//! A conflict (409) is [`RotationError::Conflict`], so [`take_step`](crate::store::take_step)
//! plans the step again on what the other writer left.

use std::collections::HashMap;

use std::time::{Duration, SystemTime};

use zident_identity::TrustDomain;
use zident_kube::{CallError, Connection, IssuedRecords, StateSecret, Versioned};

use super::{issued_text, secret_format};
use crate::roots::generation::{Generation, NewGeneration, StoredGeneration};
use crate::roots::ledger::Issuance;
use crate::roots::rotation::{Change, RotationError, RotationState, Timing};
use crate::roots::store::{RootSnapshot, RootStore};

/// The Secret holding the roots and the rotation state.
pub const ROOTS_SECRET: &str = "zident-ca-roots";

/// The roots Secret and the issued records of one namespace.
#[derive(Clone)]
pub struct SecretRoots {
    pub(crate) secret: StateSecret,
    pub(crate) records: IssuedRecords,
    /// What this replica issued and may not have written to its record yet.
    pub(crate) own: HashMap<String, Issuance>,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStoreError {
    /// A call to the API server failed.
    #[error("{what}: {source}")]
    Call {
        /// What was read or written.
        what: String,
        /// How it failed.
        #[source]
        source: CallError,
    },
    /// The Secret's contents are unusable.
    #[error("{what}: {source}")]
    Format {
        /// Which Secret.
        what: String,
        /// What is wrong.
        #[source]
        source: secret_format::FormatError,
    },
    /// The working copy in the data dir could not be written.
    #[error("cannot write the working copy: {0}")]
    WorkingCopy(String),
    /// The first generation could not be made.
    #[error("cannot make the first root: {0}")]
    Make(String),
    /// The revocation Secret's contents are unusable, or it could not be written.
    #[error("{0}")]
    Revocations(String),
    /// A change was refused; nothing was written.
    #[error("{0}")]
    Refused(String),
}

fn store(e: ClusterStoreError) -> RotationError {
    RotationError::Store(Box::new(e))
}

impl SecretRoots {
    /// The store in `namespace` (the Secret `zident-ca-roots`), as replica `replica` (whose
    /// issued record is `zident-ca-issued-<replica>`).
    pub fn new(connection: &Connection, namespace: &str, replica: &str) -> Self {
        Self {
            secret: StateSecret::new(connection, namespace, ROOTS_SECRET),
            records: IssuedRecords::new(connection, namespace, replica),
            own: HashMap::new(),
        }
    }

    /// Makes the Secret with a first root for `td` (valid from `now` for `lifetime`) and a
    /// state with `timing`; `Ok(false)` when it exists already (another replica made it).
    pub async fn create_first(
        &self,
        td: &TrustDomain,
        now: SystemTime,
        lifetime: Duration,
        timing: Timing,
    ) -> Result<bool, ClusterStoreError> {
        let first = NewGeneration::make(td, 1, now, lifetime)
            .map_err(|e| ClusterStoreError::Make(e.to_string()))?;
        let mut state = RotationState::initial(td);
        state.timing = timing;
        let data = secret_format::initial(&first, &state)
            .map_err(|e| ClusterStoreError::Make(e.to_string()))?;
        match self.secret.create(&data).await {
            Ok(()) => Ok(true),
            Err(CallError::Conflict(_)) => Ok(false),
            Err(source) => Err(ClusterStoreError::Call {
                what: format!("cannot create {}", self.secret.describe()),
                source,
            }),
        }
    }

    /// The Secret as stored.
    pub(crate) async fn read(&self) -> Result<Option<Versioned>, ClusterStoreError> {
        self.secret
            .read()
            .await
            .map_err(|source| ClusterStoreError::Call {
                what: format!("cannot read {}", self.secret.describe()),
                source,
            })
    }

    /// Its rotation state.
    pub(crate) fn decode_state(
        &self,
        v: &Versioned,
    ) -> Result<Option<RotationState>, ClusterStoreError> {
        secret_format::state(&v.data).map_err(|source| self.format(source))
    }

    /// Its generations `which`.
    pub(crate) fn decode_generations(
        &self,
        v: &Versioned,
        which: &[Generation],
    ) -> Result<Vec<StoredGeneration>, ClusterStoreError> {
        secret_format::generations(&v.data, which).map_err(|source| self.format(source))
    }

    fn format(&self, source: secret_format::FormatError) -> ClusterStoreError {
        ClusterStoreError::Format {
            what: format!("{} is unusable", self.secret.describe()),
            source,
        }
    }

    /// What every replica issued (their records, and this replica's own not yet written),
    /// the latest per identity.
    pub(crate) async fn issued(&self) -> Result<HashMap<String, Issuance>, ClusterStoreError> {
        let records = self
            .records
            .read_all()
            .await
            .map_err(|source| ClusterStoreError::Call {
                what: "cannot list the replicas' issued records".into(),
                source,
            })?;
        let mut latest = HashMap::new();
        for (name, text) in records {
            let (entries, skipped) = issued_text::decode(&text);
            if skipped > 0 {
                tracing::warn!(target: "zident::ca", record = %name, skipped, "lines of an issued record are unreadable and were skipped");
            }
            issued_text::merge(&mut latest, entries);
        }
        issued_text::merge(
            &mut latest,
            self.own.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        );
        Ok(latest)
    }
}

impl RootStore for SecretRoots {
    async fn state(&mut self) -> Result<Option<RotationState>, RotationError> {
        match self.read().await.map_err(store)? {
            Some(v) => self.decode_state(&v).map_err(store),
            None => Ok(None),
        }
    }

    async fn snapshot(&mut self) -> Result<Option<RootSnapshot>, RotationError> {
        let Some(state) = self.state().await? else {
            return Ok(None);
        };
        let issued = self.issued().await.map_err(store)?;
        Ok(Some(RootSnapshot { state, issued }))
    }

    async fn generations(
        &mut self,
        which: &[Generation],
    ) -> Result<Vec<StoredGeneration>, RotationError> {
        let v = self.read().await.map_err(store)?.ok_or_else(|| {
            RotationError::NoState(format!("{} does not exist", self.secret.describe()))
        })?;
        self.decode_generations(&v, which).map_err(store)
    }

    async fn commit(&mut self, base: &RotationState, change: &Change) -> Result<(), RotationError> {
        let Some(mut v) = self.read().await.map_err(store)? else {
            return Err(RotationError::Conflict);
        };
        if self.decode_state(&v).map_err(store)?.as_ref() != Some(base) {
            return Err(RotationError::Conflict);
        }
        secret_format::apply(&mut v.data, change).map_err(|e| RotationError::Store(Box::new(e)))?;
        match self.secret.replace(&v.resource_version, &v.data).await {
            Ok(()) => Ok(()),
            Err(CallError::Conflict(_)) => Err(RotationError::Conflict),
            Err(source) => Err(store(ClusterStoreError::Call {
                what: format!("cannot write {}", self.secret.describe()),
                source,
            })),
        }
    }
}
