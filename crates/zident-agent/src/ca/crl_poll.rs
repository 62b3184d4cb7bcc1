//! Following the CA's CRLs: `GET https://<CA>/crl` every second on one kept connection with
//! the last entity tag (an unchanged CRL costs the CA a 304), each new one verified against the trust bundle before it
//! is put in force (the tunnel then refuses revoked peers and closes open connections with
//! them, and the certificate manager replaces a revoked local certificate).
//!
//! What is refused, and what happens when the CA cannot be reached, is a choice between failing
//! open and failing closed, made here and in `docs/revocation.md`:
//!
//! - a CRL that neither a root of the bundle nor an intermediate above this node's certificates
//!   (a plugged-in CA's signer) signed, one past its nextUpdate, or one older than the one in
//!   force is refused, said once, and counted; the CRLs in force stay;
//! - when no CRL can be fetched, the last one stays in force even past its nextUpdate (said
//!   once, and `zident_crl_stale` is 1): dropping it would let revoked certificates back in
//!   (failing open), refusing every peer would cut the mesh off for a CA outage (failing closed).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, ServerName};
use zident_identity::RevocationList;

use crate::ca::https_get::KeptConnection;
use crate::ca::trust::TrustStore;
use crate::metrics::AgentMetrics;

/// How often the CA's `/crl` is asked.
pub(crate) const CRL_POLL: Duration = Duration::from_secs(1);
/// A refused CRL is fetched again after this even if it has not changed: what made it
/// unverifiable (a root or an intermediate this node did not have yet) may have arrived since.
const REFUSED_RECHECK: Duration = Duration::from_secs(10);

/// What may sign a CRL besides the bundle's roots: the intermediates above this node's
/// certificates (a plugged-in CA signs its CRL with its intermediate).
pub(crate) type Intermediates = Arc<dyn Fn() -> Vec<CertificateDer<'static>> + Send + Sync>;

/// Fetches `https://<address>/crl` every [`CRL_POLL`] for as long as the task runs, putting
/// each new verified CRL in force in `store`.
pub(crate) async fn poll_crl(
    store: Arc<TrustStore>,
    address: String,
    name: ServerName<'static>,
    metrics: Arc<AgentMetrics>,
    intermediates: Intermediates,
) {
    let config = match crate::ca::tls::client_config(store.clone(), b"http/1.1") {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(target: "zident::identity", "cannot follow the CA's CRLs: TLS setup failed: {e}");
            return;
        }
    };
    let mut ca = KeptConnection::new(config, address.clone(), name);
    let mut etag: Option<String> = None;
    let mut recheck_at: Option<std::time::Instant> = None;
    let mut said: Option<String> = None;
    let mut stale_said = false;
    loop {
        if recheck_at.is_some_and(|t| std::time::Instant::now() >= t) {
            (etag, recheck_at) = (None, None);
        }
        let fetched = ca.get("/crl", etag.as_deref()).await;
        let problem = match fetched {
            Ok((status, _, _)) if status == hyper::StatusCode::NOT_MODIFIED => None,
            Ok((status, tag, pem)) if status.is_success() => {
                // This version is not fetched again until it changes (or, if refused, until
                // the recheck).
                etag = tag;
                let held = store.revocations();
                let mut signers = store.bundle().roots().to_vec();
                signers.extend(intermediates());
                match RevocationList::from_pem(&pem, &signers, SystemTime::now(), held.as_deref()) {
                    Ok(list) => {
                        if held.as_ref().is_none_or(|h| h.pem != list.pem) {
                            tracing::info!(
                                target: "zident::identity",
                                crl_number = %list.number,
                                revoked = list.count,
                                next_update = %list.next_update.map(zident_identity::rfc3339).unwrap_or_default(),
                                "the CA's CRLs are in force"
                            );
                            metrics.set_crl(&list);
                            store.set_revocations(list);
                        }
                        stale_said = false;
                        recheck_at = None;
                        metrics.crl_stale.set(0);
                        None
                    }
                    Err(e) => {
                        metrics.crl_refused.inc();
                        recheck_at = Some(std::time::Instant::now() + REFUSED_RECHECK);
                        Some(format!("refused the CA's CRL: {e}; the CRLs in force stay"))
                    }
                }
            }
            // Before the CA's first CRL (the first second of its life).
            Ok((status, _, _)) if status == hyper::StatusCode::SERVICE_UNAVAILABLE => None,
            Ok((status, _, _)) => Some(format!(
                "the CA answered HTTP {status} for /crl; the CRLs in force stay"
            )),
            Err(e) => Some(format!(
                "cannot fetch the CA's CRLs from https://{address}/crl: {e}; the CRLs in force stay"
            )),
        };
        match problem {
            Some(p) if said.as_ref() != Some(&p) => {
                tracing::warn!(target: "zident::identity", "{p}");
                said = Some(p);
            }
            Some(_) => {}
            None => said = None,
        }
        if let Some(held) = store.revocations()
            && held.next_update.is_some_and(|n| n <= SystemTime::now())
        {
            metrics.crl_stale.set(1);
            if !stale_said {
                tracing::warn!(target: "zident::identity", crl_number = %held.number, "the CRLs in force are past their nextUpdate and no newer one could be had: they stay in force (dropping them would let revoked certificates back; refusing every peer would cut this node off)");
                stale_said = true;
            }
        }
        tokio::time::sleep(CRL_POLL).await;
    }
}
