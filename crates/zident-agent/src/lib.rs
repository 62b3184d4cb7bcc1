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
mod error;
pub mod http;
mod metrics;
mod reload;
mod startup;
mod unix_users;
pub mod workload_api;
mod workloads;
mod xds;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use zident_mesh::NodeView;

pub use ca::client::{CaError, ConnectionStatus};
pub use ca::endpoints::CaAddressError;
pub use certs::manager::CertificateManager;
pub use certs::worker::{CertState, EventOutcome, IdentityStatus, RenewalEvent};
pub use config::{
    AgentConfig, CaClientConfig, DataPlane, MeshSource as MeshSourceConfig, RenewalPolicy,
    TokenError, TokenSource,
};
pub use error::AgentError;
pub use http::admin::{LogControl, LogFilterError};
pub use unix_users::{UnknownUnixId, group_id};
pub use workloads::MeshRefused;
pub use xds::bounds::XdsBounds;
pub use xds::status::{XdsStatus, XdsStatusCell};

use crate::ca::{bundle_poll, clock, trust};
use crate::metrics::AgentMetrics;

/// A started agent. Dropping it stops everything it started.
pub struct RunningAgent {
    /// The certificates.
    pub manager: Arc<CertificateManager>,
    /// The connections the node's ports hold, within one budget (the tunnel's listeners share
    /// it: `zident_tunnel::start`).
    pub connections: Arc<zident_listen::Connections>,
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
            return Err(AgentError::NoNodeName);
        }
        let start = startup::initial_mesh(&config)?;
        let accepted = start.accepted;
        let view = accepted.view.clone();
        let mesh = view.mesh();
        if start.ready && view.identities().is_empty() {
            tracing::warn!(target: "zident::identity", node = %config.node, "the mesh places no workloads on this node");
        }

        // One connection budget for every listener of the agent and its tunnel.
        let connections = zident_listen::Connections::new("agent", config.listen);
        let (registry, metrics, wapi_clients) = startup::metrics(&config, connections.clone());
        let trust = startup::open_trust(&config, &mesh.trust_domain, view.extra_roots())?;
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
        delivery
            .start_shared()
            .map_err(|source| AgentError::SharedSocket {
                path: config.delivery.shared_socket.clone().unwrap_or_default(),
                source,
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
            // zident's CA serves CRLs beside its bundle (istiod does neither).
            let m = manager.clone();
            tasks.push(tokio::spawn(ca::crl_poll::poll_crl(
                trust.clone(),
                ca.first_address().to_owned(),
                ca.server_name().clone(),
                metrics.clone(),
                Arc::new(move || m.intermediates()),
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
        let followed = startup::follow_mesh(
            &config,
            start.ready,
            start.held,
            &ca,
            applier,
            ready_tx,
            &mut tasks,
        )?;
        let endpoints = startup::serve_endpoints(
            &config,
            startup::Served {
                manager: &manager,
                log,
                mesh: &mesh_rx,
                ready: &ready_rx,
                xds: followed.xds.clone(),
                clients: &wapi_clients,
                registry: Arc::new(registry),
                own: view.own().cloned(),
                connections: connections.clone(),
            },
            &mut tasks,
        )
        .await?;
        Ok(Self {
            connections,
            manager,
            admin_addr: endpoints.admin,
            metrics_addr: endpoints.metrics,
            readiness_addr: endpoints.readiness,
            delivery,
            mesh: mesh_rx,
            tasks,
            xds: followed.xds,
            mesh_ready: ready_rx,
            _watcher: followed.watcher,
        })
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
