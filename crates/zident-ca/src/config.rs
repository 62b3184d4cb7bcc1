//! What `zident ca` is configured with: addresses, key sources, certificate lifetimes, root
//! rotation, connection limits. The flags of the binary fill it; the defaults are here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::defaults;
use crate::roots::rotation;

/// Everything `zident ca` is configured with.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The mesh file.
    pub mesh_path: PathBuf,
    /// Where the self-signed root lives and `root-cert.pem` is published.
    pub data_dir: PathBuf,
    /// Plugged-in keys (Istio's `cacerts` layout) instead of a self-signed root.
    pub root_ca_dir: Option<PathBuf>,
    /// The TLS (gRPC + bundle) listen address.
    pub listen: SocketAddr,
    /// The Prometheus listen address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Names in the serving certificate.
    pub dns_names: Vec<String>,
    /// Certificate lifetimes.
    pub ttl: TtlPolicy,
    /// Lifetime of a JWT-SVID when the request does not ask for one (clamped to `ttl.max_ttl`).
    pub jwt_ttl: Duration,
    /// `spiffe_refresh_hint` for the bundle endpoint.
    pub refresh_hint: Duration,
    /// Where the mesh file's `certificates:` are written; `None`: they are not issued.
    pub dns_cert_dir: Option<PathBuf>,
    /// Root rotation of the self-signed authority.
    pub rotation: RotationConfig,
    /// Bounds on connections: idle timeout, total and per-source caps.
    pub connections: zident_listen::ConnectionLimits,
    /// How many xDS streams one caller and one connection may hold.
    pub xds: crate::xds::XdsLimits,
    /// Shared state in PostgreSQL, for several replicas; `None`: the data dir alone.
    pub datastore: Option<crate::datastore::DatastoreConfig>,
    /// The mesh from a Kubernetes API server (with the mesh file beside it, or alone);
    /// `None`: the mesh file alone.
    pub kubernetes: Option<KubernetesConfig>,
    /// How long a CRL is valid (its nextUpdate); it is signed again at half of it.
    pub crl_validity: Duration,
}

/// When the self-signed root rotates on its own, and how long each phase waits.
#[derive(Debug, Clone, Copy)]
pub struct RotationConfig {
    /// Run the phases on a schedule (prepare at `prepare_at` of the root's life, activate and
    /// retire as soon as each is safe). Off: only `zident ca rotate` moves them.
    pub auto: bool,
    /// Share of the active root's lifetime after which a new one is prepared.
    pub prepare_at: f64,
    /// Lifetime of a new root.
    pub root_lifetime: Duration,
    /// From prepare to activate; `None`: twice the refresh hint. Never less than one hint.
    pub activate_delay: Option<Duration>,
    /// Added to the longest certificate lifetime before the old root may retire: covers a
    /// running CA that picks up a `zident ca rotate activate` a moment late, and clock skew.
    pub retire_margin: Duration,
    /// Added to a pre-prepare certificate's renewal point before its client (one that learns
    /// roots only from responses) is taken to trust the prepared root.
    pub renewal_margin: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            auto: true,
            prepare_at: defaults::PREPARE_AT,
            root_lifetime: defaults::ROOT_LIFETIME,
            activate_delay: None,
            retire_margin: rotation::RETIRE_MARGIN,
            renewal_margin: Duration::from_secs(rotation::RENEWAL_MARGIN_SECS),
        }
    }
}

impl CaConfig {
    /// The phase rules this configuration implies.
    pub fn rotation_timing(&self) -> rotation::Timing {
        let activate = self
            .rotation
            .activate_delay
            .unwrap_or(self.refresh_hint * 2)
            .max(self.refresh_hint);
        rotation::Timing {
            activate_delay_secs: activate.as_secs_f64().ceil() as u64,
            renewal_margin_secs: self.rotation.renewal_margin.as_secs_f64().ceil() as u64,
            retire_delay_secs: (self.ttl.max_ttl + self.rotation.retire_margin)
                .as_secs_f64()
                .ceil() as u64,
        }
    }
}

