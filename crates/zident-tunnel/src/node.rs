//! The tunnel of one node: an inbound HBONE listener on each local HBONE workload address, and
//! the SOCKS5 outbound listener. Routes, policies and listeners follow the mesh file: each
//! accepted edit applies to new connections at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use zident_identity::{CertificateProvider, SpiffeId, WorkloadCertificate};
use zident_mesh::MeshFile;

use crate::inbound::Inbound;
use crate::mesh_view::{LiveView, MeshView};
use crate::outbound::Outbound;
use crate::policy::Authorizer;
use crate::verify::BundleSource;

/// The current certificate of an identity, without waiting (inbound fails closed without one).
pub type CurrentCertificate =
    Arc<dyn Fn(&SpiffeId) -> Option<Arc<WorkloadCertificate>> + Send + Sync>;

/// Where the tunnel listens.
#[derive(Debug, Clone, Copy)]
pub struct TunnelConfig {
    /// SOCKS5 outbound, if any.
    pub socks5_addr: Option<SocketAddr>,
    /// The HBONE port on every workload address (the same on every node).
    pub inbound_port: u16,
}

/// A running tunnel. Dropping it closes every listener and connection.
pub struct RunningTunnel {
    /// The bound SOCKS5 address.
    pub socks5_addr: Option<SocketAddr>,
    /// Inbound listeners bound at start.
    pub inbound: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningTunnel {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    node: String,
    config: TunnelConfig,
    view: Arc<LiveView>,
    authorizer: Arc<RwLock<Arc<Authorizer>>>,
    current: CurrentCertificate,
    bundle: BundleSource,
}

impl Shared {
    async fn listen(
        &self,
        ip: IpAddr,
        id: SpiffeId,
        set: &mut JoinSet<()>,
    ) -> std::io::Result<(SocketAddr, AbortHandle)> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::new(ip, self.config.inbound_port)).await?;
        let bound = listener.local_addr()?;
        let current = self.current.clone();
        let cert_id = id.clone();
        let view = self.view.clone();
        let authorizer = self.authorizer.clone();
        let inbound = Arc::new(Inbound::new(
            id,
            Arc::new(move || current(&cert_id)),
            self.bundle.clone(),
            Arc::new(move |ip| view.get().local_target(ip)),
            Arc::new(move || authorizer.read().unwrap_or_else(|e| e.into_inner()).clone()),
        ));
        let handle = set.spawn(inbound.serve(listener));
        tracing::info!(target: "zident::tunnel", addr = %bound, "inbound HBONE listening");
        Ok((bound, handle))
    }
}

/// Starts the tunnel of `node`.
pub async fn start<P: CertificateProvider>(
    config: TunnelConfig,
    node: String,
    provider: Arc<P>,
    current: CurrentCertificate,
    bundle: BundleSource,
    mut mesh: watch::Receiver<Arc<MeshFile>>,
) -> Result<RunningTunnel, String> {
    let first = mesh.borrow_and_update().clone();
    let view = Arc::new(LiveView(RwLock::new(Arc::new(MeshView::new(
        &first,
        &node,
        config.inbound_port,
    )?))));
    let authorizer = Arc::new(RwLock::new(Arc::new(
        Authorizer::new(&first).map_err(|e| e.to_string())?,
    )));
    let shared = Arc::new(Shared {
        node: node.clone(),
        config,
        view: view.clone(),
        authorizer: authorizer.clone(),
        current,
        bundle: bundle.clone(),
    });

    let mut tasks = Vec::new();
    let mut set = JoinSet::new();
    let mut listeners: HashMap<IpAddr, (SpiffeId, AbortHandle)> = HashMap::new();
    let mut inbound = Vec::new();
    for (ip, id) in view.get().local_hbone() {
        let (bound, handle) = shared.listen(ip, id.clone(), &mut set).await.map_err(|e| {
            format!(
                "cannot listen for HBONE on {ip}:{}: {e}",
                config.inbound_port
            )
        })?;
        inbound.push(bound);
        listeners.insert(ip, (id, handle));
    }

    let socks5_addr = match config.socks5_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for SOCKS5 on {addr}: {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            let outbound = Arc::new(Outbound::new(provider, view.clone(), bundle));
            tasks.push(tokio::spawn(outbound.serve_socks5(listener)));
            tracing::info!(target: "zident::tunnel", addr = %bound, "outbound SOCKS5 listening");
            Some(bound)
        }
        None => None,
    };

    // Follow the mesh: new views and policies for new connections, listeners for new workloads.
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        while mesh.changed().await.is_ok() {
            let next = mesh.borrow_and_update().clone();
            match MeshView::new(&next, &s.node, s.config.inbound_port) {
                Ok(v) => *s.view.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v),
                Err(e) => tracing::error!(target: "zident::tunnel", "keeping the previous routes: {e}"),
            }
            match Authorizer::new(&next) {
                Ok(a) => *s.authorizer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(a),
                Err(e) => tracing::error!(target: "zident::tunnel", "keeping the previous policies: {e}"),
            }
            let wanted: HashMap<IpAddr, SpiffeId> = s.view.get().local_hbone().into_iter().collect();
            listeners.retain(|ip, (id, handle)| {
                let keep = wanted.get(ip) == Some(id);
                if !keep {
                    handle.abort();
                    tracing::info!(target: "zident::tunnel", %ip, "inbound HBONE listener closed");
                }
                keep
            });
            for (ip, id) in wanted {
                if listeners.contains_key(&ip) {
                    continue;
                }
                match s.listen(ip, id.clone(), &mut set).await {
                    Ok((_, handle)) => {
                        listeners.insert(ip, (id, handle));
                    }
                    Err(e) => tracing::error!(target: "zident::tunnel", "cannot listen for HBONE on {ip}:{}: {e}", s.config.inbound_port),
                }
            }
        }
        // The set (and every listener in it) is dropped with this task.
        drop(set);
    }));
    Ok(RunningTunnel {
        socks5_addr,
        inbound,
        tasks,
    })
}
