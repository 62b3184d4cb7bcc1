//! `zident agent`: the node agent.
//!
//! It keeps a valid SPIFFE certificate for every identity running on its node: fetched from
//! the CA when the first workload with that identity appears, renewed at half its lifetime,
//! kept in use through CA outages until it expires, and forgotten when the last workload with
//! it leaves. Every response from the CA is checked before use. Admin, readiness and metrics
//! endpoints show what it is doing.
//!
//! Consumers (the tunnel, the Workload API) see certificates and the trust bundle only through
//! [`CertificateProvider`], which [`CertificateManager`] implements.
//!
//! The modules:
//!
//! - `certs/`: the certificate of each identity, fetched, checked, renewed (the manager, one
//!   worker per identity, the renewal schedule, the fetch gate, the response checks);
//! - `ca/`: the CA as this node sees it (gRPC client, its TLS, the trust bundle, the
//!   `/bundle` poll, clock skew);
//! - `workload_api/`: the SPIFFE Workload API sockets and SVID files for local workloads;
//! - `http/`: admin, readiness and metrics endpoints, the dashboard, the `/debug/certs` report;
//! - `config`, `workloads` (this node's part of the mesh file), `reload` (mesh file edits),
//!   `metrics`.
//!
//! [`CertificateProvider`]: zident_identity::CertificateProvider

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod ca;
mod certs;
mod config;
pub mod defaults;
pub mod http;
mod metrics;
mod reload;
mod unix_users;
pub mod workload_api;
mod workloads;
mod xds;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use zident_mesh::{MeshFile, MeshOrigin, NodeView, watch};

pub use ca::client::{CaError, ConnectionStatus};
pub use ca::endpoints::CaAddressError;
pub use certs::manager::CertificateManager;
pub use certs::worker::{CertState, EventOutcome, IdentityStatus, RenewalEvent};
pub use config::{
    AgentConfig, CaClientConfig, DataPlane, MeshSource as MeshSourceConfig, RenewalPolicy,
    TokenError, TokenSource,
};
pub use http::admin::LogControl;
pub use unix_users::group_id;
pub use xds::status::{XdsStatus, XdsStatusCell};

