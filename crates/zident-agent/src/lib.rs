//! `zident agent`: the node agent.
//!
//! It keeps a valid SPIFFE certificate for every identity running on its node: fetched from
//! the CA when the first workload with that identity appears, renewed at half its lifetime,
//! kept in use through CA outages until it expires, and forgotten when the last workload with
//! it leaves. Every response from the CA is checked before use. Admin, readiness and metrics
//! endpoints show what it is doing.
//!
//! The tunnel gets certificates and the trust bundle only through [`CertificateProvider`],
//! which [`CertificateManager`] implements. (The Workload API still takes the manager: it
//! streams every status change, which the seam does not carry yet.)
//!
//! [`CertificateProvider`]: zident_identity::CertificateProvider

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
mod bundle_poll;
pub mod ca_client;
pub mod ca_tls;
pub mod clock;
pub mod config;
pub mod gate;
mod json;
pub mod manager;
pub mod metrics;
mod own_tls;
pub mod schedule;
mod signing_root;
pub mod trust;
pub mod uds_h2;
pub mod validate;
pub mod worker;
pub mod workload_api;
pub mod workloads;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use zident_identity::TrustDomain;
use zident_mesh::{MeshFile, watch};

pub use admin::LogControl;
pub use config::{AgentConfig, CaClientConfig, DataPlane, RotationPolicy, TokenSource};
pub use manager::CertificateManager;
pub use worker::{CertState, IdentityStatus};

use crate::metrics::{AgentMetrics, OutcomeLabel};
use crate::workloads::local_view;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The mesh file is unusable.
    #[error(transparent)]
    Mesh(#[from] zident_mesh::MeshError),
    /// Something in the configuration is wrong; the message says what.
    #[error("{0}")]
    Config(String),
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
    pub delivery: Arc<workload_api::Delivery>,
    /// The mesh file in force: the one loaded at start, then each edit that was accepted.
    pub mesh: tokio::sync::watch::Receiver<Arc<MeshFile>>,
    tasks: Vec<JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
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
        let mesh = MeshFile::load(&config.mesh_path)?;
        if let Some(td) = &config.trust_domain
            && td != mesh.trust_domain.as_str()
        {
            return Err(AgentError::Config(format!(
                "TRUST_DOMAIN is {td} but the mesh file {} says {}",
                config.mesh_path.display(),
                mesh.trust_domain
            )));
        }
        if config.node.is_empty() {
            return Err(AgentError::Config("NODE_NAME (--node) is required".into()));
        }
        if !mesh.names_node(&config.node) {
            return Err(AgentError::Config(not_named(
                &config.mesh_path,
                &config.node,
            )));
        }
        let view = local_view(&mesh, &config.node).map_err(|e| {
            AgentError::Config(format!("mesh file {}: {e}", config.mesh_path.display()))
        })?;
        if view.identities.is_empty() {
            tracing::warn!(target: "zident::identity", node = %config.node, "the mesh file places no workloads on this node");
        }

        let mut registry = Registry::default();
        let metrics = Arc::new(AgentMetrics::new(&mut registry));
        if let Some(plane) = &config.data_plane {
            plane.register_metrics(&mut registry);
        }
        let registry = Arc::new(registry);

        let ca_root = std::fs::read(&config.ca.root_ca).map_err(|e| {
            AgentError::Config(format!(
                "cannot read CA_ROOT_CA {}: {e}",
                config.ca.root_ca.display()
            ))
        })?;
        let trust = Arc::new(
            trust::TrustStore::new(mesh.trust_domain.clone(), &ca_root)
                .map_err(AgentError::Config)?,
        );
        trust.set_config_roots(view.extra_roots.clone());
        let ca = Arc::new(
            ca_client::CaClient::new(&config.ca, trust.clone())
                .map_err(AgentError::Config)?
                .with_skew_threshold(clock::threshold_for(config.secret_ttl)),
        );
        let manager = Arc::new(CertificateManager::new(
            ca.clone(),
            trust.clone(),
            config.secret_ttl,
            config.rotation,
            config.concurrency,
            metrics.clone(),
            view.own.clone(),
        ));
        manager.set_identities(&view.identity_set());
        let delivery = Arc::new(workload_api::Delivery::new(
            config.delivery.clone(),
            manager.clone(),
            trust.clone(),
        ));
        delivery.sync(&view.workloads);
        tracing::info!(
            target: "zident::identity",
            node = %config.node,
            identities = view.identities.len(),
            ca = %ca.address(),
            "agent started"
        );

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(track_bundle(trust.clone(), metrics.clone())));
        tasks.push(tokio::spawn(ca.clone().watch_reachability()));
        if config.ca.poll_bundle {
            let host = ca
                .address()
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                .unwrap_or_default();
            tasks.push(tokio::spawn(bundle_poll::poll_bundle(
                trust.clone(),
                ca.address().to_owned(),
                host,
            )));
        }

        let (mesh_tx, mesh_rx) = tokio::sync::watch::channel(Arc::new(mesh.clone()));
        let (dir, name) = watch::dir_and_name(&config.mesh_path);
        let (watcher, changes) = watch::watch_dir(&dir, vec![name]).map_err(|e| {
            AgentError::Config(format!("cannot watch {}: {e}", config.mesh_path.display()))
        })?;
        let reloader = Reloader {
            path: config.mesh_path.clone(),
            node: config.node.clone(),
            trust_domain: mesh.trust_domain.clone(),
            manager: manager.clone(),
            trust: trust.clone(),
            metrics: metrics.clone(),
            delivery: delivery.clone(),
            mesh: mesh_tx,
        };
        tasks.push(tokio::spawn(watch::reload_on_change(changes, move || {
            reloader.reload()
        })));

        let admin_addr = match config.admin_addr {
            Some(a) => Some(
                serve(
                    a,
                    admin::admin_router(manager.clone(), log, config.data_plane.clone()),
                    &mut tasks,
                )
                .await?,
            ),
            None => None,
        };
        let readiness_addr = match config.readiness_addr {
            Some(a) => Some(serve(a, admin::readiness_router(manager.clone()), &mut tasks).await?),
            None => None,
        };
        let metrics_addr = match config.metrics_addr {
            Some(a) if config.metrics_tls => {
                let own = view.own.clone().ok_or_else(|| {
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
                    .await?,
                )
            }
            Some(a) => Some(serve(a, admin::metrics_router(registry.clone()), &mut tasks).await?),
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
            _watcher: watcher,
        })
    }
}

