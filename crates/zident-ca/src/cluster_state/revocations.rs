//! Revocation with `--roots-in-cluster`: the Secret `zident-ca-revocations` beside the roots
//! Secret holds the list every replica signs its CRLs from, and the operators' requests.
//!
//! A replica's ledger (in its own data dir) is the only place that names the certificates it
//! issued, so a revocation by serial, identity or node is a *request* that each replica answers
//! for what it issued: `zident ca revoke --kubernetes` adds the request (and a denial of reissue
//! for an identity or node at once), every replica finds the matching certificates it issued
//! before the request, adds them to the list and records its answer (the serials it revoked);
//! the command waits for the answers of every replica that has an issued record and says which
//! did not answer. A replica that was down answers when it starts again. So that a replica
//! that is gone for good (its pod and data dir deleted) is answered for, every replica also
//! writes its valid certificates' serials to a record of its own (`serials_text`), and each
//! answer covers the other replicas' records too. A request leaves once every certificate
//! issued before it has expired (the CA's longest lifetime later).
//!
//! Every write is made at the resourceVersion it was read at (the API server's optimistic
//! concurrency), so two operators, or an operator and the replicas, never lose each other's
//! changes. It is a Secret, not a ConfigMap, so that whoever may lift a revocation is whoever
//! may read the roots' keys (RBAC on Secrets in the CA's namespace).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use zident_identity::unix_seconds;
use zident_kube::{CallError, Connection, StateSecret};

use super::store::ClusterStoreError;
use crate::revocation::{Reason, Revocations, Target};
use crate::roots::ledger::IssuedCertificate;

/// The Secret, in the CA's namespace.
pub const REVOCATIONS_SECRET: &str = "zident-ca-revocations";
/// Its key holding the JSON.
const KEY: &str = "revocations.json";
/// How many times a write is tried again after another writer's change.
const ATTEMPTS: usize = 8;

/// One operator's revocation, answered by each replica for what it issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique among requests: when, and by which process.
    pub id: String,
    /// What it revokes.
    pub target: Target,
    /// Why.
    pub reason: Reason,
    /// Whether the identity's or node's reissue is denied too.
    pub deny_reissue: bool,
    /// When it was made, Unix seconds: certificates issued later are not revoked by it.
    pub at: u64,
    /// Each replica's answer: the serials it revoked (empty when it found none of them).
    #[serde(default)]
    pub answers: BTreeMap<String, Vec<String>>,
    /// Replicas that have not answered themselves, whose serials record another replica read
    /// for them (a replica that is gone answers no more): which replica did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub covered: BTreeMap<String, String>,
}

impl Request {
    /// A request for `target` made at `now`.
    pub fn new(target: Target, reason: Reason, deny_reissue: bool, now: SystemTime) -> Self {
        let millis = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Self {
            id: format!("{millis}-{}", std::process::id()),
            target,
            reason,
            deny_reissue,
            at: unix_seconds(now),
            answers: BTreeMap::new(),
            covered: BTreeMap::new(),
        }
    }

    /// Every serial the replicas revoked for it.
    pub fn serials(&self) -> BTreeSet<&str> {
        self.answers
            .values()
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

/// What the Secret holds: the list in force (as `revocations.json` in a data dir) and the
/// requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRevocations {
    /// The revoked certificates and denials every replica enforces.
    #[serde(flatten)]
    pub list: Revocations,
    /// The requests still in effect.
    #[serde(default)]
    pub requests: Vec<Request>,
}

impl ClusterRevocations {
    /// Whether `replica` has requests to answer, or requests have outlived every certificate
    /// they could name (`keep` after they were made).
    pub fn has_work(&self, replica: &str, now: SystemTime, keep: u64) -> bool {
        let now = unix_seconds(now);
        self.requests
            .iter()
            .any(|r| !r.answers.contains_key(replica) || r.at.saturating_add(keep) < now)
    }

