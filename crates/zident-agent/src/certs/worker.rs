//! One task per identity: fetch, wait until renewal (or a retry), fetch again.
//!
//! The old certificate stays in use until a new one has been received and checked, so a CA
//! outage is invisible until the certificate expires; at expiry the identity becomes
//! Unavailable with the reason, and the next real-time request retries at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, watch};
pub use zident_identity::CertState;
use zident_identity::{
    Cause, Failure, SpiffeId, WorkloadCertificate, WorkloadKey, fingerprint, unix_seconds,
};

use crate::ca::client::CaClient;
use crate::ca::trust::TrustStore;
use crate::certs::gate::{Permit, Priority, PriorityGate};
use crate::certs::schedule::{Backoff, random_unit, renewal_time};
use crate::certs::signing_root::{SigningRoot, short};
use crate::certs::validate::check_response;
use crate::config::{EARLY_RENEWAL_SPREAD, RenewalPolicy};
use crate::http::json::rfc3339;
use crate::metrics::{AgentMetrics, IdentityLabel};

/// Everything known about one identity, as the admin endpoints show it.
#[derive(Debug, Clone)]
pub struct IdentityStatus {
    /// Current state.
    pub state: CertState,
    /// The last certificate received (kept for display after it expires).
    pub last: Option<Arc<WorkloadCertificate>>,
    /// When the current certificate will be renewed.
    pub renewal_at: Option<SystemTime>,
    /// When the next fetch is due (renewal or retry).
    pub next_attempt: Option<SystemTime>,
    /// The last failure, cleared by a success.
    pub last_error: Option<Failure>,
    /// Whether a certificate was ever Available (readiness).
    pub ever_available: bool,
    /// Fetches finished, successful or not.
    pub attempts: u64,
    /// Whether a fetch is in flight right now.
    pub fetching: bool,
    /// The agent's own identity rather than a workload's.
    pub own: bool,
    /// SHA-256 fingerprint of the trust-bundle root the last certificate chains to: after a
    /// root rotation activates, it shows which certificates moved to the new root.
    pub signing_root: Option<String>,
}

impl IdentityStatus {
    pub(crate) fn new(own: bool) -> Self {
        Self {
            state: CertState::Initializing,
            last: None,
            renewal_at: None,
            next_attempt: None,
            last_error: None,
            ever_available: false,
            attempts: 0,
            fetching: false,
            own,
            signing_root: None,
        }
    }
}

/// One line of the recent-events log shown on the dashboard.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RenewalEvent {
    /// When.
    #[serde(
        serialize_with = "crate::http::json::time",
        deserialize_with = "crate::http::json::parse_time"
    )]
    pub at: SystemTime,
    /// Which identity.
    pub spiffe_id: String,
    /// What happened.
    pub outcome: EventOutcome,
    /// Serial of the new certificate, the reason of the failure, or why renewal is early.
    pub detail: String,
}

/// What a [`RenewalEvent`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventOutcome {
    /// A new certificate is in use.
    Completed,
    /// A fetch failed.
    Failed,
    /// A renewal was brought forward: the CA signs under another root.
    Early,
}

/// What every worker shares.
pub(crate) struct WorkerContext {
    pub ca: Arc<CaClient>,
    pub trust: Arc<TrustStore>,
    pub ttl: Duration,
    pub policy: RenewalPolicy,
    pub gate: PriorityGate,
    pub metrics: Arc<AgentMetrics>,
    pub events: Mutex<std::collections::VecDeque<RenewalEvent>>,
    pub signing_root: SigningRoot,
}

const MAX_EVENTS: usize = 100;

