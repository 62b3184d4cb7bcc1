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
//!   `node_authorizer` (who may ask for what), `service` (`CreateCertificate`);
//! - `server` (TLS port, serving certificate), `connections` (limits per source), `metrics`;
//! - `xds/`: the mesh pushed to ztunnels and agents over Delta xDS, incrementally;
//! - `reload` (applying outside changes whole or not at all), `data_lock` (one CA per data
//!   dir), `persist` (crash-safe writes).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod cacerts;
mod client_text;
pub mod cluster_state;
mod cluster_view;
mod coalesce;
mod config;
mod data_lock;
pub mod datastore;
pub mod defaults;
pub mod dns_certs;
mod dns_secrets;
mod error;
mod jwt_service;
mod kube_auth;
mod kubernetes;
mod metrics;
mod node_authorizer;
mod persist;
mod reload;
pub mod revocation;
mod roots;
mod rotation_schedule;
mod server;
mod service;
mod startup;
mod state;
pub mod working_copy;
mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::task::JoinHandle;
use zident_mesh::MeshFile;

pub use config::{CaConfig, KubernetesConfig, RotationConfig, TtlPolicy};
pub use data_lock::DataDirError;
pub use error::CaError;
pub use kube_auth::{AUDIENCE as TOKEN_AUDIENCE, KubeAuth, NodeAccount};
pub use kubernetes::KubernetesError;
pub use node_authorizer::{Caller, Denied, NodeAuthorizer, ServiceAccountCaller};
pub use roots::authority::{Authority, AuthorityError, Mode};
pub use roots::{dir_store, generation, ledger, plugged, rotation, store};
pub use state::CaState;
pub use xds::XdsLimits;
pub use zident_listen::ConnectionLimits;