    /// Answers every request `replica` has not answered, from `own` (the valid certificates in
    /// its ledger) and `records` (the other replicas' serials records, by replica): the
    /// certificates each names that were issued by the time it was made are revoked (and a
    /// serial's identity denied reissue, if asked), and the replicas whose records were read
    /// without their own answer are marked covered. Drops the requests made more than `keep`
    /// ago and the revoked certificates that expired.
    pub fn answer(
        &mut self,
        replica: &str,
        own: &[IssuedCertificate],
        records: &[(String, Vec<IssuedCertificate>)],
        now: SystemTime,
        keep: u64,
    ) {
        let secs = unix_seconds(now);
        self.requests.retain(|r| r.at.saturating_add(keep) >= secs);
        let others = records.iter().filter(|(r, _)| r != replica);
        let issued: Vec<&IssuedCertificate> = own
            .iter()
            .chain(others.clone().flat_map(|(_, certs)| certs))
            .collect();
        for request in &mut self.requests {
            if request.answers.contains_key(replica) {
                continue;
            }
            let before: Vec<IssuedCertificate> = issued
                .iter()
                .filter(|c| c.issuance.at <= request.at)
                .map(|c| (*c).clone())
                .collect();
            let serials = self
                .list
                .revoke(
                    &before,
                    &request.target,
                    request.reason,
                    request.deny_reissue,
                    now,
                )
                .map(|added| added.into_iter().map(|r| r.serial).collect())
                .unwrap_or_default();
            request.answers.insert(replica.to_owned(), serials);
            for (other, _) in others.clone() {
                if !request.answers.contains_key(other) {
                    request
                        .covered
                        .entry(other.clone())
                        .or_insert_with(|| replica.to_owned());
                }
            }
        }
        self.list.prune(now);
    }
}

/// The Secret, read and written with its resourceVersion.
#[derive(Clone)]
pub struct RevocationSecret {
    secret: StateSecret,
}

impl RevocationSecret {
    /// The Secret in `namespace`.
    pub fn new(connection: &Connection, namespace: &str) -> Self {
        Self {
            secret: StateSecret::new(connection, namespace, REVOCATIONS_SECRET),
        }
    }

    /// `Secret namespace/name`, for messages.
    pub fn describe(&self) -> String {
        self.secret.describe()
    }

    /// Wakes `notify` on each change of the Secret, for as long as the returned task runs (a
    /// replica answers a request within moments instead of at its next look).
    pub fn watch_changes(
        &self,
        notify: std::sync::Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        self.secret.watch_changes(notify)
    }

