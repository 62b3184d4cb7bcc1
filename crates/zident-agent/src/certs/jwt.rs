//! JWT-SVIDs the node's workloads asked for, one per identity and audience set.
//!
//! A token is handed out while it has at least half of its lifetime left, and fetched anew
//! after that; while the CA cannot be reached, a token that has not expired yet is still handed
//! out (as a certificate is kept through an outage), and the outage is logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use zident_identity::jwt::SignedJwt;
use zident_identity::{Cause, Failure, ProviderError, SpiffeId};

use crate::ca::client::CaClient;

/// Tokens kept at most; past this the ones closest to expiry are dropped first.
const MAX_ENTRIES: usize = 4096;

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

/// When a token is due for refresh: half way through its life.
fn half_life(jwt: &SignedJwt) -> SystemTime {
    let life = jwt.expiry.duration_since(jwt.issued_at).unwrap_or_default();
    jwt.issued_at + life / 2
}
