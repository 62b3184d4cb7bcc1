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

use crate::inbound::{Inbound, Serves};
use crate::mesh_view::{LiveView, MeshView};
use crate::observe::Observer;
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
    /// Transparent outbound (connections redirected by iptables/nftables), if any.
    pub outbound_addr: Option<SocketAddr>,
    /// The HBONE port on every workload address (the same on every node).
    pub inbound_port: u16,
    /// One shared HBONE listener for all local workloads instead of one per workload address
    /// (the certificate is chosen by SNI); other nodes reach it when the mesh file gives this
    /// node an `address`.
    pub inbound_addr: Option<SocketAddr>,
}

/// A running tunnel. Dropping it closes every listener and connection.
pub struct RunningTunnel {
    /// The bound SOCKS5 address.
    pub socks5_addr: Option<SocketAddr>,
    /// The bound transparent outbound address.
    pub outbound_addr: Option<SocketAddr>,
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
    observer: Arc<Observer>,
}

impl Shared {
    async fn listen(
        &self,
        addr: SocketAddr,
        serves: Serves,
        set: &mut JoinSet<()>,
    ) -> std::io::Result<(SocketAddr, AbortHandle)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let view = self.view.clone();
        let authorizer = self.authorizer.clone();
        let shared = serves == Serves::BySni;
        let inbound = Arc::new(Inbound::new(
            serves,
            self.current.clone(),
            self.bundle.clone(),
            Arc::new(move |ip| view.get().local_target(ip)),
            Arc::new(move || authorizer.read().unwrap_or_else(|e| e.into_inner()).clone()),
            self.observer.clone(),
        ));
        let handle = set.spawn(inbound.serve(listener));
        tracing::info!(target: "zident::tunnel", addr = %bound, shared, "inbound HBONE listening");
        Ok((bound, handle))
    }
}

/// Starts the tunnel of `node`; its metrics and open connections go to `observer`.
pub async fn start<P: CertificateProvider>(
    config: TunnelConfig,
    node: String,
    provider: Arc<P>,
    current: CurrentCertificate,
    bundle: BundleSource,
    mut mesh: watch::Receiver<Arc<MeshFile>>,
    observer: Arc<Observer>,
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
        observer: observer.clone(),
    });

    let mut tasks = Vec::new();
    let mut set = JoinSet::new();
    let mut listeners: HashMap<IpAddr, (SpiffeId, AbortHandle)> = HashMap::new();
    let mut inbound = Vec::new();
    if let Some(addr) = config.inbound_addr {
        let (bound, _) = shared
            .listen(addr, Serves::BySni, &mut set)
            .await
            .map_err(|e| format!("cannot listen for HBONE on {addr}: {e}"))?;
        inbound.push(bound);
    } else {
        for (ip, id) in view.get().local_hbone() {
            let addr = SocketAddr::new(ip, config.inbound_port);
            let (bound, handle) = shared
                .listen(addr, Serves::Identity(id.clone()), &mut set)
                .await
                .map_err(|e| format!("cannot listen for HBONE on {addr}: {e}"))?;
            inbound.push(bound);
            listeners.insert(ip, (id, handle));
        }
    }

    let outbound = Arc::new(Outbound::new(provider, view.clone(), bundle, observer));
    let socks5_addr = match config.socks5_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for SOCKS5 on {addr}: {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            tasks.push(tokio::spawn(outbound.clone().serve_socks5(listener)));
            tracing::info!(target: "zident::tunnel", addr = %bound, "outbound SOCKS5 listening");
            Some(bound)
        }
        None => None,
    };
    let outbound_addr = match config.outbound_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!("cannot listen for captured outbound traffic on {addr}: {e}")
            })?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            tasks.push(tokio::spawn(outbound.clone().serve_transparent(listener)));
            tracing::info!(target: "zident::tunnel", addr = %bound, "outbound capture listening (SO_ORIGINAL_DST)");
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
            if s.config.inbound_addr.is_some() {
                // The shared listener serves whatever is local now.
                continue;
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
                let addr = SocketAddr::new(ip, s.config.inbound_port);
                match s.listen(addr, Serves::Identity(id.clone()), &mut set).await {
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
        outbound_addr,
        inbound,
        tasks,
    })
}