impl WorkerContext {
    fn event(&self, id: &SpiffeId, outcome: EventOutcome, detail: String) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(RenewalEvent {
            at: SystemTime::now(),
            spiffe_id: id.to_string(),
            outcome,
            detail,
        });
    }

    /// Notes `root`, the root the new certificate for `id` chains to (found by the response
    /// check), and tells the operator when the CA's signing root changed.
    fn note_root(&self, id: &SpiffeId, root: CertificateDer<'static>) -> CertificateDer<'static> {
        if let Some(old) = self.signing_root.observe(&root) {
            let (old, new) = (short(&old), short(&root));
            if self.policy.renew_on_root_change {
                tracing::info!(
                    target: "zident::identity",
                    old_root = %old,
                    new_root = %new,
                    "The CA now signs under another root (the certificate for {id} chains to it): renewing this node's certificates under the old root now"
                );
            } else {
                tracing::info!(
                    target: "zident::identity",
                    old_root = %old,
                    new_root = %new,
                    "The CA now signs under another root (the certificate for {id} chains to it): the other certificates move to it at their normal renewal (--renew-on-root-change moves them now)"
                );
            }
        }
        root
    }

    /// One fetch: fresh key, CSR, CA request, response checks. Only the CA request holds a
    /// slot of the gate (`slot` waits for one): the key, the CSR and the checks of the answer
    /// are this node's own work, which loads no CA, so the CA is kept as busy as the slots
    /// allow while the agent does it. (With the whole fetch in the slot, 8 slots left an
    /// agent warming up 10,000 identities idle a fifth of the time, waiting on its own slots.)
    async fn fetch(
        &self,
        id: &SpiffeId,
        own: bool,
        slot: impl std::future::Future<Output = Permit>,
    ) -> Result<(Arc<WorkloadCertificate>, CertificateDer<'static>), Failure> {
        let fail = |cause: Cause, detail: String| {
            self.metrics.renewal(false, cause.label());
            tracing::warn!(target: "zident::identity", reason = %cause, "Certificate rotation failed for {id}: {detail}");
            self.event(id, EventOutcome::Failed, detail.clone());
            Err(Failure::new(cause, detail))
        };
        let key = match WorkloadKey::generate() {
            Ok(k) => k,
            Err(e) => return fail(Cause::KeyGeneration, e.to_string()),
        };
        let csr = match key.csr_pem(id) {
            Ok(c) => c,
            Err(e) => return fail(Cause::KeyGeneration, e.to_string()),
        };
        let permit = slot.await;
        tracing::info!(target: "zident::identity", "Certificate rotation started for {id}");
        let started = Instant::now();
        let result = self.ca.sign(id, csr, self.ttl, !own).await;
        drop(permit);
        self.metrics
            .ca_latency
            .observe(started.elapsed().as_secs_f64());
        // Unknown (never measured, or made stale by a handshake that failed on validity) is
        // NaN, never a 0 that would say the clocks agree; a known lower bound has its own gauge.
        let clock = self.ca.clock();
        self.metrics
            .clock_skew
            .set(clock.offset().unwrap_or(f64::NAN));
        self.metrics
            .clock_skew_at_least
            .set(clock.at_least().unwrap_or(f64::NAN));
        let chain = match result {
            Ok(chain) => chain,
            Err(e) => return fail(e.cause(), e.to_string()),
        };
        match check_response(id, key, &chain, &self.trust.bundle(), SystemTime::now()) {
            Ok((cert, root)) => {
                self.metrics.renewal(true, "ok");
                tracing::info!(
                    target: "zident::identity",
                    serial = %cert.serial_hex,
                    not_after = %rfc3339(cert.not_after),
                    "Certificate rotation completed for {id}"
                );
                self.event(
                    id,
                    EventOutcome::Completed,
                    format!("serial {}", cert.serial_hex),
                );
                Ok((Arc::new(cert), root))
            }
            Err(e) => {
                if let crate::certs::validate::ResponseError::OutsideValidity(_) = &e {
                    let message = match self.ca.clock().hint() {
                        Some(hint) => format!("{e}; {hint}"),
                        None => e.to_string(),
                    };
                    return fail(e.cause(), message);
                }
                if matches!(e, crate::certs::validate::ResponseError::Untrusted(_)) {
                    // Perhaps signed by a root this node has not fetched yet (it missed a
                    // rotation's prepare phase): fetch the bundle now, not at the next hint.
                    self.trust.refresh_now();
                }
                fail(e.cause(), e.to_string())
            }
        }
    }
}

/// The two views of one identity a worker keeps current: its whole status (admin endpoints)
/// and the state its consumers watch through the seam (told only of real changes).
pub(crate) struct Publisher {
    pub status: watch::Sender<IdentityStatus>,
    pub state: watch::Sender<CertState>,
}

impl Publisher {
    /// Changes the status, then tells consumers if the state changed with it.
    fn modify(&self, change: impl FnOnce(&mut IdentityStatus)) {
        self.status.send_modify(change);
        let now = self.status.borrow().state.clone();
        self.state.send_if_modified(|s| {
            let changed = !s.same_as(&now);
            if changed {
                *s = now;
            }
            changed
        });
    }

