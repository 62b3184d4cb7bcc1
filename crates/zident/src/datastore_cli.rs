//! The shared state of CA replicas on PostgreSQL, from the command line: `zident ca apply`
//! stores a checked mesh file as a new version, `zident ca mesh history|show` reads them back,
//! and `zident ca status|rotate --datastore` read and move the root rotation every replica
//! follows.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use zident_ca::datastore::{Kek, Store};
use zident_ca::rotation::Phase;

/// The shared datastore, as every `zident ca` command that reads it takes it.
#[derive(Debug, clap::Args)]
pub struct DatastoreArg {
    /// The shared datastore (`postgres://user@host:port/db`; add
    /// `?sslmode=require&sslrootcert=FILE` for TLS).
    #[arg(
        long,
        env = "ZIDENT_DATASTORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub datastore: String,
}

/// The shared datastore, for a command that otherwise acts on a data dir.
#[derive(Debug, clap::Args)]
pub struct OptionalDatastore {
    /// The replicas' shared datastore instead of a data dir (every replica follows it).
    #[arg(
        long,
        env = "ZIDENT_DATASTORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub datastore: Option<String>,
}

/// Flags of `zident ca apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The mesh file to store (checked exactly as a running CA checks an edit).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: DatastoreArg,
    /// Who applies it, as kept in the history (default: $USER@host).
    #[arg(long, value_name = "NAME")]
    pub applied_by: Option<String>,
}

/// `zident ca mesh …`.
#[derive(Debug, clap::Subcommand)]
pub enum MeshAction {
    /// Every stored mesh version: when, by whom, its digest.
    History(HistoryArgs),
    /// A stored mesh version's file (the newest without VERSION).
    Show(ShowArgs),
}

/// Flags of `zident ca mesh history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub store: DatastoreArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `zident ca mesh show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The version (default: the newest).
    pub version: Option<i64>,
    #[command(flatten)]
    pub store: DatastoreArg,
}

/// Connects to the datastore at `url` (the schema brought up to date), for a command.
pub(crate) async fn connect(url: &str) -> Result<Store, String> {
    Store::connect(url).await.map_err(|e| e.to_string())
}

