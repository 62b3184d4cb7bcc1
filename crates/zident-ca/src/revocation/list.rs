//! What is revoked, and whose certificates may not be issued again: `<data dir>/revocations.json`,
//! written atomically under the data dir's rotation lock by `zident ca revoke` and
//! `zident ca allow-reissue`, and followed by the running CA (`publisher`).
//!
//! A revocation names certificates by serial: revoking an identity or a node revokes every
//! valid certificate the ledger holds for it, at that moment. A revoked certificate leaves the
//! list once it has expired (a CRL need not list it any longer, RFC 5280 5.1.2.6). A denial
//! stands until lifted: it is what stops a compromised node from renewing.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use zident_identity::{SpiffeId, unix_seconds};

use crate::persist::write_atomic;
use crate::revocation::reason::Reason;
use crate::roots::dir_store;
use crate::roots::ledger::{self, IssuedCertificate};

/// The file, in the data dir.
pub const REVOCATIONS_FILE: &str = "revocations.json";

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Its SPIFFE ID.
    pub id: String,
    /// The node whose token obtained it, when a node's did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The key identifier of its signer, hex: the CRL that lists it.
    pub issuer: String,
    /// Its notAfter, Unix seconds: after it, the CRL no longer lists it.
    pub not_after: u64,
    /// Why.
    pub reason: Reason,
    /// When it was revoked, Unix seconds.
    pub revoked_at: u64,
}

/// Whose certificates a denial (or a revocation) is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A SPIFFE ID.
    Identity(String),
    /// A node (its token's requests, for whichever identity).
    Node(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Identity(id) => write!(f, "identity {id}"),
            Subject::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// An identity or node whose requests are refused until an operator lifts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Whose.
    pub subject: Subject,
    /// The revocation's reason.
    pub reason: Reason,
    /// Since when, Unix seconds.
    pub since: u64,
}

/// The revocations and denials in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// Revoked certificates that have not expired.
    #[serde(default)]
    pub revoked: Vec<Revoked>,
    /// Denials of reissue.
    #[serde(default)]
    pub denied: Vec<Denial>,
}

/// What `zident ca revoke` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One certificate.
    Serial(String),
    /// Every valid certificate of an identity.
    Identity(#[serde(with = "id_text")] SpiffeId),
    /// Every valid certificate a node's token obtained.
    Node(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Serial(s) => write!(f, "serial {s}"),
            Target::Identity(id) => write!(f, "identity {id}"),
            Target::Node(n) => write!(f, "node {n}"),
        }
    }
}

impl Target {
    /// Whose denial of reissue a revocation of this target with `--deny-reissue` makes, when
    /// that is known without the ledger (a serial's identity is found there).
    pub fn subject(&self) -> Option<Subject> {
        match self {
            Target::Serial(_) => None,
            Target::Identity(id) => Some(Subject::Identity(id.to_string())),
            Target::Node(n) => Some(Subject::Node(n.clone())),
        }
    }
}

/// A SPIFFE ID as its text in JSON.
mod id_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use zident_identity::SpiffeId;

    pub fn serialize<S: Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpiffeId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a revocation could not be made; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Nothing valid matches.
    #[error("{0}")]
    NothingToRevoke(String),
    /// The file is unreadable.
    #[error("{path}: {message}; fix or remove it (it lists what is revoked)")]
    Unreadable {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The data dir could not be locked or written.
    #[error("{0}")]
    Io(String),
}

