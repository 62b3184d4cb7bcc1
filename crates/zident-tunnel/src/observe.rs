//! What the tunnel shows of itself: Istio's TCP metrics (so existing dashboards work), failures
//! by reason, and the table of open tunnels behind `/debug/connections`.
//!
//! A tunnel is entered in the table when its bytes start to flow and leaves it when the
//! [`TunnelGuard`] is dropped, so a task that is aborted (a listener closed, the agent stopping)
//! cannot leave a ghost behind.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use zident_identity::SvidError;

use crate::verify::IdentityMismatch;

/// Which side of a tunnel this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A local workload's connection leaving the node.
    Outbound,
    /// A connection arriving for a local workload.
    Inbound,
}

impl Direction {
    /// Istio's `reporter` label: the client side reports as `source`.
    fn reporter(self) -> &'static str {
        match self {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Why a connection did not get through. The names are the `reason` label and the access
/// log's `reason` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The TLS handshake failed for another reason (protocol, alert from the peer, timeout).
    TlsFailure,
    /// The peer's certificate chains to no root of the trust bundle.
    UntrustedRoot,
    /// The peer presented no certificate.
    NoClientCertificate,
    /// The peer's certificate is expired or not yet valid.
    CertificateExpired,
    /// The peer's certificate is not a valid X509-SVID.
    InvalidSvid,
    /// The server is a valid SVID of an identity the destination does not have.
    IdentityMismatch,
    /// Authorization policy denied the connection.
    PolicyDenied,
    /// The destination (its workload or its node's tunnel) could not be reached.
    UpstreamUnreachable,
    /// The source workload has no usable certificate (fail closed).
    NoCertificate,
    /// The connection came from an address that is no local workload.
    UnknownSource,
    /// The destination is no known workload or service.
    UnknownDestination,
    /// A malformed request (SOCKS5 or HBONE).
    BadRequest,
    /// A tunnel that was carrying bytes was cut before it closed: its HBONE connection was
    /// lost, or its listener closed.
    ConnectionLost,
    /// The peer's certificate is listed by a CRL in force: its handshake is refused, and an
    /// open connection with it is closed when a new CRL lists it.
    Revoked,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TlsFailure => "tls_failure",
            Reason::UntrustedRoot => "untrusted_root",
            Reason::NoClientCertificate => "no_client_certificate",
            Reason::CertificateExpired => "certificate_expired",
            Reason::InvalidSvid => "invalid_svid",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::PolicyDenied => "policy_denied",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::NoCertificate => "no_certificate",
            Reason::UnknownSource => "unknown_source",
            Reason::UnknownDestination => "unknown_destination",
            Reason::BadRequest => "bad_request",
            Reason::ConnectionLost => "connection_lost",
            Reason::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason and a readable account of a failed TLS handshake. rustls prints the errors of
/// custom verifiers with `Debug`; this says them in words.
pub fn tls_failure(e: &io::Error) -> (Reason, String) {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return (Reason::TlsFailure, e.to_string());
    };
    use rustls::CertificateError as C;
    match tls {
        rustls::Error::NoCertificatesPresented => (
            Reason::NoClientCertificate,
            "the client presented no certificate; HBONE requires the source workload's SVID".into(),
        ),
        rustls::Error::InvalidCertificate(kind) => match kind {
            C::UnknownIssuer => (
                Reason::UntrustedRoot,
                "the peer's certificate chains to no root of this node's trust bundle".into(),
            ),
            C::BadSignature => (
                Reason::UntrustedRoot,
                format!("the peer's certificate: {}", SvidError::BadSignature),
            ),
            C::ExpiredContext { time, not_after } => (
                Reason::CertificateExpired,
                format!(
                    "the peer's certificate expired {} s ago by this node's clock: the peer did not renew it, or the two nodes' clocks disagree (check NTP on both)",
                    time.as_secs().saturating_sub(not_after.as_secs())
                ),
            ),
            C::NotValidYetContext { time, not_before } => (
                Reason::CertificateExpired,
                format!(
                    "the peer's certificate is not valid for another {} s by this node's clock, more than the clock skew tolerated: the two nodes' clocks disagree (check NTP on both)",
                    not_before.as_secs().saturating_sub(time.as_secs())
                ),
            ),
            C::Revoked => (
                Reason::Revoked,
                "the peer's certificate is revoked: a CRL this node holds from the CA lists it"
                    .into(),
            ),
            C::Expired | C::NotValidYet => (
                Reason::CertificateExpired,
                format!(
                    "the peer's certificate: {tls}; if it is fresh, the two nodes' clocks disagree (check NTP)"
                ),
            ),
            C::Other(other) => {
                if let Some(m) = other.0.downcast_ref::<IdentityMismatch>() {
                    (Reason::IdentityMismatch, m.to_string())
                } else if let Some(s) = other.0.downcast_ref::<SvidError>() {
                    let reason = match s {
                        SvidError::UnknownIssuer | SvidError::BadSignature => Reason::UntrustedRoot,
                        SvidError::Expired { .. } | SvidError::NotYetValid { .. } => {
                            Reason::CertificateExpired
                        }
                        _ => Reason::InvalidSvid,
                    };
                    (reason, format!("the peer's certificate: {s}"))
                } else {
                    (
                        Reason::InvalidSvid,
                        format!("the peer's certificate: {}", other.0),
                    )
                }
            }
            _ => (Reason::InvalidSvid, tls.to_string()),
        },
        rustls::Error::AlertReceived(alert) => alert_meaning(*alert),
        other => (Reason::TlsFailure, other.to_string()),
    }
}

/// Why the peer refused this end after the handshake, from the TLS alert it sent, with the
/// likely cause. In TLS 1.3 a server checks the client's certificate after the client has
/// finished its side of the handshake, so a client learns of a refusal only when it next reads:
/// without this it would see only a closed connection.
pub fn peer_refusal(e: &h2::Error) -> Option<(Reason, String)> {
    use rustls::AlertDescription as A;
    let io = e.get_io()?;
    let alert = match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => *alert,
        Some(_) => return None,
        // h2 keeps only the kind and the text of an I/O error, not the error itself, so the
        // alert is read back from rustls's text for it ("received fatal alert: <name>").
        None => {
            let text = io.to_string();
            let name = text.split("received fatal alert: ").nth(1)?.trim();
            [
                A::CertificateExpired,
                A::UnknownCA,
                A::BadCertificate,
                A::DecryptError,
                A::CertificateUnknown,
                A::CertificateRequired,
                A::CertificateRevoked,
                A::AccessDenied,
                A::HandshakeFailure,
            ]
            .into_iter()
            .find(|a| format!("{a:?}") == name)?
        }
    };
    Some(alert_meaning(alert))
}

