//! The steps of [`RunningCa::start`](crate::RunningCa::start), each named and each failing
//! in its own way: the roots, the TLS port, the metrics port, the DNS certificates, and what
//! follows changes made beside the CA.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use zident_identity::TrustDomain;
use zident_mesh::watch;

use crate::cluster_view::ClusterView;
use crate::config::CaConfig;
use crate::datastore::replica::ReplicaStatus;
use crate::error::CaError;
use crate::kubernetes::FileSink;
use crate::roots::authority::Authority;
use crate::roots::dir_store;
use crate::roots::plugged::PluggedState;
use crate::server::ServingCert;
use crate::state::CaState;
use crate::{dns_certs, metrics, reload, rotation_schedule, server, xds};

/// The authority the CA starts with, and (with `ROOT_CA_DIR`) what it knows of the plugged-in
/// roots.
pub(crate) struct Roots {
    pub(crate) authority: Authority,
    pub(crate) plugged: Option<Mutex<PluggedState>>,
}

/// Loads the roots: plugged-in files (with the record of when each root was published), or
/// the self-signed roots of the data dir (resuming a rotation in progress, and giving a data
/// dir from before JWT-SVIDs its JWT keys).
pub(crate) fn load_roots(config: &CaConfig, td: &TrustDomain) -> Result<Roots, CaError> {
    let mut authority = reload::load_authority(config, td)?;
    if config.root_ca_dir.is_some() {
        let plugged = PluggedState::on_start(
            &config.data_dir,
            &authority,
            &config.rotation_timing(),
            std::time::SystemTime::now(),
        )
        .map_err(|e| CaError::Authority(e.into()))?;
        authority.set_bundle_sequence(plugged.sequence);
        authority.publish_root_cert(&config.data_dir)?;
        return Ok(Roots {
            authority,
            plugged: Some(Mutex::new(plugged)),
        });
    }
    let state = dir_store::ensure_state(&config.data_dir, td, config.rotation_timing())?;
    // A data dir from before JWT-SVIDs gets its JWT keys (a replica's copy has them from the
    // database, which bootstrap gave them).
    if dir_store::ensure_jwt_keys(&config.data_dir, &state)? {
        authority = reload::load_authority(config, td)?;
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
    Ok(Roots {
        authority,
        plugged: None,
    })
}

/// Binds the TLS port and serves gRPC (certificates, JWT-SVIDs, xDS) and `/bundle` on it,
/// within the connection limits. Returns the bound address and the server task.
pub(crate) async fn serve_tls(
    config: &CaConfig,
    state: &Arc<CaState>,
    serving: &Arc<ServingCert>,
    metrics_registry: &mut MetricsRegistry,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<(SocketAddr, JoinHandle<()>), CaError> {
    let bind = |source| CaError::Bind {
        addr: config.listen,
        source,
    };
    let listener = TcpListener::bind(config.listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let tls = server::tls_config(serving.clone())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let connections = zident_listen::Connections::new("CA", config.connections);
    tracing::info!(
        target: "zident::ca",
        max_connections = connections.cap(),
        max_per_source = config.connections.max_per_source,
        idle_timeout_s = config.connections.idle_timeout.as_secs(),
        "connection limits"
    );
    let xds_metrics = Arc::new(xds::XdsMetrics::new(metrics_registry));
    let (generations, follow) = xds::follow_mesh(state);
    background.push(follow);
    let server = tokio::spawn(server::serve(
        listener,
        acceptor,
        server::router(
            state.clone(),
            xds::XdsService::new(
                state.clone(),
                generations,
                xds_metrics,
                xds::StreamCaps::new(config.xds),
            ),
        ),
        connections,
    ));
    Ok((addr, server))
}

/// Serves `/metrics` and `/ready` (not ready while a replica's database is away; ready with a
/// note while the Kubernetes view is stale), and `/debug/kubernetes` with a cluster source, if
/// a metrics address is configured.
pub(crate) async fn serve_metrics_port(
    config: &CaConfig,
    replica: Option<Arc<ReplicaStatus>>,
    cluster: Option<Arc<Mutex<ClusterView>>>,
    registry: MetricsRegistry,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<Option<SocketAddr>, CaError> {
    let Some(addr) = config.metrics_addr else {
        return Ok(None);
    };
    let view = cluster.clone();
    let ready: metrics::Readiness = Arc::new(move || {
        if let Some(status) = &replica {
            status.ready()?;
        }
        Ok(view
            .as_ref()
            .and_then(|v| v.lock().unwrap_or_else(|e| e.into_inner()).stale_note()))
    });
    let (bound, task) =
        metrics::serve_metrics(addr, Arc::new(registry), ready, cluster, config.connections)
            .await
            .map_err(|source| CaError::Bind { addr, source })?;
    background.push(task);
    Ok(Some(bound))
}

/// Keeps the mesh's `certificates:` issued into `--dns-cert-dir`; says so when the mesh lists
/// some and no directory is set.
pub(crate) fn issue_dns_certificates(
    config: &CaConfig,
    state: &Arc<CaState>,
    background: &mut Vec<JoinHandle<()>>,
) {
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
}

/// Follows changes made beside the CA: edits of the mesh file, the rotation state (and the
/// rotation's own schedule), and plugged-in files. A replica on a datastore writes its working
/// copy itself and reloads it as it does, so it watches neither (each change would apply
/// twice), and its leader takes the scheduled steps.
pub(crate) fn follow_changes(
    config: &CaConfig,
    state: &Arc<CaState>,
    serving: &Arc<ServingCert>,
    plugged: Option<Mutex<PluggedState>>,
    replica: bool,
    cluster_file: Option<FileSink>,
    background: &mut Vec<JoinHandle<()>>,
) -> Result<Vec<notify::RecommendedWatcher>, CaError> {
    let mut watchers = Vec::new();
    let read_file = config.kubernetes.as_ref().is_none_or(|k| k.with_mesh_file);
    if !replica && read_file {
        let (mesh_dir, mesh_name) = watch::dir_and_name(&config.mesh_path);
        let (w, changes) =
            watch::watch_dir(&mesh_dir, vec![mesh_name]).map_err(|source| CaError::Watch {
                path: config.mesh_path.clone(),
                source,
            })?;
        watchers.push(w);
        let (s, path) = (state.clone(), config.mesh_path.clone());
        background.push(tokio::spawn(watch::reload_on_change(
            changes,
            move || match &cluster_file {
                Some(sink) => reload::reload_mesh_beside_cluster(&s, &path, sink),
                None => reload::reload_mesh(&s, &path),
            },
        )));
    }
    if config.root_ca_dir.is_none() && !replica {
        let state_file = config.data_dir.join(dir_store::STATE_FILE);
        let (w, changes) = watch::watch_dir(&config.data_dir, vec![dir_store::STATE_FILE.into()])
            .map_err(|source| CaError::Watch {
            path: state_file,
            source,
        })?;
        watchers.push(w);
        let (s, cfg, sv) = (state.clone(), config.clone(), serving.clone());
        background.push(tokio::spawn(watch::reload_on_change(changes, move || {
            reload::reload_rotation(&s, &cfg, &sv)
        })));
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
        background.push(tokio::spawn(watch::reload_on_change(changes, move || {
            if let Some(ps) = &plugged {
                reload::reload_plugged_in(&s, &cfg, &serving, ps)
            }
        })));
    }
    Ok(watchers)
}
