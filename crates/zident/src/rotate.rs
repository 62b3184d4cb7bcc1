//! `zident ca rotate prepare|activate|retire` and `zident ca status`: the self-signed root's
//! rotation, driven by hand. They act on the data dir, whether its CA is running or not; a
//! running CA sees `rotation.json` change and applies it within seconds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use zident_ca::dir_store;
use zident_ca::rotation::{self, Phase, RotationState};
use zident_identity::rfc3339;

use crate::duration::parse_duration;
use crate::revoke_cluster::ClusterArg;
use crate::rotation_text::when;

/// What to do with the CA's roots instead of running it.
#[derive(Debug, clap::Subcommand)]
pub enum CaAction {
    /// Move the self-signed root's rotation one phase on: prepare (publish a new root),
    /// activate (sign with it), retire (drop the old one).
    Rotate(RotateArgs),
    /// Show the root generations, their phase and expiry, and what is safe next.
    Status(StatusArgs),
    /// Store a mesh file in the shared datastore as a new version (checked first; a broken
    /// file changes nothing); every replica follows within a second.
    Apply(crate::datastore_cli::ApplyArgs),
    /// The mesh versions in the shared datastore.
    #[command(subcommand)]
    Mesh(crate::datastore_cli::MeshAction),
    /// Revoke a certificate (by serial), an identity's or a node's: a running CA lists them in
    /// its CRLs within a second; with --deny-reissue it also refuses their renewals.
    Revoke(crate::revoke::RevokeArgs),
    /// Lift a denial of reissue that `zident ca revoke --deny-reissue` made.
    AllowReissue(crate::revoke::AllowArgs),
    /// The revoked certificates that have not expired, and the denials of reissue.
    Revocations(crate::revoke::ListArgs),
}

/// Flags of `zident ca rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// prepare, activate or retire.
    #[arg(value_parser = clap::value_parser!(PhaseArg))]
    pub phase: PhaseArg,
    /// The CA's data dir.
    #[arg(long, value_name = "DIR", default_value = zident_ca::defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Take the step even though agents may not be ready for it (activate before the bundle
    /// had time to spread, retire while old certificates may be valid).
    #[arg(long)]
    pub force: bool,
    /// Lifetime of the root that `prepare` makes.
    #[arg(long, default_value = crate::duration::flag(zident_ca::defaults::ROOT_LIFETIME), value_parser = parse_duration)]
    pub root_lifetime: Duration,
    /// Take the step in the replicas' shared datastore instead of a data dir.
    #[arg(
        long,
        env = "ZIDENT_DATASTORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub datastore: Option<String>,
    /// The key-encryption key of the datastore's root keys.
    #[arg(long, env = "ZIDENT_KEK_FILE", value_name = "FILE")]
    pub kek_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// A rotation phase, as clap parses it.
#[derive(Debug, Clone, Copy)]
pub struct PhaseArg(pub Phase);

impl std::str::FromStr for PhaseArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(PhaseArg)
            .map_err(|e: rotation::UnknownPhase| e.to_string())
    }
}

/// Flags of `zident ca status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The CA's data dir.
    #[arg(long, value_name = "DIR", default_value = zident_ca::defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Read the replicas' shared datastore instead of a data dir.
    #[arg(
        long,
        env = "ZIDENT_DATASTORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub datastore: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// Runs a `zident ca` action.