/// What a TLS alert from the peer means for this end's certificate, with the likely cause.
fn alert_meaning(alert: rustls::AlertDescription) -> (Reason, String) {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateExpired => (
            Reason::CertificateExpired,
            format!(
                "the peer refused this workload's certificate as expired or not yet valid (TLS alert {alert:?}); \
                 if the certificate is fresh, the clocks of the two nodes disagree (check NTP on both)"
            ),
        ),
        A::UnknownCA | A::BadCertificate | A::DecryptError | A::CertificateUnknown => (
            Reason::UntrustedRoot,
            format!(
                "the peer does not trust this workload's certificate (TLS alert {alert:?}): its trust bundle \
                 lacks the root that signed it; during a root rotation, the peer may not have the new root yet"
            ),
        ),
        A::CertificateRevoked => (
            Reason::Revoked,
            "the peer refused this workload's certificate as revoked (TLS alert CertificateRevoked): the CA's CRL lists it; its agent replaces it, unless the operator denied its reissue".into(),
        ),
        A::CertificateRequired => (
            Reason::NoClientCertificate,
            "the peer requires a client certificate and got none (TLS alert CertificateRequired)"
                .into(),
        ),
        other => (
            Reason::TlsFailure,
            format!("the peer ended the connection with TLS alert {other:?}"),
        ),
    }
}

