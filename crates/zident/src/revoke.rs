//! `zident ca revoke`, `zident ca allow-reissue` and `zident ca revocations`: revocation, decided
//! by an operator on the CA's data dir, whether its CA is running or not, in the replicas'
//! shared datastore (`--datastore`), or in the API server for replicas run with
//! `--roots-in-cluster` (`--kubernetes`, see `revoke_cluster`); a running CA reads the list
//! within a second and signs its CRLs again (every replica, with a datastore or the cluster).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use zident_ca::revocation::list::{self, normalize_serial};
use zident_ca::revocation::{Reason, Revocations, Revoked, Subject, Target};
use zident_identity::{SpiffeId, rfc3339};

use crate::datastore_cli::OptionalDatastore;
use crate::duration::parse_duration;
use crate::revoke_cluster::{self as cluster, Cluster, ClusterArg};

/// Flags of `zident ca revoke`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["serial", "identity", "node"]))]
pub struct RevokeArgs {
    /// One certificate, by serial (hex, as `zident certs` or `openssl x509 -serial` shows it).
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// Every valid certificate of this SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub identity: Option<SpiffeId>,
    /// Every valid certificate this node's token obtained.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Why (RFC 5280): unspecified, keyCompromise, cACompromise, affiliationChanged,
    /// superseded, cessationOfOperation, privilegeWithdrawn, aACompromise.
    #[arg(long, default_value = "unspecified")]
    pub reason: Reason,
    /// Also refuse the identity's (or node's) requests for new certificates until
    /// `zident ca allow-reissue`; without it, its agent renews at once with a new key.
    #[arg(long)]
    pub deny_reissue: bool,
    /// The CA's data dir.
    #[arg(long, value_name = "DIR", default_value = zident_ca::defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub store: OptionalDatastore,
    #[command(flatten)]
    pub cluster: ClusterArg,
    /// With --kubernetes: how long to wait for every replica to answer (each revokes what it
    /// issued); one that does not answers when it next runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "kubernetes")]
    pub wait: std::time::Duration,
}

/// Flags of `zident ca allow-reissue`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("whose").required(true).args(["identity", "node"]))]
pub struct AllowArgs {
    /// The SPIFFE ID whose reissue was denied.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub identity: Option<SpiffeId>,
    /// The node whose reissue was denied.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// The CA's data dir.
    #[arg(long, value_name = "DIR", default_value = zident_ca::defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub store: OptionalDatastore,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// Flags of `zident ca revocations`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The CA's data dir.
    #[arg(long, value_name = "DIR", default_value = zident_ca::defaults::DATA_DIR)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub store: OptionalDatastore,
    #[command(flatten)]
    pub cluster: ClusterArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `zident ca revoke`.
pub async fn revoke(args: RevokeArgs) -> Result<ExitCode, String> {
    let target = match (&args.serial, &args.identity, &args.node) {
        (Some(s), _, _) => Target::Serial(normalize_serial(s)?),
        (_, Some(id), _) => Target::Identity(id.clone()),
        (_, _, Some(n)) => Target::Node(n.clone()),
        _ => return Err("name what to revoke: --serial, --identity or --node".into()),
    };
    let now = SystemTime::now();
    if args.cluster.kubernetes {
        return revoke_in_cluster(&args, &target).await;
    }
    let (added, next) = match &args.store.datastore {
        Some(url) => {
            let mut store = crate::datastore_cli::connect(url).await?;
            let added = store
                .change_revocations(now, |list, issued| {
                    list.revoke(issued, &target, args.reason, args.deny_reissue, now)
                        .map_err(|what| {
                            format!(
                                "{what} is in the datastore (it expired, or no replica issued it); nothing was changed"
                            )
                        })
                })
                .await
                .map_err(|e| e.to_string())?;
            (
                added,
                "every replica signs its CRLs again within a second".to_owned(),
            )
        }
        None => {
            zident_ca::working_copy::refuse_copy(&args.data_dir, "revoke")?;
            let added = list::revoke(&args.data_dir, &target, args.reason, args.deny_reissue, now)
                .map_err(|e| e.to_string())?;
            let file = args
                .data_dir
                .join(zident_ca::revocation::publisher::CRL_FILE);
            (
                added,
                format!(
                    "a running CA signs its CRLs again within a second ({})",
                    file.display()
                ),
            )
        }
    };
    print_revoked(&added, args.deny_reissue);
    println!("{next}");
    Ok(ExitCode::SUCCESS)
}

/// What a revocation revoked and denied, as `zident ca revoke` says it.
fn print_revoked<'a>(added: impl IntoIterator<Item = &'a Revoked>, denied: bool) {
    let mut any = false;
    for r in added {
        any = true;
        println!(
            "revoked {} ({}, {}), valid until {}",
            r.serial,
            r.id,
            r.reason,
            rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.not_after))
        );
    }
    if !any {
        println!("nothing new to revoke: every certificate it names is revoked already");
    }
    if denied {
        println!("its requests for new certificates are refused until `zident ca allow-reissue`");
    }
}

