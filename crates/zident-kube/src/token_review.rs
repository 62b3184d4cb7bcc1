//! Who a bearer token belongs to, asked of the API server as istiod asks it: a
//! `authentication.k8s.io/v1` TokenReview for the audience `istio-ca`.
//!
//! Answers are cached by the token's SHA-256 (never the token itself): an accepted token for
//! [`ACCEPTED_TTL`] but never past the token's own `exp`, a refused one for [`REFUSED_TTL`] so
//! that a client repeating a bad token costs the API server one review every few seconds, and a
//! failed call (timeout, server unreachable) not at all. Concurrent requests with the same
//! uncached token wait for one review instead of each sending their own (and share its failure,
//! rather than each waiting out its own timeout in turn). Each call is bounded by
//! [`REVIEW_TIMEOUT`], and at most [`MAX_IN_FLIGHT`] are open at once. The cache holds at most
//! [`MAX_ENTRIES`] tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::sync::{OnceCell, Semaphore};
use zident_identity::BearerDigest;

use crate::connection::Connection;

/// How long an accepted token is believed without asking again (at most).
pub const ACCEPTED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again.
pub const REFUSED_TTL: Duration = Duration::from_secs(5);
/// One review's bound, the wait for a free slot included.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// Reviews open at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Tokens remembered.
pub const MAX_ENTRIES: usize = 10_000;

/// The pod a token is bound to (TokenRequest's `boundObjectRef`), as the review reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBinding {
    /// The pod's name (in the ServiceAccount's namespace).
    pub name: String,
    /// The pod's uid.
    pub uid: String,
}

/// A token the API server accepted: a ServiceAccount's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub service_account: String,
    /// The pod the token is bound to, if it is bound to one.
    pub pod: Option<PodBinding>,
}

/// Why a token gives no caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not authenticate it (expired, wrong audience, its pod gone, not a
    /// token at all): its own words.
    #[error("the API server did not authenticate the token: {0}")]
    Refused(String),
    /// It authenticated, but not for our audience (an audience-unaware server).
    #[error("the token is not for the audience {0:?}")]
    WrongAudience(String),
    /// It authenticated a user who is not a ServiceAccount.
    #[error("the token is user {0:?}, not a ServiceAccount")]
    NotServiceAccount(String),
    /// The review itself failed; nothing is known about the token.
    #[error("TokenReview failed: {0}")]
    Unavailable(String),
}

impl ReviewError {
    /// A short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ReviewError::Refused(_) => "token_refused",
            ReviewError::WrongAudience(_) => "token_wrong_audience",
            ReviewError::NotServiceAccount(_) => "token_not_service_account",
            ReviewError::Unavailable(_) => "token_review_unavailable",
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The cache (or a review another request was already waiting for).
    Cache,
    /// A TokenReview this request sent.
    Api,
}

type Outcome = Result<Reviewed, ReviewError>;

/// A token's answer and until when it stands, or the review under way that will set it.
type Entry = Arc<OnceCell<(Outcome, Instant)>>;

/// Reviews tokens; cheap to share behind an `Arc`.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    cache: Mutex<HashMap<BearerDigest, Entry>>,
    slots: Semaphore,
}

impl TokenReviewer {
    /// Reviews for `audience` (`istio-ca`) on `connection`'s API server.
    pub fn new(connection: &Connection, audience: &str) -> Self {
        Self {
            api: Api::all(connection.client.clone()),
            audience: audience.to_owned(),
            cache: Mutex::new(HashMap::new()),
            slots: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// Who `token` belongs to; `digest` is its [`BearerDigest`], the cache's key.
    pub async fn review(&self, token: &str, digest: &BearerDigest) -> (Outcome, Answered) {
        let cell = self.cell(*digest);
        let mut sent = false;
        let (outcome, _) = cell
            .get_or_init(|| async {
                sent = true;
                let outcome = self.ask(token).await;
                let until = Instant::now() + ttl(token, &outcome, SystemTime::now());
                (outcome, until)
            })
            .await;
        let answered = if sent { Answered::Api } else { Answered::Cache };
        (outcome.clone(), answered)
    }

    /// The cache's cell for `key`: the current one, or a new one when there is none or it
    /// expired.
    fn cell(&self, key: BearerDigest) -> Entry {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = cache.get(&key)
            && e.get().is_none_or(|(_, until)| *until > now)
        {
            return e.clone();
        }
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, e| e.get().is_none_or(|(_, until)| *until > now));
            if cache.len() >= MAX_ENTRIES {
                // Full of live entries: make room by forgetting a tenth, whichever they are.
                let drop: Vec<BearerDigest> =
                    cache.keys().take(MAX_ENTRIES / 10).copied().collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        let cell = Arc::new(OnceCell::new());
        cache.insert(key, cell.clone());
        cell
    }

    /// One TokenReview.
    async fn ask(&self, token: &str) -> Outcome {
        let call = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..Default::default()
            };
            self.api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError::Unavailable(e.to_string()))
        };
        let review = tokio::time::timeout(REVIEW_TIMEOUT, call)
            .await
            .map_err(|_| {
                ReviewError::Unavailable(format!("no answer within {}s", REVIEW_TIMEOUT.as_secs()))
            })??;
        judge(review, &self.audience)
    }
}

