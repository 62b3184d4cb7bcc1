//! The steps of [`RunningAgent::start`](crate::RunningAgent::start), each named: the mesh it
//! starts with, its metrics, the trust store, following the mesh (a file or the control
//! plane), and the admin, readiness and metrics endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zident_identity::{SpiffeId, TrustDomain};
use zident_mesh::{MeshFile, MeshOrigin, NodeView};

use crate::ca::client::CaClient;
use crate::ca::trust::TrustStore;
use crate::certs::manager::CertificateManager;
use crate::config::{AgentConfig, MeshSource};
use crate::error::AgentError;
use crate::http::admin::{self, LogControl};
use crate::http::{serve, serve_tls};
use crate::metrics::AgentMetrics;
use crate::reload::{self, MeshApplier, Reloader};
use crate::workload_api::shared::Clients;
use crate::{workloads, xds};

/// The mesh an agent starts with.
pub(crate) struct Start {
    pub(crate) accepted: workloads::AcceptedMesh,
    /// The resources behind `mesh`, when it came from the control plane.
    pub(crate) held: zident_xds::Snapshot,
    /// Whether `mesh` is a real view (a file, or a stored copy) rather than a placeholder.
    pub(crate) ready: bool,
}

/// The mesh file; or for the control plane, its last good view kept on disk, or an empty
/// placeholder until the first view arrives (readiness waits for it).
pub(crate) fn initial_mesh(config: &AgentConfig) -> Result<Start, AgentError> {
    match &config.mesh {
        MeshSource::File(path) => {
            let mesh = MeshFile::load(path)?;
            if let Some(td) = &config.trust_domain
                && td != mesh.trust_domain.as_str()
            {
                return Err(AgentError::TrustDomainMismatch {
                    setting: td.clone(),
                    path: path.clone(),
                    mesh: mesh.trust_domain.clone(),
                });
            }
            let trust_domain = mesh.trust_domain.clone();
            let accepted =
                reload::accept(mesh, MeshOrigin::file(path), &trust_domain, &config.node)?;
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
            let td = zident_identity::TrustDomain::new(setting).map_err(|source| {
                AgentError::TrustDomain {
                    setting: setting.to_owned(),
                    source,
                }
            })?;
            let stored = cache.as_deref().and_then(|path| {
                let snapshot = xds::client::load_cache(path)?;
                let read = snapshot
                    .to_mesh(&td)
                    .map_err(workloads::MeshRefused::from)
                    .and_then(|m| {
                        let origin = MeshOrigin::Cached(path.to_owned());
                        let m = m.received(&origin)?;
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
            .map_err(workloads::MeshRefused::from)?;
            let placeholder = workloads::AcceptedMesh::new(empty)?;
            Ok(stored.unwrap_or_else(|| Start {
                accepted: placeholder,
                held: zident_xds::Snapshot::default(),
                ready: false,
            }))
        }
    }
}

/// The agent's metrics registry, its own metrics, and the Workload API's counters.
pub(crate) fn metrics(
    config: &AgentConfig,
    connections: Arc<zident_listen::Connections>,
) -> (Registry, Arc<AgentMetrics>, Arc<Clients>) {
    let mut registry = Registry::default();
    let metrics = Arc::new(AgentMetrics::new(&mut registry));
    if let Some(plane) = &config.data_plane {
        plane.register_metrics(&mut registry);
    }
    let clients = Arc::new(Clients::new(connections));
    registry.register(
        "zident_workload_api_attestations",
        "Workload API callers, by how they were matched to a workload (network_namespace, user, socket) or refused",
        clients.attestations.clone(),
    );
    registry.register(
        "zident_sds_events",
        "Envoy SDS events: secrets pushed, ACKed, NACKed (the client keeps its last accepted), requests refused",
        clients.sds.clone(),
    );
    (registry, metrics, clients)
}

/// The trust store: `CA_ROOT_CA`, and the mesh's extra roots.
pub(crate) fn open_trust(
    config: &AgentConfig,
    td: &TrustDomain,
    extra_roots: &[zident_identity::CertificateDer<'static>],
) -> Result<Arc<TrustStore>, AgentError> {
    let ca_root = std::fs::read(&config.ca.root_ca).map_err(|source| AgentError::CaRootRead {
        path: config.ca.root_ca.clone(),
        source,
    })?;
    let trust = TrustStore::new(td.clone(), &ca_root).map_err(|source| AgentError::CaRoot {
        path: config.ca.root_ca.clone(),
        source,
    })?;
    trust.set_config_roots(extra_roots.to_vec());
    Ok(Arc::new(trust))
}

/// How the agent follows its mesh.
pub(crate) struct Followed {
    /// The mesh file's watcher, kept alive with the agent.
    pub(crate) watcher: Option<notify::RecommendedWatcher>,
    /// The xDS stream's state, when the mesh comes from the control plane.
    pub(crate) xds: Option<Arc<xds::status::XdsStatusCell>>,
}

/// Follows the mesh: edits of the mesh file, or the control plane's stream (from the view
/// held at start, `ready` once one is in force).
pub(crate) fn follow_mesh(
    config: &AgentConfig,
    started_ready: bool,
    held: zident_xds::Snapshot,
    ca: &Arc<CaClient>,
    applier: Arc<MeshApplier>,
    ready: watch::Sender<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Followed, AgentError> {
    match &config.mesh {
        MeshSource::File(path) => {
            let (dir, name) = zident_mesh::watch::dir_and_name(path);
            let (watcher, changes) =
                zident_mesh::watch::watch_dir(&dir, vec![name]).map_err(|source| {
                    AgentError::Watch {
                        path: path.clone(),
                        source,
                    }
                })?;
            let reloader = Reloader {
                path: path.clone(),
                applier,
            };
            tasks.push(tokio::spawn(zident_mesh::watch::reload_on_change(
                changes,
                move || reloader.reload(),
            )));
            Ok(Followed {
                watcher: Some(watcher),
                xds: None,
            })
        }
        MeshSource::ControlPlane { cache } => {
            let status = Arc::new(xds::status::XdsStatusCell::default());
            status.update(|s| {
                s.address = ca.address().to_owned();
                s.view_from = if started_ready { "cache" } else { "none" };
            });
            let client = xds::client::XdsClient {
                ca: ca.clone(),
                applier,
                status: status.clone(),
                cache: cache.clone(),
                ready,
                bounds: config.xds_bounds,
            };
            tasks.push(tokio::spawn(client.run(held)));
            Ok(Followed {
                watcher: None,
                xds: Some(status),
            })
        }
    }
}

/// What the endpoints serve.
pub(crate) struct Served<'a> {
    pub(crate) manager: &'a Arc<CertificateManager>,
    pub(crate) log: Option<Arc<dyn LogControl>>,
    pub(crate) mesh: &'a watch::Receiver<Arc<NodeView>>,
    pub(crate) ready: &'a watch::Receiver<bool>,
    pub(crate) xds: Option<Arc<xds::status::XdsStatusCell>>,
    pub(crate) clients: &'a Arc<Clients>,
    pub(crate) registry: Arc<Registry>,
    /// The node's own identity, for `--metrics-tls`.
    pub(crate) own: Option<SpiffeId>,
    /// The connections every port of the node holds, within one budget.
    pub(crate) connections: Arc<zident_listen::Connections>,
}

/// The bound endpoint addresses.
pub(crate) struct Endpoints {
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) readiness: Option<SocketAddr>,
    pub(crate) metrics: Option<SocketAddr>,
}

/// Binds and serves the admin, readiness and metrics endpoints that are configured.
pub(crate) async fn serve_endpoints(
    config: &AgentConfig,
    served: Served<'_>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Endpoints, AgentError> {
    let bind = |addr: SocketAddr| move |source| AgentError::Bind { addr, source };
    let admin = match config.admin_addr {
        Some(a) => Some(
            serve(
                a,
                admin::admin_router(
                    served.manager.clone(),
                    served.log,
                    config.data_plane.clone(),
                    served.mesh.clone(),
                    served.xds,
                    Some(served.clients.clone()),
                ),
                &served.connections,
                "agent admin",
                tasks,
            )
            .await
            .map_err(bind(a))?,
        ),
        None => None,
    };
    let readiness = match config.readiness_addr {
        Some(a) => Some(
            serve(
                a,
                admin::readiness_router(served.manager.clone(), served.ready.clone()),
                &served.connections,
                "agent readiness",
                tasks,
            )
            .await
            .map_err(bind(a))?,
        ),
        None => None,
    };
    let metrics = match config.metrics_addr {
        Some(a) if config.metrics_tls => {
            let own = served.own.ok_or_else(|| AgentError::NoOwnIdentity {
                node: config.node.clone(),
            })?;
            Some(
                serve_tls(
                    a,
                    admin::metrics_router(served.registry.clone()),
                    served.manager.clone(),
                    own,
                    &served.connections,
                    tasks,
                )
                .await
                .map_err(bind(a))?,
            )
        }
        Some(a) => Some(
            serve(
                a,
                admin::metrics_router(served.registry.clone()),
                &served.connections,
                "agent metrics",
                tasks,
            )
            .await
            .map_err(bind(a))?,
        ),
        None => None,
    };
    Ok(Endpoints {
        admin,
        readiness,
        metrics,
    })
}
