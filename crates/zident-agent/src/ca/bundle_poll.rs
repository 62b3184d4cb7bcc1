//! Keeping the trust store in step with the CA's bundle endpoint: `GET https://<CA>/bundle`
//! (SPIFFE JWKS) at the bundle's refresh hint, and at once when a certificate from the CA did
//! not verify (perhaps signed by a root this node has not fetched yet). The TLS to the CA is
//! checked against the store itself, so it follows a root rotation.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use zident_identity::TrustBundle;

use crate::ca::trust::TrustStore;

/// Polls never more often than this, whatever the hint says.
const MIN_POLL: Duration = Duration::from_secs(1);
/// Nor less often than this.
const MAX_POLL: Duration = Duration::from_secs(3600);
/// A failed poll is retried after this, or the hint if shorter.
const RETRY_POLL: Duration = Duration::from_secs(10);

/// Fetches `https://<address>/bundle` over and over, at the CA's refresh hint, feeding the
/// store; the CA's certificate must be valid for `name`. Runs until the task is dropped.
pub async fn poll_bundle(store: Arc<TrustStore>, address: String, name: ServerName<'static>) {
    let config = match crate::ca::tls::client_config(store.clone(), b"http/1.1") {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(target: "zident::identity", "cannot poll the trust bundle: TLS setup failed: {e}");
            return;
        }
    };
    loop {
        let wait = match fetch_bundle(&store, config.clone(), &address, &name).await {
            Ok(hint) => hint.clamp(MIN_POLL, MAX_POLL),
            Err(e) => {
                tracing::warn!(target: "zident::identity", "cannot fetch the trust bundle from https://{address}/bundle: {e}");
                RETRY_POLL
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = store.refresh_requested() => {
                tracing::info!(target: "zident::identity", "fetching the trust bundle now: a certificate from the CA did not verify");
            }
        }
    }
}

/// Why the CA's `/bundle` could not be fetched; the roots held stay in force.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// No answer.
    #[error(transparent)]
    Fetch(#[from] crate::ca::https_get::FetchError),
    /// The CA answered with an error status.
    #[error("HTTP {0}")]
    Status(hyper::StatusCode),
    /// The answer is not a SPIFFE bundle of this trust domain.
    #[error(transparent)]
    Bundle(#[from] zident_identity::BundleError),
}

async fn fetch_bundle(
    store: &TrustStore,
    config: Arc<rustls::ClientConfig>,
    address: &str,
    name: &ServerName<'static>,
) -> Result<Duration, FetchError> {
    let (status, _, json) =
        crate::ca::https_get::https_get(config, address, name, "/bundle", None).await?;
    if !status.is_success() {
        return Err(FetchError::Status(status));
    }
    let fetched = TrustBundle::from_jwks_json(store.trust_domain().clone(), &json)?;
    let hint = fetched.refresh_hint().unwrap_or(Duration::from_secs(300));
    store.set_endpoint_bundle(&fetched);
    Ok(hint)
}
