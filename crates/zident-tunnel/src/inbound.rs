//! Inbound HBONE: where another node's tunnel delivers a connection for one of our workloads.
//!
//! TLS 1.3 only, ALPN `h2`. The server presents the destination workload's current SVID; the
//! client must present a valid SVID of a trusted trust domain. Each HTTP/2 `CONNECT` names the
//! destination as `ip:port`: 200 and then bytes both ways; 400 for a malformed request or an
//! address that is not a local workload; 401 when policy denies; 503 when the workload does not
//! answer. Each connection takes the certificate current when it starts; open ones keep theirs
//! across rotations. TLS configurations are built once per certificate, not per connection.
//!
//! A listener on a workload's own address serves as that workload. A listener on a node's
//! shared address (`--inbound-addr`) serves every local workload and presents the certificate
//! of the one the client names in SNI ([`crate::sni`]). Either way a CONNECT may only reach a
//! workload of the identity the connection was served as, so the client's check of the
//! server's identity means what it says.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use rustls::sign::SingleCertAndKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use zident_identity::{CertificateProvider, SpiffeId, WorkloadCertificate, check_leaf};
use zident_listen::{Connections, Slot};

use crate::headers;
use crate::observe::{Direction, Observer, OpenTunnel, Reason, tls_failure};
use crate::policy::{Authorizer, Connection, Destination};
use crate::pump::{keepalive, pump};
use crate::read_ahead::ReadAhead;
use crate::sizes::window;
use crate::verify::{BundleSource, RevocationSource, SpiffeClientVerifier, is_revoked, provider};

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = zident_listen::HANDSHAKE_TIMEOUT;

/// A local workload, as inbound needs to know it.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    /// Its identity.
    pub id: SpiffeId,
    /// Its namespace (policy scope).
    pub namespace: String,
    /// The WorkloadSelector policies it names.
    pub policies: Vec<String>,
}

/// Which identity a listener presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serves {
    /// Always this one.
    Identity(SpiffeId),
    /// The identity of the local workload that has this address when a client connects: the
    /// listener on a workload's own address. An edit that changes the workload's identity
    /// (a new service account) takes effect for the next connection, without closing the
    /// listener, so the address is never left unserved.
    Address(IpAddr),
    /// The identity of the local workload the client names in SNI (a node's shared address).
    BySni,
}

/// What an inbound listener asks of the mesh in force: the local workload at an address, who
/// is at a peer's address, and the policies. The node's live view answers in production; a
/// test answers with fixed values.
pub trait Destinations: Send + Sync + 'static {
    /// The local workload at `ip`, if any.
    fn local_target(&self, ip: IpAddr) -> Option<LocalTarget>;
    /// `namespace/name` of the workload at `ip` on any node: who a connection is from, for the
    /// access log (as ztunnel names it). `None` falls back to the caller's `baggage`.
    fn peer(&self, _ip: IpAddr) -> Option<Arc<str>> {
        None
    }
    /// The policies in force now.
    fn authorizer(&self) -> Arc<Authorizer>;
}

/// An inbound HBONE listener's state: certificates and the trust bundle from `P` (the identity
/// seam, as for outbound), local workloads and policies from `D`.
pub struct Inbound<P, D> {
    /// Which identity this listener presents.
    serves: Serves,
    certificates: Arc<P>,
    destinations: Arc<D>,
    bundle: BundleSource,
    /// The CRLs in force: a revoked client is refused, and its open connection closed.
    revocations: RevocationSource,
    /// How long to wait for the workload to accept.
    connect_timeout: Duration,
    observer: Arc<Observer>,
    /// How far in the future a client certificate's notBefore may be (clock skew).
    skew_tolerance: Duration,
    /// Per identity: the serial of the certificate its configuration was built with.
    configs: Mutex<HashMap<SpiffeId, (String, Arc<rustls::ServerConfig>)>>,
    /// The connections held and their limits (shared with the node's other listeners).
    connections: Arc<Connections>,
}

