//! Command-line flags. Each setting that Istio names by an environment variable can be set
//! by that variable too; a flag wins over the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use zident_ca::{CaConfig, RunningCa, TtlPolicy};

use crate::duration::{flag, parse_duration};
use crate::logging::{LogFormat, LogHandle};
use crate::up::UpArgs;
use crate::wiring::{start_node, wait_for_shutdown, wait_for_signal};
use zident_agent::defaults;
use zident_ca::defaults as ca_defaults;
use zident_identity::profile;
use zident_tunnel::defaults as tunnel_defaults;

/// Workload identity for a zero-trust service mesh.
#[derive(Debug, Parser)]
#[command(name = "zident", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the certificate authority (Istio-compatible, SPIFFE X.509 SVIDs).
    Ca(Box<CaArgs>),
    /// Run the node agent: certificates for every identity on this node, kept rotated.
    Agent(Box<AgentArgs>),
    /// Run zident on the embedded default mesh (examples/local.yaml) for a first look.
    Up(UpArgs),
    /// Show the certificates of a running agent.
    Certs(crate::certs::CertsArgs),
    /// Check a certificate file against the X509-SVID rules; exit 0 only if all pass.
    Inspect(crate::inspect::InspectArgs),
}

/// Flags of `zident agent`; each also reads Istio's environment variable.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The mesh file (ztunnel local-config shape): which workloads run on this node. Without
    /// it the mesh comes from the control plane (`zident ca`) over xDS, as ztunnel's does.
    #[arg(
        long,
        env = "LOCAL_XDS_PATH",
        value_name = "FILE",
        conflicts_with = "xds"
    )]
    pub config: Option<PathBuf>,
    /// Take the mesh from the control plane's xDS stream on CA_ADDRESS (the default when no
    /// --config is given).
    #[arg(long)]
    pub xds: bool,
    /// Where the last good mesh from the control plane is kept, so an agent restarted during a
    /// control-plane outage comes back serving its workloads.
    #[arg(
        long,
        env = "ZIDENT_XDS_CACHE",
        value_name = "FILE",
        default_value = defaults::XDS_CACHE
    )]
    pub xds_cache: PathBuf,
    /// The largest xDS response read from the control plane (a larger one ends the stream,
    /// saying so; the last good mesh stays).
    #[arg(long, value_name = "BYTES", default_value_t = zident_agent::defaults::XDS_MAX_RESPONSE_BYTES)]
    pub xds_max_response_bytes: usize,
    /// The most resources of one xDS type held (a response past it is NACKed, saying so).
    #[arg(long, value_name = "N", default_value_t = zident_agent::defaults::XDS_MAX_RESOURCES)]
    pub xds_max_resources: usize,
    /// The longest xDS resource name taken (a response with a longer one is NACKed).
    #[arg(long, value_name = "BYTES", default_value_t = zident_agent::defaults::XDS_MAX_NAME_BYTES)]
    pub xds_max_name_bytes: usize,
    /// At most this many connections on the node's ports together (admin, metrics, readiness,
    /// HBONE, SOCKS5, capture); default: the open-files limit less 64. At the cap, the
    /// longest-idle connection is closed to admit a new one.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// At most this many connections from one source address.
    #[arg(long, value_name = "N", default_value_t = zident_listen::MAX_CONNECTIONS_PER_SOURCE)]
    pub max_connections_per_source: usize,
    /// Close a connection with nothing in flight (no request, no tunnel) for this long.
    #[arg(long, default_value = flag(zident_listen::IDLE_TIMEOUT), value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// This node's name in the mesh file.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node: String,
    /// The CA, host:port (alias CA_ADDR).
    #[arg(long, env = "CA_ADDRESS", value_name = "HOST:PORT")]
    pub ca_address: Option<String>,
    /// PEM file of roots trusted for the CA's TLS (the CA's root-cert.pem).
    #[arg(long, env = "CA_ROOT_CA", value_name = "FILE")]
    pub ca_root_ca: PathBuf,
    /// Bearer token for the CA: a file path (re-read on every request) or the token itself.
    #[arg(
        long,
        env = "AUTH_TOKEN",
        value_name = "FILE|TOKEN",
        hide_env_values = true
    )]
    pub auth_token: String,
    /// Requested certificate lifetime.
    #[arg(long, env = "SECRET_TTL", default_value = flag(profile::DEFAULT_TTL), value_parser = parse_duration)]
    pub secret_ttl: Duration,
    /// Sent to the CA as `clusterid`.
    #[arg(long, env = "CLUSTER_ID", default_value = defaults::CLUSTER_ID)]
    pub cluster_id: String,
    /// Must agree with the mesh file's trustDomain, if given.
    #[arg(long, env = "TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Admin endpoints (/debug/certs, /config_dump, /debug/connections, /logging).
    #[arg(long, value_name = "ADDR", default_value_t = defaults::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// Prometheus /metrics.
    #[arg(long, value_name = "ADDR", default_value_t = defaults::METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// /healthz/ready.
    #[arg(long, value_name = "ADDR", default_value_t = defaults::READINESS_ADDR)]
    pub readiness_addr: SocketAddr,
    /// Serve /metrics over TLS with the agent's own certificate (needs `spiffeId` on this node
    /// in the mesh file).
    #[arg(long)]
    pub metrics_tls: bool,
    /// Renew at this share of a certificate's lifetime.
    #[arg(long, default_value_t = defaults::RENEWAL_RATIO)]
    pub rotation_ratio: f64,
    /// When a certificate arrives under another root than the one before (the CA's root
    /// rotation activated), renew the node's other certificates at once rather than at their
    /// normal renewal.
    #[arg(long, env = "RENEW_ON_ROOT_CHANGE")]
    pub renew_on_root_change: bool,
    /// Certificate requests in flight at most.
    #[arg(long, default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// SPIFFE Workload API sockets: DIR/<namespace>/<workload>/agent.sock.
    #[arg(long, value_name = "DIR", default_value = defaults::WORKLOAD_API_DIR)]
    pub workload_api_dir: PathBuf,
    /// Do not serve the Workload API.
    #[arg(long)]
    pub no_workload_api: bool,
    /// Also serve one Workload API socket for every workload of the node, open to every local
    /// user (0666): each caller is attested by its network namespace's addresses, or by the
    /// user its workload declares, and gets that workload's identity only.
    #[arg(long, env = "ZIDENT_WORKLOAD_API_SOCKET", value_name = "PATH")]
    pub workload_api_socket: Option<PathBuf>,
    /// Open the shared socket to this group only (0660), a gid or a group name.
    #[arg(long, value_name = "GROUP", requires = "workload_api_socket")]
    pub workload_api_group: Option<String>,
    /// Keep DIR/<namespace>/<workload>/{svid.pem, svid_key.pem, bundle.pem} current.
    #[arg(long, value_name = "DIR")]
    pub svid_dir: Option<PathBuf>,
    /// Run after each write of a workload's SVID files (with `sh -c`; ZIDENT_SVID_DIR,
    /// ZIDENT_SPIFFE_ID and ZIDENT_SERIAL are set).
    #[arg(long, value_name = "COMMAND", requires = "svid_dir")]
    pub svid_command: Option<String>,
    /// Outbound tunnel: SOCKS5 for local workloads.
    #[arg(long, value_name = "ADDR", default_value_t = tunnel_defaults::SOCKS5_ADDR)]
    pub socks5_addr: SocketAddr,
    /// Outbound tunnel: connections redirected here by iptables/nftables (`SO_ORIGINAL_DST`).
    #[arg(long, value_name = "ADDR", default_value_t = tunnel_defaults::OUTBOUND_ADDR)]
    pub outbound_addr: SocketAddr,
    /// Do not listen for redirected (captured) outbound connections.
    #[arg(long)]
    pub no_capture: bool,
    /// Inbound tunnel: the HBONE port on every local HBONE workload address.
    #[arg(long, value_name = "PORT", default_value_t = tunnel_defaults::INBOUND_PORT)]
    pub inbound_port: u16,
    /// Inbound tunnel: one shared HBONE address for all local workloads instead (give the
    /// node this `address` in the mesh file so other nodes use it).
    #[arg(long, value_name = "ADDR")]
    pub inbound_addr: Option<SocketAddr>,
    /// Outbound tunnel: leave from a workload's own address even when the node does not have
    /// it (IP_TRANSPARENT; needs CAP_NET_ADMIN and routing that returns replies to this node,
    /// like ztunnel's ENABLE_ORIG_SRC). Without it such tunnels leave from the node's address
    /// and `/debug/connections` says so under `source_fallbacks`.
    #[arg(long, env = "ZIDENT_TRANSPARENT_SOURCE")]
    pub transparent_source: bool,
    /// Tunnel: accept a peer certificate whose notBefore is up to this far in the future, for
    /// clock skew between nodes (default: the 2 minutes a CA backdates certificates).
    #[arg(long, default_value = flag(zident_tunnel::SKEW_TOLERANCE), value_parser = parse_duration)]
    pub clock_skew_tolerance: Duration,
    /// Do not run the tunnel (certificates only).
    #[arg(long)]
    pub no_tunnel: bool,
    /// Threads running the agent and its tunnel. One keeps each tunnel's bytes on one core,
    /// which is fastest per connection and leaves the node's other cores to its workloads;
    /// raise it on nodes with many busy tunnels at once.
    #[arg(long, env = "ZIDENT_WORKER_THREADS", default_value_t = defaults::WORKER_THREADS)]
    pub worker_threads: usize,
}

