//! What the agent is configured with. The binary fills this from Istio's environment names
//! and flags; tests build it directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::defaults;

/// Where the bearer token for the CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Read from this file on every request, so a rotated token is picked up.
    File(PathBuf),
    /// A literal token.
    Literal(String),
}

impl TokenSource {
    /// Istio's `AUTH_TOKEN` convention: a path to an existing file, else the token itself.
    pub fn from_setting(value: &str) -> Self {
        let path = PathBuf::from(value);
        if path.is_file() {
            Self::File(path)
        } else {
            Self::Literal(value.to_owned())
        }
    }

    /// The current token, without blocking the runtime: a file is read on every request (so a
    /// rotated token is picked up), and a slow disk must not stall the tunnels meanwhile.
    pub async fn read(&self) -> Result<String, TokenError> {
        match self {
            Self::Literal(t) => Ok(t.clone()),
            Self::File(p) => tokio::fs::read_to_string(p)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|source| TokenError::Unreadable {
                    path: p.clone(),
                    source: std::sync::Arc::new(source),
                }),
        }
    }
}

/// Why the bearer token for the CA could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read AUTH_TOKEN file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::sync::Arc<std::io::Error>,
    },
    /// The token cannot travel in an HTTP header.
    #[error("AUTH_TOKEN has characters not allowed in a header")]
    NotAHeader,
}

/// When and how certificates are renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// Renew at notBefore + this share of the lifetime (0.5 = half-life).
    pub ratio: f64,
    /// Renew up to this share of the lifetime earlier, at random, so a node's certificates do
    /// not all renew at once.
    pub jitter: f64,
    /// Never renew sooner than this after receiving a certificate (capped at half of what is
    /// left of its life), so a lifetime shorter than the CA's backdate cannot make a loop.
    pub min_interval: Duration,
    /// First retry delay after a failure; doubles on each further failure.
    pub backoff_initial: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// Renew every certificate early, spread over [`EARLY_RENEWAL_SPREAD`], once a certificate
    /// arrives under a different root than the one before (a root rotation activated).
    /// Off by default: certificates then move to the new root at their normal renewal.
    pub renew_on_root_change: bool,
}

/// Early renewals after a change of signing root start within this long of it, at random, so a
/// node's certificates do not all go to the CA at once.
pub const EARLY_RENEWAL_SPREAD: Duration = Duration::from_secs(5);

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            ratio: defaults::RENEWAL_RATIO,
            jitter: 0.05,
            min_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(150),
            renew_on_root_change: false,
        }
    }
}

/// The CA connection.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// `CA_ADDRESS`: `host:port`, with or without `https://`.
    pub address: String,
    /// `CA_ROOT_CA`: PEM file trusted for the CA's TLS (and as initial trust bundle).
    pub root_ca: PathBuf,
    /// `AUTH_TOKEN`.
    pub token: TokenSource,
    /// `CLUSTER_ID`, sent as `clusterid` metadata.
    pub cluster_id: String,
    /// Deadline of one certificate request.
    pub request_timeout: Duration,
    /// Poll the CA's `/bundle` endpoint (zident's CA has one; istiod does not).
    pub poll_bundle: bool,
}