/// Why a handshake was not completed.
enum Refused {
    Tls(std::io::Error),
    Other(Reason, String),
}

impl<P: CertificateProvider, D: Destinations> Inbound<P, D> {
    /// A listener presenting `serves`, with certificates and the bundle from `certificates`.
    pub fn new(
        serves: Serves,
        certificates: Arc<P>,
        destinations: Arc<D>,
        observer: Arc<Observer>,
    ) -> Self {
        let bundle: BundleSource = {
            let p = certificates.clone();
            Arc::new(move || p.bundle())
        };
        let revocations = certificates.watch_revocations();
        Self {
            serves,
            certificates,
            destinations,
            bundle,
            revocations,
            connect_timeout: Duration::from_secs(5),
            observer,
            skew_tolerance: crate::verify::SKEW_TOLERANCE,
            configs: Mutex::new(HashMap::new()),
            connections: Connections::process_default(),
        }
    }

    /// Holds connections in `connections` (the node's one budget for every listener).
    pub fn with_connections(mut self, connections: Arc<Connections>) -> Self {
        self.connections = connections;
        self
    }

    /// Accepts client certificates whose notBefore is up to `tolerance` in the future (clock
    /// skew between nodes).
    pub fn with_skew_tolerance(mut self, tolerance: Duration) -> Self {
        self.skew_tolerance = tolerance;
        self
    }

