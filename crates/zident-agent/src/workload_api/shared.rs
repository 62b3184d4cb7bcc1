//! One Workload API socket for every workload of the node (`--workload-api-socket`), open to
//! any local user (0666, or 0660 with a group). Each connection is attested when it is
//! accepted (`attest.rs`) and served as that workload alone; a caller that matches no
//! workload gets `PermissionDenied` with the reason on every call. When the mesh changes,
//! every open connection is attested again: one whose answer changed is closed (its streams
//! end), and its next call, on a new connection, is answered for what it is now.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use zident_identity::{CertificateProvider, SpiffeId};
use zident_listen::{AcceptErrors, Busy, Closing, Connections, LogGate, Slot, Source};
use zident_proto::sds::secret_discovery_service_server::SecretDiscoveryServiceServer;
use zident_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;

use super::attest::{AttestRefused, Attested, Method, Peer, attest};
use super::service::WorkloadApiService;
use crate::workloads::LocalWorkload;

/// Label of `zident_workload_api_attestations`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestationLabel {
    /// `network_namespace`, `user`, `socket` or `refused`.
    pub outcome: &'static str,
}

/// A connected Workload API client, as `/debug/connections` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Client {
    /// Its process id.
    pub pid: i32,
    /// Its user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The socket it came in on.
    pub socket: String,
    /// The identity it is served as, if any.
    pub identity: Option<String>,
    /// How it was matched (`network_namespace`, `user`, `socket`), or `refused`.
    pub method: &'static str,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Connected since (RFC 3339).
    pub since: String,
}

struct Entry {
    client: Client,
    peer: Peer,
    stop: watch::Sender<bool>,
}

/// What the shared socket and the per-workload sockets share: the workloads in force, the
/// clients connected, the attestation counts, and the agent's connection limits (a Unix
/// socket's source is its caller's user).
pub struct Clients {
    workloads: RwLock<Vec<LocalWorkload>>,
    connections: Arc<Connections>,
    /// Refusals a local user can cause, said once per user per interval.
    logged: LogGate,
    entries: Mutex<std::collections::BTreeMap<u64, Entry>>,
    next: AtomicU64,
    /// Attestations by outcome.
    pub attestations: Family<AttestationLabel, Counter>,
    /// SDS pushes, ACKs, NACKs and refusals.
    pub sds: super::sds::SdsEvents,
}

impl Clients {
    /// No clients yet; connections are admitted to `connections` (the agent's one budget).
    pub fn new(connections: Arc<Connections>) -> Self {
        Self {
            workloads: RwLock::default(),
            connections,
            logged: LogGate::new(),
            entries: Mutex::default(),
            next: AtomicU64::new(0),
            attestations: Family::default(),
            sds: Default::default(),
        }
    }

    /// Replaces the workloads in force and attests every shared-socket client again, closing
    /// those whose answer changed.
    pub(crate) fn set_workloads(&self, workloads: &[LocalWorkload]) {
        *self.workloads.write().unwrap_or_else(|e| e.into_inner()) = workloads.to_vec();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries.values() {
            if e.client.method == Method::Socket.label() {
                continue;
            }
            let now = attest(e.peer, workloads).ok().map(|(id, _)| id.to_string());
            if now != e.client.identity {
                tracing::info!(target: "zident::identity", pid = e.peer.pid, before = ?e.client.identity, now = ?now, "a Workload API client's identity changed with the mesh: closing its connection");
                let _ = e.stop.send(true);
            }
        }
    }

    /// Attests `peer` against the workloads in force, and counts the outcome.
    pub(crate) fn attest(&self, peer: Peer) -> Attested {
        let result = attest(
            peer,
            &self.workloads.read().unwrap_or_else(|e| e.into_inner()),
        );
        let outcome = match &result {
            Ok((_, m)) => m.label(),
            Err(_) => "refused",
        };
        self.attestations
            .get_or_create(&AttestationLabel { outcome })
            .inc();
        result
    }

    /// Counts a caller let in, or turned away, by a workload's own socket.
    pub(crate) fn count(&self, outcome: &'static str) {
        self.attestations
            .get_or_create(&AttestationLabel { outcome })
            .inc();
    }

    /// Registers a client; it is listed until the returned guard drops.
    pub(crate) fn enter(
        self: &Arc<Self>,
        peer: Peer,
        socket: String,
        attested: &Attested,
        stop: watch::Sender<bool>,
    ) -> Listed {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let client = Client {
            pid: peer.pid,
            uid: peer.uid,
            gid: peer.gid,
            socket,
            identity: attested.as_ref().ok().map(|(id, _)| id.to_string()),
            method: match attested {
                Ok((_, m)) => m.label(),
                Err(_) => "refused",
            },
            refused: attested.as_ref().err().map(|e| e.to_string()),
            since: zident_identity::rfc3339(SystemTime::now()),
        };
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Entry { client, peer, stop });
        Listed {
            clients: self.clone(),
            key,
        }
    }

    /// The clients connected now.
    pub fn list(&self) -> Vec<Client> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.client.clone())
            .collect()
    }
}

