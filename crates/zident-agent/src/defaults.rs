//! The defaults of `zident agent`, in one place: [`AgentConfig::new`](crate::AgentConfig::new)
//! and the command line's flags read these, so a default is written once.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Admin endpoints (`/debug/certs`, `/config_dump`, `/logging`): ztunnel's admin port.
pub const ADMIN_ADDR: SocketAddr = local(15000);
/// Prometheus `/metrics`: ztunnel's stats port.
pub const METRICS_ADDR: SocketAddr = local(15020);
/// `/healthz/ready`: ztunnel's readiness port.
pub const READINESS_ADDR: SocketAddr = local(15021);
/// Certificate requests in flight at most.
pub const CONCURRENCY: usize = 8;
/// A certificate is renewed at this share of its lifetime.
pub const RENEWAL_RATIO: f64 = 0.5;
/// Sent to the CA as `clusterid`, as istio-agent and ztunnel send by default.
pub const CLUSTER_ID: &str = "Kubernetes";
/// How long one request to the CA may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Workload API sockets: `<dir>/<namespace>/<workload>/agent.sock`.
pub const WORKLOAD_API_DIR: &str = ".zident/agent/workload-api";
/// The last good mesh from the control plane, kept for a restart during an outage.
pub const XDS_CACHE: &str = ".zident/agent/xds-cache.pb";
/// Threads running the agent and its tunnel.
pub const WORKER_THREADS: usize = 1;
