//! What the CA issued: for each identity, when its latest certificate was issued and how long
//! it lives. Root rotation reads it to know when `activate` is safe for clients that learn
//! roots only from `CreateCertificate` responses (ztunnel, istio-agent): they trust a new root
//! only once they have renewed after `prepare`, which they do at half of their certificate's
//! life, on their own schedule.
//!
//! Kept in memory for the CA, and in `<data dir>/issued.log`, one JSON line per issuance,
//! appended by a thread of its own so that issuance never waits on the disk. It survives a
//! restart of the CA (and a crash of the process: lines are written within milliseconds, not
//! fsynced one by one), is compacted to one line per identity with a valid certificate at each
//! start, and is read by `zident ca rotate` and `zident ca status` beside a running CA. A line
//! cut short by a crash is skipped.
//!
//! A workload certificate's line also names it ([`Certificate`]: serial, the node whose token
//! asked for it, the key that signed it), and compaction keeps every such line until its
//! certificate expires: `zident ca revoke` finds there every certificate of an identity or of
//! a node (see `crate::revocation`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use zident_identity::unix_seconds;

use crate::persist::write_atomic;

/// The file, in the data dir.
pub const LEDGER_FILE: &str = "issued.log";

/// The longest a line waits for the write after the one before it. A line that comes while
/// the ledger is idle is written at once; a crash loses at most this much, which only makes
/// root activation wait longer (see [`load`]).
const COALESCE: Duration = Duration::from_millis(10);

/// One issuance, as the ledger keeps it (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    /// When it was issued.
    pub at: u64,
    /// The certificate's notBefore.
    pub not_before: u64,
    /// The certificate's notAfter.
    pub not_after: u64,
}

impl Issuance {
    /// When a client renews this certificate at the latest: half its lifetime (Istio's and
    /// zident's rule), plus `margin` for clocks and late renewals.
    pub fn renewal_point(&self, margin: u64) -> u64 {
        self.not_before + (self.not_after.saturating_sub(self.not_before)) / 2 + margin
    }
}

/// What names one issued workload certificate, for revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Its serial, lowercase hex.
    pub serial: String,
    /// The node whose token asked for it (none for an identity token or a ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The key identifier of the certificate that signed it, hex: which CRL lists it.
    pub issuer: String,
}

/// An issued certificate, with who it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The SPIFFE ID.
    pub id: String,
    /// When, and how long it lives.
    pub issuance: Issuance,
    /// Its serial, node and signer.
    pub certificate: Certificate,
}

#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    #[serde(flatten)]
    issuance: Issuance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert: Option<Certificate>,
}

