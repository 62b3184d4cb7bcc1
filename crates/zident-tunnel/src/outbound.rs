//! Outbound: a local workload's connection leaves the node through an HBONE tunnel.
//!
//! A SOCKS5 listener takes the connection; the source workload is the one whose address it
//! came from (an unknown source is refused). The destination is resolved to the address to
//! dial, the identities its server may present, and whether it speaks HBONE at all. The tunnel
//! presents the source's current SVID, checks the server's SPIFFE ID is an expected one, and
//! sends `CONNECT ip:port`. HTTP/2 connections are pooled per (source certificate, HBONE
//! address, expected identities), so many tunnels share one TLS connection; a rotation of the
//! source certificate starts a new pooled connection, and open tunnels keep theirs.
//!
//! Transparent capture takes connections that iptables/nftables redirected to the outbound
//! port (`REDIRECT` to 15001): the destination is the connection's `SO_ORIGINAL_DST`, and the
//! client sees the tunnel as if it had reached the destination directly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use zident_identity::{CertificateProvider, SpiffeId, WorkloadCertificate};
use zident_listen::{Connections, Slot};

use crate::headers::{self, TraceParent};
use crate::observe::{Direction, Observer, OpenTunnel, Reason, peer_refusal, tls_failure};
use crate::pump::{copy_plain, keepalive, pump};
use crate::read_ahead::ReadAhead;
use crate::sizes::window;
use crate::socks5::{self, Reply, Target};
use crate::verify::{BundleSource, RevocationSource, SpiffeServerVerifier, is_revoked, provider};

const HANDSHAKE_TIMEOUT: Duration = zident_listen::HANDSHAKE_TIMEOUT;
const CERTIFICATE_WAIT: Duration = Duration::from_secs(5);

/// How to reach a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The workload address and port (service ports already mapped).
    pub target: SocketAddr,
    /// `Some(addr)`: tunnel through HBONE at `addr` (the destination's `ip:15008`); `None`:
    /// plain TCP (the destination's protocol is TCP).
    pub hbone: Option<SocketAddr>,
    /// The identities the destination may present.
    pub expected: Vec<SpiffeId>,
}

/// Why there is no route to a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// Neither a workload address nor a service VIP or host name.
    #[error("is not a known workload or service")]
    Unknown,
    /// A service none of whose backends is healthy.
    #[error("is service {0}, which has no healthy backend")]
    NoHealthyBackend(String),
}

/// The local workload an outbound connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its identity: the certificate the tunnel presents.
    pub id: SpiffeId,
    /// `namespace/name`, for logs.
    pub label: Arc<str>,
    /// The `baggage` header its tunnels carry.
    pub baggage: Arc<str>,
}

impl Source {
    /// A source known only by its identity (no telemetry attributes).
    pub fn of(id: SpiffeId) -> Self {
        Self {
            label: Arc::from(id.as_str()),
            baggage: Arc::from(""),
            id,
        }
    }
}