/// Everything `zident agent` runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `NODE_NAME`: whose workloads to serve.
    pub node: String,
    /// Where the mesh comes from: a file, or the control plane's xDS stream.
    pub mesh: MeshSource,
    /// `TRUST_DOMAIN`, if set: must agree with the mesh file.
    pub trust_domain: Option<String>,
    /// The CA.
    pub ca: CaClientConfig,
    /// `SECRET_TTL`: requested certificate lifetime.
    pub secret_ttl: Duration,
    /// Renewal timing.
    pub renewal: RenewalPolicy,
    /// At most this many certificate requests in flight.
    pub concurrency: usize,
    /// Admin (`/debug/certs`, `/config_dump`, ...), loopback by default.
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// `/healthz/ready`.
    pub readiness_addr: Option<SocketAddr>,
    /// Serve `/metrics` over TLS with the agent's own certificate.
    pub metrics_tls: bool,
    /// Workload API sockets and PEM files for workloads (both off unless set).
    pub delivery: DeliveryConfig,
    /// The node's data plane (the tunnel), whose metrics and open connections the agent's
    /// endpoints show beside its own.
    pub data_plane: Option<std::sync::Arc<dyn DataPlane>>,
    /// What the agent takes from the control plane's xDS stream, at most.
    pub xds_bounds: crate::xds::bounds::XdsBounds,
    /// The limits of every port of the node (admin, metrics, readiness, and the tunnel's
    /// HBONE, SOCKS5 and capture listeners), in one budget.
    pub listen: zident_listen::ConnectionLimits,
}

/// Where an agent's mesh comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshSource {
    /// A mesh file (`LOCAL_XDS_PATH`), watched and reloaded on change.
    File(PathBuf),
    /// The control plane's Delta xDS stream on the CA's address, with the same TLS and token
    /// as certificate requests, as ztunnel gets its mesh from istiod.
    ControlPlane {
        /// Where the last good view is kept, so an agent restarted while the control plane is
        /// down comes back serving its workloads.
        cache: Option<PathBuf>,
    },
}

/// What a data plane running beside the agent adds to its endpoints. The tunnel lives in its
/// own crate and starts after the agent; this is how its state reaches `/metrics` and
/// `/debug/connections` without the agent depending on it.
pub trait DataPlane: Send + Sync + std::fmt::Debug + 'static {
    /// Registers the data plane's metrics in the agent's registry.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry);
    /// The open connections, as `/debug/connections` lists them under `tunnels`.
    fn connections(&self) -> serde_json::Value;
    /// The data plane's listeners and how its traffic leaves, as `/debug/connections` lists
    /// them under `listeners`.
    fn listeners(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

impl AgentConfig {
    /// The agent's defaults for a node, mesh file and CA.
    pub fn new(node: impl Into<String>, mesh_path: impl Into<PathBuf>, ca: CaClientConfig) -> Self {
        Self::with_mesh(node, MeshSource::File(mesh_path.into()), ca)
    }

    /// The agent's defaults for a node whose mesh comes from the control plane at `ca`'s
    /// address, keeping its last good view at `cache`.
    pub fn from_control_plane(
        node: impl Into<String>,
        cache: Option<PathBuf>,
        ca: CaClientConfig,
    ) -> Self {
        Self::with_mesh(node, MeshSource::ControlPlane { cache }, ca)
    }

    fn with_mesh(node: impl Into<String>, mesh: MeshSource, ca: CaClientConfig) -> Self {
        Self {
            node: node.into(),
            mesh,
            trust_domain: None,
            ca,
            secret_ttl: zident_identity::profile::DEFAULT_TTL,
            renewal: RenewalPolicy::default(),
            concurrency: defaults::CONCURRENCY,
            admin_addr: Some(defaults::ADMIN_ADDR),
            metrics_addr: Some(defaults::METRICS_ADDR),
            readiness_addr: Some(defaults::READINESS_ADDR),
            metrics_tls: false,
            delivery: Default::default(),
            data_plane: None,
            xds_bounds: Default::default(),
            listen: Default::default(),
        }
    }
}

/// Where and how workloads get their identities.
#[derive(Debug, Clone, Default)]
pub struct DeliveryConfig {
    /// Workload API sockets, if enabled.
    pub socket_dir: Option<PathBuf>,
    /// One Workload API socket for every workload, attesting each caller, if enabled.
    pub shared_socket: Option<PathBuf>,
    /// The group that may use the shared socket (0660); `None`: everyone (0666).
    pub shared_socket_group: Option<u32>,
    /// PEM files, if enabled.
    pub svid_dir: Option<PathBuf>,
    /// Run after each write of a workload's files (`sh -c`).
    pub svid_command: Option<String>,
}
