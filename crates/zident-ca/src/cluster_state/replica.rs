//! A replica on the API server: at start, the roots Secret is made (by the first replica to
//! start) or read, and written into the data dir as the working copy the CA loads; then, once
//! a second, the replica follows the Secret and the revocation Secret (answering revocation
//! requests for what it issued), writes what it issued to its record, renews or waits for the
//! Lease, and while it holds the Lease takes the rotation steps that are due.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use zident_identity::TrustDomain;
use zident_kube::{Connection, Holder, IssuedRecords, LeaderLease, SERIALS, Versioned};

use super::record_pace::RecordPace;
use super::revocations::RevocationSecret;
use super::store::{ClusterStoreError, SecretRoots};
use super::{ClusterStateConfig, LEADER_LEASE, issued_text, secret_format, serials_text};
use crate::config::CaConfig;
use crate::datastore::replica::{AbortOnDrop, ReplicaStatus, Running};
use crate::error::CaError;
use crate::reload;
use crate::roots::authority::Authority;
use crate::roots::dir_store;
use crate::roots::ledger::IssuedCertificate;
use crate::roots::rotation::{Phase, RotationState, StepRequest};
use crate::roots::store::take_step;

/// How often a replica looks at the Secret and the Lease.
const POLL: Duration = Duration::from_secs(1);
/// The longest a replica's record waits for a write once it has something new.
const MAX_RECORD_LAG: Duration = Duration::from_secs(15);
/// How often the leader deletes the records of replicas whose certificates have all expired.
const SWEEP: Duration = Duration::from_secs(60);
/// How many times start-up reads again after losing a race to create or upgrade the Secret.
const ATTEMPTS: usize = 5;
/// How long past the longest certificate lifetime a revocation request is kept (clocks).
const REQUEST_MARGIN: u64 = 60;

/// What [`prepare`] leaves for the running replica.
pub(crate) struct Prepared {
    roots: SecretRoots,
    /// The resourceVersion the working copy was written from.
    version: Option<String>,
    pub(crate) status: Arc<ReplicaStatus>,
}

fn cluster_error(e: impl std::fmt::Display) -> CaError {
    CaError::ClusterState(e.to_string())
}

/// Brings the roots Secret into `config.data_dir` before the CA starts, making it (generation
/// 1 for `td`) when none exists. With the API server unreachable, a data dir that already holds
/// a working copy starts degraded.
pub(crate) async fn prepare(
    config: &CaConfig,
    cluster: &ClusterStateConfig,
    namespace: &str,
    connection: &Connection,
    td: &TrustDomain,
) -> Result<Prepared, CaError> {
    let roots = SecretRoots::new(connection, namespace, &cluster.replica);
    let status = Arc::new(ReplicaStatus::for_cluster());
    for _ in 0..ATTEMPTS {
        let read = match roots.read().await {
            Ok(read) => read,
            Err(e) if config.data_dir.join(dir_store::STATE_FILE).exists() => {
                tracing::error!(target: "zident::ca", "the Kubernetes API is unreachable at start; serving from the working copy in {} (degraded): {e}", config.data_dir.display());
                status.start_degraded(&e.to_string());
                return Ok(Prepared {
                    roots,
                    version: None,
                    status,
                });
            }
            Err(e) => return Err(cluster_error(e)),
        };
        let Some(mut v) = read else {
            let made = roots
                .create_first(
                    td,
                    SystemTime::now(),
                    config.rotation.root_lifetime,
                    config.rotation_timing(),
                )
                .await
                .map_err(cluster_error)?;
            if made {
                tracing::info!(target: "zident::ca", secret = %roots.secret.describe(), "made the first root and stored it in the cluster");
            }
            continue;
        };
        let state = roots
            .decode_state(&v)
            .map_err(cluster_error)?
            .ok_or_else(|| {
                cluster_error(format!(
                    "{} holds no rotation.json: it was not made by zident; delete it or name another namespace",
                    roots.secret.describe()
                ))
            })?;
        if state.trust_domain != td.as_str() {
            return Err(cluster_error(format!(
                "{} holds roots for trust domain {}, but the mesh says {td}; a trust domain cannot change under its roots",
                roots.secret.describe(),
                state.trust_domain
            )));
        }
        // A Secret from before JWT-SVIDs gets its JWT keys, once: the write that loses the race
        // reads the winner's.
        let mut upgraded = false;
        for g in std::iter::once(state.active).chain(state.prepared) {
            upgraded |= secret_format::ensure_jwt_key(&mut v.data, g)
                .map_err(|e| CaError::Rotation(e.into()))?;
        }
        if upgraded {
            match roots.secret.replace(&v.resource_version, &v.data).await {
                Ok(()) => {
                    tracing::info!(target: "zident::ca", "made JWT-SVID signing keys for the stored roots")
                }
                Err(zident_kube::CallError::Conflict(_)) => {}
                Err(e) => return Err(cluster_error(e)),
            }
            continue;
        }
        write_working_copy(&roots, &config.data_dir, &v, &state).map_err(cluster_error)?;
        return Ok(Prepared {
            version: Some(v.resource_version.clone()),
            roots,
            status,
        });
    }
    Err(cluster_error(format!(
        "{} kept changing while this replica started; try again",
        roots.secret.describe()
    )))
}

