//! A running replica: at start, the shared state is brought into the data dir (or, with the
//! database away, the copy already there is used); then, once a second and on every
//! notification, the replica follows what changed, sends what it issued, reports itself,
//! and, while it holds the leader lock, takes the rotation steps that are due.
//!
//! A replica that loses its database keeps serving from its copy, says it is degraded
//! (`/ready`, `zident_ca_datastore_degraded`), takes no rotation step, and catches up when the
//! database returns.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use super::kek::Kek;
use super::store::open_generations;
use super::store::{STATEMENT_TIMEOUT, Store, redact};
use super::{DatastoreConfig, MeshForStoreError, NotReady, StoreError, files, mesh_for_store};
use crate::config::CaConfig;
use crate::reload;
use crate::roots::authority::Authority;
use crate::roots::dir_store;
use crate::roots::rotation;
use crate::server::ServingCert;
use crate::state::CaState;

/// How often a replica looks for changes when no notification comes.
const POLL: Duration = Duration::from_secs(1);

/// What a replica shows of itself.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    degraded: AtomicBool,
    leader: AtomicBool,
    mesh_version: AtomicI64,
    rotation_version: AtomicI64,
    revocations_version: AtomicI64,
    reason: std::sync::Mutex<Option<String>>,
    /// A replica whose state is in the Kubernetes API (no mesh versions).
    cluster: bool,
    /// Whether this replica leads, for the tasks only the leader runs.
    leading: tokio::sync::watch::Sender<bool>,
}

impl ReplicaStatus {
    /// `Err(why)` while the database is away.
    pub fn ready(&self) -> Result<(), NotReady> {
        if self.degraded.load(Ordering::SeqCst) {
            let reason = self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            if self.cluster {
                return Err(NotReady::ClusterDegraded { reason });
            }
            return Err(NotReady::Degraded {
                reason,
                mesh_version: self.mesh_version.load(Ordering::SeqCst),
            });
        }
        Ok(())
    }

    /// Whether this replica takes rotation steps.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// The status of a replica whose state is in the Kubernetes API.
    pub(crate) fn for_cluster() -> Self {
        Self {
            cluster: true,
            ..Self::default()
        }
    }

    /// Marks a replica that starts without its shared state as degraded (its metrics follow
    /// once it runs).
    pub(crate) fn start_degraded(&self, why: &str) {
        self.degraded.store(true, Ordering::SeqCst);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
    }

    /// Follows whether this replica leads.
    pub(crate) fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Says whether this replica takes rotation steps; logs and counts a change.
    pub(crate) fn set_leader(
        &self,
        leading: bool,
        name: &str,
        metrics: &crate::metrics::CaMetrics,
    ) {
        self.leading
            .send_if_modified(|held| std::mem::replace(held, leading) != leading);
        if leading != self.leader.swap(leading, Ordering::SeqCst) {
            metrics.leader.set(i64::from(leading));
            if leading {
                tracing::info!(target: "zident::ca", replica = %name, "this replica now takes the rotation steps (it holds the leader lock)");
            } else {
                tracing::warn!(target: "zident::ca", replica = %name, "this replica no longer holds the leader lock and takes no rotation step");
            }
        }
    }

    pub(crate) fn degrade(&self, why: &str, metrics: &crate::metrics::CaMetrics) {
        metrics.datastore_degraded.set(1);
        metrics.leader.set(0);
        self.leader.store(false, Ordering::SeqCst);
        self.leading
            .send_if_modified(|held| std::mem::replace(held, false));
        let was = self.degraded.swap(true, Ordering::SeqCst);
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
        if !was {
            let store = if self.cluster {
                "the Kubernetes API"
            } else {
                "the datastore"
            };
            tracing::error!(target: "zident::ca", "{store} is away, serving from the working copy (degraded, no rotation steps): {why}");
        }
    }