/// Decides sources and routes from the mesh.
pub trait Directory: Send + Sync + 'static {
    /// The local workload at `ip`, if there is one.
    fn source(&self, ip: IpAddr) -> Option<Source>;
    /// How to reach `target`.
    fn route(&self, target: &Target) -> Result<Route, NoRoute>;
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct PoolKey {
    source: SpiffeId,
    /// The address connections are made from (the workload's own, where it can be bound), so
    /// that two workloads of one identity do not share a connection, as in ztunnel.
    origin: IpAddr,
    serial: String,
    hbone: SocketAddr,
    /// The workload named in SNI when `hbone` is a node's shared address.
    sni: Option<IpAddr>,
    expected: Vec<SpiffeId>,
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct ConfigKey {
    source: SpiffeId,
    serial: String,
    expected: Vec<SpiffeId>,
}

/// The client side of an outbound connection: SOCKS5 answers with a reply code; a captured
/// connection has no protocol of its own, so success is silence and refusal is a close.
struct Front {
    stream: TcpStream,
    peer: SocketAddr,
    socks: bool,
}

impl Front {
    async fn answer(&mut self, code: Reply) -> std::io::Result<()> {
        if self.socks {
            socks5::reply(&mut self.stream, code).await
        } else {
            Ok(())
        }
    }
}

/// A pooled HTTP/2 connection: its request handle, and whether it has ended.
#[derive(Clone)]
struct Pooled {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// A refusal: why, what the client is told, and what the log says.
struct Refusal {
    reason: Reason,
    reply: Reply,
    detail: String,
}

impl Refusal {
    fn new(reason: Reason, reply: Reply, detail: impl Into<String>) -> Self {
        Self {
            reason,
            reply,
            detail: detail.into(),
        }
    }
}

/// The outbound side of the tunnel.
pub struct Outbound<P, D> {
    /// Whether to originate from a workload address the node does not have (IP_TRANSPARENT).
    transparent_source: bool,
    /// How far in the future a server certificate's notBefore may be (clock skew).
    skew_tolerance: Duration,
    certificates: Arc<P>,
    directory: Arc<D>,
    bundle: BundleSource,
    /// The CRLs in force: a revoked server is refused, and a pooled connection to one closed.
    revocations: RevocationSource,
    observer: Arc<Observer>,
    pool: Mutex<HashMap<PoolKey, Pooled>>,
    configs: Mutex<HashMap<ConfigKey, Arc<rustls::ClientConfig>>>,
    /// The connections held and their limits (shared with the node's other listeners).
    connections: Arc<Connections>,
}

/// Why an outbound connection has no destination to tunnel to (refused as a bad request).
#[derive(Debug, thiserror::Error)]
enum NoDestination {
    /// The SOCKS5 greeting or request is malformed or asks for what is not supported.
    #[error(transparent)]
    Socks5(#[from] socks5::HandshakeError),
    /// The client did not finish its SOCKS5 request in time.
    #[error("SOCKS5 handshake timed out after {HANDSHAKE_TIMEOUT:?}")]
    Socks5Timeout,
    /// The connection's own addresses cannot be read.
    #[error("{0}")]
    Socket(std::io::Error),
    /// A connection on the capture port that no firewall rule redirected.
    #[error("the connection was not redirected here by iptables/nftables (no SO_ORIGINAL_DST)")]
    NotRedirected,
    /// A connection straight to the capture port.
    #[error("the connection was made to the capture port {0} itself, not redirected to it")]
    CapturePortItself(std::net::SocketAddr),
}

impl<P: CertificateProvider, D: Directory> Outbound<P, D> {
    /// An outbound tunnel over `certificates` (certificates and the trust bundle, both from
    /// the identity seam) and `directory`.
    pub fn new(certificates: Arc<P>, directory: Arc<D>, observer: Arc<Observer>) -> Self {
        let bundle: BundleSource = {
            let p = certificates.clone();
            Arc::new(move || p.bundle())
        };
        let revocations = certificates.watch_revocations();
        Self {
            transparent_source: false,
            skew_tolerance: crate::verify::SKEW_TOLERANCE,
            certificates,
            directory,
            bundle,
            revocations,
            observer,
            pool: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            connections: Connections::process_default(),
        }
    }

    /// Holds connections in `connections` (the node's one budget for every listener).
    pub fn with_connections(mut self, connections: Arc<Connections>) -> Self {
        self.connections = connections;
        self
    }

    /// Originate connections from workload addresses that are not on the node, with
    /// `IP_TRANSPARENT` (needs `CAP_NET_ADMIN`, and routing that brings the replies back to
    /// this node, as ztunnel's `ENABLE_ORIG_SRC` does). Off: such connections leave from the
    /// node's address, which is said once per workload.
    pub fn with_transparent_source(mut self, on: bool) -> Self {
        self.transparent_source = on;
        self
    }

    /// Accepts a server certificate whose notBefore is at most `tolerance` in the future.
    pub fn with_skew_tolerance(mut self, tolerance: Duration) -> Self {
        self.skew_tolerance = tolerance;
        self
    }

    /// Serves SOCKS5 on `listener` until the task is dropped.
    pub async fn serve_socks5(self: Arc<Self>, listener: TcpListener) {
        self.serve(listener, true).await
    }

    /// Serves connections redirected to `listener` by iptables/nftables (`SO_ORIGINAL_DST`)
    /// until the task is dropped.
    pub async fn serve_transparent(self: Arc<Self>, listener: TcpListener) {
        self.serve(listener, false).await
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, socks: bool) {
        let connections = self.connections.clone();
        let name = if socks { "SOCKS5" } else { "outbound capture" };
        zident_listen::accept_loop(listener, connections, name, move |stream, peer, slot| {
            let _ = stream.set_nodelay(true);
            let front = Front {
                stream,
                peer,
                socks,
            };
            self.clone().connection(front, slot)
        })
        .await
    }

    /// Where the client wants to go: the SOCKS5 request, or the address before redirection.
    async fn destination(front: &mut Front) -> Result<Target, NoDestination> {
        if front.socks {
            return match tokio::time::timeout(HANDSHAKE_TIMEOUT, socks5::accept(&mut front.stream))
                .await
            {
                Ok(Ok(t)) => Ok(t),
                Ok(Err(e)) => Err(NoDestination::Socks5(e)),
                Err(_) => Err(NoDestination::Socks5Timeout),
            };
        }
        let local = front.stream.local_addr().map_err(NoDestination::Socket)?;
        let sock = socket2::SockRef::from(&front.stream);
        let original = if local.is_ipv4() {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        };
        let original = original
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or(NoDestination::NotRedirected)?;
        if original == local {
            return Err(NoDestination::CapturePortItself(local));
        }
        Ok(Target::Addr(original))
    }

    async fn connection(self: Arc<Self>, mut front: Front, slot: Slot) {
        let peer = front.peer;
        // Idle until it names its destination: a flood of half-open greetings makes room by
        // closing the longest-idle of them, never a connection that carries traffic.
        let destination = tokio::select! {
            d = Self::destination(&mut front) => d,
            _ = slot.closing() => return,
        };
        let _busy = slot.tracker().busy();
        let target = match destination {
            Ok(t) => t,
            Err(detail) => {
                self.observer
                    .failure(Direction::Outbound, Reason::BadRequest);
                if let Some(held_back) = self.observer.say(peer.ip(), Reason::BadRequest.as_str()) {
                    tracing::warn!(target: "zident::tunnel", held_back, %peer, reason = %Reason::BadRequest, "outbound refused: {detail}");
                }
                return;
            }
        };
        if let Err(r) = self.forward(&mut front, &target).await {
            self.observer.failure(Direction::Outbound, r.reason);
            if let Some(held_back) = self.observer.say(peer.ip(), r.reason.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, %peer, dst = %target, reason = %r.reason, "outbound refused: {}", r.detail);
            }
            let _ = front.answer(r.reply).await;
        }
    }

    async fn forward(&self, front: &mut Front, target: &Target) -> Result<(), Refusal> {
        let peer = front.peer;
        let source = self.directory.source(peer.ip()).ok_or_else(|| {
            Refusal::new(
                Reason::UnknownSource,
                Reply::NotAllowed,
                format!("no local workload has address {}", peer.ip()),
            )
        })?;
        let route = self.directory.route(target).map_err(|e| {
            Refusal::new(
                Reason::UnknownDestination,
                Reply::HostUnreachable,
                format!("{target} {e}"),
            )
        })?;
        let started = Instant::now();
        let dst_identities = route
            .expected
            .iter()
            .map(SpiffeId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let upstream = match route.hbone {
            None => Upstream::Plain(self.plain(peer.ip(), &route).await?),
            Some(hbone) => {
                // Boxed: opening a tunnel may open an HBONE connection (a TLS handshake, 4.8 KiB
                // of state), which the tunnel's own future would otherwise keep for its life.
                let (send, recv) = Box::pin(self.tunnel(&source, peer, &route, hbone)).await?;
                Upstream::Tunnel(send, recv)
            }
        };
        if front.answer(Reply::Ok).await.is_err() {
            return Ok(());
        }
        let guard = self.observer.opened(OpenTunnel::new(
            Direction::Outbound,
            source.id.to_string(),
            peer,
            dst_identities.clone(),
            route.target,
        ));
        let outcome = match upstream {
            Upstream::Plain(mut tcp) => copy_plain(&mut front.stream, &mut tcp).await,
            Upstream::Tunnel(send, recv) => pump(&mut front.stream, send, recv).await,
        };
        let (sent, received) = outcome.as_ref().map(|(a, b)| (*a, *b)).unwrap_or((0, 0));
        guard.bytes(sent, received);
        tracing::info!(
            target: "zident::tunnel",
            %peer,
            src = %source.id,
            dst = %route.target,
            dst_identities,
            src_workload = %source.label,
            protocol = if route.hbone.is_some() { "HBONE" } else { "TCP" },
            bytes_out = sent,
            bytes_in = received,
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = match &outcome { Ok(_) => "closed".to_string(), Err(e) => format!("error: {e}") },
            "outbound connection"
        );
        Ok(())
    }

    async fn plain(&self, origin: IpAddr, route: &Route) -> Result<TcpStream, Refusal> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connect_from(origin, route.target)).await
        {
            Ok(Ok((tcp, _))) => {
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
            Ok(Err(e)) => Err(Refusal::new(
                Reason::UpstreamUnreachable,
                unreachable_reply(&e),
                format!("cannot reach {} (protocol TCP): {e}", route.target),
            )),
            Err(_) => Err(Refusal::new(
                Reason::UpstreamUnreachable,
                Reply::HostUnreachable,
                format!(
                    "no answer from {} within {HANDSHAKE_TIMEOUT:?}",
                    route.target
                ),
            )),
        }
    }

    async fn tunnel(
        &self,
        source: &Source,
        client: SocketAddr,
        route: &Route,
        hbone: SocketAddr,
    ) -> Result<(SendStream<Bytes>, RecvStream), Refusal> {
        let cert = self
            .certificates
            .certificate(&source.id, CERTIFICATE_WAIT)
            .await
            .map_err(|e| {
                Refusal::new(
                    Reason::NoCertificate,
                    Reply::Failure,
                    format!("(fail closed) {e}"),
                )
            })?;
        // A node's shared address serves many workloads: name ours, so it presents the right
        // certificate. A workload's own address needs no name.
        let sni = (hbone.ip() != route.target.ip()).then_some(route.target.ip());
        let pooled = self
            .sender(&cert, client.ip(), hbone, sni, &route.expected)
            .await?;
        let unreachable =
            |detail: String| Refusal::new(Reason::UpstreamUnreachable, Reply::Failure, detail);
        let mut sender = tokio::time::timeout(HANDSHAKE_TIMEOUT, pooled.sender.ready())
            .await
            .map_err(|_| {
                unreachable(format!(
                    "the HTTP/2 connection to {hbone} had no room for a stream within {HANDSHAKE_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| {
                pooled.closed.store(true, Ordering::Relaxed);
                refused_by_peer(&e, hbone).unwrap_or_else(|| {
                    unreachable(format!("the HTTP/2 connection to {hbone} ended: {e}"))
                })
            })?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(route.target.to_string())
            .header(headers::TRACEPARENT, TraceParent::random().to_string())
            .header(headers::FORWARDED, headers::forwarded(client));
        if !source.baggage.is_empty() {
            request = request.header(headers::BAGGAGE, &*source.baggage);
        }
        let request = request.body(()).map_err(|e| {
            Refusal::new(
                Reason::BadRequest,
                Reply::Failure,
                format!("cannot build CONNECT: {e}"),
            )
        })?;
        let (response, send) = sender
            .send_request(request, false)
            .map_err(|e| unreachable(format!("CONNECT through {hbone} failed: {e}")))?;
        let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, response)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "{hbone} did not answer CONNECT within {HANDSHAKE_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| {
                refused_by_peer(&e, hbone)
                    .unwrap_or_else(|| unreachable(format!("CONNECT through {hbone} failed: {e}")))
            })?;
        let status = response.status();
        if status != StatusCode::OK {
            // RFC 1928's codes: "not allowed by ruleset" only for policy.
            let (reason, reply) = match status {
                StatusCode::UNAUTHORIZED => (Reason::PolicyDenied, Reply::NotAllowed),
                StatusCode::SERVICE_UNAVAILABLE => (Reason::UpstreamUnreachable, Reply::Refused),
                _ => (Reason::BadRequest, Reply::Failure),
            };
            return Err(Refusal::new(
                reason,
                reply,
                format!("the destination's tunnel at {hbone} answered {status}"),
            ));
        }
        Ok((send, response.into_body()))
    }

    /// The client TLS configuration for this certificate and expected identities, built once.
    fn client_config(
        &self,
        cert: &WorkloadCertificate,
        expected: &[SpiffeId],
    ) -> Result<Arc<rustls::ClientConfig>, (Reason, String)> {
        let key = ConfigKey {
            source: cert.id.clone(),
            serial: cert.serial_hex.clone(),
            expected: expected.to_vec(),
        };
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(&key) {
            return Ok(c.clone());
        }
        // A new certificate of this source: the configurations of its old ones go.
        configs.retain(|k, _| k.source != key.source || k.serial == key.serial);
        let certified = cert
            .certified_key()
            .map_err(|e| (Reason::TlsFailure, e.to_string()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| (Reason::TlsFailure, e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                SpiffeServerVerifier::new(self.bundle.clone(), expected.to_vec())
                    .with_skew_tolerance(self.skew_tolerance)
                    .with_revocations(self.revocations.clone()),
            ))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        configs.insert(key, config.clone());
        Ok(config)
    }

    /// A pooled HTTP/2 connection for this certificate, destination and expected identities.
    async fn sender(
        &self,
        cert: &WorkloadCertificate,
        origin: IpAddr,
        hbone: SocketAddr,
        sni: Option<IpAddr>,
        expected: &[SpiffeId],
    ) -> Result<Pooled, Refusal> {
        let key = PoolKey {
            source: cert.id.clone(),
            origin,
            serial: cert.serial_hex.clone(),
            hbone,
            sni,
            expected: expected.to_vec(),
        };
        if let Some(p) = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|p| !p.closed.load(Ordering::Relaxed))
        {
            return Ok(p.clone());
        }
        let config = self
            .client_config(cert, expected)
            .map_err(|(reason, detail)| Refusal::new(reason, Reply::Failure, detail))?;
        let connect = async {
            let (tcp, from) = self.connect_from(origin, hbone).await.map_err(|e| {
                Refusal::new(
                    Reason::UpstreamUnreachable,
                    unreachable_reply(&e),
                    format!("cannot reach the destination's tunnel at {hbone}: {e}"),
                )
            })?;
            let _ = tcp.set_nodelay(true);
            // SPIFFE identities are checked by the verifier; the name is only for SNI (rustls
            // sends none for an IP address).
            let name = match sni {
                Some(ip) => ServerName::try_from(crate::sni::name_for(ip)).map_err(|e| {
                    Refusal::new(
                        Reason::BadRequest,
                        Reply::Failure,
                        format!("server name for {ip}: {e}"),
                    )
                })?,
                None => ServerName::IpAddress(hbone.ip().into()),
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, ReadAhead::new(tcp))
                .await
                .map_err(|e| {
                    let (reason, detail) = tls_failure(&e);
                    Refusal::new(reason, Reply::Failure, format!("TLS to {hbone}: {detail}"))
                })?;
            let peer_leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let (sender, mut conn) = h2::client::Builder::new()
                .initial_window_size(window::STREAM)
                .initial_connection_window_size(window::CONNECTION)
                .max_frame_size(window::FRAME)
                .max_send_buffer_size(window::SEND_BUFFER)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|e| {
                    Refusal::new(
                        Reason::TlsFailure,
                        Reply::Failure,
                        format!("HTTP/2 to {hbone}: {e}"),
                    )
                })?;
            let closed = Arc::new(AtomicBool::new(false));
            let done = closed.clone();
            let ping = conn.ping_pong();
            let (mut revocations, observer) = (self.revocations.clone(), self.observer.clone());
            tokio::spawn(async move {
                // A new CRL that lists the server's certificate closes the connection (and
                // every tunnel on it).
                let revoked = async {
                    while revocations.changed().await.is_ok() {
                        if let Some(leaf) = &peer_leaf
                            && is_revoked(&revocations, leaf)
                        {
                            observer.revoked(Direction::Outbound, hbone, leaf);
                            return;
                        }
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    r = &mut conn => if let Err(e) = r {
                        match peer_refusal(&e) {
                            Some((reason, why)) => tracing::warn!(target: "zident::tunnel", %hbone, %reason, "HBONE connection refused by the peer: {why}"),
                            None => tracing::debug!(target: "zident::tunnel", %hbone, "HBONE connection ended: {e}"),
                        }
                    },
                    () = keepalive(ping) => {}
                    () = revoked => {}
                }
                done.store(true, Ordering::Relaxed);
            });
            tracing::debug!(target: "zident::tunnel", %hbone, from = %from, "HBONE connection opened");
            Ok::<_, Refusal>(Pooled { sender, closed })
        };
        let sender = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| {
                Refusal::new(
                    Reason::UpstreamUnreachable,
                    Reply::HostUnreachable,
                    format!("no answer from {hbone} within {HANDSHAKE_TIMEOUT:?}"),
                )
            })??;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        // Only when a connection is made (not on every tunnel): drop connections that ended,
        // and this source's connections made with a certificate that is no longer its current
        // one (their open tunnels carry on regardless).
        pool.retain(|k, p| {
            !p.closed.load(Ordering::Relaxed) && (k.source != key.source || k.serial == key.serial)
        });
        pool.insert(key, sender.clone());
        Ok(sender)
    }

    /// A connection to `dst` from the workload's own address `origin`, as ztunnel makes it, so
    /// that the peer sees (and its `sourceIps` policies match) the workload, not the node. The
    /// address is bound when the node has it; otherwise with `IP_TRANSPARENT` when enabled;
    /// otherwise the connection leaves from the node's address, which is said once per
    /// workload address (log and `/debug/connections`). Returns the address it left from.
    async fn connect_from(
        &self,
        origin: IpAddr,
        dst: SocketAddr,
    ) -> std::io::Result<(TcpStream, SocketAddr)> {
        let socket = |addr: &SocketAddr| {
            if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
        };
        let fallback = if origin.is_ipv4() != dst.is_ipv4() {
            Some(format!(
                "the workload address {origin} and the destination {dst} are of different IP families"
            ))
        } else {
            let s = socket(&dst)?;
            match s.bind(SocketAddr::new(origin, 0)) {
                Ok(()) => return connected(s.connect(dst).await?),
                Err(e) if self.transparent_source => {
                    let s = socket(&dst)?;
                    let sock = socket2::SockRef::from(&s);
                    let set = if origin.is_ipv4() {
                        sock.set_ip_transparent_v4(true)
                    } else {
                        sock.set_ip_transparent_v6(true)
                    };
                    match set.and_then(|()| s.bind(SocketAddr::new(origin, 0))) {
                        Ok(()) => return connected(s.connect(dst).await?),
                        Err(t) => Some(format!(
                            "{origin} is not on this node ({e}) and IP_TRANSPARENT failed ({t}; it needs CAP_NET_ADMIN)"
                        )),
                    }
                }
                Err(e) => Some(format!(
                    "{origin} is not on this node ({e}); enable --transparent-source (IP_TRANSPARENT, with routing that returns replies to this node) to originate from it"
                )),
            }
        };
        if let Some(why) = fallback {
            self.observer.source_fallback(origin, &why);
        }
        connected(socket(&dst)?.connect(dst).await?)
    }
}

fn connected(tcp: TcpStream) -> std::io::Result<(TcpStream, SocketAddr)> {
    let from = tcp.local_addr()?;
    Ok((tcp, from))
}

/// A refusal that names the peer's TLS alert and its likely cause, when the peer sent one.
fn refused_by_peer(e: &h2::Error, hbone: SocketAddr) -> Option<Refusal> {
    let (reason, why) = peer_refusal(e)?;
    Some(Refusal::new(
        reason,
        Reply::Failure,
        format!("{hbone}: {why}"),
    ))
}

/// RFC 1928's reply for a destination that could not be reached: refused (0x05) when it said
/// so, unreachable (0x04) otherwise.
fn unreachable_reply(e: &std::io::Error) -> Reply {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        Reply::Refused
    } else {
        Reply::HostUnreachable
    }
}

/// Where the bytes of an outbound connection go.
enum Upstream {
    Plain(TcpStream),
    Tunnel(SendStream<Bytes>, RecvStream),
}