/// Applies an edited mesh file, or keeps the last good one.
struct Reloader {
    path: std::path::PathBuf,
    node: String,
    trust_domain: TrustDomain,
    manager: Arc<CertificateManager>,
    trust: Arc<trust::TrustStore>,
    metrics: Arc<AgentMetrics>,
    delivery: Arc<workload_api::Delivery>,
    mesh: tokio::sync::watch::Sender<Arc<MeshFile>>,
}

impl Reloader {
    fn reload(&self) {
        let path = &self.path;
        let result = MeshFile::load(path)
            .map_err(|e| e.to_string())
            .and_then(|mesh| {
                if mesh.trust_domain != self.trust_domain {
                    return Err(format!(
                        "mesh file {}: trustDomain cannot change from {} to {} while running; restart the agent",
                        path.display(),
                        self.trust_domain,
                        mesh.trust_domain
                    ));
                }
                if !mesh.names_node(&self.node) {
                    return Err(not_named(path, &self.node));
                }
                let view = local_view(&mesh, &self.node)
                    .map_err(|e| format!("mesh file {}: {e}", path.display()))?;
                Ok((mesh, view))
            });
        match result {
            Ok((mesh, view)) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&OutcomeLabel { outcome: "applied" })
                    .inc();
                tracing::info!(target: "zident::identity", identities = view.identities.len(), "mesh file reloaded");
                self.trust.set_config_roots(view.extra_roots.clone());
                self.manager.set_identities(&view.identity_set());
                self.delivery.sync(&view.workloads);
                self.mesh.send_replace(Arc::new(mesh));
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&OutcomeLabel {
                        outcome: "rejected",
                    })
                    .inc();
                tracing::error!(target: "zident::identity", "mesh file change rejected, keeping the last good configuration: {e}");
            }
        }
    }
}

/// Why a mesh file that does not name this agent's node is refused.
fn not_named(path: &std::path::Path, node: &str) -> String {
    format!(
        "mesh file {}: nodes: the file does not name this agent's node {node:?} (no `nodes:` entry          and no workload with `node: {node}`); applying it would remove every workload of this          node. Check NODE_NAME, or restore the node's entries (to take a node out of the mesh,          stop its agent)",
        path.display()
    )
}

/// Keeps the trust bundle metrics in step with the store.
async fn track_bundle(trust: Arc<trust::TrustStore>, metrics: Arc<AgentMetrics>) {
    let mut rx = trust.subscribe();
    metrics.set_bundle(&rx.borrow_and_update().clone());
    // Only changes after the start count, as the trust store's own count does.
    while rx.changed().await.is_ok() {
        let bundle = rx.borrow_and_update().clone();
        metrics.set_bundle(&bundle);
        metrics.bundle_changes.inc();
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AgentError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AgentError::Bind { addr, source })?;
    Ok((listener, bound))
}

async fn serve(
    addr: SocketAddr,
    router: axum::Router,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr, AgentError> {
    let (listener, bound) = bind(addr).await?;
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("HTTP server on {bound} stopped: {e}");
        }
    }));
    Ok(bound)
}

async fn serve_tls(
    addr: SocketAddr,
    router: axum::Router,
    manager: Arc<CertificateManager>,
    own: zident_identity::SpiffeId,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<SocketAddr, AgentError> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;

    let (listener, bound) = bind(addr).await?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(own_tls::OwnCertResolver::new(manager, own)));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tasks.push(tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let (acceptor, router) = (acceptor.clone(), router.clone());
                    connections.spawn(async move {
                        let Ok(Ok(tls)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await else { return };
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }));
    Ok(bound)
}
