//! The agent's trust bundle: the union of the roots it has reason to trust.
//!
//! Sources: `CA_ROOT_CA` (the file the operator gave), the CA's `/bundle` endpoint (polled at
//! its refresh hint, so a new root published in a rotation's prepare phase reaches this node
//! before any certificate signed by it does), and the mesh file's `caCertificates`. Every
//! change is logged and counted, and pushed to subscribers (the Workload API).
//!
//! `CA_ROOT_CA` starts the trust; once the CA's bundle endpoint has answered, the endpoint
//! speaks for the CA's roots instead. That is how a root the CA retired leaves this node's
//! bundle: a root in a file read at start would otherwise be trusted forever.

use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use zident_identity::jwt::JwtKey;
use zident_identity::pem::{PemError, certs_from_pem};
use zident_identity::{RevocationList, TrustBundle, TrustDomain};

#[derive(Default)]
struct Sources {
    ca_root: Vec<CertificateDer<'static>>,
    /// `None` until the endpoint first answers.
    endpoint: Option<Vec<CertificateDer<'static>>>,
    config: Vec<CertificateDer<'static>>,
    /// The JWT-SVID keys the endpoint published (only the CA's bundle has them).
    jwt_keys: Vec<JwtKey>,
}

/// The current trust bundle and where its roots came from.
pub struct TrustStore {
    trust_domain: TrustDomain,
    sources: Mutex<Sources>,
    current: watch::Sender<Arc<TrustBundle>>,
    /// The CA's CRLs in force, verified against the bundle (`crl_poll`).
    revocations: watch::Sender<Option<Arc<RevocationList>>>,
    changes: std::sync::atomic::AtomicU64,
    refresh: tokio::sync::Notify,
}

impl TrustStore {
    /// A store seeded with the roots of `CA_ROOT_CA`.
    pub fn new(trust_domain: TrustDomain, ca_root_pem: &[u8]) -> Result<Self, PemError> {
        let ca_root = certs_from_pem(ca_root_pem)?;
        let store = Self {
            trust_domain: trust_domain.clone(),
            sources: Mutex::new(Sources {
                ca_root,
                ..Default::default()
            }),
            current: watch::channel(Arc::new(TrustBundle::new(trust_domain))).0,
            revocations: watch::channel(None).0,
            changes: Default::default(),
            refresh: tokio::sync::Notify::new(),
        };
        store.recompute("CA_ROOT_CA");
        Ok(store)
    }

    /// The current bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.current.borrow().clone()
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.current.subscribe()
    }

    /// The CRLs in force, if any.
    pub fn revocations(&self) -> Option<Arc<RevocationList>> {
        self.revocations.borrow().clone()
    }

    /// Notified on every new CRL.
    pub fn subscribe_revocations(&self) -> watch::Receiver<Option<Arc<RevocationList>>> {
        self.revocations.subscribe()
    }

    /// Puts `list` in force (checked by the caller against this bundle).
    pub(crate) fn set_revocations(&self, list: RevocationList) {
        self.revocations.send_replace(Some(Arc::new(list)));
    }

    /// How many times the set of roots changed (a change of JWT-SVID keys alone is not counted).
    pub fn change_count(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The trust domain the bundle is for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Resolves when someone asked for a fetch now ([`Self::refresh_now`]).
    pub(crate) async fn refresh_requested(&self) {
        self.refresh.notified().await
    }

    /// Asks the bundle poller to fetch now rather than at the next refresh hint.
    pub fn refresh_now(&self) {
        self.refresh.notify_one();
    }

    /// Replaces the roots and JWT keys learned from the CA's bundle endpoint.
    pub fn set_endpoint_bundle(&self, fetched: &TrustBundle) {
        self.lock().jwt_keys = fetched.jwt_keys().to_vec();
        self.set_endpoint_roots(fetched.roots().to_vec());
    }

    /// Replaces the roots learned from the CA's bundle endpoint.
    pub fn set_endpoint_roots(&self, roots: Vec<CertificateDer<'static>>) {
        let mut sources = self.lock();
        if sources.endpoint.is_none() {
            let new = roots
                .iter()
                .filter(|r| !sources.ca_root.contains(r))
                .count();
            let gone = sources
                .ca_root
                .iter()
                .filter(|r| !roots.contains(r))
                .count();
            if new > 0 || gone > 0 {
                tracing::warn!(
                    target: "zident::identity",
                    new_roots = new,
                    missing_roots = gone,
                    "the CA's trust bundle differs from CA_ROOT_CA: a root rotation is under way or CA_ROOT_CA is out of date; trusting the CA's bundle from now on"
                );
            }
        }
        sources.endpoint = Some(roots);
        drop(sources);
        self.recompute("the CA's /bundle endpoint");
    }

    /// Replaces the roots from the mesh file's `caCertificates`.
    pub fn set_config_roots(&self, roots: Vec<CertificateDer<'static>>) {
        self.lock().config = roots;
        self.recompute("the mesh file's caCertificates");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recompute(&self, cause: &str) {
        let sources = self.lock();
        let mut next = TrustBundle::new(self.trust_domain.clone());
        let ca_roots = sources.endpoint.as_ref().unwrap_or(&sources.ca_root);
        for root in ca_roots.iter().chain(&sources.config) {
            if let Err(e) = next.add_root(root.clone()) {
                tracing::warn!(target: "zident::identity", "ignoring a root from {cause}: {e}");
            }
        }
        for key in &sources.jwt_keys {
            next.add_jwt_key(key.clone());
        }
        drop(sources);
        self.current.send_if_modified(|current| {
            if current.roots() == next.roots() {
                if current.jwt_keys() == next.jwt_keys() {
                    return false;
                }
                // Only the JWT-SVID keys: streams of JWT bundles follow; the count of root
                // changes does not move.
                next.set_sequence(current.sequence() + 1);
                tracing::info!(
                    target: "zident::identity",
                    jwt_keys = next.jwt_keys().len(),
                    sequence = next.sequence(),
                    "JWT-SVID keys changed (from {cause})"
                );
                *current = Arc::new(next);
                return true;
            }
            let added = next.roots().iter().filter(|r| !current.contains(r)).count();
            let removed = current.roots().iter().filter(|r| !next.contains(r)).count();
            next.set_sequence(current.sequence() + 1);
            tracing::info!(
                target: "zident::identity",
                roots = next.roots().len(),
                jwt_keys = next.jwt_keys().len(),
                added,
                removed,
                sequence = next.sequence(),
                "trust bundle changed (from {cause})"
            );
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *current = Arc::new(next);
            true
        });
    }
}
