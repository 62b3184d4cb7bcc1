//! The tunnel of one node: an inbound HBONE listener on each local HBONE workload address, and
//! the SOCKS5 outbound listener. Routes, policies and listeners follow the mesh file: each
//! accepted edit applies to new connections at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use zident_identity::CertificateProvider;
use zident_mesh::NodeView;

use crate::error::TunnelError;
use crate::inbound::{Destinations, Inbound, LocalTarget, Serves};
use crate::mesh_view::{LiveView, MeshView};
use crate::observe::Observer;
use crate::outbound::Outbound;
use crate::policy::Authorizer;

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
    /// Originate outbound tunnels from workload addresses the node does not have, with
    /// `IP_TRANSPARENT` (see [`Outbound::with_transparent_source`]).
    pub transparent_source: bool,
    /// How far in the future a peer certificate's notBefore may be (clock skew between nodes).
    pub skew_tolerance: std::time::Duration,
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

/// The mesh as the node's inbound listeners read it: the live routes and the policies, each
/// replaced whole when an accepted mesh arrives.
struct LiveMesh {
    view: Arc<LiveView>,
    authorizer: RwLock<Arc<Authorizer>>,
}

impl Destinations for LiveMesh {
    fn local_target(&self, ip: IpAddr) -> Option<LocalTarget> {
        self.view.get().local_target(ip)
    }

    fn peer(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.view.get().workload_at(ip)
    }

    fn authorizer(&self) -> Arc<Authorizer> {
        self.authorizer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What every inbound listener of the node is made from.
struct NodeInbound<P> {
    config: TunnelConfig,
    live: Arc<LiveMesh>,
    provider: Arc<P>,
    observer: Arc<Observer>,
    connections: Arc<zident_listen::Connections>,
}

impl<P: CertificateProvider> NodeInbound<P> {
    fn inbound(&self, serves: Serves) -> Arc<Inbound<P, LiveMesh>> {
        Arc::new(
            Inbound::new(
                serves,
                self.provider.clone(),
                self.live.clone(),
                self.observer.clone(),
            )
            .with_skew_tolerance(self.config.skew_tolerance)
            .with_connections(self.connections.clone()),
        )
    }

    /// Binds and serves the shared listener; a failure here stops the start.
    async fn listen_shared(
        &self,
        addr: SocketAddr,
        set: &mut JoinSet<()>,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        set.spawn(self.inbound(Serves::BySni).serve(listener));
        self.observer.listeners().listening(bound);
        tracing::info!(target: "zident::tunnel", addr = %bound, shared = true, "inbound HBONE listening");
        Ok(bound)
    }

    /// A listener on a workload's address, bound as soon as the address can be bound: the
    /// socket of a listener that was just closed may not be released yet, and the address may
    /// not be on the node yet. Tries again with backoff, logging each try, until it binds or
    /// the workload leaves (the task is aborted).
    async fn workload_listener(self: Arc<Self>, ip: IpAddr) {
        let addr = SocketAddr::new(ip, self.config.inbound_port);
        let mut delay = BIND_RETRY_FIRST;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    let attempts = self.observer.listeners().failed(addr, &e);
                    tracing::warn!(target: "zident::tunnel", %addr, attempts, "cannot listen for HBONE on {addr}: {e}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BIND_RETRY_MAX);
                }
            }
        };
        self.observer.listeners().listening(addr);
        tracing::info!(target: "zident::tunnel", %addr, shared = false, "inbound HBONE listening");
        self.inbound(Serves::Address(ip)).serve(listener).await
    }
}

/// The first wait before binding a busy address again, and the longest.
const BIND_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);
const BIND_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The per-workload listeners: one task per local HBONE address. The task owns the socket,
/// so aborting it closes the listener (and the connections it accepted).
struct WorkloadListeners<P> {
    shared: Arc<NodeInbound<P>>,
    tasks: HashMap<IpAddr, AbortHandle>,
    set: JoinSet<()>,
}

impl<P: CertificateProvider> WorkloadListeners<P> {
    /// Serves exactly the local HBONE addresses of the current view. An address whose
    /// workload changed identity keeps its listener: it serves whoever has the address.
    fn follow(&mut self) {
        // Reap the tasks of listeners closed earlier.
        while self.set.try_join_next().is_some() {}
        let wanted: std::collections::HashSet<IpAddr> = self
            .shared
            .live
            .view
            .get()
            .local_hbone()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        let port = self.shared.config.inbound_port;
        self.tasks.retain(|ip, handle| {
            let keep = wanted.contains(ip);
            if !keep {
                handle.abort();
                self.shared
                    .observer
                    .listeners()
                    .removed(SocketAddr::new(*ip, port));
                tracing::info!(target: "zident::tunnel", %ip, "inbound HBONE listener closed");
            }
            keep
        });
        for ip in wanted {
            if !self.tasks.contains_key(&ip) {
                let handle = self.set.spawn(self.shared.clone().workload_listener(ip));
                self.tasks.insert(ip, handle);
            }
        }
    }

