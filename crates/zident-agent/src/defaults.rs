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

/// The largest xDS response the agent reads (`--xds-max-response-bytes`): the full push of a
/// 100,000-workload mesh is about 15 MiB.
pub const XDS_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// The most resources of one xDS type the agent holds (`--xds-max-resources`).
pub const XDS_MAX_RESOURCES: usize = 100_000;
/// The longest xDS resource name the agent takes (`--xds-max-name-bytes`): a workload's
/// `<cluster>//Pod/<namespace>/<name>` or a service's `<namespace>/<hostname>` is well under it.
pub const XDS_MAX_NAME_BYTES: usize = 1024;
