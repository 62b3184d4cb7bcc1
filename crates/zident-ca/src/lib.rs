//! `zident ca`: an Istio-compatible certificate authority for SPIFFE workload identities.
//!
//! It speaks `istio.v1.auth.IstioCertificateService` over TLS 1.3, so istio-agent, ztunnel
//! and zident's own agent can all ask it for certificates. A request is authenticated by its
//! bearer token (from the mesh file), authorized against where the mesh file places
//! workloads, and answered with a chain `[leaf, intermediates…, roots]`.
//!
//! [`RunningCa::start`] brings up the TLS port (gRPC + trust bundle endpoint), the metrics
//! port, and watchers that reload the mesh file and plugged-in keys when they change.

pub mod authority;
pub mod metrics;
mod persist;
pub mod registry;
pub mod server;
pub mod service;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use zident_identity::TrustDomain;
use zident_mesh::{MeshError, MeshFile, watch};

pub use authority::{Authority, AuthorityError, Mode};
pub use registry::{Caller, Denied, Registry};
pub use service::TtlPolicy;
pub use state::CaState;

use crate::server::ServingCert;

/// Everything `zident ca` is configured with.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The mesh file.
    pub mesh_path: PathBuf,
    /// Where the self-signed root lives and `root-cert.pem` is published.
    pub data_dir: PathBuf,
    /// Plugged-in keys (Istio's `cacerts` layout) instead of a self-signed root.
    pub root_ca_dir: Option<PathBuf>,
    /// The TLS (gRPC + bundle) listen address.
    pub listen: SocketAddr,
    /// The Prometheus listen address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Names in the serving certificate.
    pub dns_names: Vec<String>,
    /// Certificate lifetimes.
    pub ttl: TtlPolicy,
    /// `spiffe_refresh_hint` for the bundle endpoint.
    pub refresh_hint: Duration,
}

impl CaConfig {
    /// The defaults of `zident ca` for a mesh file.
    pub fn new(mesh_path: impl Into<PathBuf>) -> Self {
        Self {
            mesh_path: mesh_path.into(),
            data_dir: PathBuf::from(".zident/ca"),
            root_ca_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 15012)),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 15014))),
            dns_names: vec!["localhost".into()],
            ttl: TtlPolicy::default(),
            refresh_hint: Duration::from_secs(300),
        }
    }
}

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
    pub async fn start(config: CaConfig) -> Result<Self, CaError> {
        let mesh = MeshFile::load(&config.mesh_path)?;
        let registry = Registry::from_mesh(&mesh, &config.mesh_path)?;
        let trust_domain = mesh.trust_domain.clone();
        let authority = load_authority(&config, &trust_domain)?;
        let mut metrics_registry = MetricsRegistry::default();
        let metrics = metrics::CaMetrics::new(&mut metrics_registry);
        let serving =
            Arc::new(ServingCert::new(&authority, config.dns_names.clone()).map_err(CaError::Tls)?);
        let state = Arc::new(CaState::new(
            authority,
            registry,
            config.ttl,
            metrics,
            config.refresh_hint,
        ));

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
        let server = tokio::spawn(server::serve(
            listener,
            acceptor,
            server::router(state.clone()),
        ));

        let mut background = Vec::new();
        let metrics_addr = match config.metrics_addr {
            Some(a) => {
                let (bound, task) = serve_metrics(a, Arc::new(metrics_registry)).await?;
                background.push(task);
                Some(bound)
            }
            None => None,
        };
        background.push(tokio::spawn(renew_serving_cert(
            state.clone(),
            serving.clone(),
        )));

        let mut watchers = Vec::new();
        let (mesh_dir, mesh_name) = watch::dir_and_name(&config.mesh_path);
        let (w, changes) =
            watch::watch_dir(&mesh_dir, vec![mesh_name]).map_err(|source| CaError::Watch {
                path: config.mesh_path.clone(),
                source,
            })?;
        watchers.push(w);
        let (s, path) = (state.clone(), config.mesh_path.clone());
        background.push(tokio::spawn(watch::reload_on_change(changes, move || {
            reload_mesh(&s, &path)
        })));
        if let Some(dir) = &config.root_ca_dir {
            let (w, changes) = watch::watch_dir(dir, vec![]).map_err(|source| CaError::Watch {
                path: dir.clone(),
                source,
            })?;
            watchers.push(w);
            let (s, cfg, serving) = (state.clone(), config.clone(), serving.clone());
            background.push(tokio::spawn(watch::reload_on_change(changes, move || {
                reload_plugged_in(&s, &cfg, &serving)
            })));
        }

        tracing::info!(
            target: "zident::ca",
            %addr,
            trust_domain = %trust_domain,
            mode = ?state.authority().mode(),
            "CA serving istio.v1.auth.IstioCertificateService and /bundle over TLS 1.3"
        );
        Ok(Self {
            addr,
            metrics_addr,
            root_cert_path: config.data_dir.join(authority::ROOT_CERT),
            state,
            server,
            background,
            _watchers: watchers,
        })
    }

    /// Waits until the server stops (it only stops on a fatal error or when aborted).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