    /// Waits until every listener of `ips` is bound (or `timeout` passes), so that `start`
    /// returns with its listeners up; a listener still retrying after that goes on trying.
    async fn settle(&self, timeout: std::time::Duration) -> Vec<SocketAddr> {
        let port = self.shared.config.inbound_port;
        let wanted: Vec<SocketAddr> = self
            .tasks
            .keys()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let table = self.shared.observer.listeners().list();
            let bound: Vec<SocketAddr> = wanted
                .iter()
                .copied()
                .filter(|a| {
                    table.iter().any(|s| {
                        s.addr == *a && s.state == crate::listeners::ListenerPhase::Listening
                    })
                })
                .collect();
            if bound.len() == wanted.len() || tokio::time::Instant::now() >= deadline {
                return bound;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Starts the tunnel of the node `mesh` is the view of; its metrics and open connections go to
/// `observer`. Routes and policies follow `mesh`, the same view the agent's certificates and
/// Workload API follow.
///
/// Certificates and the trust bundle come from `provider` alone, the one seam between identity
/// and the tunnel. Every listener holds its connections in `connections`, the node's one
/// budget (the agent's ports share it), within its limits.
pub async fn start<P: CertificateProvider>(
    config: TunnelConfig,
    provider: Arc<P>,
    mut mesh: watch::Receiver<Arc<NodeView>>,
    observer: Arc<Observer>,
    connections: Arc<zident_listen::Connections>,
) -> Result<RunningTunnel, TunnelError> {
    let first = mesh.borrow_and_update().clone();
    let view = Arc::new(LiveView(RwLock::new(Arc::new(MeshView::new(
        &first,
        config.inbound_port,
    )?))));
    let live = Arc::new(LiveMesh {
        view: view.clone(),
        authorizer: RwLock::new(Arc::new(Authorizer::new(first.mesh()))),
    });
    let shared = Arc::new(NodeInbound {
        config,
        live,
        provider: provider.clone(),
        observer: observer.clone(),
        connections: connections.clone(),
    });

    let mut tasks = Vec::new();
    let mut shared_set = JoinSet::new();
    let mut workloads = WorkloadListeners {
        shared: shared.clone(),
        tasks: HashMap::new(),
        set: JoinSet::new(),
    };
    let mut inbound = Vec::new();
    if let Some(addr) = config.inbound_addr {
        let bound = shared
            .listen_shared(addr, &mut shared_set)
            .await
            .map_err(|source| TunnelError::Listen {
                what: "HBONE",
                addr,
                source,
            })?;
        inbound.push(bound);
    } else {
        workloads.follow();
        inbound = workloads.settle(std::time::Duration::from_secs(2)).await;
    }

    let outbound = Arc::new(
        Outbound::new(provider, view.clone(), observer)
            .with_transparent_source(config.transparent_source)
            .with_skew_tolerance(config.skew_tolerance)
            .with_connections(connections),
    );
    let socks5_addr = match config.socks5_addr {
        Some(addr) => {
            let listen = |source| TunnelError::Listen {
                what: "SOCKS5",
                addr,
                source,
            };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
            let bound = listener.local_addr().map_err(listen)?;
            tasks.push(tokio::spawn(outbound.clone().serve_socks5(listener)));
            tracing::info!(target: "zident::tunnel", addr = %bound, "outbound SOCKS5 listening");
            Some(bound)
        }
        None => None,
    };
    let outbound_addr = match config.outbound_addr {
        Some(addr) => {
            let listen = |source| TunnelError::Listen {
                what: "captured outbound traffic",
                addr,
                source,
            };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
            let bound = listener.local_addr().map_err(listen)?;
            tasks.push(tokio::spawn(outbound.clone().serve_transparent(listener)));
            tracing::info!(target: "zident::tunnel", addr = %bound, "outbound capture listening (SO_ORIGINAL_DST)");
            Some(bound)
        }
        None => None,
    };

    // Follow the mesh: new views and policies for new connections, listeners for new
    // workloads. Every file that reaches here passed the mesh's checks whole, so routes and
    // policies are always built; the errors below would be bugs, and keep the old view.
    tasks.push(tokio::spawn(async move {
        let s = workloads.shared.clone();
        while mesh.changed().await.is_ok() {
            let next = mesh.borrow_and_update().clone();
            match MeshView::new(&next, s.config.inbound_port) {
                Ok(v) => *s.live.view.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v),
                Err(e) => {
                    tracing::error!(target: "zident::tunnel", "keeping the previous routes: {e}")
                }
            }
            *s.live.authorizer.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::new(Authorizer::new(next.mesh()));
            if s.config.inbound_addr.is_none() {
                // (The shared listener serves whatever is local now.)
                workloads.follow();
            }
        }
        // The sets (and every listener in them) are dropped with this task.
        drop(shared_set);
    }));
    Ok(RunningTunnel {
        socks5_addr,
        outbound_addr,
        inbound,
        tasks,
    })
}