impl CaConfig {
    /// The defaults of `zident ca` for a mesh file.
    pub fn new(mesh_path: impl Into<PathBuf>) -> Self {
        Self {
            mesh_path: mesh_path.into(),
            data_dir: PathBuf::from(defaults::DATA_DIR),
            root_ca_dir: None,
            listen: defaults::LISTEN,
            metrics_addr: Some(defaults::METRICS_ADDR),
            dns_names: vec!["localhost".into()],
            ttl: TtlPolicy::default(),
            jwt_ttl: defaults::JWT_TTL,
            refresh_hint: defaults::REFRESH_HINT,
            dns_cert_dir: None,
            rotation: RotationConfig::default(),
            connections: Default::default(),
            xds: Default::default(),
            datastore: None,
            kubernetes: None,
            crl_validity: defaults::CRL_VALIDITY,
        }
    }
}

/// Where the CA reads the cluster.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The control plane's namespace: istiod's mesh ConfigMap `istio` is read there.
    pub namespace: String,
    /// How long start-up waits for the first full list of every kind.
    pub initial_sync: Duration,
    /// Whether the mesh file (`CaConfig::mesh_path`) is read beside the API; `false`: the API
    /// alone.
    pub with_mesh_file: bool,
    /// This replica's name in the Events it records.
    pub instance: Option<String>,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, or the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// The ServiceAccounts that may ask for the identities of the pods on their node
    /// (istiod's `CA_TRUSTED_NODE_ACCOUNTS`): ztunnel's and the agent's.
    pub trusted_node_accounts: Vec<crate::kube_auth::NodeAccount>,
    /// Keep the roots, the rotation state and what was issued in the API server (a Secret,
    /// a ConfigMap per replica and a Lease in `namespace`) instead of the data dir alone.
    pub state: Option<crate::cluster_state::ClusterStateConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            namespace: defaults::KUBERNETES_NAMESPACE.into(),
            initial_sync: zident_kube::SourceConfig::default().initial_sync,
            with_mesh_file: true,
            instance: None,
            kubeconfig: None,
            trusted_node_accounts: Vec::new(),
            state: None,
        }
    }
}

/// How long issued certificates live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// Used when a request asks for zero or a negative lifetime.
    pub default_ttl: Duration,
    /// Requests above this are refused with `InvalidArgument`.
    pub max_ttl: Duration,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            default_ttl: zident_identity::profile::DEFAULT_TTL,
            max_ttl: zident_identity::profile::MAX_TTL,
        }
    }
}

impl TtlPolicy {
    /// The lifetime for a requested `validity_duration` in seconds.
    pub fn resolve(&self, requested_secs: i64) -> Result<Duration, TtlTooLong> {
        if requested_secs <= 0 {
            return Ok(self.default_ttl);
        }
        let ttl = Duration::from_secs(requested_secs as u64);
        if ttl > self.max_ttl {
            return Err(TtlTooLong {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        Ok(ttl)
    }
}

/// A request for a longer lifetime than the CA issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "requested validity {}s is above the maximum of {}s",
    requested.as_secs(),
    max.as_secs()
)]
pub struct TtlTooLong {
    /// What was asked for.
    pub requested: Duration,
    /// The most the CA issues.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_policy() {
        let p = TtlPolicy {
            default_ttl: Duration::from_secs(100),
            max_ttl: Duration::from_secs(1000),
        };
        assert_eq!(p.resolve(0), Ok(Duration::from_secs(100)));
        assert_eq!(p.resolve(-5), Ok(Duration::from_secs(100)));
        assert_eq!(p.resolve(1000), Ok(Duration::from_secs(1000)));
        assert!(
            p.resolve(1001)
                .unwrap_err()
                .to_string()
                .contains("maximum of 1000s")
        );
    }
}