fn load_authority(config: &CaConfig, td: &TrustDomain) -> Result<Authority, AuthorityError> {
    match &config.root_ca_dir {
        None => Authority::self_signed(&config.data_dir, td),
        Some(dir) => {
            let authority = Authority::plugged_in(dir, td)?;
            authority.publish_root_cert(&config.data_dir)?;
            Ok(authority)
        }
    }
}

fn reload_mesh(state: &CaState, path: &Path) {
    let current_td = state.registry().trust_domain().clone();
    let result = MeshFile::load(path).and_then(|mesh| {
        if mesh.trust_domain != current_td {
            return Err(MeshError::Invalid {
                path: path.to_owned(),
                field: "trustDomain".into(),
                message: format!(
                    "cannot change from {current_td} to {} while running; restart the CA",
                    mesh.trust_domain
                ),
            });
        }
        Registry::from_mesh(&mesh, path).map(|r| (r, mesh))
    });
    match result {
        Ok((registry, mesh)) => {
            state.set_registry(registry);
            state.metrics.reload("mesh", true);
            tracing::info!(
                target: "zident::ca",
                nodes = mesh.nodes.len(),
                identities = mesh.identities.len(),
                workloads = mesh.workloads.len(),
                "mesh file reloaded"
            );
        }
        Err(e) => {
            state.metrics.reload("mesh", false);
            tracing::error!(target: "zident::ca", "mesh file change rejected, keeping the last good configuration: {e}");
        }
    }
}

fn reload_plugged_in(state: &CaState, config: &CaConfig, serving: &ServingCert) {
    let td = state.registry().trust_domain().clone();
    match load_authority(config, &td) {
        Ok(authority) => {
            if let Err(e) = serving.renew(&authority) {
                tracing::error!(target: "zident::ca", "new CA keys cannot sign a serving certificate, keeping the old keys: {e}");
                state.metrics.reload("root_ca_dir", false);
                return;
            }
            state.set_authority(authority);
            state.metrics.reload("root_ca_dir", true);
            tracing::info!(target: "zident::ca", "plugged-in CA files reloaded");
        }
        Err(e) => {
            state.metrics.reload("root_ca_dir", false);
            tracing::error!(target: "zident::ca", "plugged-in CA files rejected, keeping the current keys: {e}");
        }
    }
}

async fn renew_serving_cert(state: Arc<CaState>, serving: Arc<ServingCert>) {
    loop {
        tokio::time::sleep(server::SERVING_CERT_TTL / 2).await;
        match serving.renew(&state.authority()) {
            Ok(()) => tracing::info!(target: "zident::ca", "renewed the CA's serving certificate"),
            Err(e) => {
                tracing::error!(target: "zident::ca", "cannot renew the CA's serving certificate: {e}")
            }
        }
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<MetricsRegistry>,
) -> Result<(SocketAddr, JoinHandle<()>), CaError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| CaError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| CaError::Bind { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response(),
                Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(target: "zident::ca", "metrics server stopped: {e}");
        }
    });
    Ok((bound, task))
}

use axum::response::IntoResponse;