use crate::ca::{bundle_poll, clock, trust};
use crate::config::MeshSource;
use crate::http::{admin, serve, serve_tls};
use crate::metrics::AgentMetrics;
use crate::reload::Reloader;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The mesh file is unusable.
    #[error(transparent)]
    Mesh(#[from] zident_mesh::MeshError),
    /// Something in the configuration is wrong; the message says what.
    #[error("{0}")]
    Config(String),
    /// `CA_ROOT_CA` holds no usable certificate.
    #[error("CA_ROOT_CA {}: {source}", path.display())]
    CaRoot {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: zident_identity::pem::PemError,
    },
    /// The CA address is unusable.
    #[error(transparent)]
    CaAddress(#[from] ca::endpoints::CaAddressError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A started agent. Dropping it stops everything it started.
pub struct RunningAgent {
    /// The certificates.
    pub manager: Arc<CertificateManager>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
    /// Bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Bound readiness address.
    pub readiness_addr: Option<SocketAddr>,
    /// Workload API sockets and SVID files.
    pub delivery: Arc<workload_api::Delivery<CertificateManager>>,
    /// The mesh in force, as this node sees it: the one loaded at start, then each change
    /// that was accepted (from the file or the control plane).
    pub mesh: tokio::sync::watch::Receiver<Arc<NodeView>>,
    tasks: Vec<JoinHandle<()>>,
    /// The xDS stream's state, when the mesh comes from the control plane.
    pub xds: Option<Arc<xds::status::XdsStatusCell>>,
    /// Whether a mesh is in force: always for a mesh file; for the control plane, once a view
    /// arrived (or was read from the on-disk copy).
    pub mesh_ready: tokio::sync::watch::Receiver<bool>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RunningAgent {
    /// Loads the mesh file, starts fetching certificates and serving the endpoints.
    pub async fn start(
        config: AgentConfig,
        log: Option<Arc<dyn LogControl>>,
    ) -> Result<Self, AgentError> {
        if config.node.is_empty() {
            return Err(AgentError::Config("NODE_NAME (--node) is required".into()));
        }
        let start = initial_mesh(&config)?;
        let accepted = start.accepted;
        let view = accepted.view.clone();
        let mesh = view.mesh();
        if start.ready && view.identities().is_empty() {
            tracing::warn!(target: "zident::identity", node = %config.node, "the mesh places no workloads on this node");
        }

        let mut registry = Registry::default();
        let metrics = Arc::new(AgentMetrics::new(&mut registry));
        if let Some(plane) = &config.data_plane {
            plane.register_metrics(&mut registry);
        }
        let wapi_clients = Arc::new(workload_api::shared::Clients::default());
        registry.register(
            "zident_workload_api_attestations",
            "Workload API callers, by how they were matched to a workload (network_namespace, user, socket) or refused",
            wapi_clients.attestations.clone(),
        );
        registry.register(
            "zident_sds_events",
            "Envoy SDS events: secrets pushed, ACKed, NACKed (the client keeps its last accepted), requests refused",
            wapi_clients.sds.clone(),
        );
        let registry = Arc::new(registry);

        let ca_root = std::fs::read(&config.ca.root_ca).map_err(|e| {
            AgentError::Config(format!(
                "cannot read CA_ROOT_CA {}: {e}",
                config.ca.root_ca.display()
            ))
        })?;
        let trust = Arc::new(
            trust::TrustStore::new(mesh.trust_domain.clone(), &ca_root).map_err(|source| {
                AgentError::CaRoot {
                    path: config.ca.root_ca.clone(),
                    source,
                }
            })?,
        );
        trust.set_config_roots(view.extra_roots().to_vec());
        let ca = Arc::new(
            ca::client::CaClient::new(&config.ca, trust.clone())?
                .with_skew_threshold(clock::threshold_for(config.secret_ttl)),
        );
        let manager = Arc::new(CertificateManager::new(
            ca.clone(),
            trust.clone(),
            config.secret_ttl,
            config.renewal,
            config.concurrency,
            metrics.clone(),
            view.own().cloned(),
        ));
        manager.set_identities(&view.identity_set());
        let delivery = Arc::new(workload_api::Delivery::new(
            config.delivery.clone(),
            manager.clone(),
            wapi_clients.clone(),
        ));
        delivery.sync(&accepted.workloads);
        delivery.start_shared().map_err(|e| {
            AgentError::Config(format!(
                "cannot serve the shared Workload API socket {}: {e}",
                config
                    .delivery
                    .shared_socket
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ))
        })?;
        tracing::info!(
            target: "zident::identity",
            node = %config.node,
            identities = view.identities().len(),
            ca = %ca.address(),
            "agent started"
        );

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(track_bundle(trust.clone(), metrics.clone())));
        tasks.push(tokio::spawn(ca.clone().watch_reachability()));
        if config.ca.poll_bundle {
            tasks.push(tokio::spawn(bundle_poll::poll_bundle(
                trust.clone(),
                ca.first_address().to_owned(),
                ca.server_name().clone(),
            )));
        }

        let (mesh_tx, mesh_rx) = tokio::sync::watch::channel(view.clone());
        let applier = Arc::new(reload::MeshApplier {
            node: config.node.clone(),
            trust_domain: mesh.trust_domain.clone(),
            manager: manager.clone(),
            trust: trust.clone(),
            metrics: metrics.clone(),
            delivery: delivery.clone(),
            mesh: mesh_tx,
        });
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(start.ready);
        let mut watcher = None;
        let mut xds_status = None;
        match &config.mesh {
            MeshSource::File(path) => {
                let (dir, name) = watch::dir_and_name(path);
                let (w, changes) = watch::watch_dir(&dir, vec![name]).map_err(|e| {
                    AgentError::Config(format!("cannot watch {}: {e}", path.display()))
                })?;
                watcher = Some(w);
                let reloader = Reloader {
                    path: path.clone(),
                    applier,
                };
                tasks.push(tokio::spawn(watch::reload_on_change(changes, move || {
                    reloader.reload()
                })));
            }
            MeshSource::ControlPlane { cache } => {
                let status = Arc::new(xds::status::XdsStatusCell::default());
                status.update(|s| {
                    s.address = ca.address().to_owned();
                    s.view_from = if start.ready { "cache" } else { "none" };
                });
                xds_status = Some(status.clone());
                let client = xds::client::XdsClient {
                    ca: ca.clone(),
                    applier,
                    status,
                    cache: cache.clone(),
                    ready: ready_tx,
                };
                tasks.push(tokio::spawn(client.run(start.held)));
            }
        }

        let admin_addr = match config.admin_addr {
            Some(a) => Some(
                serve(
                    a,
                    admin::admin_router(
                        manager.clone(),
                        log,
                        config.data_plane.clone(),
                        mesh_rx.clone(),
                        xds_status.clone(),
                        Some(wapi_clients.clone()),
                    ),
                    &mut tasks,
                )
                .await
                .map_err(|source| AgentError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let readiness_addr = match config.readiness_addr {
            Some(a) => Some(
                serve(
                    a,
                    admin::readiness_router(manager.clone(), ready_rx.clone()),
                    &mut tasks,
                )
                .await
                .map_err(|source| AgentError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let metrics_addr = match config.metrics_addr {
            Some(a) if config.metrics_tls => {
                let own = view.own().cloned().ok_or_else(|| {
                    AgentError::Config(format!(
                        "--metrics-tls needs the agent's own identity: give node {} a spiffeId in the mesh file",
                        config.node
                    ))
                })?;
                Some(
                    serve_tls(
                        a,
                        admin::metrics_router(registry.clone()),
                        manager.clone(),
                        own,
                        &mut tasks,
                    )
                    .await
                    .map_err(|source| AgentError::Bind { addr: a, source })?,
                )
            }
            Some(a) => Some(
                serve(a, admin::metrics_router(registry.clone()), &mut tasks)
                    .await
                    .map_err(|source| AgentError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        Ok(Self {
            manager,
            admin_addr,
            metrics_addr,
            readiness_addr,
            delivery,
            mesh: mesh_rx,
            tasks,
            xds: xds_status,
            mesh_ready: ready_rx,
            _watcher: watcher,
        })
    }
}

/// The mesh an agent starts with.
struct Start {
    accepted: workloads::AcceptedMesh,
    /// The resources behind `mesh`, when it came from the control plane.
    held: zident_xds::Snapshot,
    /// Whether `mesh` is a real view (a file, or a stored copy) rather than a placeholder.
    ready: bool,
}

/// The mesh file; or for the control plane, its last good view kept on disk, or an empty
/// placeholder until the first view arrives (readiness waits for it).
fn initial_mesh(config: &AgentConfig) -> Result<Start, AgentError> {
    match &config.mesh {
        MeshSource::File(path) => {
            let mesh = MeshFile::load(path)?;
            if let Some(td) = &config.trust_domain
                && td != mesh.trust_domain.as_str()
            {
                return Err(AgentError::Config(format!(
                    "TRUST_DOMAIN is {td} but the mesh file {} says {}",
                    path.display(),
                    mesh.trust_domain
                )));
            }
            let trust_domain = mesh.trust_domain.clone();
            let accepted =
                reload::accept(mesh, MeshOrigin::file(path), &trust_domain, &config.node)
                    .map_err(AgentError::Config)?;
            Ok(Start {
                accepted,
                held: zident_xds::Snapshot::default(),
                ready: true,
            })
        }
        MeshSource::ControlPlane { cache } => {
            let setting = config
                .trust_domain
                .as_deref()
                .unwrap_or(zident_mesh::DEFAULT_TRUST_DOMAIN);
            let td = zident_identity::TrustDomain::new(setting)
                .map_err(|e| AgentError::Config(format!("TRUST_DOMAIN {setting:?}: {e}")))?;
            let stored = cache.as_deref().and_then(|path| {
                let snapshot = xds::client::load_cache(path)?;
                let read = snapshot
                    .to_mesh(&td)
                    .map_err(|e| e.to_string())
                    .and_then(|m| {
                        let origin = MeshOrigin::Cached(path.to_owned());
                        let m = m.received(&origin).map_err(|e| e.to_string())?;
                        reload::accept(m, origin, &td, &config.node)
                    });
                match read {
                    Ok(accepted) => {
                        tracing::info!(target: "zident::identity", cache = %path.display(), workloads = accepted.view.mesh().workloads.len(), "serving the last good mesh from disk until the control plane answers");
                        Some(Start {
                            accepted,
                            held: snapshot,
                            ready: true,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(target: "zident::identity", "ignoring the xDS cache {}: {e}", path.display());
                        None
                    }
                }
            });
            // A placeholder with no workloads until the first view arrives.
            let empty = NodeView::of_any_node(
                MeshFile::empty(td),
                MeshOrigin::ControlPlane(config.ca.address.clone()),
                &config.node,
            )
            .map_err(|e| AgentError::Config(e.to_string()))?;
            let placeholder = workloads::AcceptedMesh::new(empty).map_err(AgentError::Config)?;
            Ok(stored.unwrap_or_else(|| Start {
                accepted: placeholder,
                held: zident_xds::Snapshot::default(),
                ready: false,
            }))
        }
    }
}

/// Keeps the trust bundle metrics in step with the store.
async fn track_bundle(trust: Arc<trust::TrustStore>, metrics: Arc<AgentMetrics>) {
    let mut rx = trust.subscribe();
    metrics.set_bundle(&rx.borrow_and_update().clone());
    // The store's own count of root changes since the start (a change of the JWT-SVID keys
    // alone is not one); the counter follows it.
    let mut counted = trust.change_count();
    while rx.changed().await.is_ok() {
        metrics.set_bundle(&rx.borrow_and_update().clone());
        let now = trust.change_count();
        metrics.bundle_changes.inc_by(now.saturating_sub(counted));
        counted = now;
    }
}