/// A listed client; dropping it removes the entry.
pub(crate) struct Listed {
    clients: Arc<Clients>,
    key: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.clients
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The kernel's credentials of a Unix-socket peer.
pub(crate) fn peer_of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    Ok(Peer {
        pid: cred.pid().unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// A receiver that turns true once either `a` or `b` does.
fn either(mut a: watch::Receiver<bool>, mut b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*a.borrow() || *b.borrow());
    tokio::spawn(async move {
        tokio::select! {
            _ = async { let _ = a.wait_for(|s| *s).await; } => {}
            _ = async { let _ = b.wait_for(|s| *s).await; } => {}
            _ = tx.closed() => return,
        }
        let _ = tx.send(true);
    });
    rx
}

/// Serves one connection as `identity` until it ends, or until `stop` turns true (this
/// caller's answer changed, the workload left, the agent stops: its streams end cleanly and
/// the connection closes gracefully), or its `slot` in the agent's connection table says to
/// close it.
pub(crate) async fn serve_connection<P: CertificateProvider>(
    stream: tokio::net::UnixStream,
    socket: String,
    identity: Result<SpiffeId, AttestRefused>,
    provider: Arc<P>,
    sds_events: super::sds::SdsEvents,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) {
    let sds = SecretDiscoveryServiceServer::new(super::sds::SdsService::new(
        identity.clone(),
        provider.clone(),
        stop.clone(),
        sds_events,
    ));
    let service = WorkloadApiService::for_caller(identity, provider, stop.clone());
    // Both APIs on every socket: a SPIFFE library and an Envoy each find theirs.
    let routes =
        tonic::service::Routes::new(SpiffeWorkloadApiServer::new(service)).add_service(sds);
    // Each call holds its connection busy until its answer ends (a stream of SVIDs lasts as
    // long as the client listens), so only a connection with no call open is idle.
    let tracker = slot.tracker();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let busy = tracker.busy();
        let call = tower::ServiceExt::oneshot(routes.clone(), req);
        async move {
            let response = call.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| HeldBody { body, _busy: busy }))
        }
    });
    let (io, mut relay) = super::uds_h2::relay(stream, socket);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http2_only();
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, conn).await;
        }
        closing = slot.closing() => {
            if closing == Closing::Evicted {
                // Its descriptor is needed now: the client's socket closes with the relay.
                relay.abort();
                return;
            }
            tracing::debug!(target: "zident::identity", "closing an idle Workload API connection");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, conn).await;
        }
    }
    // The relay passes on what tonic wrote last (a GOAWAY), then ends with the client; a
    // client that keeps its end open past that is closed.
    if tokio::time::timeout(RELAY_FLUSH, &mut relay).await.is_err() {
        relay.abort();
    }
}

/// How long a connection being closed may finish its calls.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the relay may take to pass on the last frames once the server side has ended.
const RELAY_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// A call's answer, holding its connection busy until the last frame is sent.
struct HeldBody<B> {
    body: B,
    _busy: Busy,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for HeldBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Accepts on `listener` (shown as `shown`) for as long as the task runs: reads each caller's
/// credentials, asks `decide` who it is, lists it, and serves it as that. The shared socket
/// decides by attestation; a workload's own socket by its declared user.
pub(crate) async fn accept<P: CertificateProvider>(
    listener: tokio::net::UnixListener,
    shown: String,
    clients: Arc<Clients>,
    provider: Arc<P>,
    mut stop: watch::Receiver<bool>,
    decide: impl Fn(Peer) -> Attested,
) {
    // Failed accepts (out of descriptors, usually) back off and are said once per interval.
    let mut errors = AcceptErrors::new("agent Workload API");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                errors.failed(&e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = match peer_of(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(target: "zident::identity", socket = %shown, "cannot read a Workload API caller's credentials, refusing it: {e}");
                continue;
            }
        };
        // Within the agent's connection budget, counted per user: one local user cannot hold
        // every descriptor (the longest-idle connection makes room; refused when all are busy).
        let Some(slot) = clients.connections.admit(Source::User(peer.uid)) else {
            continue;
        };
        let attested = decide(peer);
        match &attested {
            Ok((id, how)) => {
                tracing::debug!(target: "zident::identity", socket = %shown, pid = peer.pid, uid = peer.uid, identity = %id, method = how.label(), "Workload API caller attested")
            }
            Err(why) => {
                // A user that connects in a loop costs a line per interval, not per connection
                // (the attestation counter counts each).
                if let Some(held_back) = clients.logged.allow(Source::User(peer.uid), "refused") {
                    tracing::warn!(target: "zident::identity", socket = %shown, pid = peer.pid, uid = peer.uid, held_back, "Workload API caller refused: {why}")
                }
            }
        }
        let (conn_stop, conn_stop_rx) = watch::channel(false);
        let listed = clients.enter(peer, shown.clone(), &attested, conn_stop);
        let (provider, socket, agent_stop) = (provider.clone(), shown.clone(), stop.clone());
        let sds_events = clients.sds.clone();
        tokio::spawn(async move {
            let _listed = listed;
            let identity = attested.map(|(id, _)| id);
            serve_connection(
                stream,
                socket,
                identity,
                provider,
                sds_events,
                either(conn_stop_rx, agent_stop),
                slot,
            )
            .await;
        });
    }
}

/// The shared socket: every caller attested against the workloads in force.
pub(crate) async fn run<P: CertificateProvider>(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    clients: Arc<Clients>,
    provider: Arc<P>,
    stop: watch::Receiver<bool>,
) {
    let decide = {
        let clients = clients.clone();
        move |peer| clients.attest(peer)
    };
    accept(
        listener,
        path.display().to_string(),
        clients,
        provider,
        stop,
        decide,
    )
    .await;
}