impl AgentArgs {
    /// The agent configuration these flags describe.
    pub fn into_config(self) -> Result<zident_agent::AgentConfig, String> {
        let address = self
            .ca_address
            .or_else(|| std::env::var("CA_ADDR").ok())
            .ok_or("--ca-address (CA_ADDRESS or CA_ADDR) is required")?;
        if !(0.05..=0.95).contains(&self.rotation_ratio) {
            return Err(format!(
                "--rotation-ratio {} is outside 0.05..0.95",
                self.rotation_ratio
            ));
        }
        if self.secret_ttl < Duration::from_secs(2) {
            return Err("--secret-ttl (SECRET_TTL) must be at least 2s".into());
        }
        let ca = zident_agent::CaClientConfig {
            address,
            root_ca: self.ca_root_ca,
            token: zident_agent::TokenSource::from_setting(&self.auth_token),
            cluster_id: self.cluster_id,
            request_timeout: defaults::REQUEST_TIMEOUT,
            poll_bundle: true,
        };
        let mut config = match self.config {
            Some(path) => zident_agent::AgentConfig::new(self.node, path, ca),
            None => {
                zident_agent::AgentConfig::from_control_plane(self.node, Some(self.xds_cache), ca)
            }
        };
        if self.xds_max_response_bytes == 0
            || self.xds_max_resources == 0
            || self.xds_max_name_bytes == 0
        {
            return Err("--xds-max-response-bytes, --xds-max-resources and --xds-max-name-bytes must be more than zero".into());
        }
        if self.idle_timeout.is_zero()
            || self.max_connections == Some(0)
            || self.max_connections_per_source == 0
        {
            return Err("--idle-timeout, --max-connections and --max-connections-per-source must be more than zero".into());
        }
        config.listen = zident_listen::ConnectionLimits {
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
        };
        config.xds_bounds = zident_agent::XdsBounds {
            max_response_bytes: self.xds_max_response_bytes,
            max_resources: self.xds_max_resources,
            max_name_bytes: self.xds_max_name_bytes,
        };
        config.trust_domain = self.trust_domain;
        config.secret_ttl = self.secret_ttl;
        config.renewal.ratio = self.rotation_ratio;
        config.renewal.renew_on_root_change = self.renew_on_root_change;
        config.concurrency = self.concurrency.max(1);
        config.admin_addr = Some(self.admin_addr);
        config.metrics_addr = Some(self.metrics_addr);
        config.readiness_addr = Some(self.readiness_addr);
        config.metrics_tls = self.metrics_tls;
        let shared_socket_group = self
            .workload_api_group
            .as_deref()
            .map(zident_agent::group_id)
            .transpose()
            .map_err(|e| format!("--workload-api-group: {e}"))?;
        config.delivery = zident_agent::workload_api::DeliveryConfig {
            shared_socket: self.workload_api_socket.filter(|_| !self.no_workload_api),
            shared_socket_group,
            socket_dir: (!self.no_workload_api).then_some(self.workload_api_dir),
            svid_dir: self.svid_dir,
            svid_command: self.svid_command,
        };
        Ok(config)
    }
}

