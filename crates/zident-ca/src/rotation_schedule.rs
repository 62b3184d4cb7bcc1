//! The root rotation's own clock: it takes each step (prepare, activate, retire) when it is
//! due and safe, without an operator. It reads and steps through the [`RootStore`] seam, so
//! the rules it applies are the ones `zident ca rotate` applies; it lives beside the CA's
//! start-up because it also reloads the authority and the serving certificate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::CaConfig;
use crate::reload::reload_rotation;
use crate::roots::dir_store::DirStore;
use crate::roots::ledger::Issuance;
use crate::roots::rotation::{self, Phase, RotationState, StepRequest};
use crate::roots::store::{RootStore, take_step};
use crate::server::ServingCert;
use crate::state::CaState;

/// Moves the rotation on by itself: prepare once the active root has used its share of life,
/// activate and retire as soon as each is safe.
pub(crate) async fn rotate_on_schedule(
    state: Arc<CaState>,
    config: CaConfig,
    serving: Arc<ServingCert>,
) {
    let tick = Duration::from_secs(1)
        .max(config.refresh_hint / 10)
        .min(Duration::from_secs(30));
    let mut store = DirStore::new(&config.data_dir);
    loop {
        tokio::time::sleep(tick).await;
        let now = std::time::SystemTime::now();
        let rs = match store.state().await {
            Ok(Some(rs)) => rs,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(target: "zident::ca", "cannot read the rotation state: {e}");
                continue;
            }
        };
        let validity = state.authority().signer_validity();
        let due = state
            .ledger
            .read(|issued| due(&rs, issued, validity, config.rotation.prepare_at, now));
        let Some(phase) = due else { continue };
        let request = StepRequest {
            phase,
            now,
            force: false,
            root_lifetime: config.rotation.root_lifetime,
            timing: None,
        };
        let result = take_step(&mut store, &request).await;
        match result {
            Ok(rs) => {
                tracing::info!(target: "zident::ca", phase = phase.as_str(), active = rs.active, prepared = ?rs.prepared, previous = ?rs.previous, sequence = rs.sequence, "scheduled root rotation step");
                // Reading the new generation's files is blocking work.
                let (st, cfg, sv) = (state.clone(), config.clone(), serving.clone());
                let _ = tokio::task::spawn_blocking(move || reload_rotation(&st, &cfg, &sv)).await;
            }
            Err(e) => {
                tracing::error!(target: "zident::ca", phase = phase.as_str(), "scheduled root rotation step failed: {e}")
            }
        }
    }
}

/// The step due at `now`, if any: prepare once the signer (valid `signer_validity`) has used
/// `prepare_at` of its life; activate and retire when the state's rules allow, activation also
/// waiting for the clients in `issued` (the latest issuance per identity) that learn roots only
/// from responses. Every store's schedule asks this, so they agree on when.
pub(crate) fn due(
    rs: &RotationState,
    issued: &HashMap<String, Issuance>,
    signer_validity: (SystemTime, SystemTime),
    prepare_at: f64,
    now: SystemTime,
) -> Option<Phase> {
    let secs = zident_identity::unix_seconds(now);
    match rs.next_step() {
        Some((phase, _, after)) => {
            let after = match phase {
                Phase::Activate => rotation::activation_safe_at(rs, issued, secs).unwrap_or(after),
                _ => after,
            };
            (secs >= after).then_some(phase)
        }
        None => {
            let (from, to) = signer_validity;
            let life = to.duration_since(from).unwrap_or_default();
            let used = now.duration_since(from).unwrap_or_default();
            (used.as_secs_f64() >= life.as_secs_f64() * prepare_at).then_some(Phase::Prepare)
        }
    }
}