/// Istio's TCP metric labels (the subset the tunnel knows).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` (outbound) or `destination` (inbound).
    pub reporter: &'static str,
    /// The client workload's SPIFFE ID, or `unknown`.
    pub source_principal: String,
    /// The server workload's SPIFFE ID.
    pub destination_principal: String,
}

/// `direction` and `reason` labels of a failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// [`Reason::as_str`].
    pub reason: &'static str,
}

/// `direction` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `outbound` or `inbound`.
    pub direction: &'static str,
}

/// The tunnel's metrics.
#[derive(Debug, Default, Clone)]
pub struct TunnelMetrics {
    /// Tunnels opened (bytes began to flow).
    pub opened: Family<TcpLabels, Counter>,
    /// Tunnels closed.
    pub closed: Family<TcpLabels, Counter>,
    /// Bytes from the client towards the server, counted when a tunnel closes.
    pub received: Family<TcpLabels, Counter>,
    /// Bytes from the server back to the client, counted when a tunnel closes.
    pub sent: Family<TcpLabels, Counter>,
    /// Connections that did not get through, by reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Tunnels open now.
    pub open: Family<DirectionLabel, Gauge>,
}

impl TunnelMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_tcp_connections_opened",
            "Tunneled TCP connections opened",
            self.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Tunneled TCP connections closed",
            self.closed.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes sent by the client of a tunneled connection, counted at close",
            self.received.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent back to the client of a tunneled connection, counted at close",
            self.sent.clone(),
        );
        registry.register(
            "zident_tunnel_failures",
            "Connections the tunnel refused or could not carry, by direction and reason",
            self.failures.clone(),
        );
        registry.register(
            "zident_tunnel_open_connections",
            "Tunneled connections open now, by direction",
            self.open.clone(),
        );
    }
}

/// An open tunnel, as `/debug/connections` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OpenTunnel {
    /// Which side this node is.
    pub direction: Direction,
    /// The client workload's SPIFFE ID (`unknown` if it had none).
    pub source: String,
    /// The client's address.
    pub source_addr: SocketAddr,
    /// The server workload's SPIFFE ID (outbound: the identities it may present).
    pub destination: String,
    /// The workload address the bytes go to.
    pub destination_addr: SocketAddr,
    /// When the tunnel opened (RFC 3339).
    pub opened: String,
    /// Seconds since then, when listed.
    pub age_seconds: u64,
    #[serde(skip)]
    started: Instant,
}

impl OpenTunnel {
    /// A tunnel opening now.
    pub fn new(
        direction: Direction,
        source: String,
        source_addr: SocketAddr,
        destination: String,
        destination_addr: SocketAddr,
    ) -> Self {
        Self {
            direction,
            source,
            source_addr,
            destination,
            destination_addr,
            opened: zident_identity::rfc3339(SystemTime::now()),
            age_seconds: 0,
            started: Instant::now(),
        }
    }
}

/// A workload address that outbound tunnels leave without (they use the node's).
#[derive(Debug, Clone, Serialize)]
pub struct SourceFallback {
    /// The workload's address.
    pub workload_addr: std::net::IpAddr,
    /// Why it could not be used.
    pub reason: String,
    /// Since when (RFC 3339).
    pub since: String,
}

/// The tunnel's metrics and open connections, shared by every listener of a node.
#[derive(Debug, Default)]
pub struct Observer {
    metrics: TunnelMetrics,
    listeners: crate::listeners::ListenerTable,
    /// Workload addresses outbound tunnels could not originate from, and why.
    fallbacks: Mutex<BTreeMap<std::net::IpAddr, SourceFallback>>,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, OpenTunnel>>,
    /// Warnings a peer can cause, said once per source and kind per interval.
    logs: zident_listen::LogGate,
}