/// Flags of `zident ca`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CaArgs {
    /// Instead of running the CA: rotate its root, or show the rotation's status.
    #[command(subcommand)]
    pub action: Option<crate::rotate::CaAction>,
    /// The mesh file: trust domain, nodes and their tokens, workloads. With --datastore: the
    /// mesh to store as the first version when the datastore holds none. With --kubernetes:
    /// what is added to the cluster's mesh (nodes and their tokens, workloads outside it).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["datastore", "kubernetes"])]
    pub config: Option<PathBuf>,
    /// Take the mesh from the Kubernetes API as istiod does for ztunnel: Pods and Namespaces
    /// labelled `istio.io/dataplane-mode=ambient`, Services, AuthorizationPolicies and the
    /// `istio` ConfigMap's meshConfig. The client comes from KUBECONFIG, or the pod's service
    /// account in a cluster.
    #[arg(long, conflicts_with = "datastore")]
    pub kubernetes: bool,
    /// With --kubernetes: the control plane's namespace, where the `istio` ConfigMap is read.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE", default_value = ca_defaults::KUBERNETES_NAMESPACE, requires = "kubernetes")]
    pub kubernetes_namespace: String,
    /// With --kubernetes: the kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the
    /// pod's service account).
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the ServiceAccounts (`namespace/name`, comma-separated) whose pods
    /// are node agents: with a token bound to their pod they may ask for the identity of any
    /// pod on the same node (ztunnel's `istio-system/ztunnel`). Every other ServiceAccount
    /// token gets its own identity only.
    /// Empty: none. Without --kubernetes it is not read.
    #[arg(
        long,
        env = "CA_TRUSTED_NODE_ACCOUNTS",
        value_name = "NS/NAME,...",
        default_value = ""
    )]
    pub trusted_node_accounts: String,
    /// With --kubernetes: keep the roots, their keys and the rotation state in the Secret
    /// `zident-ca-roots` of the control plane's namespace, what each replica issued in a
    /// ConfigMap of its own, and elect the replica that rotates with the Lease
    /// `zident-ca-leader`: replicas share one root and need no volume or database.
    #[arg(
        long,
        env = "ZIDENT_ROOTS_IN_CLUSTER",
        requires = "kubernetes",
        conflicts_with = "root_ca_dir"
    )]
    pub roots_in_cluster: bool,
    /// With --roots-in-cluster: how long the leader's Lease holds after each renewal; another
    /// replica takes over within about this long after the leader dies.
    #[arg(long, default_value = flag(ca_defaults::LEADER_LEASE), value_parser = parse_duration)]
    pub leader_lease: Duration,
    /// Share roots, rotation and the mesh with other replicas in PostgreSQL
    /// (`postgres://user@host:port/db`); without it, the data dir alone.
    #[arg(
        long,
        env = "ZIDENT_DATASTORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub datastore: Option<String>,
    /// With --datastore: the 256-bit key that seals root keys in the database (32 random
    /// bytes or 64 hex digits; `head -c 32 /dev/urandom > kek`). Never stored there.
    #[arg(
        long,
        env = "ZIDENT_KEK_FILE",
        value_name = "FILE",
        requires = "datastore"
    )]
    pub kek_file: Option<PathBuf>,
    /// With --datastore or --roots-in-cluster: this replica's name in `zident ca status` and
    /// the leader's Lease (default: POD_NAME, else host:listen).
    #[arg(long, value_name = "NAME")]
    pub replica_name: Option<String>,
    /// Where the self-signed root is kept and root-cert.pem is published.
    #[arg(long, value_name = "DIR", default_value = ca_defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Address for gRPC (IstioCertificateService) and the trust bundle endpoint, over TLS.
    #[arg(long, value_name = "ADDR", default_value_t = ca_defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Address for Prometheus metrics (/metrics).
    #[arg(long, value_name = "ADDR", default_value_t = ca_defaults::METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// A DNS name (or IP) in the CA's serving certificate; repeatable. Default: localhost.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// Plugged-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) instead of
    /// a self-signed root.
    #[arg(long, env = "ROOT_CA_DIR", value_name = "DIR")]
    pub root_ca_dir: Option<PathBuf>,
    /// Lifetime of a certificate when the request does not ask for one.
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = flag(profile::DEFAULT_TTL), value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// The longest lifetime a request may ask for.
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = flag(profile::MAX_TTL), value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Issue the mesh file's `certificates:` (DNS names) into DIR/<secretName>/ (cert-chain.pem,
    /// key.pem, root-cert.pem), renewed at half their lifetime (--default-ttl).
    #[arg(long, value_name = "DIR")]
    pub dns_cert_dir: Option<PathBuf>,
    /// Lifetime of a JWT-SVID when the request does not ask for one (at most --max-ttl).
    #[arg(long, default_value = flag(ca_defaults::JWT_TTL), value_parser = parse_duration)]
    pub jwt_ttl: Duration,
    /// How often clients should re-fetch the trust bundle (spiffe_refresh_hint).
    #[arg(long, default_value = flag(ca_defaults::REFRESH_HINT), value_parser = parse_duration)]
    pub bundle_refresh_hint: Duration,
    /// Do not rotate the self-signed root on a schedule (only `zident ca rotate` does).
    #[arg(long)]
    pub no_auto_rotate: bool,
    /// Prepare a new root once the active one has used this share of its lifetime.
    #[arg(long, default_value_t = ca_defaults::PREPARE_AT)]
    pub rotate_at: f64,
    /// How long a retired root stays trusted after the longest certificate it may have signed
    /// (--max-ttl) would have expired: room for clocks and late renewals.
    #[arg(long, default_value = flag(zident_ca::rotation::RETIRE_MARGIN), value_parser = parse_duration)]
    pub retire_margin: Duration,
    /// Lifetime of a self-signed root made by this CA.
    #[arg(long, default_value = flag(ca_defaults::ROOT_LIFETIME), value_parser = parse_duration)]
    pub root_lifetime: Duration,
    /// How long each CRL is valid (its nextUpdate); it is signed again at half of it, and at
    /// once on every revocation.
    #[arg(long, default_value = flag(ca_defaults::CRL_VALIDITY), value_parser = parse_duration)]
    pub crl_validity: Duration,
    /// Close a connection with no request in flight for this long.
    #[arg(long, default_value = flag(ca_defaults::IDLE_TIMEOUT), value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// At most this many connections (default: the open-files limit less 64); at the cap, the
    /// longest-idle connection is closed to admit a new one.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// At most this many xDS streams at once over every caller: the CA's xDS memory budget
    /// (about 110 KiB a stream at most).
    #[arg(long, value_name = "N", default_value_t = ca_defaults::MAX_XDS_STREAMS)]
    pub max_xds_streams: usize,
    /// At most this many xDS streams held by one caller (a node token, an identity token, a
    /// ServiceAccount's pod) at once; a node needs one.
    #[arg(long, value_name = "N", default_value_t = ca_defaults::MAX_XDS_STREAMS_PER_CALLER)]
    pub max_xds_streams_per_caller: usize,
    /// At most this many xDS streams on one connection at once.
    #[arg(long, value_name = "N", default_value_t = ca_defaults::MAX_XDS_STREAMS_PER_CONNECTION)]
    pub max_xds_streams_per_connection: usize,
    /// At most this many connections from one source address.
    #[arg(long, value_name = "N", default_value_t = ca_defaults::MAX_CONNECTIONS_PER_SOURCE)]
    pub max_connections_per_source: usize,
}