    /// The TLS configuration for `cert`, built on its first use.
    fn tls_config(
        &self,
        cert: &WorkloadCertificate,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut cached = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((serial, config)) = cached.get(&cert.id)
            && *serial == cert.serial_hex
        {
            return Ok(config.clone());
        }
        let certified = cert.certified_key()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(
                SpiffeClientVerifier::new(self.bundle.clone())
                    .with_revocations(self.revocations.clone())
                    .with_skew_tolerance(self.skew_tolerance),
            ))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = Arc::new(config);
        cached.insert(cert.id.clone(), (cert.serial_hex.clone(), config.clone()));
        Ok(config)
    }

    /// Accepts connections within the limits until the task is dropped (which also ends its
    /// connections).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let connections = self.connections.clone();
        zident_listen::accept_loop(
            listener,
            connections,
            "HBONE inbound",
            move |tcp, peer, slot| self.clone().connection(tcp, peer, slot),
        )
        .await
    }

    /// The identity to present for a ClientHello naming `sni`.
    fn identity_for(&self, sni: Option<&str>) -> Result<SpiffeId, (Reason, String)> {
        match &self.serves {
            Serves::Identity(id) => Ok(id.clone()),
            Serves::Address(ip) => self
                .destinations
                .local_target(*ip)
                .map(|t| t.id)
                .ok_or_else(|| {
                    (
                        Reason::BadRequest,
                        format!("{ip} is no longer an HBONE workload on this node"),
                    )
                }),
            Serves::BySni => {
                let name = sni.ok_or((
                    Reason::BadRequest,
                    format!(
                        "this shared HBONE address serves several workloads and the client named none in SNI (expected e.g. {})",
                        crate::sni::name_for(IpAddr::from([10, 0, 0, 3]))
                    ),
                ))?;
                let ip = crate::sni::parse(name).ok_or_else(|| {
                    (
                        Reason::BadRequest,
                        format!("SNI {name:?} does not name a workload address"),
                    )
                })?;
                self.destinations.local_target(ip).map(|t| t.id).ok_or_else(|| {
                    (
                        Reason::BadRequest,
                        format!(
                            "SNI {name:?} names {ip}, which is not an HBONE workload on this node"
                        ),
                    )
                })
            }
        }
    }

    /// Reads the ClientHello, picks the identity and its certificate, and completes the
    /// handshake.
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<(SpiffeId, tokio_rustls::server::TlsStream<ReadAhead>), Refused> {
        let start = tokio_rustls::LazyConfigAcceptor::new(
            rustls::server::Acceptor::default(),
            ReadAhead::new(tcp),
        )
        .await
        .map_err(Refused::Tls)?;
        let identity = self
            .identity_for(start.client_hello().server_name())
            .map_err(|(r, d)| Refused::Other(r, d))?;
        let cert = self.certificates.current(&identity).ok_or_else(|| {
            Refused::Other(
                Reason::NoCertificate,
                format!("(fail closed) {identity} has no valid certificate"),
            )
        })?;
        let config = self.tls_config(&cert).map_err(|e| {
            Refused::Other(
                Reason::TlsFailure,
                format!("cannot build TLS for {identity}: {e}"),
            )
        })?;
        let tls = start.into_stream(config).await.map_err(Refused::Tls)?;
        Ok((identity, tls))
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, slot: Slot) {
        let _ = tcp.set_nodelay(true);
        let Ok(local) = tcp.local_addr() else { return };
        // Evicted while still shaking hands (a flood of idle connections makes room by closing
        // the longest-idle): it just ends.
        let handshake = tokio::select! {
            done = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake(tcp)) => done,
            _ = slot.closing() => return,
        };
        let (served, tls) = match handshake {
            Ok(Ok(done)) => done,
            Ok(Err(refused)) => {
                let (reason, detail) = match refused {
                    Refused::Tls(e) => tls_failure(&e),
                    Refused::Other(reason, detail) => (reason, detail),
                };
                self.observer.failure(Direction::Inbound, reason);
                if let Some(held_back) = self.observer.say(peer.ip(), reason.as_str()) {
                    tracing::warn!(target: "zident::tunnel", held_back, %peer, %reason, "inbound TLS handshake refused: {detail}");
                }
                return;
            }
            Err(_) => {
                self.observer
                    .failure(Direction::Inbound, Reason::TlsFailure);
                if let Some(held_back) = self.observer.say(peer.ip(), Reason::TlsFailure.as_str()) {
                    tracing::warn!(target: "zident::tunnel", held_back, %peer, reason = %Reason::TlsFailure, "inbound TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                }
                return;
            }
        };
        let peer_leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let source = peer_leaf
            .as_ref()
            .and_then(|c| check_leaf(c).ok())
            .map(|i| i.id);
        let h2_handshake = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            h2::server::Builder::new()
                .initial_window_size(window::STREAM)
                .initial_connection_window_size(window::CONNECTION)
                .max_frame_size(window::FRAME)
                .max_send_buffer_size(window::SEND_BUFFER)
                .handshake::<_, Bytes>(tls),
        );
        // Evicted before its HTTP/2 preface: it ends too.
        let h2_handshake = tokio::select! {
            done = h2_handshake => done,
            _ = slot.closing() => return,
        };
        let mut conn = match h2_handshake {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(target: "zident::tunnel", %peer, "inbound HTTP/2 handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(target: "zident::tunnel", %peer, "inbound HTTP/2 handshake timed out");
                return;
            }
        };
        let served = Arc::new(served);
        let keep = keepalive(conn.ping_pong());
        tokio::pin!(keep);
        let tracker = slot.tracker();
        let mut revocations = self.revocations.clone();
        // The connection is driven here; its tunnels run beside it and end with it.
        let mut streams = JoinSet::new();
        loop {
            tokio::select! {
                // A new CRL that lists the client's certificate closes the connection and
                // every tunnel on it.
                Ok(()) = revocations.changed() => {
                    if let Some(leaf) = &peer_leaf
                        && is_revoked(&revocations, leaf)
                    {
                        self.observer.revoked(Direction::Inbound, peer, leaf);
                        break;
                    }
                }
                next = conn.accept() => match next {
                    Some(Ok((request, respond))) => {
                        let (this, source, served) = (self.clone(), source.clone(), served.clone());
                        // The connection is busy (not idle) while a tunnel runs on it.
                        let busy = tracker.busy();
                        streams.spawn(async move {
                            this.stream(source, &served, (peer, local), request, respond).await;
                            drop(busy);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::debug!(target: "zident::tunnel", %peer, "inbound connection ended: {e}");
                        break;
                    }
                    None => break,
                },
                () = &mut keep => break,
                // No tunnel for the idle timeout, or evicted to make room: the client's pool
                // opens a new connection when it needs one.
                _ = slot.closing(), if streams.is_empty() => {
                    tracing::debug!(target: "zident::tunnel", %peer, "closing an idle inbound connection");
                    break;
                }
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
            }
        }
    }

    /// One CONNECT: checked, answered, and its bytes carried.
    async fn stream(
        &self,
        source: Option<SpiffeId>,
        served: &SpiffeId,
        (peer, local): (SocketAddr, SocketAddr),
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        let status = |code: StatusCode| {
            let mut r = Response::new(());
            *r.status_mut() = code;
            r
        };
        // Boxed: admission (policy, the connect to the workload) is over before the bytes
        // flow, so its state is not kept for the tunnel's life.
        let (mut upstream, dst_id, dst) =
            match Box::pin(self.admit(source.as_ref(), served, (peer, local), &request)).await {
                Ok(admitted) => admitted,
                Err(code) => {
                    let _ = respond.send_response(status(code), true);
                    return;
                }
            };
        let send = match respond.send_response(status(StatusCode::OK), false) {
            Ok(s) => s,
            Err(e) => {
                if let Some(held_back) = self.observer.say(peer.ip(), "answer") {
                    tracing::warn!(target: "zident::tunnel", held_back, %peer, %dst, "inbound: cannot answer CONNECT: {e}");
                }
                return;
            }
        };
        let src = source
            .as_ref()
            .map(SpiffeId::as_str)
            .unwrap_or("-")
            .to_owned();
        // Who is calling, for the log: the workload at the connection's source address (as
        // ztunnel looks it up), else what its `baggage` says; and the trace to join both
        // sides' lines by.
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let src_workload = self
            .destinations
            .peer(peer.ip())
            .map(|w| w.to_string())
            .or_else(|| header(headers::BAGGAGE).and_then(|b| headers::Baggage::parse(&b).name()))
            .unwrap_or_else(|| "-".into());
        let trace_id = header(headers::TRACEPARENT)
            .and_then(|t| headers::TraceParent::parse(&t))
            .map(|t| t.trace_id())
            .unwrap_or_else(|| "-".into());
        let started = Instant::now();
        let guard = self.observer.opened(OpenTunnel::new(
            Direction::Inbound,
            src.clone(),
            peer,
            dst_id.to_string(),
            dst,
        ));
        let outcome = pump(&mut upstream, send, request.into_body()).await;
        // TCP → stream is what the workload sent back; stream → TCP what the client sent.
        let (sent, received) = outcome.as_ref().map(|(a, b)| (*a, *b)).unwrap_or((0, 0));
        guard.bytes(received, sent);
        tracing::info!(
            target: "zident::tunnel",
            %peer,
            src = %src,
            dst = %dst_id,
            dst_addr = %dst,
            src_workload = %src_workload,
            trace_id = %trace_id,
            bytes_in = received,
            bytes_out = sent,
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = match &outcome { Ok(_) => "closed".to_string(), Err(e) => format!("error: {e}") },
            "inbound connection"
        );
    }

    /// Checks a CONNECT and connects to its workload; the error is the status to answer.
    async fn admit(
        &self,
        source: Option<&SpiffeId>,
        served: &SpiffeId,
        (peer, local): (SocketAddr, SocketAddr),
        req: &Request<RecvStream>,
    ) -> Result<(TcpStream, SpiffeId, SocketAddr), StatusCode> {
        let src = source.map(SpiffeId::as_str).unwrap_or("-");
        let fail = |reason: Reason| {
            self.observer.failure(Direction::Inbound, reason);
            reason
        };
        if req.method() != Method::CONNECT {
            fail(Reason::BadRequest);
            if let Some(held_back) = self.observer.say(peer.ip(), Reason::BadRequest.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, %peer, src, reason = %Reason::BadRequest, "inbound: {} is not CONNECT", req.method());
            }
            return Err(StatusCode::BAD_REQUEST);
        }
        let Some(dst) = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        else {
            fail(Reason::BadRequest);
            if let Some(held_back) = self.observer.say(peer.ip(), Reason::BadRequest.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, %peer, src, reason = %Reason::BadRequest, "inbound: CONNECT authority {:?} is not ip:port", req.uri());
            }
            return Err(StatusCode::BAD_REQUEST);
        };
        // A CONNECT to the HBONE port (of this or any local address) would tunnel into a
        // listener of this node, and again, and again.
        if dst.port() == local.port() {
            fail(Reason::BadRequest);
            if let Some(held_back) = self.observer.say(peer.ip(), Reason::BadRequest.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, %peer, src, %dst, reason = %Reason::BadRequest, "inbound: {dst} is the HBONE port itself; a tunnel there would loop");
            }
            return Err(StatusCode::BAD_REQUEST);
        }
        let Some(target) = self.destinations.local_target(dst.ip()) else {
            fail(Reason::BadRequest);
            if let Some(held_back) = self.observer.say(peer.ip(), Reason::BadRequest.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, %peer, src, %dst, reason = %Reason::BadRequest, "inbound: {dst} is not a workload on this node");
            }
            return Err(StatusCode::BAD_REQUEST);
        };
        if target.id != *served {
            fail(Reason::BadRequest);
            if let Some(held_back) = self.observer.say(peer.ip(), Reason::BadRequest.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, %peer, src, %dst, reason = %Reason::BadRequest, "inbound: {dst} is {}, but this connection was served as {served}", target.id);
            }
            return Err(StatusCode::BAD_REQUEST);
        }
        let decision = self.destinations.authorizer().authorize(
            Destination {
                namespace: &target.namespace,
                selected: &target.policies,
            },
            &Connection {
                source,
                source_addr: peer.ip(),
                destination: dst,
            },
        );
        for note in &decision.dry_run {
            tracing::info!(target: "zident::tunnel", src, dst = %target.id, "{note}");
        }
        if !decision.allowed {
            fail(Reason::PolicyDenied);
            if let Some(held_back) = self.observer.say(peer.ip(), Reason::PolicyDenied.as_str()) {
                tracing::warn!(target: "zident::tunnel", held_back, src, dst = %target.id, dst_addr = %dst, reason = %Reason::PolicyDenied, "inbound: {}", decision.reason);
            }
            return Err(StatusCode::UNAUTHORIZED);
        }
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(dst)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok((tcp, target.id, dst))
            }
            Ok(Err(e)) => {
                fail(Reason::UpstreamUnreachable);
                if let Some(held_back) = self
                    .observer
                    .say(peer.ip(), Reason::UpstreamUnreachable.as_str())
                {
                    tracing::warn!(target: "zident::tunnel", held_back, src, %dst, reason = %Reason::UpstreamUnreachable, "inbound: workload refused: {e}");
                }
                Err(StatusCode::SERVICE_UNAVAILABLE)
            }
            Err(_) => {
                fail(Reason::UpstreamUnreachable);
                if let Some(held_back) = self
                    .observer
                    .say(peer.ip(), Reason::UpstreamUnreachable.as_str())
                {
                    tracing::warn!(target: "zident::tunnel", held_back, src, %dst, reason = %Reason::UpstreamUnreachable, "inbound: workload did not answer within {:?}", self.connect_timeout);
                }
                Err(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }
}
