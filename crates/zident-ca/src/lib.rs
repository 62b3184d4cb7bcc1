//! `zident ca`: an Istio-compatible certificate authority for SPIFFE workload identities.
//!
//! It speaks `istio.v1.auth.IstioCertificateService` over TLS 1.3, so istio-agent, ztunnel
//! and zident's own agent can all ask it for certificates. A request is authenticated by its
//! bearer token (from the mesh file), authorized against where the mesh file places
//! workloads, and answered with a chain `[leaf, intermediates…, roots]`.
//!
//! [`RunningCa::start`] brings up the TLS port (gRPC + trust bundle endpoint), the metrics
//! port, and watchers that reload the mesh file and plugged-in keys when they change.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod authority;
pub mod config;
pub mod connections;
pub mod data_lock;
mod files;
pub mod ledger;
pub mod metrics;
mod persist;
pub mod plugged;
pub mod registry;
pub mod rotation;
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
pub use config::{CaConfig, RotationConfig, TtlPolicy};
pub use registry::{Caller, Denied, Registry};
pub use state::CaState;

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
    pub async fn start(config: CaConfig) -> Result<Self, CaError> {
        let data_dir = data_lock::take(&config.data_dir)?;
        let mesh = MeshFile::load(&config.mesh_path)?;
        let registry = Registry::from_mesh(&mesh, &config.mesh_path)?;
        let trust_domain = mesh.trust_domain.clone();
        let mut authority = load_authority(&config, &trust_domain)?;
        let mut plugged_state = None;
        if config.root_ca_dir.is_some() {
            let ps = plugged::PluggedState::on_start(
                &config.data_dir,
                &authority,
                &config.rotation_timing(),
                std::time::SystemTime::now(),
            )
            .map_err(|message| {
                CaError::Authority(AuthorityError::Invalid {
                    path: config.data_dir.join(plugged::STATE_FILE),
                    message,
                })
            })?;
            authority.set_bundle_sequence(ps.sequence);
            authority.publish_root_cert(&config.data_dir)?;
            plugged_state = Some(std::sync::Mutex::new(ps));
        }
        if config.root_ca_dir.is_none() {
            let state =
                rotation::ensure_state(&config.data_dir, &trust_domain, config.rotation_timing())?;
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
            config.ttl,
            metrics,
            config.refresh_hint,
            ledger,
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
        let connections = connections::Connections::new(config.connections);
        tracing::info!(
            target: "zident::ca",
            max_connections = connections.cap(),
            max_per_source = config.connections.max_per_source,
            idle_timeout_s = config.connections.idle_timeout.as_secs(),
            "connection limits"
        );
        let server = tokio::spawn(server::serve(
            listener,
            acceptor,
            server::router(state.clone()),
            connections,
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
        if config.root_ca_dir.is_none() {
            let (w, changes) =
                watch::watch_dir(&config.data_dir, vec![rotation::STATE_FILE.into()]).map_err(
                    |source| CaError::Watch {
                        path: config.data_dir.join(rotation::STATE_FILE),
                        source,
                    },
                )?;
            watchers.push(w);
            let (s, cfg, sv) = (state.clone(), config.clone(), serving.clone());
            background.push(tokio::spawn(watch::reload_on_change(changes, move || {
                reload_rotation(&s, &cfg, &sv)
            })));
            if config.rotation.auto {
                background.push(tokio::spawn(rotate_on_schedule(
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
                    reload_plugged_in(&s, &cfg, &serving, ps)
                }
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
            _data_dir: data_dir,
        })
    }

    /// Waits until the server stops (it only stops on a fatal error or when aborted).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

fn load_authority(config: &CaConfig, td: &TrustDomain) -> Result<Authority, AuthorityError> {
    match &config.root_ca_dir {
        None => Authority::self_signed(&config.data_dir, td, config.rotation.root_lifetime),
        // Published by the caller once the change is accepted.
        Some(dir) => Authority::plugged_in(dir, td),
    }
}

fn reload_mesh(state: &CaState, path: &Path) {
    let current_td = state.registry().trust_domain().clone();
    let result = MeshFile::load(path).and_then(|mesh| {
        if mesh.trust_domain != current_td {
            return Err(MeshError::Invalid {
                path: path.to_owned(),
                line: None,
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

fn reload_plugged_in(
    state: &CaState,
    config: &CaConfig,
    serving: &ServingCert,
    plugged: &std::sync::Mutex<plugged::PluggedState>,
) {
    let td = state.registry().trust_domain().clone();
    let timing = config.rotation_timing();
    let now = std::time::SystemTime::now();
    let mut known = plugged.lock().unwrap_or_else(|e| e.into_inner());
    let current = state.authority();
    let checked = load_authority(config, &td)
        .map_err(|e| e.to_string())
        .and_then(|next| {
            known
                .check(&current, &next, &timing, &state.ledger.snapshot(), now)
                .map(|()| next)
                .map_err(|e| format!("the change would break handshakes: {e}"))
        });
    match checked {
        Ok(mut authority) => {
            if let Err(e) = serving.renew(&authority) {
                tracing::error!(target: "zident::ca", "new CA keys cannot sign a serving certificate, keeping the old keys: {e}");
                state.metrics.reload("root_ca_dir", false);
                record_refusal(
                    &mut known,
                    config,
                    &format!("the new keys cannot sign the CA's serving certificate: {e}"),
                    now,
                );
                return;
            }
            let next_known = match known.applied(&config.data_dir, &authority, &timing, now) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(target: "zident::ca", "cannot record the plugged-in roots, keeping the current keys: {e}");
                    state.metrics.reload("root_ca_dir", false);
                    return;
                }
            };
            authority.set_bundle_sequence(next_known.sequence);
            if let Err(e) = authority.publish_root_cert(&config.data_dir) {
                tracing::error!(target: "zident::ca", "cannot publish root-cert.pem: {e}");
            }
            let roots = authority.bundle().roots().len();
            state.set_authority(authority);
            *known = next_known;
            state.metrics.reload("root_ca_dir", true);
            tracing::info!(target: "zident::ca", roots, sequence = known.sequence, "plugged-in CA files reloaded");
        }
        Err(e) => {
            state.metrics.reload("root_ca_dir", false);
            tracing::error!(target: "zident::ca", "plugged-in CA files rejected, keeping the current keys: {e}");
            record_refusal(&mut known, config, &e, now);
        }
    }
}

/// Keeps why a change of the plugged-in files was refused in the state file, for `zident ca
/// status`.
fn record_refusal(
    known: &mut plugged::PluggedState,
    config: &CaConfig,
    reason: &str,
    now: std::time::SystemTime,
) {
    match known.refused(&config.data_dir, reason, now) {
        Ok(k) => *known = k,
        Err(e) => {
            tracing::error!(target: "zident::ca", "cannot record the refusal in the plugged-in state: {e}")
        }
    }
}

/// Loads the authority the rotation state now describes, if it differs from the one in use.
fn reload_rotation(state: &CaState, config: &CaConfig, serving: &ServingCert) {
    let td = state.registry().trust_domain().clone();
    let current = state.authority();
    match Authority::self_signed(&config.data_dir, &td, config.rotation.root_lifetime) {
        Ok(authority) => {
            if authority.signer() == current.signer()
                && authority.bundle().roots() == current.bundle().roots()
                && authority.bundle().sequence() == current.bundle().sequence()
            {
                return;
            }
            if let Err(e) = serving.renew(&authority) {
                tracing::error!(target: "zident::ca", "the rotated root cannot sign a serving certificate, keeping the current one: {e}");
                state.metrics.reload("rotation", false);
                return;
            }
            let signer_changed = authority.signer() != current.signer();
            let (roots, sequence) = (
                authority.bundle().roots().len(),
                authority.bundle().sequence(),
            );
            let signer_serial = zident_identity::serial_hex(
                X509Certificate::from_der(authority.signer())
                    .map(|(_, c)| c.raw_serial().to_vec())
                    .unwrap_or_default()
                    .as_slice(),
            );
            state.set_authority(authority);
            state.metrics.reload("rotation", true);
            tracing::info!(
                target: "zident::ca",
                roots,
                sequence,
                signer = %signer_serial,
                signer_changed,
                "root rotation applied: the trust bundle and signing key are now as {} says",
                rotation::STATE_FILE
            );
        }
        Err(e) => {
            state.metrics.reload("rotation", false);
            tracing::error!(target: "zident::ca", "root rotation state rejected, keeping the current keys: {e}");
        }
    }
}

/// Moves the rotation on by itself: prepare once the active root has used its share of life,
/// activate and retire as soon as each is safe.
async fn rotate_on_schedule(state: Arc<CaState>, config: CaConfig, serving: Arc<ServingCert>) {
    let tick = Duration::from_secs(1)
        .max(config.refresh_hint / 10)
        .min(Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        let dir = config.data_dir.clone();
        let now = std::time::SystemTime::now();
        let rs = match rotation::read_state(&dir) {
            Ok(Some(rs)) => rs,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(target: "zident::ca", "cannot read the rotation state: {e}");
                continue;
            }
        };
        let secs = ledger::unix;
        let due = if let Some((phase, _, after)) = rs.next_step() {
            // Activation waits for clients that learn roots only from responses, too.
            let after = match phase {
                rotation::Phase::Activate => state
                    .ledger
                    .read(|issued| rotation::activation_safe_at(&rs, issued, secs(now)))
                    .unwrap_or(after),
                _ => after,
            };
            (secs(now) >= after).then_some(phase)
        } else {
            let (from, to) = state.authority().signer_validity();
            let life = to.duration_since(from).unwrap_or_default();
            let used = now.duration_since(from).unwrap_or_default();
            (used.as_secs_f64() >= life.as_secs_f64() * config.rotation.prepare_at)
                .then_some(rotation::Phase::Prepare)
        };
        let Some(phase) = due else { continue };
        let lifetime = config.rotation.root_lifetime;
        let result =
            tokio::task::spawn_blocking(move || rotation::apply(&dir, phase, now, false, lifetime))
                .await;
        match result {
            Ok(Ok(rs)) => {
                tracing::info!(target: "zident::ca", phase = phase.as_str(), active = rs.active, prepared = ?rs.prepared, previous = ?rs.previous, sequence = rs.sequence, "scheduled root rotation step");
                reload_rotation(&state, &config, &serving);
            }
            Ok(Err(e)) => {
                tracing::error!(target: "zident::ca", phase = phase.as_str(), "scheduled root rotation step failed: {e}")
            }
            Err(e) => {
                tracing::error!(target: "zident::ca", "scheduled root rotation step panicked: {e}")
            }
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
use x509_parser::prelude::{FromDer, X509Certificate};