/// Writes every generation the Secret holds and then its state (the commit point) into
/// `data_dir`.
fn write_working_copy(
    roots: &SecretRoots,
    data_dir: &Path,
    v: &Versioned,
    state: &RotationState,
) -> Result<(), ClusterStoreError> {
    let all: Vec<_> = (1..=state.active.max(state.prepared.unwrap_or(0)))
        .filter(|g| secret_format::has_generation(&v.data, *g))
        .collect();
    let generations = roots.decode_generations(v, &all)?;
    let io =
        |e: crate::roots::rotation::RotationError| ClusterStoreError::WorkingCopy(e.to_string());
    dir_store::write_generations(data_dir, &generations).map_err(io)?;
    dir_store::write_state(data_dir, state).map_err(io)
}

/// The replica's loop, for as long as the CA runs.
pub(crate) async fn run(
    config: CaConfig,
    cluster: ClusterStateConfig,
    namespace: String,
    connection: Connection,
    prepared: Prepared,
    running: Running,
) {
    let Prepared {
        mut roots,
        version,
        status,
    } = prepared;
    // The state is read in the first round (the working copy is already the Secret's).
    let mut followed = Followed {
        version,
        state: None,
    };
    let metrics = &running.state.metrics;
    let mut lease = LeaderLease::new(
        &connection,
        &namespace,
        LEADER_LEASE,
        &cluster.replica,
        cluster.lease_duration,
    );
    let mut swept = Instant::now();
    let mut record_due = true;
    let revocations = RevocationSecret::new(&connection, &namespace);
    let mut revocations_followed: Option<String> = None;
    // A change of the revocation Secret starts a round at once (an operator's request is
    // answered, and another replica's answer put in force, within moments).
    let revocation_notice = Arc::new(tokio::sync::Notify::new());
    let _watch = AbortOnDrop(revocations.watch_changes(revocation_notice.clone()));
    let serials = IssuedRecords::of(SERIALS, &connection, &namespace, &cluster.replica);
    // This replica's valid certificates (from its ledger at start, then as it issues them).
    let mut named: Vec<IssuedCertificate> = Vec::new();
    let mut serials_due = true;
    let mut said_left_out = false;
    // Each record is written at a pace set by its size (record_pace.rs). The issued record
    // must reach the leader before it activates a root prepared after those issuances, so it
    // waits at most half the activation delay.
    let activate_delay = Duration::from_secs(config.rotation_timing().activate_delay_secs);
    let mut serials_pace = RecordPace::new(MAX_RECORD_LAG);
    let mut record_pace = RecordPace::new(MAX_RECORD_LAG.min(activate_delay / 2));
    loop {
        let round = async {
            follow(&config, &roots, &mut followed, &running).await?;
            follow_revocations(&config, &revocations, &serials, &mut revocations_followed).await?;
            let fresh = running.state.ledger.take_certificates();
            serials_due |= !fresh.is_empty();
            named.extend(fresh);
            if serials_due && serials_pace.due(Instant::now()) {
                let now = SystemTime::now();
                let secs = zident_identity::unix_seconds(now);
                named.retain(|c| c.issuance.not_after > secs);
                let (text, left_out) = serials_text::encode(&named, now);
                if left_out > 0 && !said_left_out {
                    tracing::warn!(target: "zident::ca", record = serials.own_name(), left_out, "more valid certificates than a ConfigMap holds: the oldest are left out of the serials record (this replica still revokes them from its ledger while it runs)");
                }
                said_left_out = left_out > 0;
                serials
                    .write(&text)
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", serials.own_name()))?;
                serials_pace.wrote(Instant::now(), text.len());
                serials_due = false;
            }
            // What this replica issued: its whole ledger, when anything was added.
            // (The outbox only says that something was added: the record is the whole ledger.)
            let outbox = running.state.ledger.take_outbox();
            record_due |= !outbox.is_empty();
            if record_due && record_pace.due(Instant::now()) {
                let now = zident_identity::unix_seconds(SystemTime::now());
                let text = issued_text::encode(&running.state.ledger.snapshot(), now);
                if let Err(e) = roots.records.write(&text).await {
                    running.state.ledger.return_outbox(outbox);
                    return Err(format!("cannot write {}: {e}", roots.records.own_name()));
                }
                record_pace.wrote(Instant::now(), text.len());
                record_due = false;
            }
            let holder = lease
                .round()
                .await
                .map_err(|e| format!("{}: {e}", lease.describe()))?;
            Ok::<_, String>(holder)
        };
        match round.await {
            Ok(holder) => {
                status.recover(metrics);
                status.set_leader(holder == Holder::This, &cluster.replica, metrics);
            }
            Err(e) => {
                status.degrade(&e, metrics);
                // A renewal that failed is not a lost Lease until its duration passes, but a
                // replica that cannot reach the API server takes no step anyway.
                status.set_leader(false, &cluster.replica, metrics);
                tokio::time::sleep(POLL).await;
                continue;
            }
        }
        let mut stepped = false;
        if status.is_leader() && lease.holds() {
            roots.own = running.state.ledger.snapshot();
            if config.rotation.auto
                && config.root_ca_dir.is_none()
                && let Some(state) = followed.state.clone()
            {
                stepped = scheduled_step(&config, &cluster, &mut roots, &running, &state).await;
            }
            if swept.elapsed() >= SWEEP {
                swept = Instant::now();
                sweep(&roots.records, issued_text::all_expired).await;
                sweep(&serials, serials_text::all_expired).await;
            }
            roots.own.clear();
        }
        if !stepped {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = revocation_notice.notified() => {}
            }
        }
    }
}

