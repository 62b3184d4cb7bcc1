//! `zident ca rotate|status --kubernetes`: root rotation for CA replicas that keep their state
//! in the API server (`--roots-in-cluster`), in the Secret `zident-ca-roots` of their namespace.
//!
//! The replicas' leader takes the steps on its schedule; an operator takes one now (a root
//! suspected lost, a rotation wanted before the schedule's) with the same rules as on a data
//! dir or PostgreSQL: the step is planned on the Secret as read, refused when it is not yet safe
//! (unless `--force`), and written only at the resourceVersion it was planned on, so a step the
//! leader takes at the same moment is never taken twice. Every replica reads the Secret once a
//! second and puts the change in force.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use zident_ca::cluster_state::{ROOTS_SECRET, SecretRoots};
use zident_ca::rotation::{self, Phase, StepRequest};
use zident_ca::store::{RootStore, take_step};
use zident_identity::unix_seconds;

use crate::revoke_cluster::{CLI_READER, ClusterArg};
use crate::rotation_text::{print_history, print_next_step, summary};

/// `zident ca rotate PHASE --kubernetes`: `phase` taken on the cluster `cluster` names.
pub async fn rotate(
    cluster: &ClusterArg,
    phase: Phase,
    force: bool,
    root_lifetime: Duration,
) -> Result<ExitCode, String> {
    let ns = &cluster.kubernetes_namespace;
    let connection = cluster.connection().await?;
    let mut roots = SecretRoots::new(&connection, ns, CLI_READER);
    let request = StepRequest {
        phase,
        now: SystemTime::now(),
        force,
        root_lifetime,
        timing: None,
    };
    let state = take_step(&mut roots, &request)
        .await
        .map_err(|e| format!("rotate {} in namespace {ns}: {e}", phase.as_str()))?;
    println!(
        "zident ca rotate {}: committed to the Secret {ROOTS_SECRET} in namespace {ns}; every replica puts it in force within a second. Phase {}, active generation {}, bundle sequence {}.",
        phase.as_str(),
        state.phase(),
        state.active,
        state.sequence
    );
    Ok(ExitCode::SUCCESS)
}

/// `zident ca status --kubernetes [--json]`.
pub async fn status(cluster: &ClusterArg, json: bool) -> Result<ExitCode, String> {
    let ns = &cluster.kubernetes_namespace;
    let connection = cluster.connection().await?;
    let mut roots = SecretRoots::new(&connection, ns, CLI_READER);
    let snapshot = roots
        .snapshot()
        .await
        .map_err(|e| format!("status in namespace {ns}: {e}"))?
        .ok_or_else(|| {
            format!(
                "namespace {ns} has no Secret {ROOTS_SECRET}: start a CA replica with --kubernetes --roots-in-cluster there first"
            )
        })?;
    let (state, issued) = (&snapshot.state, &snapshot.issued);
    let now = unix_seconds(SystemTime::now());
    if json {
        let out = serde_json::json!({
            "namespace": ns,
            "phase": state.phase(),
            "sequence": state.sequence,
            "state": state,
            "waiting_for_new_root": rotation::clients_wait(state, issued, now),
            "activate_safe_at": rotation::activation_safe_at(state, issued, now),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "CA roots in the Secret {ROOTS_SECRET} of namespace {ns}: {}",
        summary(state)
    );
    print_next_step(state, issued, now);
    print_history(state);
    Ok(ExitCode::SUCCESS)
}