impl CaArgs {
    /// This replica's name: `--replica-name`, else the pod's name, else host:listen.
    fn replica_name(&self) -> String {
        self.replica_name
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "localhost".into());
                format!("{host}:{}", self.listen)
            })
    }

    /// The CA configuration these flags describe.
    pub fn into_config(self) -> Result<CaConfig, String> {
        if self.default_ttl.is_zero() {
            return Err("--default-ttl (DEFAULT_WORKLOAD_CERT_TTL) must be more than zero".into());
        }
        if self.default_ttl > self.max_ttl {
            return Err(format!(
                "--default-ttl ({}s) is above --max-ttl ({}s)",
                self.default_ttl.as_secs(),
                self.max_ttl.as_secs()
            ));
        }
        if self.leader_lease < Duration::from_secs(2) {
            return Err(format!(
                "--leader-lease {}s is too short: a leader renews once a second, so give it at least 2s",
                self.leader_lease.as_secs_f64()
            ));
        }
        if !(0.1..=0.95).contains(&self.rotate_at) {
            return Err(format!(
                "--rotate-at {} is outside 0.1..0.95",
                self.rotate_at
            ));
        }
        let mut config = match (&self.datastore, self.config.clone()) {
            (Some(url), import) => {
                let kek_file = self
                    .kek_file
                    .clone()
                    .ok_or("--kek-file (ZIDENT_KEK_FILE) is required with --datastore")?;
                let mut c = CaConfig::new(self.data_dir.join("mesh.yaml"));
                c.datastore = Some(zident_ca::datastore::DatastoreConfig {
                    url: url.clone(),
                    kek_file,
                    name: self.replica_name(),
                    import,
                });
                c
            }
            (None, Some(mesh)) => CaConfig::new(mesh),
            (None, None) if self.kubernetes => CaConfig::new(""),
            (None, None) => return Err("--config is required to run the CA".into()),
        };
        if self.kubernetes {
            config.kubernetes = Some(zident_ca::KubernetesConfig {
                namespace: self.kubernetes_namespace.clone(),
                with_mesh_file: self.config.is_some(),
                instance: std::env::var("POD_NAME").ok(),
                kubeconfig: self.kubeconfig.clone(),
                trusted_node_accounts: node_accounts(&self.trusted_node_accounts)?,
                state: self.roots_in_cluster.then(|| {
                    zident_ca::cluster_state::ClusterStateConfig {
                        replica: self.replica_name(),
                        lease_duration: self.leader_lease,
                    }
                }),
                ..Default::default()
            });
        }
        config.rotation.auto = !self.no_auto_rotate;
        config.rotation.prepare_at = self.rotate_at;
        config.rotation.root_lifetime = self.root_lifetime;
        config.rotation.retire_margin = self.retire_margin;
        if self.crl_validity < std::time::Duration::from_secs(2) {
            return Err("--crl-validity must be at least 2s".into());
        }
        config.crl_validity = self.crl_validity;
        if self.idle_timeout.is_zero()
            || self.max_connections == Some(0)
            || self.max_connections_per_source == 0
        {
            return Err("--idle-timeout, --max-connections and --max-connections-per-source must be more than zero".into());
        }
        if self.max_xds_streams == 0
            || self.max_xds_streams_per_caller == 0
            || self.max_xds_streams_per_connection == 0
        {
            return Err(
                "--max-xds-streams, --max-xds-streams-per-caller and --max-xds-streams-per-connection must be more than zero".into(),
            );
        }
        config.xds = zident_ca::XdsLimits {
            max_streams: self.max_xds_streams,
            max_streams_per_caller: self.max_xds_streams_per_caller,
            max_streams_per_connection: self.max_xds_streams_per_connection,
        };
        config.connections = zident_ca::ConnectionLimits {
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
        };
        config.data_dir = self.data_dir;
        config.listen = self.listen;
        config.metrics_addr = Some(self.metrics_addr);
        if !self.dns_names.is_empty() {
            config.dns_names = self.dns_names;
        }
        config.root_ca_dir = self.root_ca_dir;
        config.ttl = TtlPolicy {
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
        };
        if self.jwt_ttl.is_zero() {
            return Err("--jwt-ttl must be more than zero".into());
        }
        config.jwt_ttl = self.jwt_ttl.min(self.max_ttl);
        config.dns_cert_dir = self.dns_cert_dir;
        config.refresh_hint = self.bundle_refresh_hint;
        Ok(config)
    }
}