impl Revocations {
    /// The list in `data_dir` (empty when there is none).
    pub fn load(data_dir: &Path) -> Result<Self, RevokeError> {
        let path = data_dir.join(REVOCATIONS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RevokeError::Unreadable {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(RevokeError::Unreadable {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Writes the list to `data_dir` atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), RevokeError> {
        let path = data_dir.join(REVOCATIONS_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| RevokeError::Io(e.to_string()))?;
        write_atomic(&path, &json, 0o600)
            .map_err(|e| RevokeError::Io(format!("{}: {e}", path.display())))
    }

    /// Drops the revoked certificates that have expired by `now`.
    pub fn prune(&mut self, now: SystemTime) {
        let now = unix_seconds(now);
        self.revoked.retain(|r| r.not_after > now);
    }

    /// Whether a request for `id` by a caller on `node` is denied, and by which denial.
    pub fn denial(&self, id: &str, node: Option<&str>) -> Option<&Denial> {
        self.denied.iter().find(|d| match &d.subject {
            Subject::Identity(i) => i == id,
            Subject::Node(n) => Some(n.as_str()) == node,
        })
    }

    /// Whether `serial` is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.iter().any(|r| r.serial == serial)
    }
}

/// The valid certificates `target` names among `issued`.
fn matching<'a>(issued: &'a [IssuedCertificate], target: &Target) -> Vec<&'a IssuedCertificate> {
    issued
        .iter()
        .filter(|c| match target {
            Target::Serial(s) => c.certificate.serial == *s,
            Target::Identity(id) => c.id == id.as_str(),
            Target::Node(n) => c.certificate.node.as_deref() == Some(n.as_str()),
        })
        .collect()
}

/// A serial as the ledger writes it: lowercase hex without separators or leading zeros
/// beyond what the serial has (`AB:CD`, `0xabcd` and `abcd` are the same).
pub fn normalize_serial(serial: &str) -> Result<String, String> {
    let plain: String = serial
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .flat_map(char::to_lowercase)
        .collect();
    if plain.is_empty() || !plain.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{serial:?} is not a serial number: give it in hex, as `zident certs` and `openssl x509 -serial` show it"
        ));
    }
    // Whole bytes, without the leading zero bytes (as the ledger writes serials).
    let mut even = if !plain.len().is_multiple_of(2) {
        format!("0{plain}")
    } else {
        plain
    };
    while even.len() > 2 && even.starts_with("00") {
        even.drain(..2);
    }
    Ok(even)
}

/// Revokes what `target` names in `data_dir` with `reason` at `now`, and with `deny_reissue`
/// refuses the identity's (or node's) requests until lifted. Returns the certificates newly
/// revoked. Refused, changing nothing, when nothing valid matches (unless a denial is asked
/// for an identity or node: that stands on its own).
pub fn revoke(
    data_dir: &Path,
    target: &Target,
    reason: Reason,
    deny_reissue: bool,
    now: SystemTime,
) -> Result<Vec<Revoked>, RevokeError> {
    let _lock = dir_store::lock(data_dir).map_err(|e| RevokeError::Io(e.to_string()))?;
    let mut list = Revocations::load(data_dir)?;
    let issued = ledger::certificates(data_dir, now);
    let added = list
        .revoke(&issued, target, reason, deny_reissue, now)
        .map_err(|what| {
            RevokeError::NothingToRevoke(format!(
                "{what} is in the ledger of {} (it expired, was issued before this CA named its certificates, or by another CA); nothing was changed",
                data_dir.display()
            ))
        })?;
    list.save(data_dir)?;
    Ok(added)
}

impl Revocations {
    /// Revokes what `target` names among `issued` (the valid certificates a CA issued) at
    /// `now`, and with `deny_reissue` records a denial; the newly revoked certificates, or
    /// (changing nothing) what was not found when nothing matches and no denial was asked for
    /// an identity or node. Every store applies this one rule.
    pub fn revoke(
        &mut self,
        issued: &[IssuedCertificate],
        target: &Target,
        reason: Reason,
        deny_reissue: bool,
        now: SystemTime,
    ) -> Result<Vec<Revoked>, String> {
        self.prune(now);
        let found = matching(issued, target);
        let denial = match deny_reissue {
            true => target
                .subject()
                .or_else(|| found.first().map(|c| Subject::Identity(c.id.clone()))),
            false => None,
        };
        if found.is_empty() && denial.is_none() {
            return Err(match target {
                Target::Serial(s) => format!("no valid certificate with serial {s}"),
                Target::Identity(id) => format!("no valid certificate of {id}"),
                Target::Node(n) => format!("no valid certificate obtained by node {n}'s token"),
            });
        }
        let at = unix_seconds(now);
        let mut added = Vec::new();
        for c in found {
            if self.is_revoked(&c.certificate.serial) {
                continue;
            }
            let r = Revoked {
                serial: c.certificate.serial.clone(),
                id: c.id.clone(),
                node: c.certificate.node.clone(),
                issuer: c.certificate.issuer.clone(),
                not_after: c.issuance.not_after,
                reason,
                revoked_at: at,
            };
            self.revoked.push(r.clone());
            added.push(r);
        }
        if let Some(subject) = denial
            && !self.denied.iter().any(|d| d.subject == subject)
        {
            self.denied.push(Denial {
                subject,
                reason,
                since: at,
            });
        }
        Ok(added)
    }