/// `zident ca revoke --kubernetes`.
async fn revoke_in_cluster(args: &RevokeArgs, target: &Target) -> Result<ExitCode, String> {
    let c = Cluster::connect(&args.cluster).await?;
    let (doc, request, missing) =
        cluster::revoke(&c, target, args.reason, args.deny_reissue, args.wait).await?;
    let serials = request.serials();
    print_revoked(
        doc.list
            .revoked
            .iter()
            .filter(|r| serials.contains(r.serial.as_str())),
        args.deny_reissue,
    );
    for (replica, revoked) in &request.answers {
        println!("replica {replica} answered: {} revoked", revoked.len());
    }
    let (covered, unanswered): (Vec<&String>, Vec<&String>) = missing
        .iter()
        .partition(|r| request.covered.contains_key(*r));
    for r in covered {
        println!(
            "replica {r} did not answer (gone?): replica {} revoked what its serials record lists",
            request.covered[r]
        );
    }
    if unanswered.is_empty() {
        println!("every replica signs its CRLs again within a second");
    } else {
        println!(
            "not answered within {:?} by: {} (each revokes what it issued when it next runs; until then those certificates are not in the CRLs)",
            args.wait,
            unanswered
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `zident ca allow-reissue`.
pub async fn allow(args: AllowArgs) -> Result<ExitCode, String> {
    let subject = match (args.identity, args.node) {
        (Some(id), _) => Subject::Identity(id.to_string()),
        (_, Some(n)) => Subject::Node(n),
        _ => return Err("name whose reissue to allow: --identity or --node".into()),
    };
    let (lifted, place) = match &args.store.datastore {
        None if args.cluster.kubernetes => {
            let c = Cluster::connect(&args.cluster).await?;
            (
                cluster::allow(&c, &subject).await?,
                format!("namespace {}", args.cluster.kubernetes_namespace),
            )
        }
        Some(url) => {
            let mut store = crate::datastore_cli::connect(url).await?;
            let lifted = store
                .change_revocations(SystemTime::now(), |list, _| Ok(list.allow(&subject)))
                .await
                .map_err(|e| e.to_string())?;
            (lifted, "the datastore".to_owned())
        }
        None => {
            zident_ca::working_copy::refuse_copy(&args.data_dir, "allow-reissue")?;
            (
                list::allow_reissue(&args.data_dir, &subject).map_err(|e| e.to_string())?,
                args.data_dir.display().to_string(),
            )
        }
    };
    if lifted {
        println!("{subject} may be issued certificates again");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!(
            "{subject} has no denial of reissue in {place}; nothing was changed"
        ))
    }
}

/// `zident ca revocations`.
pub async fn list(args: ListArgs) -> Result<ExitCode, String> {
    if args.cluster.kubernetes {
        return list_in_cluster(&args).await;
    }
    let mut list = match &args.store.datastore {
        Some(url) => crate::datastore_cli::connect(url)
            .await?
            .revocations()
            .await
            .map_err(|e| e.to_string())?
            .map(|(list, _)| list)
            .unwrap_or_default(),
        None => Revocations::load(&args.data_dir).map_err(|e| e.to_string())?,
    };
    list.prune(SystemTime::now());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_list(&list);
    Ok(ExitCode::SUCCESS)
}

fn time(s: u64) -> String {
    rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
}

/// The revoked certificates and the denials, as `zident ca revocations` prints them.
fn print_list(list: &Revocations) {
    if list.revoked.is_empty() {
        println!("no certificate is revoked");
    } else {
        println!("SERIAL  IDENTITY  NODE  REASON  REVOKED  EXPIRES");
        for r in &list.revoked {
            println!(
                "{}  {}  {}  {}  {}  {}",
                r.serial,
                r.id,
                r.node.as_deref().unwrap_or("-"),
                r.reason,
                time(r.revoked_at),
                time(r.not_after)
            );
        }
    }
    for d in &list.denied {
        println!(
            "reissue denied: {} ({}, since {})",
            d.subject,
            d.reason,
            time(d.since)
        );
    }
}

/// `zident ca revocations --kubernetes`: the list, and each request with the replicas that
/// have not answered it.
async fn list_in_cluster(args: &ListArgs) -> Result<ExitCode, String> {
    let c = Cluster::connect(&args.cluster).await?;
    let (mut doc, replicas) = (c.read().await?, c.replicas().await?);
    doc.list.prune(SystemTime::now());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_list(&doc.list);
    for r in &doc.requests {
        let missing: Vec<&str> = replicas
            .iter()
            .filter(|n| !r.answers.contains_key(*n))
            .map(String::as_str)
            .collect();
        println!(
            "request {} ({}, {}, made {}): {} revoked by {} replicas{}",
            r.id,
            r.target,
            r.reason,
            time(r.at),
            r.serials().len(),
            r.answers.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; not answered yet by {}", missing.join(", "))
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