/// Who is running this command, for the history.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// `zident ca apply -f FILE`.
pub async fn apply(args: ApplyArgs) -> Result<ExitCode, String> {
    let (yaml, mesh) = zident_ca::datastore::mesh_for_store(&args.file)
        .map_err(|e| format!("zident ca apply: refused, nothing stored: {e}"))?;
    let mut store = connect(&args.store.datastore).await?;
    if let Some((rs, _)) = store.rotation().await.map_err(|e| e.to_string())?
        && rs.trust_domain != mesh.trust_domain.as_str()
    {
        return Err(format!(
            "zident ca apply: refused, nothing stored: {}: trustDomain {} differs from the replicas' roots ({}); the trust domain cannot change while they run",
            args.file.display(),
            mesh.trust_domain,
            rs.trust_domain
        ));
    }
    if let Some(latest) = store.latest_mesh().await.map_err(|e| e.to_string())?
        && latest.yaml.as_deref() == Some(yaml.as_str())
    {
        println!(
            "zident ca apply: {} is identical to mesh version {}; nothing stored",
            args.file.display(),
            latest.version
        );
        return Ok(ExitCode::SUCCESS);
    }
    let by = args.applied_by.unwrap_or_else(operator);
    let version = store
        .apply_mesh(&yaml, &by)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "zident ca apply: stored {} as mesh version {version} ({} nodes, {} workloads); every replica follows within a second",
        args.file.display(),
        mesh.nodes.len(),
        mesh.workloads.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `zident ca mesh history|show`.
pub async fn mesh(action: MeshAction) -> Result<ExitCode, String> {
    match action {
        MeshAction::History(args) => {
            let store = connect(&args.store.datastore).await?;
            let rows = store.mesh_history().await.map_err(|e| e.to_string())?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<8} {:<21} {:<14} APPLIED BY",
                "VERSION", "APPLIED AT", "SHA-256"
            );
            for r in rows {
                println!(
                    "{:<8} {:<21} {:<14} {}",
                    r.version,
                    r.applied_at,
                    &r.sha256[..12.min(r.sha256.len())],
                    r.applied_by
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        MeshAction::Show(args) => {
            let store = connect(&args.store.datastore).await?;
            let row = match args.version {
                Some(v) => store.mesh_version(v).await,
                None => store.latest_mesh().await,
            }
            .map_err(|e| e.to_string())?
            .ok_or_else(|| match args.version {
                Some(v) => format!("there is no mesh version {v} (see `zident ca mesh history`)"),
                None => "the datastore holds no mesh yet (`zident ca apply -f mesh.yaml`)".into(),
            })?;
            eprintln!(
                "# mesh version {}, applied {} by {}",
                row.version, row.applied_at, row.applied_by
            );
            print!("{}", row.yaml.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `zident ca status --datastore`: the rotation every replica follows, and the replicas.
pub async fn status(url: &str, json: bool) -> Result<ExitCode, String> {
    let store = connect(url).await?;
    let (state, version) = store
        .rotation()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the datastore holds no roots yet: start a replica first")?;
    let replicas = store.replicas().await.map_err(|e| e.to_string())?;
    let issued = store.issued().await.map_err(|e| e.to_string())?;
    let now = zident_identity::unix_seconds(SystemTime::now());
    if json {
        let out = serde_json::json!({
            "phase": state.phase(),
            "sequence": state.sequence,
            "rotation_version": version,
            "state": state,
            "activate_safe_at": zident_ca::rotation::activation_safe_at(&state, &issued, now),
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "CA roots in the datastore: {}, rotation version {version}",
        crate::rotation_text::summary(&state)
    );
    crate::rotation_text::print_history(&state);
    println!(
        "{:<28} {:<22} {:<7} {:<6} {:<9} LAST SEEN",
        "REPLICA", "LISTEN", "LEADER", "MESH", "ROTATION"
    );
    for r in replicas {
        let seen = if r.seconds_ago > 5.0 {
            format!(
                "{:.0}s ago (stopped, or degraded: its database link is down)",
                r.seconds_ago
            )
        } else {
            format!("{:.0}s ago", r.seconds_ago)
        };
        println!(
            "{:<28} {:<22} {:<7} {:<6} {:<9} {seen}",
            r.name,
            r.listen,
            if r.leader && r.seconds_ago <= 5.0 {
                "yes"
            } else {
                "no"
            },
            r.mesh_version,
            r.rotation_version
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `zident ca rotate PHASE --datastore`: one step, as one transaction every replica follows.
pub async fn rotate(
    url: &str,
    kek_file: Option<PathBuf>,
    phase: Phase,
    force: bool,
    root_lifetime: Duration,
) -> Result<ExitCode, String> {
    let kek_file = kek_file.ok_or("--kek-file (ZIDENT_KEK_FILE) is required with --datastore: prepare seals the new root's key with it")?;
    let kek = Kek::load(&kek_file).map_err(|e| e.to_string())?;
    let mut store = connect(url).await?;
    let step = zident_ca::datastore::Step {
        phase,
        now: SystemTime::now(),
        force,
        root_lifetime,
        timing: None,
        by: format!("zident ca rotate ({})", operator()),
    };
    let state = store
        .step(&step, &kek)
        .await
        .map_err(|e| format!("rotate {}: {e}", phase.as_str()))?;
    println!(
        "zident ca rotate {}: committed; every replica applies it within a second. Phase {}, active generation {}, bundle sequence {}.",
        phase.as_str(),
        state.phase(),
        state.active,
        state.sequence
    );
    Ok(ExitCode::SUCCESS)
}