    pub(crate) fn recover(&self, metrics: &crate::metrics::CaMetrics) {
        metrics.datastore_degraded.set(0);
        metrics.leader.set(i64::from(self.is_leader()));
        if self.degraded.swap(false, Ordering::SeqCst) {
            tracing::info!(target: "zident::ca", "the shared state is back; catching up");
        }
    }
}

/// What [`prepare`] leaves for the running replica.
pub(crate) struct Prepared {
    pub(crate) kek: Arc<Kek>,
    pub(crate) store: Option<Store>,
    pub(crate) status: Arc<ReplicaStatus>,
}

/// Brings the shared state into `config.data_dir` before the CA starts: migrate, make the
/// first root and import the first mesh if the database has none, write the working copy.
/// With the database unreachable, a data dir that already holds a copy starts degraded.
pub(crate) async fn prepare(
    config: &CaConfig,
    ds: &DatastoreConfig,
) -> Result<Prepared, StoreError> {
    let kek = Arc::new(Kek::load(&ds.kek_file)?);
    let status = Arc::new(ReplicaStatus::default());
    let mut store = match Store::connect(&ds.url).await {
        Ok(s) => s,
        Err(StoreError::Unreachable(why)) if files::has_working_copy(&config.data_dir) => {
            tracing::error!(target: "zident::ca", "the datastore is unreachable at start; serving from the working copy in {} (degraded): {why}", config.data_dir.display());
            status.start_degraded(&why);
            return Ok(Prepared {
                kek,
                store: None,
                status,
            });
        }
        Err(e) => return Err(e),
    };
    let latest = store.latest_mesh().await?;
    let import = match (&latest, &ds.import) {
        (None, Some(path)) => Some(mesh_for_store(path)?),
        (None, None) => {
            return Err(StoreError::NoMesh {
                url: redact(&ds.url),
            });
        }
        (Some(_), _) => None,
    };
    let td = match (&latest, &import) {
        (Some(row), _) => {
            let yaml = row.yaml.clone().unwrap_or_default();
            zident_mesh::MeshFile::parse(
                &PathBuf::from(format!("mesh version {}", row.version)),
                &yaml,
            )
            .map_err(MeshForStoreError::from)?
            .trust_domain
        }
        (None, Some((_, mesh))) => mesh.trust_domain.clone(),
        (None, None) => {
            return Err(StoreError::NoMesh {
                url: redact(&ds.url),
            });
        }
    };
    let by = format!("{} (import at start)", ds.name);
    store
        .bootstrap(
            &td,
            config.rotation.root_lifetime,
            config.rotation_timing(),
            &kek,
            import
                .as_ref()
                .map(|(yaml, _)| (yaml.as_str(), by.as_str())),
            &ds.name,
        )
        .await?;
    sync(config, &store, &kek, &status, None).await?;
    Ok(Prepared {
        kek,
        store: Some(store),
        status,
    })
}

/// The running CA's side: what [`sync`] reloads.
pub(crate) struct Running {
    pub(crate) state: Arc<CaState>,
    pub(crate) serving: Arc<ServingCert>,
}

