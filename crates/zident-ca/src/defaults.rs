//! The defaults of `zident ca`, in one place: [`CaConfig::new`](crate::CaConfig::new) and
//! the command line's flags read these, so a default is written once.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// gRPC (IstioCertificateService, xDS) and `/bundle`, over TLS: istiod's port.
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15012));
/// Prometheus `/metrics`: istiod's monitoring port.
pub const METRICS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15014));
/// Where the self-signed roots, the rotation state and the ledger are kept.
pub const DATA_DIR: &str = ".zident/ca";
/// How often clients should re-fetch the trust bundle (`spiffe_refresh_hint`).
pub const REFRESH_HINT: Duration = Duration::from_secs(300);
/// The lifetime of a JWT-SVID by default: short, because a bearer token cannot be bound to
/// the caller's key the way a certificate is.
pub const JWT_TTL: Duration = Duration::from_secs(300);
/// How long a generated self-signed root is valid.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A new root is prepared once the active one has used this share of its lifetime.
pub const PREPARE_AT: f64 = 0.8;
/// A connection with no request in flight for this long is closed (every server's default).
pub const IDLE_TIMEOUT: Duration = zident_listen::IDLE_TIMEOUT;
/// At most this many connections from one source address (every server's default).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = zident_listen::MAX_CONNECTIONS_PER_SOURCE;
/// With `--kubernetes`: the control plane's namespace, where istiod's `istio` ConfigMap is read
/// (istiod's own default).
pub const KUBERNETES_NAMESPACE: &str = "istio-system";
/// xDS streams the CA holds at once over every caller: its xDS memory budget (at most about
/// 110 KiB a stream, so under 1 GiB).
pub const MAX_XDS_STREAMS: usize = 8192;
/// xDS streams one caller may hold at once (a node needs one).
pub const MAX_XDS_STREAMS_PER_CALLER: usize = 16;
/// xDS streams one connection may carry at once.
pub const MAX_XDS_STREAMS_PER_CONNECTION: usize = 4;
/// How long the leader's Lease holds after each renewal (`--leader-lease`), client-go's
/// default: a dead leader is replaced within about this long.
pub const LEADER_LEASE: Duration = Duration::from_secs(15);
/// How long a CRL is valid (`--crl-validity`); it is signed again at half of it, and at once
/// on every revocation. A day, as a workload certificate's default lifetime.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
