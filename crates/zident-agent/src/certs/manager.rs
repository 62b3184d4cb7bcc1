//! The certificate manager: one certificate per local identity, fetched when the first
//! workload with that identity appears, renewed in the background, forgotten when the last one
//! leaves. Fetches are deduplicated (one worker per identity), limited in concurrency, and
//! ordered RealTime > Warmup > Background.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use zident_identity::{CertificateProvider, ProviderError, SpiffeId, WorkloadCertificate};

use crate::ca::client::CaClient;
use crate::ca::trust::TrustStore;
use crate::certs::gate::{Priority, PriorityGate};
use crate::certs::worker::{self, CertState, IdentityStatus, RenewalEvent, WorkerContext};
use crate::config::RenewalPolicy;
use crate::metrics::{AgentMetrics, IdentityLabel};

struct Slot {
    status: watch::Receiver<IdentityStatus>,
    state: watch::Receiver<CertState>,
    wake: Arc<Notify>,
    task: AbortHandle,
}

/// Keeps certificates for the identities of this node. Dropping it stops every worker.
pub struct CertificateManager {
    shared: Arc<WorkerContext>,
    slots: Mutex<BTreeMap<SpiffeId, Slot>>,
    own: Option<SpiffeId>,
    jwts: crate::certs::jwt::JwtCache,
}

impl Drop for CertificateManager {
    fn drop(&mut self) {
        for slot in self.lock().values() {
            slot.task.abort();
        }
    }
}