/// Every readable line of `data_dir`'s ledger, oldest first. A line cut short by a crash is
/// skipped: at worst an identity looks as if its last certificate were an older one, which
/// only makes activation wait longer.
fn lines(data_dir: &Path) -> Vec<Line> {
    let Ok(text) = std::fs::read_to_string(data_dir.join(LEDGER_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .collect()
}

fn latest_of(lines: &[Line]) -> HashMap<String, Issuance> {
    let mut latest = HashMap::new();
    for l in lines {
        let e = latest.entry(l.id.clone()).or_insert(l.issuance);
        if l.issuance.at >= e.at {
            *e = l.issuance;
        }
    }
    latest
}

/// The latest issuance of each identity in `data_dir`'s ledger; empty when there is none.
pub fn load(data_dir: &Path) -> HashMap<String, Issuance> {
    latest_of(&lines(data_dir))
}

/// Every workload certificate in `data_dir`'s ledger still valid at `now`, oldest first.
pub fn certificates(data_dir: &Path, now: SystemTime) -> Vec<IssuedCertificate> {
    let now = unix_seconds(now);
    lines(data_dir)
        .into_iter()
        .filter(|l| l.issuance.not_after > now)
        .filter_map(|l| {
            Some(IssuedCertificate {
                id: l.id,
                issuance: l.issuance,
                certificate: l.cert?,
            })
        })
        .collect()
}

fn write_lines(data_dir: &Path, lines: &[Line]) -> std::io::Result<()> {
    let mut compact = String::new();
    for line in lines {
        if let Ok(text) = serde_json::to_string(line) {
            compact.push_str(&text);
            compact.push('\n');
        }
    }
    write_atomic(&data_dir.join(LEDGER_FILE), compact.as_bytes(), 0o600)
}

/// The running CA's ledger.
pub struct Ledger {
    latest: Mutex<HashMap<String, Issuance>>,
    writer: Mutex<Option<mpsc::Sender<String>>>,
    /// With a shared datastore: what was issued since it was last sent there (the latest per
    /// identity, so it stays bounded while the database is away).
    outbox: Mutex<Option<HashMap<String, Issuance>>>,
    /// With a shared datastore: the certificates named since they were last sent there (at most
    /// [`MAX_CERTIFICATE_OUTBOX`]; the oldest go first while the database is away, and stay
    /// in this replica's own ledger).
    certificate_outbox: Mutex<Option<std::collections::VecDeque<IssuedCertificate>>>,
}

/// The most named certificates kept for a datastore that is away.
const MAX_CERTIFICATE_OUTBOX: usize = 200_000;

impl Ledger {
    /// Opens the ledger of `data_dir`: loads it, compacts it to the certificates still valid
    /// at `now`, and starts the thread that appends to it.
    pub fn open(data_dir: &Path, now: SystemTime) -> std::io::Result<Self> {
        let now = unix_seconds(now);
        let mut all = lines(data_dir);
        all.retain(|l| l.issuance.not_after > now);
        let mut latest = latest_of(&all);
        latest.retain(|_, i| i.not_after > now);
        // Kept: every valid certificate's line (revocation finds them), and the latest line of
        // each identity that has no such line (from before certificates were named).
        let mut kept: Vec<Line> = Vec::with_capacity(all.len());
        let named: std::collections::HashSet<String> = all
            .iter()
            .filter(|l| l.cert.is_some())
            .map(|l| l.id.clone())
            .collect();
        for (id, issuance) in &latest {
            if !named.contains(id) {
                kept.push(Line {
                    id: id.clone(),
                    issuance: *issuance,
                    cert: None,
                });
            }
        }
        kept.extend(all.into_iter().filter(|l| l.cert.is_some()));
        let path = data_dir.join(LEDGER_FILE);
        write_lines(data_dir, &kept)?;
        let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("zident-ledger".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everything that queued up meanwhile goes in one write.
                    let mut batch = first;
                    while let Ok(more) = rx.try_recv() {
                        batch.push_str(&more);
                    }
                    if let Err(e) = file.write_all(batch.as_bytes()) {
                        tracing::error!(target: "zident::ca", "cannot append to {LEDGER_FILE}: {e}; root rotation will wait for the bundle rule and renewal points it knows");
                    }
                    // Under load, lines gather for a moment before the next write: one write
                    // (and one wake-up of this thread and of the data dir's file watcher) per
                    // batch, not per certificate.
                    std::thread::sleep(COALESCE);
                }
            })?;
        Ok(Self {
            latest: Mutex::new(latest),
            writer: Mutex::new(Some(tx)),
            outbox: Mutex::new(None),
            certificate_outbox: Mutex::new(None),
        })
    }

    /// Records a certificate issued to `id`; `certificate` names it for revocation.
    pub fn record(&self, id: &str, issuance: Issuance, certificate: Option<Certificate>) {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), issuance);
        if let Some(outbox) = self
            .outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            outbox.insert(id.to_owned(), issuance);
        }
        if let (Some(cert), Some(outbox)) = (
            &certificate,
            self.certificate_outbox
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut(),
        ) {
            if outbox.len() >= MAX_CERTIFICATE_OUTBOX {
                outbox.pop_front();
            }
            outbox.push_back(IssuedCertificate {
                id: id.to_owned(),
                issuance,
                certificate: cert.clone(),
            });
        }
        let Ok(mut line) = serde_json::to_string(&Line {
            id: id.to_owned(),
            issuance,
            cert: certificate,
        }) else {
            return;
        };
        line.push('\n');
        if let Some(tx) = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.send(line);
        }
    }

    /// Runs `f` over the latest issuance of each identity, without copying them (the rotation
    /// schedule asks every second while a root is prepared).
    pub fn read<R>(&self, f: impl FnOnce(&HashMap<String, Issuance>) -> R) -> R {
        f(&self.latest.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts keeping what is issued for a shared datastore, beginning with everything known.
    pub(crate) fn share(&self) {
        let all = self.snapshot();
        *self.outbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(all);
    }

    /// Starts keeping the certificates named for a shared datastore (PostgreSQL's holds each,
    /// for revocation), beginning with those in `data_dir`'s ledger still valid at `now`.
    pub(crate) fn share_certificates(&self, data_dir: &Path, now: SystemTime) {
        *self
            .certificate_outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(certificates(data_dir, now).into());
    }

    /// The certificates named since the last call, for the shared datastore.
    pub(crate) fn take_certificates(&self) -> Vec<IssuedCertificate> {
        self.certificate_outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(|o| o.drain(..).collect())
            .unwrap_or_default()
    }

    /// Puts back certificates that could not be sent (before any named since).
    pub(crate) fn return_certificates(&self, unsent: Vec<IssuedCertificate>) {
        if let Some(outbox) = self
            .certificate_outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            for c in unsent.into_iter().rev() {
                if outbox.len() >= MAX_CERTIFICATE_OUTBOX {
                    break;
                }
                outbox.push_front(c);
            }
        }
    }

    /// What was issued since the last call, for the shared datastore.
    pub(crate) fn take_outbox(&self) -> HashMap<String, Issuance> {
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Puts back what could not be sent (newer entries win).
    pub(crate) fn return_outbox(&self, unsent: HashMap<String, Issuance>) {
        if let Some(outbox) = self
            .outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            for (id, i) in unsent {
                let e = outbox.entry(id).or_insert(i);
                if i.at > e.at {
                    *e = i;
                }
            }
        }
    }

    /// A copy of the latest issuance of each identity.
    pub fn snapshot(&self) -> HashMap<String, Issuance> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// An identity that may not trust a prepared root yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// The SPIFFE ID.
    pub id: String,
    /// When its certificate (issued before prepare) was issued, Unix seconds.
    pub issued_at: u64,
    /// When it will have renewed at the latest (and so learned the new root), Unix seconds.
    pub renews_by: u64,
}