/// Runs a subcommand to completion.
pub async fn run(command: Command, log: Arc<LogHandle>) -> Result<ExitCode, String> {
    match command {
        Command::Certs(args) => crate::certs::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => crate::inspect::run(args).map(|passed| {
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Command::Agent(args) => {
            let tunnel = (!args.no_tunnel).then_some(zident_tunnel::TunnelConfig {
                socks5_addr: Some(args.socks5_addr),
                outbound_addr: (!args.no_capture).then_some(args.outbound_addr),
                inbound_port: args.inbound_port,
                inbound_addr: args.inbound_addr,
                transparent_source: args.transparent_source,
                skew_tolerance: args.clock_skew_tolerance,
            });
            let config = (*args).into_config()?;
            let (agent, tunnel) = start_node(config, tunnel, log).await?;
            if let Some(s) = tunnel.as_ref().and_then(|t| t.socks5_addr) {
                crate::print::say!("zident agent: SOCKS5 outbound at {s}");
            }
            if let Some(s) = tunnel.as_ref().and_then(|t| t.outbound_addr) {
                crate::print::say!("zident agent: captured outbound (iptables REDIRECT) at {s}");
            }
            if let Some(a) = agent.admin_addr {
                crate::print::say!("zident agent: admin at http://{a}/debug/certs");
            }
            wait_for_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(mut args) => {
            if let Some(action) = args.action.take() {
                return crate::rotate::run(action).await;
            }
            let config = args.into_config()?;
            let mut ca = RunningCa::start(config).await.map_err(|e| e.to_string())?;
            crate::print::say!(
                "zident ca: listening on {} (TLS), bundle at {}",
                ca.addr,
                ca.root_cert_path.display()
            );
            if let Some(m) = ca.metrics_addr {
                crate::print::say!("zident ca: metrics at http://{m}/metrics");
            }
            wait_for_shutdown(&mut ca).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => crate::up::run(args, log).await.map(|()| ExitCode::SUCCESS),
    }
}

/// `--trusted-node-accounts`: `namespace/name` entries, comma-separated; empty entries (an
/// empty variable, a trailing comma) name nobody.
fn node_accounts(list: &str) -> Result<Vec<zident_ca::NodeAccount>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse()
                .map_err(|e| format!("--trusted-node-accounts (CA_TRUSTED_NODE_ACCOUNTS): {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, node_accounts};

    #[test]
    fn trusted_node_accounts_are_read_and_refused_by_entry() {
        let names = |l: &str| -> Vec<String> {
            node_accounts(l)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert!(names("").is_empty(), "an empty variable names nobody");
        assert_eq!(
            names("istio-system/ztunnel, istio-system/zident-agent,"),
            ["istio-system/ztunnel", "istio-system/zident-agent"]
        );
        let e = node_accounts("istio-system/ztunnel,ztunnel").unwrap_err();
        assert!(
            e.contains("\"ztunnel\"")
                && e.contains("namespace/name")
                && e.contains("CA_TRUSTED_NODE_ACCOUNTS"),
            "{e}"
        );
    }

    /// The flags' defaults are the libraries' own: a CA and an agent configured from no flags
    /// at all equal the ones the libraries make for the same mesh file.
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        // Environment variables would win over the defaults under test.
        for var in [
            "DEFAULT_WORKLOAD_CERT_TTL",
            "MAX_WORKLOAD_CERT_TTL",
            "SECRET_TTL",
            "CLUSTER_ID",
            "ZIDENT_WORKER_THREADS",
        ] {
            if std::env::var_os(var).is_some() {
                eprintln!("SKIPPED: {var} is set");
                return;
            }
        }
        let cli = Cli::try_parse_from(["zident", "ca", "--config", "mesh.yaml"]).unwrap();
        let Command::Ca(ca) = cli.command else {
            panic!("not ca")
        };
        let from_flags = ca.into_config().unwrap();
        let library = zident_ca::CaConfig::new("mesh.yaml");
        assert_eq!(from_flags.data_dir, library.data_dir);
        assert_eq!(from_flags.listen, library.listen);
        assert_eq!(from_flags.metrics_addr, library.metrics_addr);
        assert_eq!(from_flags.ttl.default_ttl, library.ttl.default_ttl);
        assert_eq!(from_flags.ttl.max_ttl, library.ttl.max_ttl);
        assert_eq!(from_flags.jwt_ttl, library.jwt_ttl);
        assert_eq!(from_flags.refresh_hint, library.refresh_hint);
        assert_eq!(from_flags.rotation.prepare_at, library.rotation.prepare_at);
        assert_eq!(
            from_flags.rotation.root_lifetime,
            library.rotation.root_lifetime
        );
        assert_eq!(from_flags.rotation.auto, library.rotation.auto);
        assert_eq!(
            from_flags.rotation.retire_margin,
            library.rotation.retire_margin
        );
        assert_eq!(from_flags.xds, library.xds);
        assert_eq!(
            from_flags.connections.idle_timeout,
            library.connections.idle_timeout
        );
        assert_eq!(
            from_flags.connections.max_per_source,
            library.connections.max_per_source
        );

        let cli = Cli::try_parse_from([
            "zident",
            "agent",
            "--config",
            "m.yaml",
            "--node",
            "n",
            "--ca-address",
            "h:1",
            "--ca-root-ca",
            "r.pem",
            "--auth-token",
            "t",
        ])
        .unwrap();
        let Command::Agent(agent) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(agent.worker_threads, zident_agent::defaults::WORKER_THREADS);
        assert_eq!(agent.socks5_addr, zident_tunnel::defaults::SOCKS5_ADDR);
        assert_eq!(agent.outbound_addr, zident_tunnel::defaults::OUTBOUND_ADDR);
        assert_eq!(agent.inbound_port, zident_tunnel::defaults::INBOUND_PORT);
        assert_eq!(agent.clock_skew_tolerance, zident_tunnel::SKEW_TOLERANCE);
        let from_flags = agent.into_config().unwrap();
        let library = zident_agent::AgentConfig::new("n", "m.yaml", from_flags.ca.clone());
        assert_eq!(from_flags.secret_ttl, library.secret_ttl);
        assert_eq!(from_flags.renewal.ratio, library.renewal.ratio);
        assert_eq!(from_flags.concurrency, library.concurrency);
        assert_eq!(from_flags.admin_addr, library.admin_addr);
        assert_eq!(from_flags.metrics_addr, library.metrics_addr);
        assert_eq!(from_flags.readiness_addr, library.readiness_addr);
        assert_eq!(from_flags.ca.cluster_id, zident_agent::defaults::CLUSTER_ID);
        assert_eq!(
            from_flags.ca.request_timeout,
            zident_agent::defaults::REQUEST_TIMEOUT
        );
    }
}