impl Observer {
    /// A new observer with no connections.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The metrics, for registering.
    pub fn metrics(&self) -> &TunnelMetrics {
        &self.metrics
    }

    /// Whether a warning of `kind` about a connection from `source` may be said now:
    /// `Some(how many were held back since the last)`. A peer that fails a thousand times a
    /// second costs a line every few seconds; the metrics count every failure.
    pub fn say(&self, source: std::net::IpAddr, kind: &'static str) -> Option<u64> {
        self.logs.allow(source, kind)
    }

    /// The inbound listeners and their states.
    pub fn listeners(&self) -> &crate::listeners::ListenerTable {
        &self.listeners
    }

    /// Outbound connections of the workload at `origin` leave from the node's address, for
    /// `why`. Said once per address (and again if the reason changes), since `sourceIps`
    /// policies on the peer then cannot match the workload.
    pub fn source_fallback(&self, origin: std::net::IpAddr, why: &str) {
        let mut seen = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&origin).is_some_and(|f| f.reason == why) {
            return;
        }
        tracing::warn!(target: "zident::tunnel", workload_addr = %origin, "outbound tunnels of {origin} leave from the node's address, so the peer's sourceIps policies cannot match it: {why}");
        seen.insert(
            origin,
            SourceFallback {
                workload_addr: origin,
                reason: why.to_owned(),
                since: zident_identity::rfc3339(SystemTime::now()),
            },
        );
    }

    /// The workload addresses outbound tunnels cannot originate from.
    pub fn source_fallbacks(&self) -> Vec<SourceFallback> {
        self.fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Registers every metric of the tunnel: [`TunnelMetrics`] and the listeners'.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
        self.listeners.register(registry);
    }

    /// An open HBONE connection closed because a new CRL lists its peer's certificate: counted
    /// as a `revoked` failure, and said with the peer's identity and serial.
    pub fn revoked(&self, direction: Direction, peer: std::net::SocketAddr, leaf: &[u8]) {
        self.failure(direction, Reason::Revoked);
        let (identity, serial) =
            match zident_identity::check_leaf(&rustls_pki_types::CertificateDer::from(leaf)) {
                Ok(info) => (info.id.to_string(), info.serial_hex),
                Err(_) => ("unknown".to_owned(), String::new()),
            };
        tracing::warn!(target: "zident::tunnel", direction = direction.as_str(), %peer, %identity, %serial, reason = %Reason::Revoked, "closed an open HBONE connection: a new CRL lists the peer's certificate (its tunnels end)");
    }

    /// Counts a connection that did not get through.
    pub fn failure(&self, direction: Direction, reason: Reason) {
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                direction: direction.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// How many connections failed in `direction` for `reason` so far.
    pub fn failure_count(&self, direction: Direction, reason: Reason) -> u64 {
        self.metrics
            .failures
            .get_or_create(&FailureLabels {
                direction: direction.as_str(),
                reason: reason.as_str(),
            })
            .get()
    }

    /// Enters a tunnel whose bytes start to flow; it leaves when the guard drops.
    pub fn opened(self: &Arc<Self>, tunnel: OpenTunnel) -> TunnelGuard {
        let labels = TcpLabels {
            reporter: tunnel.direction.reporter(),
            source_principal: tunnel.source.clone(),
            destination_principal: tunnel.destination.clone(),
        };
        let direction = tunnel.direction;
        self.metrics.opened.get_or_create(&labels).inc();
        self.metrics
            .open
            .get_or_create(&DirectionLabel {
                direction: direction.as_str(),
            })
            .inc();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tunnel);
        TunnelGuard {
            observer: self.clone(),
            id,
            direction,
            labels,
            finished: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The open tunnels, oldest first.
    pub fn open_tunnels(&self) -> Vec<OpenTunnel> {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| OpenTunnel {
                age_seconds: t.started.elapsed().as_secs(),
                ..t.clone()
            })
            .collect()
    }
}