/// The identities whose latest certificate was issued before (or in the second of) `prepared_at`, and whose renewal
/// point (plus `margin`) is still ahead at `now`: clients that learn roots only from responses
/// have not seen the prepared root yet. Sorted by when they renew.
pub fn waiting(
    latest: &HashMap<String, Issuance>,
    prepared_at: u64,
    now: u64,
    margin: u64,
) -> Vec<Waiting> {
    let mut w: Vec<Waiting> = latest
        .iter()
        // Times are whole seconds: an issuance in the second of prepare may have come just
        // before it, so it counts as before (the cautious side).
        .filter(|(_, i)| i.at <= prepared_at && i.not_after > now)
        .map(|(id, i)| Waiting {
            id: id.clone(),
            issued_at: i.at,
            renews_by: i.renewal_point(margin),
        })
        .filter(|w| w.renews_by > now)
        .collect();
    w.sort_by(|a, b| a.renews_by.cmp(&b.renews_by).then(a.id.cmp(&b.id)));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)
    }

    #[test]
    fn identities_wait_until_they_renewed_after_prepare_or_their_renewal_point_passed() {
        let i = |at, nb, na| Issuance {
            at,
            not_before: nb,
            not_after: na,
        };
        let latest: HashMap<String, Issuance> = [
            // Issued before prepare (at 1000), renews at 1000 + 500 = 1500 (+ margin 60).
            ("a".to_string(), i(1000, 1000, 2000)),
            // Renewed after prepare: has the new root.
            ("b".to_string(), i(1200, 1200, 2200)),
            // Issued before prepare, renewal point already passed at now = 1300.
            ("c".to_string(), i(100, 100, 2000)),
            // Expired.
            ("d".to_string(), i(10, 10, 20)),
        ]
        .into();
        let w = waiting(&latest, 1100, 1300, 60);
        assert_eq!(
            w,
            vec![Waiting {
                id: "a".into(),
                issued_at: 1000,
                renews_by: 1560
            }]
        );
        assert!(waiting(&latest, 1100, 1560, 60).is_empty());
    }

    #[test]
    fn the_ledger_survives_a_restart_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = Ledger::open(dir.path(), at(1000)).unwrap();
            l.record(
                "spiffe://td/a",
                Issuance {
                    at: 1000,
                    not_before: 990,
                    not_after: 2000,
                },
                None,
            );
            l.record(
                "spiffe://td/b",
                Issuance {
                    at: 1001,
                    not_before: 990,
                    not_after: 1005,
                },
                None,
            );
            l.record(
                "spiffe://td/a",
                Issuance {
                    at: 1500,
                    not_before: 1490,
                    not_after: 2500,
                },
                None,
            );
        }
        // The writer thread ends when the ledger drops; wait for its lines.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while load(dir.path()).get("spiffe://td/a").map(|i| i.at) != Some(1500) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A crash mid-line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(LEDGER_FILE))
            .unwrap();
        f.write_all(b"{\"id\":\"spiffe://td/c\",\"at\":12").unwrap();
        let l = Ledger::open(dir.path(), at(1100)).unwrap();
        let s = l.snapshot();
        assert_eq!(s.len(), 1, "b expired, c was torn: {s:?}");
        assert_eq!(s["spiffe://td/a"].at, 1500);
    }
}
