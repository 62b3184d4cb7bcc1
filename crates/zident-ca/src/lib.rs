//! `zident ca`: an Istio-compatible certificate authority for SPIFFE workload identities.
//!
//! It speaks `istio.v1.auth.IstioCertificateService` over TLS 1.3, so istio-agent, ztunnel
//! and zident's own agent can all ask it for certificates. A request is authenticated by its
//! bearer token (from the mesh file), authorized against where the mesh file places
//! workloads, and answered with a chain `[leaf, intermediates…, roots]`.
//!
//! [`RunningCa::start`] brings up the TLS port (gRPC + trust bundle endpoint), the metrics
//! port, and watchers that reload the mesh file and plugged-in keys when they change.
//!
//! The modules:
//!
//! - `roots/`: the roots and signing keys and how they change (authority, rotation and its
//!   schedule, plugged-in keys, the ledger of issued certificates);
//! - `config` (every setting and its default), `state` (what a request reads, swapped whole),
//!   `registry` (who may ask for what), `service` (`CreateCertificate`);
//! - `server` (TLS port, serving certificate), `connections` (limits per source), `metrics`;
//! - `xds/`: the mesh pushed to ztunnels and agents over Delta xDS, incrementally;
//! - `reload` (applying outside changes whole or not at all), `data_lock` (one CA per data
//!   dir), `persist` (crash-safe writes).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod coalesce;
mod config;
mod connections;
mod data_lock;
pub mod datastore;
pub mod defaults;
pub mod dns_certs;
mod jwt_service;
mod metrics;
mod persist;
mod registry;
mod reload;
mod roots;
mod rotation_schedule;
mod server;
mod service;
mod state;
mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use zident_mesh::{MeshError, MeshFile, watch};

pub use config::{CaConfig, RotationConfig, TtlPolicy};
pub use connections::ConnectionLimits;
pub use data_lock::DataDirError;
pub use registry::{Caller, Denied, Registry};
pub use roots::authority::{Authority, AuthorityError, Mode};
pub use roots::{dir_store, generation, ledger, plugged, rotation, store};
pub use state::CaState;