/// The roots Secret as this replica last put it in force: its resourceVersion and its state.
#[derive(Default)]
struct Followed {
    version: Option<String>,
    state: Option<RotationState>,
}

/// Reads the Secret and, when it changed, writes the working copy and puts the new roots in
/// force.
async fn follow(
    config: &CaConfig,
    roots: &SecretRoots,
    followed: &mut Followed,
    running: &Running,
) -> Result<(), String> {
    let v = roots
        .read()
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} was deleted; the CA keeps its roots in memory and its working copy, and makes no new Secret while it runs: restore it from a backup or restart every replica", roots.secret.describe()))?;
    if followed.state.is_some() && followed.version.as_deref() == Some(v.resource_version.as_str())
    {
        return Ok(());
    }
    let state = roots
        .decode_state(&v)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} holds no rotation.json", roots.secret.describe()))?;
    let generations = roots
        .decode_generations(&v, &state.in_bundle())
        .map_err(|e| e.to_string())?;
    let td = running.state.authorizer().trust_domain().clone();
    let authority = Authority::from_generations(&config.data_dir, &td, &state, &generations);
    let (dir, roots2, v2, state2, ca, serving) = (
        config.data_dir.clone(),
        roots.clone(),
        v.clone(),
        state.clone(),
        running.state.clone(),
        running.serving.clone(),
    );
    let written = tokio::task::spawn_blocking(move || {
        write_working_copy(&roots2, &dir, &v2, &state2)?;
        match authority {
            Ok(authority) => {
                if let Err(e) = authority.publish_root_cert(&dir) {
                    tracing::error!(target: "zident::ca", "cannot publish root-cert.pem: {e}");
                }
                reload::apply_rotated(&ca, &serving, authority);
            }
            Err(e) => {
                ca.metrics.reload("rotation", false);
                tracing::error!(target: "zident::ca", "the stored roots are unusable, keeping the current keys: {e}");
            }
        }
        Ok::<_, ClusterStoreError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {
            followed.version = Some(v.resource_version);
            followed.state = Some(state);
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
    }
}

/// Follows the revocation Secret: answers the requests this replica has not answered from its
/// own ledger (what it issued) and the other replicas' serials records, and writes the list in
/// force into the data dir when it changed (the CA's publisher, which watches that file, signs
/// its CRLs from it at once). Without the Secret, the list is empty: the cluster, not a
/// replica's data dir, says what is revoked.
async fn follow_revocations(
    config: &CaConfig,
    revocations: &RevocationSecret,
    serials: &IssuedRecords,
    followed: &mut Option<String>,
) -> Result<(), String> {
    let replica = serials.own_replica();
    let keep = config.ttl.max_ttl.as_secs() + REQUEST_MARGIN;
    let mut read = revocations.read().await.map_err(|e| e.to_string())?;
    if let Some((doc, _)) = &read
        && doc.has_work(replica, SystemTime::now(), keep)
    {
        let dir = config.data_dir.clone();
        let own = match tokio::task::spawn_blocking(move || {
            crate::roots::ledger::certificates(&dir, SystemTime::now())
        })
        .await
        {
            Ok(own) => own,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Ok(()),
        };
        let records: Vec<(String, Vec<IssuedCertificate>)> = serials
            .read_all()
            .await
            .map_err(|e| format!("cannot list the replicas' serials records: {e}"))?
            .into_iter()
            .map(|(name, text)| {
                (
                    zident_kube::replica_of(&name).to_owned(),
                    serials_text::decode(&text).0,
                )
            })
            .collect();
        revocations
            .change(|doc| {
                doc.answer(replica, &own, &records, SystemTime::now(), keep);
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(target: "zident::ca", %replica, "answered the revocation requests for what this replica issued");
        read = revocations.read().await.map_err(|e| e.to_string())?;
    }
    let (list, version) = match read {
        Some((doc, version)) => (doc.list, version),
        None => (Default::default(), String::new()),
    };
    let dir = config.data_dir.clone();
    if followed.as_deref() == Some(version.as_str())
        && dir.join(crate::revocation::list::REVOCATIONS_FILE).exists()
    {
        return Ok(());
    }
    let saved = tokio::task::spawn_blocking(move || list.save(&dir)).await;
    match saved {
        Ok(Ok(())) => {
            *followed = Some(version);
            Ok(())
        }
        Ok(Err(e)) => Err(format!(
            "cannot write the revocation list's working copy: {e}"
        )),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
    }
}

/// Takes the rotation step that is due on `state` (the Secret as this round followed it), if
/// any, with what every replica issued; says whether one was committed (the next round then
/// follows it at once). The commit re-reads the Secret and is refused if it moved meanwhile.
async fn scheduled_step(
    config: &CaConfig,
    cluster: &ClusterStateConfig,
    roots: &mut SecretRoots,
    running: &Running,
    state: &RotationState,
) -> bool {
    let now = SystemTime::now();
    let issued = match state.next_step() {
        Some((Phase::Activate, _, _)) => match roots.issued().await {
            Ok(issued) => issued,
            Err(e) => {
                tracing::warn!(target: "zident::ca", "cannot read what the replicas issued, not activating: {e}");
                return false;
            }
        },
        _ => Default::default(),
    };
    let validity = running.state.authority().signer_validity();
    let Some(phase) =
        crate::rotation_schedule::due(state, &issued, validity, config.rotation.prepare_at, now)
    else {
        return false;
    };
    let request = StepRequest {
        phase,
        now,
        force: false,
        root_lifetime: config.rotation.root_lifetime,
        timing: Some(config.rotation_timing()),
    };
    match take_step(roots, &request).await {
        Ok(rs) => {
            tracing::info!(target: "zident::ca", replica = %cluster.replica, phase = phase.as_str(), active = rs.active, prepared = ?rs.prepared, previous = ?rs.previous, sequence = rs.sequence, "scheduled root rotation step (committed to the cluster)");
            true
        }
        Err(e) => {
            tracing::error!(target: "zident::ca", phase = phase.as_str(), "scheduled root rotation step not taken: {e}");
            false
        }
    }
}

/// Deletes the other replicas' records (of one kind) in which every certificate has expired
/// (`expired` says so of a record's text at a time): replicas that are gone; a live replica
/// writes its record again when it next issues.
async fn sweep(records: &IssuedRecords, expired: fn(&str, u64) -> bool) {
    let Ok(all) = records.read_all().await else {
        return;
    };
    let now = zident_identity::unix_seconds(SystemTime::now());
    for (name, text) in all {
        if name != records.own_name() && expired(&text, now) {
            match records.delete(&name).await {
                Ok(()) => {
                    tracing::info!(target: "zident::ca", record = %name, "deleted an issued record whose certificates have all expired")
                }
                Err(e) => {
                    tracing::warn!(target: "zident::ca", record = %name, "cannot delete an expired issued record: {e}")
                }
            }
        }
    }
}