impl CertificateManager {
    /// A manager that asks `ca` for certificates of lifetime `ttl`, checks them against
    /// `trust`, and keeps one for `own` (the agent's own identity) besides the workloads'.
    pub fn new(
        ca: Arc<CaClient>,
        trust: Arc<TrustStore>,
        ttl: Duration,
        policy: RenewalPolicy,
        concurrency: usize,
        metrics: Arc<AgentMetrics>,
        own: Option<SpiffeId>,
    ) -> Self {
        Self {
            shared: Arc::new(WorkerContext {
                ca,
                trust,
                ttl,
                policy,
                gate: PriorityGate::new(concurrency),
                metrics,
                events: Default::default(),
                signing_root: crate::certs::signing_root::SigningRoot::new(),
            }),
            slots: Mutex::new(BTreeMap::new()),
            own,
            jwts: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SpiffeId, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the set of tracked identities `workloads` plus the agent's own: new ones are
    /// fetched at Warmup priority, gone ones are forgotten (their streams end).
    pub fn set_identities(&self, workloads: &HashSet<SpiffeId>) {
        let mut wanted: HashSet<&SpiffeId> = workloads.iter().collect();
        if let Some(own) = &self.own {
            wanted.insert(own);
        }
        let mut slots = self.lock();
        let gone: Vec<SpiffeId> = slots
            .keys()
            .filter(|id| !wanted.contains(id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(slot) = slots.remove(&id) {
                slot.task.abort();
                let state = slot.status.borrow().state.name();
                self.shared.metrics.state_change(Some(state), None);
                self.shared.metrics.expiry.remove(&IdentityLabel {
                    identity: id.to_string(),
                });
                tracing::info!(target: "zident::identity", "forgetting {id}: no workload on this node has it any more");
            }
        }
        for id in wanted {
            if slots.contains_key(id) {
                continue;
            }
            let own = self.own.as_ref() == Some(id);
            let (tx, rx) = watch::channel(IdentityStatus::new(own));
            let (state_tx, state_rx) = watch::channel(CertState::Initializing);
            let wake = Arc::new(Notify::new());
            self.shared.metrics.state_change(None, Some("Initializing"));
            let task = tokio::spawn(worker::run(
                self.shared.clone(),
                id.clone(),
                worker::Publisher {
                    status: tx,
                    state: state_tx,
                },
                wake.clone(),
                Priority::Warmup,
            ));
            slots.insert(
                id.clone(),
                Slot {
                    status: rx,
                    state: state_rx,
                    wake,
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// Every tracked identity with its status, sorted by identity.
    pub fn snapshot(&self) -> Vec<(SpiffeId, IdentityStatus)> {
        self.lock()
            .iter()
            .map(|(id, slot)| (id.clone(), slot.status.borrow().clone()))
            .collect()
    }

    /// The intermediate certificates above this node's certificates (a plugged-in CA's
    /// signer and what is between it and the root), each once: with the bundle's roots, what
    /// may sign the CA's CRLs.
    pub fn intermediates(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let mut seen = Vec::new();
        for slot in self.lock().values() {
            if let Some(c) = &slot.status.borrow().last {
                for i in c.chain.iter().skip(1) {
                    if !seen.contains(i) {
                        seen.push(i.clone());
                    }
                }
            }
        }
        seen
    }

    /// The valid certificate of `id`, if it has one, without waiting and without side
    /// effects: for display and tests. Consumers use [`CertificateProvider::current`], which
    /// also asks for a retry when there is none.
    pub fn peek(&self, id: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        valid(&self.lock().get(id)?.status.borrow().state)
    }

    /// Whether every tracked identity has been Available at least once. Stops at the first
    /// one that has not, so it is cheap to poll.
    pub fn is_ready(&self) -> bool {
        self.all(|s| s.ever_available)
    }

    /// Whether `holds` is true of every tracked identity's status (stops at the first that it
    /// is not), without copying the statuses as [`Self::snapshot`] does.
    pub fn all(&self, holds: impl Fn(&IdentityStatus) -> bool) -> bool {
        self.lock().values().all(|s| holds(&s.status.borrow()))
    }

    /// Whether every tracked identity has been Available at least once, and which have not.
    pub fn readiness(&self) -> (bool, Vec<SpiffeId>) {
        let pending: Vec<SpiffeId> = self
            .lock()
            .iter()
            .filter(|(_, s)| !s.status.borrow().ever_available)
            .map(|(id, _)| id.clone())
            .collect();
        (pending.is_empty(), pending)
    }

    /// Recent rotation events, oldest first.
    pub fn events(&self) -> Vec<RenewalEvent> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The CA client (for its connection status).
    pub fn ca(&self) -> &CaClient {
        &self.shared.ca
    }

    /// The JWT-SVIDs held, for the admin endpoints.
    pub fn jwt_svids(&self) -> Vec<Arc<zident_identity::jwt::SignedJwt>> {
        self.jwts.snapshot()
    }

    /// The trust store.
    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.shared.trust
    }
}

impl CertificateProvider for CertificateManager {
    /// Without waiting; when there is no valid certificate, wakes the identity's worker to
    /// retry at once (deduplicated: one wake-up is pending at most, however many connections
    /// ask).
    fn current(&self, id: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        let slots = self.lock();
        let slot = slots.get(id)?;
        let current = valid(&slot.status.borrow().state);
        if current.is_none() {
            slot.wake.notify_one();
        }
        current
    }

    fn bundle(&self) -> Arc<zident_identity::TrustBundle> {
        self.shared.trust.bundle()
    }

    fn watch(&self, id: &SpiffeId) -> Option<watch::Receiver<CertState>> {
        self.lock().get(id).map(|s| s.state.clone())
    }

    fn watch_bundle(&self) -> watch::Receiver<Arc<zident_identity::TrustBundle>> {
        self.shared.trust.subscribe()
    }

    fn watch_revocations(&self) -> watch::Receiver<Option<Arc<zident_identity::RevocationList>>> {
        self.shared.trust.subscribe_revocations()
    }

    /// Only for identities served on this node: the CA would refuse the others anyway, and
    /// asking would let any local caller make the agent spend requests on them.
    async fn jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
    ) -> Result<Arc<zident_identity::jwt::SignedJwt>, ProviderError> {
        if !self.lock().contains_key(id) {
            return Err(ProviderError::UnknownIdentity(id.clone()));
        }
        self.jwts
            .get(
                &self.shared.ca,
                &self.shared.trust,
                id,
                audience,
                SystemTime::now(),
            )
            .await
    }

    async fn certificate(
        &self,
        id: &SpiffeId,
        wait: Duration,
    ) -> Result<Arc<WorkloadCertificate>, ProviderError> {
        let (mut rx, wake) = {
            let slots = self.lock();
            let slot = slots
                .get(id)
                .ok_or_else(|| ProviderError::UnknownIdentity(id.clone()))?;
            (slot.status.clone(), slot.wake.clone())
        };
        // A failure only answers this request if the fetch began after it: when one is already
        // in flight (it may have started before the CA came back), wait for the retry after it.
        let answered_after = {
            let status = rx.borrow_and_update();
            if let Some(c) = valid(&status.state) {
                return Ok(c);
            }
            status.attempts + u64::from(status.fetching)
        };
        // No valid certificate: ask for one now, ahead of everything else.
        wake.notify_one();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    let status = rx.borrow_and_update();
                    match &status.state {
                        CertState::Available(c) => return Ok(c.clone()),
                        CertState::Unavailable(failure) if status.attempts > answered_after => {
                            return Err(ProviderError::Unavailable {
                                id: id.clone(),
                                failure: failure.clone(),
                            });
                        }
                        _ => {}
                    }
                }
                Ok(Err(_)) => return Err(ProviderError::UnknownIdentity(id.clone())),
                Err(_) => {
                    return Err(match &rx.borrow().state {
                        CertState::Unavailable(failure) => ProviderError::Unavailable {
                            id: id.clone(),
                            failure: failure.clone(),
                        },
                        _ => ProviderError::Pending(id.clone()),
                    });
                }
            }
        }
    }
}

/// The certificate of `state` if it is Available and valid now.
fn valid(state: &CertState) -> Option<Arc<WorkloadCertificate>> {
    match state {
        CertState::Available(c) if c.is_valid_at(SystemTime::now()) => Some(c.clone()),
        _ => None,
    }
}