/// Writes what changed in the database into the data dir, and reloads it into the running CA
/// when there is one. The files are written and read on the blocking pool.
async fn sync(
    config: &CaConfig,
    store: &Store,
    kek: &Arc<Kek>,
    status: &ReplicaStatus,
    running: Option<&Running>,
) -> Result<(), StoreError> {
    let dir = &config.data_dir;
    if let Some((state, version)) = within(store.rotation()).await?
        && (version != status.rotation_version.load(Ordering::SeqCst)
            || !dir.join(dir_store::STATE_FILE).exists())
    {
        let roots = within(store.roots()).await?;
        // A running CA takes the authority straight from the rows; the working copy written
        // beside it is the cache a replica starts from while the database is away.
        let rotated = match running {
            Some(r) => {
                let td = r.state.authorizer().trust_domain().clone();
                let generations = open_generations(&roots, kek, &state.in_bundle())?;
                match Authority::from_generations(dir, &td, &state, &generations) {
                    Ok(authority) => Some((authority, r.state.clone(), r.serving.clone())),
                    Err(e) => {
                        r.state.metrics.reload("rotation", false);
                        tracing::error!(target: "zident::ca", "the datastore's roots are unusable, keeping the current keys: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let (dir, kek) = (dir.clone(), kek.clone());
        blocking(move || {
            files::write_roots(&dir, &roots, &kek)?;
            files::write_rotation(&dir, &state)?;
            if let Some((authority, ca, serving)) = rotated {
                if let Err(e) = authority.publish_root_cert(&dir) {
                    tracing::error!(target: "zident::ca", "cannot publish root-cert.pem: {e}");
                }
                reload::apply_rotated(&ca, &serving, authority);
            }
            Ok(())
        })
        .await?;
        status.rotation_version.store(version, Ordering::SeqCst);
    }
    if let Some(row) = within(store.latest_mesh()).await?
        && (row.version != status.mesh_version.load(Ordering::SeqCst)
            || !dir.join(files::MESH_COPY).exists())
    {
        let (dir, yaml) = (dir.clone(), row.yaml.clone().unwrap_or_default());
        let reload_into = running.map(|r| r.state.clone());
        if reload_into.is_some() {
            tracing::info!(target: "zident::ca", version = row.version, applied_by = %row.applied_by, "following mesh version from the datastore");
        }
        blocking(move || {
            files::write_mesh(&dir, &yaml)?;
            if let Some(state) = reload_into {
                reload::reload_mesh(&state, &dir.join(files::MESH_COPY));
            }
            Ok(())
        })
        .await?;
        status.mesh_version.store(row.version, Ordering::SeqCst);
    }
    // The revocation list, into the working copy the CA's publisher signs its CRLs from.
    if let Some((list, version)) = within(store.revocations()).await?
        && (version != status.revocations_version.load(Ordering::SeqCst)
            || !dir.join(crate::revocation::list::REVOCATIONS_FILE).exists())
    {
        let dir = dir.clone();
        blocking(move || {
            list.save(&dir).map_err(|e| StoreError::WorkingCopy {
                path: dir.join(crate::revocation::list::REVOCATIONS_FILE),
                source: std::io::Error::other(e.to_string()),
            })
        })
        .await?;
        status.revocations_version.store(version, Ordering::SeqCst);
    }
    Ok(())
}

/// Runs file work on the blocking pool; a panic there is resumed here.
async fn blocking(
    work: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) -> Result<(), StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Ok(()),
    }
}

/// A database call that gives up after [`STATEMENT_TIMEOUT`].
async fn within<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, f)
        .await
        .map_err(|_| StoreError::Unreachable(format!("no answer within {STATEMENT_TIMEOUT:?}")))?
}

/// The replica's loop, for as long as the CA runs.
pub(crate) async fn run(
    config: CaConfig,
    ds: DatastoreConfig,
    prepared: Prepared,
    running: Running,
    listen: String,
) {
    let Prepared { kek, store, status } = prepared;
    let mut store = store;
    loop {
        let s = match store.take() {
            Some(s) => Ok(s),
            None => Store::connect(&ds.url).await,
        };
        let ended = match s {
            Ok(s) => session(&config, &ds, &kek, &status, &running, &listen, s).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ended {
            status.degrade(&e.to_string(), &running.state.metrics);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn session(
    config: &CaConfig,
    ds: &DatastoreConfig,
    kek: &Arc<Kek>,
    status: &ReplicaStatus,
    running: &Running,
    listen: &str,
    mut store: Store,
) -> Result<(), StoreError> {
    within(store.listen()).await?;
    let mut tick = tokio::time::interval(POLL);
    let (mut lead_rx, mut leader) = spawn_leadership(&ds.url);
    loop {
        sync(config, &store, kek, status, Some(running)).await?;
        status.recover(&running.state.metrics);
        let outbox = running.state.ledger.take_outbox();
        if let Err(e) = within(store.record_issued(&outbox)).await {
            running.state.ledger.return_outbox(outbox);
            return Err(e);
        }
        let named = running.state.ledger.take_certificates();
        if let Err(e) =
            within(store.record_certificates(&named, std::time::SystemTime::now())).await
        {
            running.state.ledger.return_certificates(named);
            return Err(e);
        }
        if leader.0.is_finished() {
            // Its session ended while this one lives: wait for the lock again.
            (lead_rx, leader) = spawn_leadership(&ds.url);
        }
        let leading = *lead_rx.borrow_and_update();
        status.set_leader(leading, &ds.name, &running.state.metrics);
        within(store.heartbeat(
            &ds.name,
            listen,
            status.is_leader(),
            status.mesh_version.load(Ordering::SeqCst),
            status.rotation_version.load(Ordering::SeqCst),
        ))
        .await?;
        if status.is_leader() && config.rotation.auto && config.root_ca_dir.is_none() {
            scheduled_step(config, ds, kek, running, &mut store).await?;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = lead_rx.changed() => {}
            note = store.notifications.recv() => {
                if matches!(note, None | Some(None)) || store.is_closed() {
                    return Err(StoreError::Unreachable("the connection to the database was lost".into()));
                }
            }
        }
    }
}

/// A task, aborted when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for the leader lock on a session of its own, and reports whether it holds it: true
/// once granted, false when that session ends. Waiting in the lock (rather than trying it now
/// and then) lets PostgreSQL hand it over the moment a leader's session ends, so a killed
/// leader is replaced at once. Dropping the task ends the session, and with it the lock.
fn spawn_leadership(url: &str) -> (tokio::sync::watch::Receiver<bool>, AbortOnDrop) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let url = url.to_owned();
    let task = tokio::spawn(async move {
        let Ok(mut session) = Store::session(&url).await else {
            return;
        };
        if session.lead().await.is_err() {
            return;
        }
        tx.send_replace(true);
        // Held until the session ends.
        while let Some(Some(_)) = session.notifications.recv().await {}
        tx.send_replace(false);
    });
    (rx, AbortOnDrop(task))
}

/// Takes the rotation step that is due, as the file-based schedule would, but with what every
/// replica issued.
async fn scheduled_step(
    config: &CaConfig,
    ds: &DatastoreConfig,
    kek: &Kek,
    running: &Running,
    store: &mut Store,
) -> Result<(), StoreError> {
    let Some((rs, _)) = within(store.rotation()).await? else {
        return Ok(());
    };
    let now = SystemTime::now();
    let issued = match rs.next_step() {
        // What every replica issued, read only when activation waits on it.
        Some((rotation::Phase::Activate, _, _)) => within(store.issued()).await?,
        _ => Default::default(),
    };
    let due = crate::rotation_schedule::due(
        &rs,
        &issued,
        running.state.authority().signer_validity(),
        config.rotation.prepare_at,
        now,
    );
    let Some(phase) = due else { return Ok(()) };
    let step = super::store::Step {
        phase,
        now,
        force: false,
        root_lifetime: config.rotation.root_lifetime,
        timing: Some(config.rotation_timing()),
        by: ds.name.clone(),
    };
    match within(store.step(&step, kek)).await {
        Ok(rs) => {
            tracing::info!(target: "zident::ca", phase = phase.as_str(), active = rs.active, prepared = ?rs.prepared, previous = ?rs.previous, sequence = rs.sequence, "scheduled root rotation step (committed to the datastore)");
            Ok(())
        }
        Err(StoreError::Rotation(why)) => {
            tracing::error!(target: "zident::ca", phase = phase.as_str(), "scheduled root rotation step refused: {why}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