pub async fn run(action: CaAction) -> Result<ExitCode, String> {
    use crate::datastore_cli as ds;
    match action {
        CaAction::Apply(args) => ds::apply(args).await,
        CaAction::Revoke(args) => crate::revoke::revoke(args).await,
        CaAction::AllowReissue(args) => crate::revoke::allow(args).await,
        CaAction::Revocations(args) => crate::revoke::list(args).await,
        CaAction::Mesh(action) => ds::mesh(action).await,
        CaAction::Rotate(RotateArgs {
            phase,
            datastore: Some(url),
            kek_file,
            force,
            root_lifetime,
            ..
        }) => ds::rotate(&url, kek_file, phase.0, force, root_lifetime).await,
        CaAction::Status(StatusArgs {
            datastore: Some(url),
            json,
            ..
        }) => ds::status(&url, json).await,
        CaAction::Rotate(args) if args.cluster.kubernetes => {
            let cluster = &args.cluster;
            crate::rotate_cluster::rotate(cluster, args.phase.0, args.force, args.root_lifetime)
                .await
        }
        CaAction::Status(args) if args.cluster.kubernetes => {
            crate::rotate_cluster::status(&args.cluster, args.json).await
        }
        CaAction::Rotate(args) => {
            let phase = args.phase.0;
            zident_ca::working_copy::refuse_copy(
                &args.data_dir,
                &format!("rotate {}", phase.as_str()),
            )?;
            if args.data_dir.join(zident_ca::plugged::STATE_FILE).exists()
                && !args.data_dir.join(dir_store::STATE_FILE).exists()
            {
                return Err(format!(
                    "rotate {}: the CA of {} uses plugged-in keys (ROOT_CA_DIR); they rotate by replacing the files in ROOT_CA_DIR in the same phases, see docs/root-rotation.md",
                    phase.as_str(),
                    args.data_dir.display()
                ));
            }
            let state = dir_store::apply(
                &args.data_dir,
                phase,
                SystemTime::now(),
                args.force,
                args.root_lifetime,
            )
            .map_err(|e| format!("rotate {}: {e}", phase.as_str()))?;
            println!(
                "zident ca rotate {}: done; a running CA applies it within seconds.",
                phase.as_str()
            );
            print_state(&args.data_dir, &state);
            Ok(ExitCode::SUCCESS)
        }
        CaAction::Status(args) => {
            let state = dir_store::read_state(&args.data_dir).map_err(|e| e.to_string())?;
            if state.is_none()
                && let Some(plugged) =
                    zident_ca::plugged::read(&args.data_dir).map_err(|e| e.to_string())?
            {
                print_plugged(&args.data_dir, &plugged, args.json);
                return Ok(ExitCode::SUCCESS);
            }
            let state = state.ok_or_else(|| {
                format!(
                    "{} has no {}: it is not the data dir of a zident CA that has started",
                    args.data_dir.display(),
                    dir_store::STATE_FILE
                )
            })?;
            if args.json {
                let now = zident_identity::unix_seconds(SystemTime::now());
                let issued = zident_ca::ledger::load(&args.data_dir);
                let waiting = rotation::clients_wait(&state, &issued, now);
                let json = serde_json::json!({
                    "phase": state.phase(),
                    "sequence": state.sequence,
                    "state": state,
                    "generations": dir_store::status(&args.data_dir, &state),
                    "waiting_for_new_root": waiting,
                    "activate_safe_at": rotation::activation_safe_at(&state, &issued, now),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
            } else {
                print_state(&args.data_dir, &state);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_plugged(dir: &std::path::Path, state: &zident_ca::plugged::PluggedState, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(state).unwrap_or_default()
        );
        return;
    }
    println!(
        "CA roots in {} (plugged-in keys; they rotate by their files, see docs/root-rotation.md): bundle sequence {}",
        dir.display(),
        state.sequence
    );
    println!(
        "  {:<18} {:<8} {:<36} SUBJECT",
        "ROOT (SHA-256)", "SIGNS", "PUBLISHED / MAY HAVE SIGNED UNTIL"
    );
    for (fp, published) in &state.published {
        let signs = state.signing_root.as_deref() == Some(fp.as_str());
        let note = match state.signed_until.get(fp) {
            Some(until) => format!("signed until {}", when(*until)),
            None if *published == 0 => "since the first start".into(),
            None => format!(
                "since {}",
                rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(*published))
            ),
        };
        println!(
            "  {:<18} {:<8} {:<36} {}",
            &fp[..fp.len().min(16)],
            if signs { "yes" } else { "no" },
            note,
            state.subjects.get(fp).map(String::as_str).unwrap_or("")
        );
    }
    if let Some(refusal) = &state.last_refusal {
        println!(
            "Last change of the files refused at {}: {}",
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(refusal.at)),
            refusal.reason
        );
    }
}

fn print_state(dir: &std::path::Path, state: &RotationState) {
    println!(
        "CA roots in {}: trust domain {}, phase {}, bundle sequence {}",
        dir.display(),
        state.trust_domain,
        state.phase(),
        state.sequence
    );
    let now = zident_identity::unix_seconds(SystemTime::now());
    crate::rotation_text::print_next_step(state, &zident_ca::ledger::load(dir), now);
    println!(
        "  {:<4} {:<9} {:<34} {:<21} {:<4} {:<17} CERTIFICATE",
        "GEN", "PHASE", "SERIAL", "NOT AFTER", "KEY", "JWT KEY (KID)"
    );
    for g in dir_store::status(dir, state) {
        let kid: String = g
            .jwt_kid
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(16)
            .collect();
        println!(
            "  {:<4} {:<9} {:<34} {:<21} {:<4} {:<17} {}",
            g.generation,
            g.phase,
            g.serial,
            g.not_after,
            if g.has_key { "yes" } else { "no" },
            kid,
            g.certificate.display()
        );
    }
    crate::rotation_text::print_history(state);
}