/// How long an outcome stands, at `now`: an acceptance until the token's `exp` at most, a
/// refusal [`REFUSED_TTL`], and a failed review not at all (the requests that waited for it share
/// the failure; the next one asks again).
fn ttl(token: &str, outcome: &Outcome, now: SystemTime) -> Duration {
    match outcome {
        Ok(_) => match expiry(token) {
            Some(exp) => exp
                .duration_since(now)
                .unwrap_or_default()
                .min(ACCEPTED_TTL),
            None => ACCEPTED_TTL,
        },
        Err(ReviewError::Unavailable(_)) => Duration::ZERO,
        Err(_) => REFUSED_TTL,
    }
}

/// What a TokenReview's answer means.
fn judge(review: TokenReview, audience: &str) -> Outcome {
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(ReviewError::Refused(
            status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // A server that ignores the audience answers with none: the token may be for anything.
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == audience)
    {
        return Err(ReviewError::WrongAudience(audience.to_owned()));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(ReviewError::NotServiceAccount(username));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| {
        extra
            .get(key)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let pod = match (
        one("authentication.kubernetes.io/pod-name"),
        one("authentication.kubernetes.io/pod-uid"),
    ) {
        (Some(name), Some(uid)) => Some(PodBinding { name, uid }),
        _ => None,
    };
    Ok(Reviewed {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod,
    })
}

/// The `exp` claim of a JWT, read without checking the signature (the API server checked
/// it): only to bound how long the acceptance is remembered.
fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
    use std::collections::BTreeMap;

    fn review(authenticated: bool, audiences: &[&str], user: &str, pod: bool) -> TokenReview {
        let mut extra = BTreeMap::new();
        if pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["ztunnel-abc".to_owned()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec!["u-1".to_owned()],
            );
        }
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
                error: (!authenticated).then(|| "token has expired".to_owned()),
                user: Some(UserInfo {
                    username: Some(user.to_owned()),
                    extra: Some(extra),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_bound_service_account_token_names_its_account_and_pod() {
        let r = judge(
            review(
                true,
                &["istio-ca"],
                "system:serviceaccount:istio-system:ztunnel",
                true,
            ),
            "istio-ca",
        )
        .unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.service_account.as_str()),
            ("istio-system", "ztunnel")
        );
        assert_eq!(
            r.pod,
            Some(PodBinding {
                name: "ztunnel-abc".into(),
                uid: "u-1".into()
            })
        );
    }

    #[test]
    fn every_other_answer_is_a_refusal_with_its_reason() {
        let cases = [
            (
                review(false, &[], "", false),
                "token_refused",
                "token has expired",
            ),
            // An audience-unaware server: authenticated, but for no audience of ours.
            (
                review(true, &[], "system:serviceaccount:a:b", false),
                "token_wrong_audience",
                "istio-ca",
            ),
            (
                review(true, &["istio-ca"], "admin", false),
                "token_not_service_account",
                "admin",
            ),
            (
                review(true, &["istio-ca"], "system:serviceaccount:a", false),
                "token_not_service_account",
                "system:serviceaccount:a",
            ),
            (
                review(true, &["istio-ca"], "system:serviceaccount::b", false),
                "token_not_service_account",
                "",
            ),
        ];
        for (review, reason, said) in cases {
            let e = judge(review, "istio-ca").unwrap_err();
            assert_eq!(e.reason(), reason, "{e}");
            assert!(e.to_string().contains(said), "{e}");
        }
    }

    #[test]
    fn how_long_each_answer_is_remembered() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token_expiring_in = |secs: u64| {
            let claims = format!(r#"{{"exp":{}}}"#, 1_000_000 + secs);
            format!("e30.{}.sig", b64.encode(claims))
        };
        let accepted: Outcome = Ok(Reviewed {
            namespace: "a".into(),
            service_account: "b".into(),
            pod: None,
        });
        assert_eq!(
            ttl(&token_expiring_in(10), &accepted, now),
            Duration::from_secs(10)
        );
        assert_eq!(ttl(&token_expiring_in(3600), &accepted, now), ACCEPTED_TTL);
        assert_eq!(ttl("opaque", &accepted, now), ACCEPTED_TTL);
        let expired = format!("e30.{}.sig", b64.encode(r#"{"exp":999999}"#));
        assert_eq!(ttl(&expired, &accepted, now), Duration::ZERO);
        assert_eq!(
            ttl("x", &Err(ReviewError::Refused("no".into())), now),
            REFUSED_TTL
        );
        assert_eq!(
            ttl("x", &Err(ReviewError::Unavailable("down".into())), now),
            Duration::ZERO
        );
    }

    #[test]
    fn the_expiry_bounds_the_cache_and_garbage_has_none() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"aud":["istio-ca"],"exp":4102444800,"sub":"x"}"#);
        let token = format!("e30.{claims}.sig");
        assert_eq!(
            expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(4_102_444_800))
        );
        for garbage in ["", "abc", "a.b.c", "a.!!!.c", "e30.e30.x"] {
            assert_eq!(expiry(garbage), None, "{garbage}");
        }
    }
}