/// An open tunnel's entry; dropping it closes the entry. A tunnel whose task is dropped before
/// it reported its bytes (its HBONE connection was lost, its listener closed) still gets its
/// closing log line, and counts as a `connection_lost` failure.
#[derive(Debug)]
pub struct TunnelGuard {
    observer: Arc<Observer>,
    id: u64,
    direction: Direction,
    labels: TcpLabels,
    finished: std::sync::atomic::AtomicBool,
}

impl TunnelGuard {
    /// Counts the bytes of a tunnel that is closing: `received` from the client, `sent` to it.
    pub fn bytes(&self, received: u64, sent: u64) {
        self.finished.store(true, Ordering::Relaxed);
        let m = &self.observer.metrics;
        m.received.get_or_create(&self.labels).inc_by(received);
        m.sent.get_or_create(&self.labels).inc_by(sent);
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let m = &self.observer.metrics;
        m.closed.get_or_create(&self.labels).inc();
        m.open
            .get_or_create(&DirectionLabel {
                direction: self.direction.as_str(),
            })
            .dec();
        let entry = self
            .observer
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if !self.finished.load(Ordering::Relaxed) {
            self.observer
                .failure(self.direction, Reason::ConnectionLost);
            if let Some(t) = entry {
                tracing::warn!(
                    target: "zident::tunnel",
                    direction = self.direction.as_str(),
                    src = %t.source,
                    peer = %t.source_addr,
                    dst = %t.destination,
                    dst_addr = %t.destination_addr,
                    duration_ms = t.started.elapsed().as_millis() as u64,
                    reason = %Reason::ConnectionLost,
                    "tunnel cut: its HBONE connection was lost or its listener closed before it ended"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_enter_and_leave_the_table_and_count() {
        let o = Observer::new();
        let addr: SocketAddr = "127.0.0.2:1234".parse().unwrap();
        let g = o.opened(OpenTunnel::new(
            Direction::Outbound,
            "spiffe://td/ns/a/sa/a".into(),
            addr,
            "spiffe://td/ns/b/sa/b".into(),
            addr,
        ));
        assert_eq!(o.open_tunnels().len(), 1);
        g.bytes(10, 20);
        drop(g);
        assert!(o.open_tunnels().is_empty());
        let mut registry = Registry::default();
        o.metrics().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("istio_tcp_connections_closed_total{reporter=\"source\",source_principal=\"spiffe://td/ns/a/sa/a\",destination_principal=\"spiffe://td/ns/b/sa/b\"} 1"),
            "{text}"
        );
        assert!(text.contains("istio_tcp_received_bytes_total{reporter=\"source\""));
        assert!(text.contains("zident_tunnel_open_connections{direction=\"outbound\"} 0"));
    }

    #[test]
    fn tls_errors_get_their_reason() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            tls_failure(&wrap(rustls::Error::NoCertificatesPresented)).0,
            Reason::NoClientCertificate
        );
        assert_eq!(
            tls_failure(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )))
            .0,
            Reason::UntrustedRoot
        );
        let mismatch = IdentityMismatch {
            got: zident_identity::SpiffeId::new("spiffe://td/ns/x/sa/x").unwrap(),
            expected: "spiffe://td/ns/b/sa/b".into(),
        };
        let (reason, text) = tls_failure(&wrap(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(mismatch))),
        )));
        assert_eq!(reason, Reason::IdentityMismatch);
        assert!(text.contains("presented spiffe://td/ns/x/sa/x"), "{text}");
        assert_eq!(
            tls_failure(&io::Error::other("reset")).0,
            Reason::TlsFailure
        );
    }
}