use crate::roots::files::FileError;
use crate::server::ServingCert;

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The mesh file is unusable.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The keys are unusable.
    #[error("CA keys: {0}")]
    Authority(#[from] AuthorityError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source} (is another zident or istiod running there?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The rotation state is unusable.
    #[error("root rotation: {0}")]
    Rotation(#[from] rotation::RotationError),
    /// Another CA holds the data dir, or it cannot be locked.
    #[error(transparent)]
    DataDir(#[from] data_lock::DataDirError),
    /// The ledger of issued certificates cannot be opened.
    #[error("cannot open the ledger of issued certificates in {path}: {source}")]
    Ledger {
        /// The data dir.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The shared datastore could not be used at start.
    #[error("datastore: {0}")]
    Datastore(#[from] datastore::StoreError),
    /// A file watch could not be set up.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// What was to be watched.
        path: PathBuf,
        /// Why not.
        source: notify::Error,
    },
}

/// A started CA. Dropping it stops every task it started.
pub struct RunningCa {
    /// The bound TLS address (useful when the config asked for port 0).
    pub addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// The trust bundle file clients use as `CA_ROOT_CA`.
    pub root_cert_path: PathBuf,
    /// The shared state, for embedding (e.g. `zident up`).
    pub state: Arc<CaState>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    _watchers: Vec<notify::RecommendedWatcher>,
    _data_dir: data_lock::DataDirLock,
}

impl Drop for RunningCa {
    fn drop(&mut self) {
        self.server.abort();
        for t in &self.background {
            t.abort();
        }
    }
}

impl RunningCa {
    /// Loads the mesh file and keys, binds the ports, and starts serving.
    pub async fn start(mut config: CaConfig) -> Result<Self, CaError> {
        let data_dir = data_lock::take(&config.data_dir)?;
        // With a shared datastore, the replica serves the working copy the datastore keeps in
        // its data dir.
        let replica = match &config.datastore {
            Some(ds) => {
                let prepared = datastore::replica::prepare(&config, ds).await?;
                config.mesh_path = config.data_dir.join(datastore::files::MESH_COPY);
                Some(prepared)
            }
            None => None,
        };
        let mesh = MeshFile::load(&config.mesh_path)?;
        let registry = Registry::from_mesh(&mesh, &config.mesh_path)?;
        let trust_domain = mesh.trust_domain.clone();
        let mut authority = reload::load_authority(&config, &trust_domain)?;
        let mut plugged_state = None;
        if config.root_ca_dir.is_some() {
            let ps = plugged::PluggedState::on_start(
                &config.data_dir,
                &authority,
                &config.rotation_timing(),
                std::time::SystemTime::now(),
            )
            .map_err(|message| {
                CaError::Authority(AuthorityError::from(FileError::Invalid {
                    path: config.data_dir.join(plugged::STATE_FILE),
                    message,
                }))
            })?;
            authority.set_bundle_sequence(ps.sequence);
            authority.publish_root_cert(&config.data_dir)?;
            plugged_state = Some(std::sync::Mutex::new(ps));
        }
        if config.root_ca_dir.is_none() {
            let state =
                dir_store::ensure_state(&config.data_dir, &trust_domain, config.rotation_timing())?;
            // A data dir from before JWT-SVIDs gets its JWT keys (a replica's copy has them
            // from the database, which bootstrap gave them).
            if dir_store::ensure_jwt_keys(&config.data_dir, &state)? {
                authority = reload::load_authority(&config, &trust_domain)?;
            }
            if state.phase() != "steady" {
                tracing::info!(
                    target: "zident::ca",
                    phase = state.phase(),
                    active = state.active,
                    prepared = ?state.prepared,
                    previous = ?state.previous,
                    "resuming a root rotation"
                );
            }
        }
        let mut metrics_registry = MetricsRegistry::default();
        let metrics = metrics::CaMetrics::new(&mut metrics_registry);
        let serving =
            Arc::new(ServingCert::new(&authority, config.dns_names.clone()).map_err(CaError::Tls)?);
        let ledger = ledger::Ledger::open(&config.data_dir, std::time::SystemTime::now()).map_err(
            |source| CaError::Ledger {
                path: config.data_dir.clone(),
                source,
            },
        )?;
        let state = Arc::new(CaState::new(
            authority,
            registry,
            mesh,
            config.ttl,
            config.jwt_ttl,
            metrics,
            config.refresh_hint,
            ledger,
        ));
        if replica.is_some() {
            state.ledger.share();
        }

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| CaError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| CaError::Bind {
            addr: config.listen,
            source,
        })?;
        let tls = server::tls_config(serving.clone()).map_err(|e| CaError::Tls(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let connections = connections::Connections::new(config.connections);
        tracing::info!(
            target: "zident::ca",
            max_connections = connections.cap(),
            max_per_source = config.connections.max_per_source,
            idle_timeout_s = config.connections.idle_timeout.as_secs(),
            "connection limits"
        );
        let mut background = Vec::new();
        let xds_metrics = Arc::new(xds::XdsMetrics::new(&mut metrics_registry));
        let (generations, follow) = xds::follow_mesh(&state);
        background.push(follow);
        let server = tokio::spawn(server::serve(
            listener,
            acceptor,
            server::router(
                state.clone(),
                xds::XdsService::new(state.clone(), generations, xds_metrics),
            ),
            connections,
        ));

        let metrics_addr = match config.metrics_addr {
            Some(a) => {
                let ready: metrics::Readiness = match &replica {
                    Some(r) => {
                        let status = r.status.clone();
                        Arc::new(move || status.ready())
                    }
                    None => Arc::new(|| Ok(())),
                };
                let (bound, task) = metrics::serve_metrics(a, Arc::new(metrics_registry), ready)
                    .await
                    .map_err(|source| CaError::Bind { addr: a, source })?;
                background.push(task);
                Some(bound)
            }
            None => None,
        };
        match &config.dns_cert_dir {
            Some(dir) => background.push(tokio::spawn(dns_certs::run(
                state.clone(),
                dir.clone(),
                config.ttl.default_ttl,
            ))),
            None => {
                let listed = state.subscribe_mesh().borrow().mesh.certificates.len();
                if listed > 0 {
                    tracing::warn!(target: "zident::ca", listed, "the mesh file lists `certificates:` but --dns-cert-dir is not set: they are not issued");
                }
            }
        }
        background.push(tokio::spawn(server::renew_serving_cert(
            state.clone(),
            serving.clone(),
        )));

        // The mesh file and the rotation state are watched for edits made beside the CA. A
        // replica on a datastore writes its working copy itself and reloads it as it does, so
        // watching the copy would apply every change twice.
        let mut watchers = Vec::new();
        if replica.is_none() {
            let (mesh_dir, mesh_name) = watch::dir_and_name(&config.mesh_path);
            let (w, changes) =
                watch::watch_dir(&mesh_dir, vec![mesh_name]).map_err(|source| CaError::Watch {
                    path: config.mesh_path.clone(),
                    source,
                })?;
            watchers.push(w);
            let (s, path) = (state.clone(), config.mesh_path.clone());
            background.push(tokio::spawn(watch::reload_on_change(changes, move || {
                reload::reload_mesh(&s, &path)
            })));
        }
        if config.root_ca_dir.is_none() && replica.is_none() {
            let (w, changes) =
                watch::watch_dir(&config.data_dir, vec![dir_store::STATE_FILE.into()]).map_err(
                    |source| CaError::Watch {
                        path: config.data_dir.join(dir_store::STATE_FILE),
                        source,
                    },
                )?;
            watchers.push(w);
            let (s, cfg, sv) = (state.clone(), config.clone(), serving.clone());
            background.push(tokio::spawn(watch::reload_on_change(changes, move || {
                reload::reload_rotation(&s, &cfg, &sv)
            })));
            // (With a datastore, the leader replica takes the scheduled steps: see below.)
            if config.rotation.auto {
                background.push(tokio::spawn(rotation_schedule::rotate_on_schedule(
                    state.clone(),
                    config.clone(),
                    serving.clone(),
                )));
            }
        }
        if let Some(dir) = &config.root_ca_dir {
            let (w, changes) = watch::watch_dir(dir, vec![]).map_err(|source| CaError::Watch {
                path: dir.clone(),
                source,
            })?;
            watchers.push(w);
            let (s, cfg, serving) = (state.clone(), config.clone(), serving.clone());
            let ps = plugged_state.take();
            background.push(tokio::spawn(watch::reload_on_change(changes, move || {
                if let Some(ps) = &ps {
                    reload::reload_plugged_in(&s, &cfg, &serving, ps)
                }
            })));
        }

        if let (Some(prepared), Some(ds)) = (replica, config.datastore.clone()) {
            background.push(tokio::spawn(datastore::replica::run(
                config.clone(),
                ds,
                prepared,
                datastore::replica::Running {
                    state: state.clone(),
                    serving: serving.clone(),
                },
                addr.to_string(),
            )));
        }
        tracing::info!(
            target: "zident::ca",
            %addr,
            trust_domain = %trust_domain,
            mode = ?state.authority().mode(),
            "CA serving istio.v1.auth.IstioCertificateService, xDS (DeltaAggregatedResources) and /bundle over TLS 1.3"
        );
        Ok(Self {
            addr,
            metrics_addr,
            root_cert_path: config.data_dir.join(roots::authority::ROOT_CERT),
            state,
            server,
            background,
            _watchers: watchers,
            _data_dir: data_dir,
        })
    }

    /// Waits until the server stops (it only stops on a fatal error or when aborted).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}