    /// Lifts the denial of `subject`; false when there was none.
    pub fn allow(&mut self, subject: &Subject) -> bool {
        let before = self.denied.len();
        self.denied.retain(|d| d.subject != *subject);
        self.denied.len() != before
    }
}

/// Lifts the denial of `subject` in `data_dir`; false when there was none.
pub fn allow_reissue(data_dir: &Path, subject: &Subject) -> Result<bool, RevokeError> {
    let _lock = dir_store::lock(data_dir).map_err(|e| RevokeError::Io(e.to_string()))?;
    let mut list = Revocations::load(data_dir)?;
    if !list.allow(subject) {
        return Ok(false);
    }
    list.save(data_dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roots::ledger::{Certificate, Issuance, Ledger};
    use std::time::{Duration, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    /// A ledger with three certificates: web twice (node a), db once (node b).
    fn ledger(dir: &Path) {
        let l = Ledger::open(dir, at(1000)).unwrap();
        let cert = |serial: &str, node: &str| {
            Some(Certificate {
                serial: serial.into(),
                node: Some(node.into()),
                issuer: "k1".into(),
            })
        };
        let i = |at| Issuance {
            at,
            not_before: at,
            not_after: at + 100,
        };
        l.record("spiffe://td/web", i(1000), cert("0a", "a"));
        l.record("spiffe://td/web", i(1050), cert("0b", "a"));
        l.record("spiffe://td/db", i(1060), cert("0c", "b"));
        drop(l);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ledger::certificates(dir, at(1000)).len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the ledger is written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn revoking_an_identity_or_node_names_every_valid_certificate_of_it_and_a_denial_stands_until_lifted()
     {
        let dir = tempfile::tempdir().unwrap();
        ledger(dir.path());
        // The compaction at the next start keeps every named certificate.
        drop(Ledger::open(dir.path(), at(1070)).unwrap());
        assert_eq!(ledger::certificates(dir.path(), at(1070)).len(), 3);

        let web: SpiffeId = "spiffe://td/web".parse().unwrap();
        let added = revoke(
            dir.path(),
            &Target::Identity(web.clone()),
            Reason::KeyCompromise,
            false,
            at(1070),
        )
        .unwrap();
        let serials: Vec<_> = added.iter().map(|r| r.serial.as_str()).collect();
        assert_eq!(serials, ["0a", "0b"]);
        // Again: nothing new, and no error (the certificates exist).
        assert!(
            revoke(
                dir.path(),
                &Target::Identity(web),
                Reason::KeyCompromise,
                false,
                at(1071)
            )
            .unwrap()
            .is_empty()
        );
        // Node b: db's certificate, and a denial for the node.
        let added = revoke(
            dir.path(),
            &Target::Node("b".into()),
            Reason::CessationOfOperation,
            true,
            at(1072),
        )
        .unwrap();
        assert_eq!(added.len(), 1);
        let list = Revocations::load(dir.path()).unwrap();
        assert_eq!(list.revoked.len(), 3);
        assert!(list.denial("spiffe://td/db", Some("b")).is_some());
        assert!(list.denial("spiffe://td/db", Some("a")).is_none());
        assert!(
            allow_reissue(dir.path(), &Subject::Node("b".into())).unwrap(),
            "lifted"
        );
        assert!(!allow_reissue(dir.path(), &Subject::Node("b".into())).unwrap());
        // Expired certificates leave the list.
        let mut list = Revocations::load(dir.path()).unwrap();
        list.prune(at(1151));
        assert_eq!(
            list.revoked.len(),
            1,
            "0a (to 1100) and 0b (to 1150) expired: {list:?}"
        );
    }

    #[test]
    fn an_unknown_serial_changes_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        ledger(dir.path());
        let err = revoke(
            dir.path(),
            &Target::Serial("ff".into()),
            Reason::Unspecified,
            true,
            at(1070),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no valid certificate with serial ff"),
            "{err}"
        );
        assert!(!dir.path().join(REVOCATIONS_FILE).exists());
        assert_eq!(normalize_serial("0A:Bc").as_deref(), Ok("0abc"));
        assert_eq!(normalize_serial("00:ab").as_deref(), Ok("ab"));
        assert_eq!(normalize_serial("abc").as_deref(), Ok("0abc"));
        assert!(normalize_serial("xyz").is_err());
    }
}
