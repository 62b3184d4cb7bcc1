//! Command-line flags. Each setting that Istio names by an environment variable can be set
//! by that variable too; a flag wins over the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use zident_ca::{CaConfig, RunningCa, TtlPolicy};

use crate::duration::parse_duration;

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

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the certificate authority (Istio-compatible, SPIFFE X.509 SVIDs).
    Ca(CaArgs),
    /// Run zident on the embedded default mesh (examples/local.yaml) for a first look.
    Up(UpArgs),
}

/// Flags of `zident ca`.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// The mesh file: trust domain, nodes and their tokens, workloads.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where the self-signed root is kept and root-cert.pem is published.
    #[arg(long, value_name = "DIR", default_value = ".zident/ca")]
    pub data_dir: PathBuf,
    /// Address for gRPC (IstioCertificateService) and the trust bundle endpoint, over TLS.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15012")]
    pub listen: SocketAddr,
    /// Address for Prometheus metrics (/metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15014")]
    pub metrics_addr: SocketAddr,
    /// A DNS name (or IP) in the CA's serving certificate; repeatable. Default: localhost.
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// Plugged-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) instead of
    /// a self-signed root.
    #[arg(long, env = "ROOT_CA_DIR", value_name = "DIR")]
    pub root_ca_dir: Option<PathBuf>,
    /// Lifetime of a certificate when the request does not ask for one.
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub default_ttl: Duration,
    /// The longest lifetime a request may ask for.
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = "90d", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// How often clients should re-fetch the trust bundle (spiffe_refresh_hint).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub bundle_refresh_hint: Duration,
}

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

impl CaArgs {
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
        let mut config = CaConfig::new(self.config);
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
        config.refresh_hint = self.bundle_refresh_hint;
        Ok(config)
    }
}

/// Runs a subcommand to completion.
pub async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Ca(args) => {
            let config = args.into_config()?;
            let mut ca = RunningCa::start(config).await.map_err(|e| e.to_string())?;
            println!(
                "zident ca: listening on {} (TLS), bundle at {}",
                ca.addr,
                ca.root_cert_path.display()
            );
            if let Some(m) = ca.metrics_addr {
                println!("zident ca: metrics at http://{m}/metrics");
            }
            wait_for_shutdown(&mut ca).await;
            Ok(())
        }
        Command::Up(args) => crate::up::run(args).await,
    }
}

/// Waits for Ctrl-C / SIGTERM or for the CA to stop on its own.
pub async fn wait_for_shutdown(ca: &mut RunningCa) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ca.wait() => tracing::error!("the CA server stopped"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        _ = term => tracing::info!("terminated, shutting down"),
    }
}

/// Sets up tracing: `RUST_LOG` if set, else `info`.
///
/// Lines are written to stdout by a background thread, so a request never waits on a write
/// to a slow pipe or terminal; the returned guard flushes what is queued when dropped, so it
/// must live until the process exits.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::new(std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}