    /// Sets the state, keeping the per-state gauge in step.
    fn set_state(&self, metrics: &AgentMetrics, state: CertState) {
        self.modify(|s| {
            metrics.state_change(Some(s.state.name()), Some(state.name()));
            s.state = state;
        });
    }

    fn borrow(&self) -> watch::Ref<'_, IdentityStatus> {
        self.status.borrow()
    }
}

/// The worker loop of one identity. Ends when aborted (the identity was forgotten).
pub(crate) async fn run(
    shared: Arc<WorkerContext>,
    id: SpiffeId,
    tx: Publisher,
    wake: Arc<Notify>,
    mut priority: Priority,
) {
    let own = tx.borrow().own;
    let label = IdentityLabel {
        identity: id.to_string(),
    };
    let mut backoff = Backoff::new(&shared.policy);
    let mut roots = shared.signing_root.subscribe();
    let mut ca_back = shared.ca.back();
    let mut revocations = shared.trust.subscribe_revocations();
    // Whether the last fetch failed because the CA did not answer (set by each fetch).
    let mut waits_on_ca;
    let mut follow_roots = shared.policy.renew_on_root_change;
    // The root the certificate in use chains to.
    let mut my_root = None;
    loop {
        // A slot for the CA request; a real-time request meanwhile moves this identity up the
        // queue.
        let slot = async {
            let permit = loop {
                tokio::select! {
                    permit = shared.gate.acquire(priority) => break permit,
                    _ = wake.notified(), if priority != Priority::RealTime => priority = Priority::RealTime,
                }
            };
            tx.modify(|s| s.fetching = true);
            permit
        };
        let outcome = shared.fetch(&id, own, slot).await;
        let now = SystemTime::now();
        let mut next_fetch = match outcome {
            Ok((cert, root)) => {
                backoff.reset();
                waits_on_ca = false;
                my_root = Some(shared.note_root(&id, root));
                let at = renewal_time(&cert, &shared.policy, random_unit());
                shared
                    .metrics
                    .expiry
                    .get_or_create(&label)
                    .set(unix_seconds(cert.not_after) as i64);
                // One update: a waiter must never see the attempt counted but the old state.
                tx.modify(|s| {
                    shared
                        .metrics
                        .state_change(Some(s.state.name()), Some("Available"));
                    s.state = CertState::Available(cert.clone());
                    s.last = Some(cert);
                    s.signing_root = my_root.as_ref().map(|r| fingerprint(r));
                    s.renewal_at = Some(at);
                    s.next_attempt = Some(at);
                    s.last_error = None;
                    s.ever_available = true;
                    s.attempts += 1;
                    s.fetching = false;
                });
                at
            }
            Err(failure) => {
                // The CA did not answer: a retry is due as soon as it answers again.
                waits_on_ca = failure.cause.waits_on_ca();
                // Only announcements after this failure count.
                ca_back.borrow_and_update();
                let reason = failure;
                let at = now + backoff.next_delay(random_unit());
                tx.modify(|s| {
                    // The old certificate stays in use while it is valid.
                    let still_valid =
                        matches!(&s.state, CertState::Available(c) if c.is_valid_at(now));
                    if !still_valid {
                        // Once a certificate has expired, the words keep saying so, with the
                        // newest failure, whose cause is the state's cause.
                        let why = match &s.last {
                            Some(c) if c.not_after <= now => expired(c.not_after, Some(&reason)),
                            _ => reason.clone(),
                        };
                        shared
                            .metrics
                            .state_change(Some(s.state.name()), Some("Unavailable"));
                        s.state = CertState::Unavailable(why);
                    }
                    s.last_error = Some(reason);
                    s.next_attempt = Some(at);
                    s.attempts += 1;
                    s.fetching = false;
                });
                at
            }
        };
        priority = Priority::Background;

        // Sleep until the next fetch; on the way, mark the certificate expired at its notAfter.
        loop {
            let expiry = match &tx.borrow().state {
                CertState::Available(c) => Some(c.not_after),
                _ => None,
            };
            let until = expiry.map_or(next_fetch, |e| e.min(next_fetch));
            tokio::select! {
                _ = sleep_until(until) => {
                    let now = SystemTime::now();
                    if let Some(e) = expiry.filter(|e| now >= *e) {
                        let reason = expired(e, tx.borrow().last_error.as_ref());
                        tracing::error!(target: "zident::identity", "Certificate for {id} is unavailable: {reason}");
                        tx.set_state(&shared.metrics, CertState::Unavailable(reason));
                    }
                    if now >= next_fetch {
                        break;
                    }
                }
                changed = roots.changed(), if follow_roots => {
                    if changed.is_err() {
                        follow_roots = false;
                        continue;
                    }
                    let newest = roots.borrow_and_update().clone();
                    let available = matches!(&tx.borrow().state, CertState::Available(_));
                    if available && newest.is_some() && newest != my_root {
                        let at = SystemTime::now() + EARLY_RENEWAL_SPREAD.mul_f64(random_unit());
                        if at < next_fetch {
                            next_fetch = at;
                            tx.modify(|s| s.next_attempt = Some(at));
                            let detail = format!(
                                "chains to root {}, the CA signs under {}: renewing at {}",
                                my_root.as_ref().map(short).unwrap_or_else(|| "?".into()),
                                newest.as_ref().map(short).unwrap_or_default(),
                                rfc3339(at)
                            );
                            tracing::info!(target: "zident::identity", "Certificate for {id} {detail}");
                            shared.event(&id, EventOutcome::Early, detail);
                        }
                    }
                }
                changed = ca_back.changed(), if waits_on_ca => {
                    if changed.is_ok() {
                        // The CA answers again: retry now, ahead of renewals, rather than at
                        // the next backoff step.
                        let unavailable = !matches!(&tx.borrow().state, CertState::Available(_));
                        priority = if unavailable { Priority::RealTime } else { Priority::Warmup };
                        tx.modify(|s| s.next_attempt = Some(SystemTime::now()));
                        break;
                    }
                    waits_on_ca = false;
                }
                Ok(()) = revocations.changed() => {
                    // A CRL that lists the certificate in use: peers refuse it now, so it is
                    // dropped and replaced at once (the CA refuses, saying so, if an operator
                    // denied this identity's reissue).
                    let revoked = match &tx.borrow().state {
                        CertState::Available(c) => revocations
                            .borrow_and_update()
                            .as_ref()
                            .is_some_and(|l| c.chain.first().is_some_and(|leaf| l.is_revoked(leaf))),
                        _ => false,
                    };
                    if revoked {
                        let serial = tx.borrow().last.as_ref().map(|c| c.serial_hex.clone()).unwrap_or_default();
                        let failure = Failure::new(
                            Cause::Revoked,
                            format!("certificate {serial} is revoked: the CA's CRL lists it; asking for a new one now"),
                        );
                        tracing::warn!(target: "zident::identity", identity = %id, %serial, "Certificate for {id} is revoked: the CA's CRL lists it; replacing it now");
                        shared.event(&id, EventOutcome::Early, failure.detail.clone());
                        tx.set_state(&shared.metrics, CertState::Unavailable(failure.clone()));
                        tx.modify(|s| {
                            s.last_error = Some(failure);
                            s.next_attempt = Some(SystemTime::now());
                        });
                        priority = Priority::RealTime;
                        break;
                    }
                }
                _ = wake.notified() => {
                    // Someone needs this certificate now. If there is a valid one, nothing
                    // to do; otherwise retry at once, ahead of the queue.
                    if !matches!(&tx.borrow().state, CertState::Available(_)) {
                        priority = Priority::RealTime;
                        break;
                    }
                }
            }
        }
    }
}

/// Why an identity whose certificate expired at `not_after` is Unavailable: the cause is that
/// of the last failure to renew it (what to act on: the CA is down, the node was denied, ...),
/// or `Expired` when none has failed yet (a renewal still in flight); the words say both.
fn expired(not_after: SystemTime, last: Option<&Failure>) -> Failure {
    Failure::new(
        last.map_or(Cause::Expired, |f| f.cause),
        format!(
            "certificate expired at {} before a renewal succeeded; last error: {}",
            rfc3339(not_after),
            last.map_or("renewal is pending", |f| f.detail.as_str())
        ),
    )
}

async fn sleep_until(t: SystemTime) {
    let d = t.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(d).await;
}
