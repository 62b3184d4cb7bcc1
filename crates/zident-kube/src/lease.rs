//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does
//! it: the holder renews the Lease well within its duration; another candidate takes it over
//! only once it has seen the same record unchanged for a whole duration by its own clock (so a
//! clock that differs from the holder's cannot make it steal a live Lease). Every write carries
//! the resourceVersion it was decided on: of two candidates, one wins and the other is refused.
//!
//! The Lease says who does the work; it is not what keeps the work safe. The CA's state is
//! written with optimistic concurrency as well, so a leader that does not yet know it lost the
//! Lease cannot undo what the next one did.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::call::{CallError, bounded, found};
use crate::connection::Connection;

/// One candidate for one Lease.
pub struct LeaderLease {
    api: Api<Lease>,
    namespace: String,
    name: String,
    holder: String,
    duration: Duration,
    /// The last record seen held by another candidate, and when this one first saw it.
    observed: Option<(Observed, Instant)>,
    /// When this candidate last renewed its own hold.
    renewed: Option<Instant>,
}

/// What of a Lease record tells whether its holder is still renewing it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

/// Who holds the Lease, from this candidate's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This candidate: it renewed the Lease just now.
    This,
    /// Another candidate (its identity, if the record names one).
    Other(Option<String>),
}

impl LeaderLease {
    /// Candidate `holder` for the Lease `name` in `namespace`, held for `duration` after each
    /// renewal.
    pub fn new(
        connection: &Connection,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(connection.client.clone(), namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            holder: holder.to_owned(),
            duration,
            observed: None,
            renewed: None,
        }
    }

    /// `namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }

    /// Whether this candidate holds the Lease for sure now: it renewed it less than a
    /// duration ago. (A failed renewal is not a loss until then; a lost race is, at once.)
    pub fn holds(&self) -> bool {
        self.renewed.is_some_and(|at| at.elapsed() < self.duration)
    }

    /// One round: creates the Lease if there is none, renews it if this candidate holds it,
    /// takes it over if its holder let it lapse. Call it a few times per duration.
    pub async fn round(&mut self) -> Result<Holder, CallError> {
        let current = found(bounded(self.api.get(&self.name)).await)?;
        let Some(lease) = current else {
            return match bounded(
                self.api
                    .create(&PostParams::default(), &self.record(None, 0)),
            )
            .await
            {
                Ok(_) => Ok(self.won()),
                Err(CallError::Conflict(_)) => Ok(self.lost(None)),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observed = Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let ours = spec.holder_identity.as_deref() == Some(self.holder.as_str());
        if !ours {
            let now = Instant::now();
            let since = match &self.observed {
                Some((seen, at)) if *seen == observed => *at,
                _ => {
                    self.observed = Some((observed.clone(), now));
                    now
                }
            };
            // Its own duration when it names one, so a holder with a longer Lease is waited for.
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.duration, Duration::from_secs)
                .max(self.duration);
            let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
            if !vacant && now.duration_since(since) < duration {
                return Ok(self.lost(spec.holder_identity));
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut record = self.record(lease.metadata.resource_version.clone(), transitions);
        if ours && let (Some(spec), Some(acquired)) = (record.spec.as_mut(), spec.acquire_time) {
            spec.acquire_time = Some(acquired);
        }
        match bounded(
            self.api
                .replace(&self.name, &PostParams::default(), &record),
        )
        .await
        {
            Ok(_) => {
                if !ours {
                    tracing::info!(target: "zident::kube", lease = %self.describe(), previous = spec.holder_identity.as_deref().unwrap_or(""), "took over the Lease: its holder stopped renewing it");
                }
                Ok(self.won())
            }
            Err(CallError::Conflict(_)) => Ok(self.lost(None)),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self) -> Holder {
        self.renewed = Some(Instant::now());
        self.observed = None;
        Holder::This
    }

    fn lost(&mut self, other: Option<String>) -> Holder {
        self.renewed = None;
        Holder::Other(other)
    }

    /// The record with this candidate as holder, renewed now.
    fn record(&self, resource_version: Option<String>, transitions: i32) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}