    /// What it holds and the resourceVersion it was read at; `None` before the first
    /// revocation.
    pub async fn read(&self) -> Result<Option<(ClusterRevocations, String)>, ClusterStoreError> {
        let Some(v) = self
            .secret
            .read()
            .await
            .map_err(|source| ClusterStoreError::Call {
                what: format!("cannot read {}", self.describe()),
                source,
            })?
        else {
            return Ok(None);
        };
        let doc = match v.data.get(KEY) {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                ClusterStoreError::Revocations(format!(
                    "{} holds no revocation list in {KEY}: {e}; fix or delete it",
                    self.describe()
                ))
            })?,
            None => ClusterRevocations::default(),
        };
        Ok(Some((doc, v.resource_version)))
    }

    /// Changes what it holds with `change` (made when absent), at the version it was read at,
    /// reading and changing again when another writer came first. `change` refusing leaves it
    /// as it was.
    pub async fn change<R>(
        &self,
        mut change: impl FnMut(&mut ClusterRevocations) -> Result<R, String>,
    ) -> Result<R, ClusterStoreError> {
        for _ in 0..ATTEMPTS {
            let read = self.read().await?;
            let mut doc = read.as_ref().map(|(d, _)| d.clone()).unwrap_or_default();
            let result = change(&mut doc).map_err(ClusterStoreError::Refused)?;
            if read.as_ref().is_some_and(|(before, _)| *before == doc) {
                return Ok(result);
            }
            let json = serde_json::to_vec_pretty(&doc)
                .map_err(|e| ClusterStoreError::Revocations(e.to_string()))?;
            let data = [(KEY.to_owned(), json)].into();
            let written = match &read {
                Some((_, version)) => self.secret.replace(version, &data).await,
                None => self.secret.create(&data).await,
            };
            match written {
                Ok(()) => return Ok(result),
                Err(CallError::Conflict(_)) => continue,
                Err(source) => {
                    return Err(ClusterStoreError::Call {
                        what: format!("cannot write {}", self.describe()),
                        source,
                    });
                }
            }
        }
        Err(ClusterStoreError::Revocations(format!(
            "{} kept changing under this write; try again",
            self.describe()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roots::ledger::{Certificate, Issuance};
    use std::time::{Duration, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn cert(id: &str, serial: &str, node: &str, issued: u64) -> IssuedCertificate {
        IssuedCertificate {
            id: id.into(),
            issuance: Issuance {
                at: issued,
                not_before: issued,
                not_after: issued + 100,
            },
            certificate: Certificate {
                serial: serial.into(),
                node: Some(node.into()),
                issuer: "k1".into(),
            },
        }
    }

    #[test]
    fn each_replica_answers_a_request_for_what_it_issued_before_it() {
        let mut doc = ClusterRevocations::default();
        doc.requests.push(Request::new(
            Target::Node("n1".into()),
            Reason::KeyCompromise,
            false,
            at(1050),
        ));
        // Replica a issued two on n1 (one after the request) and one on n2; b one on n1.
        let a = [
            cert("spiffe://td/web", "0a", "n1", 1000),
            cert("spiffe://td/web", "0b", "n1", 1051),
            cert("spiffe://td/db", "0c", "n2", 1000),
        ];
        let b = [cert("spiffe://td/api", "1a", "n1", 1040)];
        assert!(doc.has_work("a", at(1051), 200));
        doc.answer("a", &a, &[], at(1051), 200);
        assert!(!doc.has_work("a", at(1051), 200));
        assert!(doc.has_work("b", at(1051), 200));
        doc.answer("b", &b, &[], at(1052), 200);
        let serials: Vec<_> = doc.list.revoked.iter().map(|r| r.serial.as_str()).collect();
        assert_eq!(serials, ["0a", "1a"], "0b came after the request");
        assert_eq!(doc.requests[0].answers["a"], ["0a"]);
        assert_eq!(doc.requests[0].serials().len(), 2);
        // A replica with nothing of it answers with nothing; answering twice changes nothing.
        let before = doc.clone();
        doc.answer("a", &a, &[], at(1053), 200);
        assert_eq!(doc, before);
        doc.answer("c", &[], &[], at(1053), 200);
        assert!(doc.requests[0].answers["c"].is_empty());
        // The request outlives the certificates it named, then leaves; they leave the list.
        assert!(doc.has_work("z", at(1251), 200) && !doc.has_work("a", at(1250), 200));
        doc.answer("a", &a, &[], at(1251), 200);
        assert!(doc.requests.is_empty() && doc.list.revoked.is_empty());
    }

    #[test]
    fn a_replica_answers_for_one_that_is_gone_from_its_serials_record() {
        let mut doc = ClusterRevocations::default();
        doc.requests.push(Request::new(
            Target::Identity("spiffe://td/web".parse().unwrap()),
            Reason::KeyCompromise,
            false,
            at(1050),
        ));
        let gone = vec![
            cert("spiffe://td/web", "2a", "n1", 1000),
            cert("spiffe://td/db", "2b", "n1", 1000),
        ];
        let own_record = vec![cert("spiffe://td/web", "0a", "n1", 1000)];
        let records = [
            ("gone".to_owned(), gone),
            ("a".to_owned(), own_record.clone()),
        ];
        doc.answer("a", &own_record, &records, at(1051), 200);
        let serials: Vec<_> = doc.list.revoked.iter().map(|r| r.serial.as_str()).collect();
        assert_eq!(
            serials,
            ["0a", "2a"],
            "its own once, and the gone replica's web"
        );
        assert_eq!(doc.requests[0].covered["gone"], "a");
        assert!(!doc.requests[0].covered.contains_key("a"));
        // The replica itself, back, answers too: nothing new, and it is no longer only covered.
        doc.answer("gone", &[], &records, at(1052), 200);
        assert_eq!(doc.list.revoked.len(), 2);
        assert!(doc.requests[0].answers.contains_key("gone"));
    }

    #[test]
    fn a_serial_request_denies_the_identity_it_names_and_the_document_reads_back() {
        let mut doc = ClusterRevocations::default();
        doc.requests.push(Request::new(
            Target::Serial("0a".into()),
            Reason::Superseded,
            true,
            at(1050),
        ));
        doc.answer("b", &[], &[], at(1051), 200);
        assert!(doc.list.denied.is_empty(), "b did not issue it");
        doc.answer(
            "a",
            &[cert("spiffe://td/web", "0a", "n1", 1000)],
            &[],
            at(1051),
            200,
        );
        assert!(doc.list.denial("spiffe://td/web", None).is_some());
        let json = serde_json::to_string(&doc).unwrap();
        let back: ClusterRevocations = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
        // The list alone is what a data dir's revocations.json holds.
        let list: Revocations = serde_json::from_str(&json).unwrap();
        assert_eq!(list, doc.list);
    }
}
