//! `zident up`: the first command a new user runs. Starts the CA and a node agent in one
//! process on an embedded mesh, keeps everything under one directory, and says where things
//! are and what to try.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zident_agent::{AgentConfig, CaClientConfig, RunningAgent, TokenSource};
use zident_ca::{CaConfig, RunningCa};
use zident_mesh::{CallerToken, MeshFile};

use crate::logging::LogHandle;
use crate::wiring::wait_for_shutdown;

/// Flags of `zident up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Use this mesh file instead of the embedded default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where everything is kept.
    #[arg(long, value_name = "DIR", default_value = ".zident")]
    pub data_dir: PathBuf,
}

/// The embedded default mesh: a few workloads on one node.
pub const LOCAL_MESH: &str = include_str!("../../../examples/local.yaml");
/// Short enough that a rotation shows within a minute (renewal at half-life).
const UP_SECRET_TTL: Duration = Duration::from_secs(60);

/// Runs `zident up`.
pub async fn run(args: UpArgs, log: Arc<LogHandle>) -> Result<(), String> {
    let mesh_path = match args.config {
        Some(p) => p,
        None => {
            let p = args.data_dir.join("local.yaml");
            if !p.exists() {
                std::fs::create_dir_all(&args.data_dir)
                    .and_then(|()| std::fs::write(&p, LOCAL_MESH))
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            p
        }
    };
    let mesh = MeshFile::load(&mesh_path).map_err(|e| e.to_string())?;
    let (node, token) = first_node(&mesh, &mesh_path)?;

    let mut ca_config = CaConfig::new(&mesh_path);
    ca_config.data_dir = args.data_dir.join("ca");
    ca_config.refresh_hint = Duration::from_secs(30);
    let mut ca = RunningCa::start(ca_config)
        .await
        .map_err(|e| e.to_string())?;

    let ca_client = CaClientConfig {
        address: format!("localhost:{}", ca.addr.port()),
        root_ca: ca.root_cert_path.clone(),
        token: TokenSource::Literal(token),
        cluster_id: zident_agent::defaults::CLUSTER_ID.into(),
        request_timeout: zident_agent::defaults::REQUEST_TIMEOUT,
        poll_bundle: true,
    };
    let mut agent_config = AgentConfig::new(node.clone(), &mesh_path, ca_client);
    agent_config.secret_ttl = UP_SECRET_TTL;
    agent_config.delivery.socket_dir = Some(args.data_dir.join("agent/workload-api"));
    let tunnel = zident_tunnel::TunnelConfig {
        socks5_addr: Some(zident_tunnel::defaults::SOCKS5_ADDR),
        outbound_addr: Some(zident_tunnel::defaults::OUTBOUND_ADDR),
        inbound_port: zident_tunnel::defaults::INBOUND_PORT,
        inbound_addr: None,
        transparent_source: false,
        skew_tolerance: zident_tunnel::SKEW_TOLERANCE,
    };
    let (agent, tunnel) = crate::wiring::start_node(agent_config, Some(tunnel), log).await?;
    print_banner(&ca, &agent, &mesh_path, &node, &args.data_dir);
    if let Some(t) = &tunnel {
        crate::print::say!(
            "Tunnel: SOCKS5 at {}, captured traffic (iptables REDIRECT) at {}, HBONE on :{} of each workload address, e.g.",
            t.socks5_addr.map(|a| a.to_string()).unwrap_or_default(),
            t.outbound_addr.map(|a| a.to_string()).unwrap_or_default(),
            zident_tunnel::defaults::INBOUND_PORT
        );
        crate::print::say!(
            "  python3 -m http.server 8080 --bind 127.0.0.3 &                               # be the backend workload"
        );
        crate::print::say!(
            "  curl --interface 127.0.0.2 --socks5 127.0.0.1:15080 http://127.0.0.3:8080/   # as frontend, through the tunnel"
        );
        crate::print::say!();
    }
    wait_for_shutdown(&mut ca).await;
    Ok(())
}

/// The first node of the mesh file and its token.
fn first_node(mesh: &MeshFile, path: &Path) -> Result<(String, String), String> {
    let node = mesh.nodes.first().map(|n| n.name.clone()).ok_or_else(|| {
        format!(
            "mesh file {}: `zident up` needs at least one entry under nodes:",
            path.display()
        )
    })?;
    let token = mesh
        .resolve_tokens(path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find_map(|(t, who)| matches!(&who, CallerToken::Node(n) if *n == node).then_some(t))
        .ok_or_else(|| format!("node {node} has no token"))?;
    Ok((node, token))
}

fn print_banner(ca: &RunningCa, agent: &RunningAgent, mesh: &Path, node: &str, data: &Path) {
    let td = ca.state.authorizer().trust_domain().clone();
    let root = ca.root_cert_path.display();
    let port = ca.addr.port();
    let admin = agent.admin_addr.map(|a| a.to_string()).unwrap_or_default();
    crate::print::say!();
    crate::print::say!(
        "zident is up: trust domain {td}, node {node}, certificates live {}s",
        UP_SECRET_TTL.as_secs()
    );
    crate::print::say!();
    crate::print::say!(
        "  CA, gRPC over TLS 1.3   {}   istio.v1.auth.IstioCertificateService",
        ca.addr
    );
    crate::print::say!("  trust bundle            {root}");
    crate::print::say!(
        "                          https://localhost:{port}/bundle  and  /bundle.pem"
    );
    if let Some(m) = ca.metrics_addr {
        crate::print::say!("  CA metrics              http://{m}/metrics");
    }
    crate::print::say!(
        "  agent admin             http://{admin}/debug/certs   /config_dump   /debug/connections"
    );
    if let Some(m) = agent.metrics_addr {
        crate::print::say!("  agent metrics           http://{m}/metrics");
    }
    if let Some(r) = agent.readiness_addr {
        crate::print::say!("  agent readiness         http://{r}/healthz/ready");
    }
    crate::print::say!(
        "  mesh file               {}   (edit it: reloaded on save)",
        mesh.display()
    );
    if let Some(first) = agent.delivery.first_socket() {
        crate::print::say!(
            "  Workload API            {}   (one socket per workload)",
            first.display()
        );
    }
    crate::print::say!();
    crate::print::say!("Try:");
    crate::print::say!(
        "  curl -s http://{admin}/debug/certs        # every certificate; serials change every ~30s"
    );
    crate::print::say!(
        "  curl -s http://{admin}/config_dump        # the same, in ztunnel's shape"
    );
    crate::print::say!("  curl --cacert {root} https://localhost:{port}/bundle");
    if let Some(m) = agent.metrics_addr {
        crate::print::say!("  curl -s http://{m}/metrics | grep -E 'zident_certificate|istio_tcp'");
    }
    // After `cargo run`, `zident` is not on PATH: name the binary that is running.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "zident".into());
    crate::print::say!("  {exe} certs --admin http://{admin}   # the same as a table");
    crate::print::say!(
        "  {exe} ca status --data-dir {}        # root generations; `ca rotate prepare` starts a root rotation",
        data.join("ca").display()
    );
    if let Some(first) = agent.delivery.first_socket() {
        let abs = std::fs::canonicalize(&first).unwrap_or(first);
        crate::print::say!(
            "  SPIFFE_ENDPOINT_SOCKET=unix://{} <your SPIFFE-aware program>",
            abs.display()
        );
    }
    crate::print::say!();
    crate::print::say!(
        "({exe} is the zident binary; `cargo install --path crates/zident` puts `zident` on PATH.)"
    );
    crate::print::say!("Ctrl-C to stop. State is kept under {}.", data.display());
}