use crate::server::ServingCert;

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
        let cluster = match &config.kubernetes {
            Some(k) => Some(kubernetes::ClusterSource::start(k, &config.mesh_path).await?),
            None => None,
        };
        let mesh = match &cluster {
            Some(c) => c.initial.clone(),
            None => MeshFile::load(&config.mesh_path)?,
        };
        let authorizer = NodeAuthorizer::from_mesh(&mesh, &config.mesh_path)?;
        let trust_domain = mesh.trust_domain.clone();
        // On a cluster, istiod's plugged-in CA (the Secret `cacerts`) is used when it exists,
        // as ROOT_CA_DIR would be.
        let mut plugged_secret = None;
        if let (Some(c), Some(k), None) = (&cluster, &config.kubernetes, &config.root_ca_dir)
            && let Some((dir, files)) =
                cacerts::materialize(c.connection(), &k.namespace, &config.data_dir).await?
        {
            config.root_ca_dir = Some(dir.clone());
            plugged_secret = Some((dir, files, k.namespace.clone(), c.connection().clone()));
        }
        // With its state in the cluster, the roots Secret becomes the data dir's working copy
        // before the roots are loaded from it.
        let in_cluster = match (&cluster, &config.kubernetes, &plugged_secret) {
            (Some(_), Some(k), Some(_)) if k.state.is_some() => {
                tracing::warn!(target: "zident::ca", "the Secret cacerts holds a plugged-in CA: it signs, and --roots-in-cluster keeps no roots of its own");
                None
            }
            (Some(c), Some(k), None) => match &k.state {
                Some(s) => Some((
                    cluster_state::replica::prepare(
                        &config,
                        s,
                        &k.namespace,
                        c.connection(),
                        &trust_domain,
                    )
                    .await?,
                    s.clone(),
                    k.namespace.clone(),
                    c.connection().clone(),
                )),
                None => None,
            },
            _ => None,
        };
        // A replica's data dir is a working copy of its store: commands that would change it
        // alone are refused there (`working_copy`).
        let shared = match (&replica, &in_cluster) {
            (Some(_), _) => Some(working_copy::SharedStore::Datastore),
            (_, Some((_, _, namespace, _))) => {
                Some(working_copy::SharedStore::Kubernetes(namespace.clone()))
            }
            _ => None,
        };
        if let Err(e) = working_copy::set(&config.data_dir, shared.as_ref()) {
            tracing::warn!(target: "zident::ca", "cannot mark the data dir {} as a working copy: {e}", config.data_dir.display());
        }
        let roots = startup::load_roots(&config, &trust_domain)?;
        let mut metrics_registry = MetricsRegistry::default();
        let metrics = metrics::CaMetrics::new(&mut metrics_registry);
        let serving = Arc::new(ServingCert::new(
            &roots.authority,
            config.dns_names.clone(),
        )?);
        let ledger = ledger::Ledger::open(&config.data_dir, std::time::SystemTime::now()).map_err(
            |source| CaError::Ledger {
                path: config.data_dir.clone(),
                source,
            },
        )?;
        let state = Arc::new(CaState::new(
            roots.authority,
            authorizer,
            mesh,
            config.ttl,
            config.jwt_ttl,
            metrics,
            config.refresh_hint,
            ledger,
        ));
        if replica.is_some() || in_cluster.is_some() {
            state.ledger.share();
        }
        if replica.is_some() || in_cluster.is_some() {
            state
                .ledger
                .share_certificates(&config.data_dir, std::time::SystemTime::now());
        }
        if let Some(c) = &cluster {
            state.set_kube_auth(c.kube_auth());
        }
        let mut background = Vec::new();
        let (addr, server) = startup::serve_tls(
            &config,
            &state,
            &serving,
            &mut metrics_registry,
            &mut background,
        )
        .await?;
        let replica_status = replica
            .as_ref()
            .map(|r| r.status.clone())
            .or_else(|| in_cluster.as_ref().map(|(p, ..)| p.status.clone()));
        let cluster_view = cluster.as_ref().map(|c| c.view.clone());
        let metrics_addr = startup::serve_metrics_port(
            &config,
            replica_status,
            cluster_view,
            metrics_registry,
            &mut background,
        )
        .await?;
        // On a cluster, meshConfig's DNS certificates are kept as files in the data dir (unless
        // --dns-cert-dir says where) and as kubernetes.io/tls Secrets.
        if let (Some(c), Some(k)) = (&cluster, &config.kubernetes) {
            let dir = config
                .dns_cert_dir
                .get_or_insert_with(|| config.data_dir.join("dns-certs"))
                .clone();
            background.push(tokio::spawn(dns_secrets::run(
                state.clone(),
                dir,
                config.data_dir.clone(),
                c.connection().clone(),
                k.namespace.clone(),
            )));
        }
        startup::issue_dns_certificates(&config, &state, &mut background);
        background.push(tokio::spawn(revocation::publisher::run(
            state.clone(),
            config.data_dir.clone(),
            config.crl_validity,
        )));
        background.push(tokio::spawn(server::renew_serving_cert(
            state.clone(),
            serving.clone(),
        )));
        let watchers = startup::follow_changes(
            &config,
            &state,
            &serving,
            roots.plugged,
            replica.is_some() || in_cluster.is_some(),
            cluster.as_ref().map(|c| c.file_sink()),
            &mut background,
        )?;
        if let Some(c) = cluster {
            let leading = in_cluster.as_ref().map(|(p, ..)| p.status.leading());
            background.push(c.publish_roots(state.clone(), leading));
            background.push(c.follow(state.clone()));
        }
        if let Some((dir, files, namespace, connection)) = plugged_secret {
            background.push(tokio::spawn(cacerts::follow(
                connection, namespace, dir, files,
            )));
        }
        if let Some((prepared, s, namespace, connection)) = in_cluster {
            background.push(tokio::spawn(cluster_state::replica::run(
                config.clone(),
                s,
                namespace,
                connection,
                prepared,
                datastore::replica::Running {
                    state: state.clone(),
                    serving: serving.clone(),
                },
            )));
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
