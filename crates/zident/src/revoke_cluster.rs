//! `zident ca revoke|allow-reissue|revocations --kubernetes`: revocation for CA replicas that
//! keep their state in the API server (`--roots-in-cluster`), in the Secret
//! `zident-ca-revocations` of their namespace. Only each replica's ledger names what it
//! issued, so `revoke` writes a request and waits for every replica's answer (see
//! `zident_ca::cluster_state::revocations`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use zident_ca::cluster_state::{ClusterRevocations, Request, RevocationSecret};
use zident_ca::revocation::{Reason, Subject, Target};
use zident_kube::{Connection, IssuedRecords, replica_of};

/// The replica name the CLI reads the replicas' records as (it writes none).
pub const CLI_READER: &str = "zident-cli";

/// How long `revoke` waits, at least, for replicas that only another replica answered for.
const COVERED_WAIT: Duration = Duration::from_secs(3);

/// The API server of CA replicas run with `--roots-in-cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArg {
    /// Act on the state that CA replicas run with --kubernetes --roots-in-cluster share in the
    /// API server (the Secrets `zident-ca-roots` and `zident-ca-revocations`), instead of a
    /// data dir. The client comes from --kubeconfig, KUBECONFIG, or the pod's service account.
    #[arg(long, conflicts_with = "datastore")]
    pub kubernetes: bool,
    /// With --kubernetes: the CA replicas' namespace.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE", default_value = zident_ca::defaults::KUBERNETES_NAMESPACE, requires = "kubernetes")]
    pub kubernetes_namespace: String,
    /// With --kubernetes: the kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the
    /// pod's service account).
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterArg {
    /// A client of the API server it names.
    pub async fn connection(&self) -> Result<Connection, String> {
        match &self.kubeconfig {
            Some(path) => Connection::from_kubeconfig(path).await,
            None => Connection::infer().await,
        }
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))
    }
}

/// The cluster a command acts on.
pub struct Cluster {
    connection: Connection,
    namespace: String,
    secret: RevocationSecret,
}

impl Cluster {
    /// Connects to the API server `arg` names.
    pub async fn connect(arg: &ClusterArg) -> Result<Self, String> {
        let connection = arg.connection().await?;
        let secret = RevocationSecret::new(&connection, &arg.kubernetes_namespace);
        Ok(Self {
            connection,
            namespace: arg.kubernetes_namespace.clone(),
            secret,
        })
    }

    /// The replicas that have an issued record (every running replica writes one at start;
    /// the leader deletes a gone replica's once all it issued has expired), by name.
    pub async fn replicas(&self) -> Result<Vec<String>, String> {
        let records = IssuedRecords::new(&self.connection, &self.namespace, CLI_READER);
        let mut names: Vec<String> = records
            .read_all()
            .await
            .map_err(|e| {
                format!(
                    "cannot list the CA replicas' issued records in {}: {e}",
                    self.namespace
                )
            })?
            .into_iter()
            .map(|(name, _)| replica_of(&name).to_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// What the Secret holds (empty before the first revocation).
    pub async fn read(&self) -> Result<ClusterRevocations, String> {
        Ok(self
            .secret
            .read()
            .await
            .map_err(|e| e.to_string())?
            .map(|(doc, _)| doc)
            .unwrap_or_default())
    }
}

/// `zident ca revoke --kubernetes`: the request, then up to `wait` for every replica's answer.
/// Returns the request as answered and the replicas that did not answer.
pub async fn revoke(
    cluster: &Cluster,
    target: &Target,
    reason: Reason,
    deny_reissue: bool,
    wait: Duration,
) -> Result<(ClusterRevocations, Request, Vec<String>), String> {
    let now = SystemTime::now();
    let request = Request::new(target.clone(), reason, deny_reissue, now);
    let id = request.id.clone();
    cluster
        .secret
        .change(|doc| {
            // A denial of an identity or node holds at once, whichever replica it asks.
            if deny_reissue && target.subject().is_some() {
                let _ = doc.list.revoke(&[], target, reason, true, now);
            }
            doc.requests.push(request.clone());
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
    let replicas = cluster.replicas().await?;
    let started = Instant::now();
    let deadline = started + wait;
    let (doc, answered, missing) = loop {
        let doc = cluster.read().await?;
        let answered = doc
            .requests
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "the request left {} before every replica answered (deleted or edited by hand?)",
                    cluster.secret.describe()
                )
            })?;
        let missing: Vec<String> = replicas
            .iter()
            .filter(|r| !answered.answers.contains_key(*r))
            .cloned()
            .collect();
        // A replica that is gone never answers: once another covered it from its serials
        // record, and live replicas had time to answer (they look every second), it is enough.
        let covered = missing.iter().all(|r| answered.covered.contains_key(r));
        if missing.is_empty()
            || Instant::now() >= deadline
            || (covered && started.elapsed() >= COVERED_WAIT)
        {
            break (doc, answered, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let denial_made = deny_reissue && target.subject().is_some();
    let unanswered = missing.iter().any(|r| !answered.covered.contains_key(r));
    if answered.serials().is_empty() && !unanswered && !denial_made {
        cluster
            .secret
            .change(|doc| {
                doc.requests.retain(|r| r.id != id);
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        return Err(if replicas.is_empty() {
            format!(
                "no CA replica has an issued record in namespace {}: nothing was issued there to revoke; nothing was changed",
                cluster.namespace
            )
        } else {
            format!(
                "no valid certificate matches {target} in the ledger of any replica ({}): it expired, was issued after, or by another CA; nothing was changed",
                replicas.join(", ")
            )
        });
    }
    Ok((doc, answered, missing))
}

/// `zident ca allow-reissue --kubernetes`: lifts the denial, and the denial of every request
/// for the same subject that a replica has yet to answer. Whether there was one.
pub async fn allow(cluster: &Cluster, subject: &Subject) -> Result<bool, String> {
    cluster
        .secret
        .change(|doc| {
            let lifted = doc.list.allow(subject);
            for r in &mut doc.requests {
                if r.target.subject().as_ref() == Some(subject) {
                    r.deny_reissue = false;
                }
            }
            Ok(lifted)
        })
        .await
        .map_err(|e| e.to_string())
}
