//! JWT-SVIDs the node's workloads asked for, one per identity and audience set.
//!
//! A token is handed out while it has at least half of its lifetime left, and fetched anew
//! after that; while the CA cannot be reached, a token that has not expired yet is still handed
//! out (as a certificate is kept through an outage), and the outage is logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use zident_identity::jwt::{SignedJwt, validate};
use zident_identity::{Cause, Failure, ProviderError, SpiffeId};

use crate::ca::client::CaClient;
use crate::ca::trust::TrustStore;

/// Tokens kept at most; past this the ones closest to expiry are dropped first.
const MAX_ENTRIES: usize = 4096;

/// How long a new token waits for this node to learn the key it was signed with.
const KEY_WAIT: Duration = Duration::from_secs(5);

type Key = (SpiffeId, BTreeSet<String>);

/// The cache; shared by every Workload API connection of the node.
#[derive(Default)]
pub(crate) struct JwtCache {
    entries: Mutex<HashMap<Key, Arc<SignedJwt>>>,
}

impl JwtCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<SignedJwt>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token for `id` and `audience` (in any order, duplicates ignored), from the cache when
    /// it has half its life left, else from `ca`.
    pub(crate) async fn get(
        &self,
        ca: &CaClient,
        trust: &TrustStore,
        id: &SpiffeId,
        audience: &[String],
        now: SystemTime,
    ) -> Result<Arc<SignedJwt>, ProviderError> {
        let set: BTreeSet<String> = audience.iter().cloned().collect();
        let key = (id.clone(), set);
        let cached = self.lock().get(&key).cloned();
        if let Some(jwt) = &cached
            && now < half_life(jwt)
        {
            return Ok(jwt.clone());
        }
        let audience: Vec<String> = key.1.iter().cloned().collect();
        let fetched = ca
            .jwt_svid(id, &audience)
            .await
            .map_err(|e| Failure::new(e.cause(), format!("JWT-SVID for {id}: {e}")));
        let fetched = fetched.and_then(|token| {
            let jwt = SignedJwt::read_unverified(&token).map_err(|e| {
                Failure::new(
                    Cause::MalformedResponse,
                    format!("the CA's JWT-SVID does not read: {e}"),
                )
            })?;
            if jwt.id != *id {
                return Err(Failure::new(
                    Cause::WrongIdentity,
                    format!("the CA signed a JWT-SVID for {} instead of {id}", jwt.id),
                ));
            }
            if jwt.audience.iter().collect::<BTreeSet<_>>() != key.1.iter().collect() {
                return Err(Failure::new(
                    Cause::MalformedResponse,
                    format!("the CA's JWT-SVID is for audience {:?}", jwt.audience),
                ));
            }
            if jwt.expiry <= now {
                return Err(Failure::new(
                    Cause::ClockSkew,
                    "the CA's JWT-SVID has already expired by this node's clock",
                ));
            }
            Ok(Arc::new(jwt))
        });
        let fetched = match fetched {
            Ok(jwt) => signed_by_node_key(trust, &jwt)
                .await
                .inspect_err(|failure| {
                    tracing::warn!(target: "zident::identity", identity = %id, "refusing a JWT-SVID from the CA: {failure}");
                })
                .map(|()| jwt),
            Err(failure) => Err(failure),
        };
        match fetched {
            Ok(jwt) => {
                let mut entries = self.lock();
                entries.retain(|_, j| j.expiry > now);
                if entries.len() >= MAX_ENTRIES
                    && let Some(oldest) = entries
                        .iter()
                        .min_by_key(|(_, j)| j.expiry)
                        .map(|(k, _)| k.clone())
                {
                    entries.remove(&oldest);
                }
                entries.insert(key, jwt.clone());
                Ok(jwt)
            }
            Err(failure) => match cached {
                Some(jwt) if now < jwt.expiry => {
                    tracing::warn!(target: "zident::identity", identity = %id, "cannot refresh a JWT-SVID, handing out the one held until it expires: {failure}");
                    Ok(jwt)
                }
                _ => Err(ProviderError::Unavailable {
                    id: id.clone(),
                    failure,
                }),
            },
        }
    }

    /// Every token held, for the admin endpoints.
    pub(crate) fn snapshot(&self) -> Vec<Arc<SignedJwt>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| (&a.id, &a.audience).cmp(&(&b.id, &b.audience)));
        all
    }
}

/// Checks a token from the CA before it is cached and handed out, as an X.509 response is
/// checked: signed by a JWT key this node publishes in its bundle. A key the node has not
/// learned yet (the CA prepared a new root after this node's last bundle fetch, or the fetch
/// at start has not come back) is fetched now and waited for, briefly: a workload given the
/// token must be able to validate it with the bundle this node serves.
async fn signed_by_node_key(trust: &TrustStore, jwt: &SignedJwt) -> Result<(), Failure> {
    let mut changes = trust.subscribe();
    let deadline = tokio::time::Instant::now() + KEY_WAIT;
    loop {
        let bundle = trust.bundle();
        if bundle.jwt_keys().iter().any(|k| k.kid() == jwt.kid) {
            let audience = jwt.audience.first().map(String::as_str).unwrap_or_default();
            return validate(
                &jwt.token,
                bundle.jwt_keys(),
                trust.trust_domain(),
                audience,
                SystemTime::now(),
            )
            .map(|_| ())
            .map_err(|e| Failure::new(Cause::Untrusted, format!("the CA's JWT-SVID: {e}")));
        }
        trust.refresh_now();
        if !matches!(
            tokio::time::timeout_at(deadline, changes.changed()).await,
            Ok(Ok(()))
        ) {
            return Err(Failure::new(
                Cause::Untrusted,
                format!(
                    "the CA signed a JWT-SVID with key {}, which is not in this node's bundle after {}s; check that the agent can fetch the CA's /bundle",
                    jwt.kid,
                    KEY_WAIT.as_secs()
                ),
            ));
        }
    }
}

/// When a token is due for refresh: half way through its life.
fn half_life(jwt: &SignedJwt) -> SystemTime {
    let life = jwt.expiry.duration_since(jwt.issued_at).unwrap_or_default();
    jwt.issued_at + life / 2
}
