//! Certificates with DNS names (the mesh file's `certificates:`, Istio's
//! `meshConfig.certificates`), issued by the CA under its active root and kept in
//! `--dns-cert-dir DIR/<secretName>/` as `cert-chain.pem`, `key.pem` (0600) and
//! `root-cert.pem`.
//!
//! Each set is replaced whole, the way the kubelet updates a mounted secret: the files are
//! written to a new hidden directory, and `<secretName>` is a symlink that is swapped to it in
//! one `rename`, so a reader never sees a certificate of one issue beside the key of another.
//! A set is re-issued at half its lifetime, when its names change, when another root starts
//! signing, and when the trust bundle changes; an entry removed from the mesh file has its
//! directory deleted. What is on disk is the state: a restarted CA keeps a set that is still
//! good.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::*;
use zident_identity::pem::certs_from_pem;
use zident_identity::{rfc3339, to_system_time};
use zident_mesh::DnsCertificate;

use crate::persist::write_atomic;
use crate::roots::authority::Authority;
use crate::state::CaState;

/// The leaf and intermediates.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key.
pub const KEY: &str = "key.pem";
/// The trust bundle.
pub const ROOT_CERT: &str = "root-cert.pem";

/// Hidden directories holding the files start with this; nothing else in the directory is
/// ever touched.
const DATA_PREFIX: &str = "..zident-";

/// How long to wait before trying again after a failure (a full disk, a permission).
const RETRY: Duration = Duration::from_secs(10);

/// What is on disk for one entry, as far as deciding to re-issue needs.
struct OnDisk {
    names: BTreeSet<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    signed_by_active: bool,
    bundle_current: bool,
}

/// One set in a DNS certificate directory, as `zident certs --dns-cert-dir` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DnsCertStatus {
    /// The directory name (the mesh entry's `secretName`).
    pub secret_name: String,
    /// The DNS SANs of the certificate.
    pub dns_names: Vec<String>,
    /// Its serial, hex.
    pub serial: String,
    /// notBefore (RFC 3339).
    pub not_before: String,
    /// notAfter (RFC 3339).
    pub not_after: String,
    /// When the CA renews it (RFC 3339): half way through its life.
    pub renews_at: String,
    /// Whether the certificate chains to a root in the set's `root-cert.pem`.
    pub chains_to_root_cert: bool,
}

/// The sets zident manages in `dir`, by name; a set that cannot be read is left out.
pub fn list(dir: &Path) -> std::io::Result<Vec<DnsCertStatus>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(DATA_PREFIX) {
            continue;
        }
        let set = e.path();
        let (Ok(chain), Ok(root)) = (
            std::fs::read(set.join(CERT_CHAIN)),
            std::fs::read(set.join(ROOT_CERT)),
        ) else {
            continue;
        };
        let Some(leaf) = certs_from_pem(&chain)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            continue;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&leaf) else {
            continue;
        };
        let roots = certs_from_pem(&root).unwrap_or_default();
        let chains = roots.iter().any(|r| {
            X509Certificate::from_der(r)
                .is_ok_and(|(_, r)| cert.verify_signature(Some(r.public_key())).is_ok())
        });
        let (nb, na) = (
            to_system_time(cert.validity().not_before),
            to_system_time(cert.validity().not_after),
        );
        out.push(DnsCertStatus {
            secret_name: name,
            dns_names: dns_names(&cert).into_iter().collect(),
            serial: zident_identity::serial_hex(cert.raw_serial()),
            not_before: rfc3339(nb),
            not_after: rfc3339(na),
            renews_at: rfc3339(renew_at(nb, na)),
            chains_to_root_cert: chains,
        });
    }
    out.sort_by(|a, b| a.secret_name.cmp(&b.secret_name));
    Ok(out)
}

fn dns_names(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps the certificates of the mesh in force in `dir`, for as long as the CA runs. Each
/// pass runs on the blocking pool.
pub(crate) async fn run(state: Arc<CaState>, dir: PathBuf, ttl: Duration) {
    let mut mesh = state.subscribe_mesh();
    let mut authority = state.subscribe_authority();
    loop {
        let wanted = mesh.borrow_and_update().mesh.certificates.clone();
        authority.borrow_and_update();
        // A pass reads and writes files (with fsync): the blocking pool's work.
        let (st, d) = (state.clone(), dir.clone());
        let pass =
            tokio::task::spawn_blocking(move || sync(&st, &d, &wanted, ttl, SystemTime::now()));
        let next = match pass.await {
            Ok(next) => next,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        };
        let wait = next
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_millis(100));
        tokio::select! {
            changed = mesh.changed() => if changed.is_err() { return },
            changed = authority.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass: issues what is missing, stale or due, deletes what the mesh no longer lists.
/// Returns when the next pass is due.
pub(crate) fn sync(
    state: &CaState,
    dir: &Path,
    wanted: &[DnsCertificate],
    ttl: Duration,
    now: SystemTime,
) -> SystemTime {
    let authority = state.authority();
    let td = state.authorizer().trust_domain().clone();
    let mut next = now + Duration::from_secs(3600);
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!(target: "zident::ca", dir = %dir.display(), "cannot create the DNS certificate directory: {e}");
        return now + RETRY;
    }
    // Once per pass, not per entry.
    let bundle_pem = authority.bundle().to_pem();
    let Ok((_, signer)) = X509Certificate::from_der(authority.signer()) else {
        tracing::error!(target: "zident::ca", "the signing certificate does not parse; DNS certificates are not issued");
        return now + RETRY;
    };
    for entry in wanted {
        let current = read(dir, &entry.secret_name, &signer, &bundle_pem);
        let names: BTreeSet<String> = entry
            .dns_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let reason = match &current {
            None => Some("new"),
            Some(c) if c.names != names => Some("its DNS names changed"),
            Some(c) if !c.signed_by_active => Some("another root signs now"),
            Some(c) if !c.bundle_current => Some("the trust bundle changed"),
            Some(c) if now >= renew_at(c.not_before, c.not_after) => {
                Some("half its lifetime passed")
            }
            Some(_) => None,
        };
        let Some(reason) = reason else {
            if let Some(c) = &current {
                next = next.min(renew_at(c.not_before, c.not_after));
                state
                    .metrics
                    .set_dns_cert_expiry(&entry.secret_name, c.not_after);
            }
            continue;
        };
        match issue(dir, entry, &authority, &bundle_pem, &td, ttl, now) {
            Ok((not_before, not_after)) => {
                tracing::info!(
                    target: "zident::ca",
                    secret = %entry.secret_name,
                    dns_names = ?entry.dns_names,
                    not_after = %rfc3339(not_after),
                    reason,
                    "issued DNS certificate"
                );
                state
                    .metrics
                    .set_dns_cert_expiry(&entry.secret_name, not_after);
                next = next.min(renew_at(not_before, not_after));
            }
            Err(e) => {
                tracing::error!(target: "zident::ca", secret = %entry.secret_name, "cannot issue the DNS certificate: {e}");
                next = next.min(now + RETRY);
            }
        }
    }
    let keep: BTreeSet<&str> = wanted.iter().map(|c| c.secret_name.as_str()).collect();
    remove_others(dir, &keep, state);
    next
}

/// Half way through the validity window, as for workload certificates.
fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    not_before + not_after.duration_since(not_before).unwrap_or_default() / 2
}

/// What is on disk for `name`, judged against the active `signer` and the bundle in force.
fn read(dir: &Path, name: &str, signer: &X509Certificate<'_>, bundle_pem: &str) -> Option<OnDisk> {
    let set = dir.join(name);
    let chain = std::fs::read(set.join(CERT_CHAIN)).ok()?;
    let root = std::fs::read(set.join(ROOT_CERT)).ok()?;
    if !set.join(KEY).exists() {
        return None;
    }
    let leaf = certs_from_pem(&chain).ok()?.into_iter().next()?;
    let (_, cert) = X509Certificate::from_der(&leaf).ok()?;
    let names = dns_names(&cert);
    Some(OnDisk {
        names,
        not_before: to_system_time(cert.validity().not_before),
        not_after: to_system_time(cert.validity().not_after),
        signed_by_active: cert.verify_signature(Some(signer.public_key())).is_ok(),
        bundle_current: root == bundle_pem.as_bytes(),
    })
}

/// Issues `entry` and swaps it in. Returns its validity window.
fn issue(
    dir: &Path,
    entry: &DnsCertificate,
    authority: &Authority,
    bundle_pem: &str,
    td: &zident_identity::TrustDomain,
    ttl: Duration,
    now: SystemTime,
) -> Result<(SystemTime, SystemTime), DnsCertError> {
    let issued = authority.issue_dns(td, &entry.dns_names, ttl, now)?;
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let data = format!("{DATA_PREFIX}{}.{nanos}", entry.secret_name);
    let data_path = dir.join(&data);
    let io = |what: &'static str, p: &Path, source: std::io::Error| DnsCertError::Io {
        what,
        path: p.to_owned(),
        source,
    };
    std::fs::create_dir(&data_path).map_err(|e| io("cannot create", &data_path, e))?;
    for (file, bytes, mode) in [
        (CERT_CHAIN, issued.chain_pem.as_bytes(), 0o644),
        (KEY, issued.key_pem.as_bytes(), 0o600),
        (ROOT_CERT, bundle_pem.as_bytes(), 0o644),
    ] {
        let p = data_path.join(file);
        write_atomic(&p, bytes, mode).map_err(|e| io("cannot write", &p, e))?;
    }
    let link = dir.join(&entry.secret_name);
    let old = std::fs::read_link(&link).ok();
    if old.is_none() && link.exists() {
        take_over_plain_dir(&link)?;
    }
    let tmp_link = dir.join(format!("{DATA_PREFIX}{}.link", entry.secret_name));
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&data, &tmp_link).map_err(|e| io("cannot link", &tmp_link, e))?;
    // The commit: readers of <secretName>/ see the old set or the new one, never a mix.
    std::fs::rename(&tmp_link, &link).map_err(|e| io("cannot swap in", &link, e))?;
    if let Some(old) = old
        && old.to_string_lossy().starts_with(DATA_PREFIX)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok((issued.not_before, issued.not_after))
}

/// A plain directory where the symlink goes (made by hand, or by another tool): replaced only
/// when it holds nothing but the three files of a set.
fn take_over_plain_dir(path: &Path) -> Result<(), DnsCertError> {
    let entries: Vec<String> = std::fs::read_dir(path)
        .map_err(|source| DnsCertError::Io {
            what: "cannot read what is in the way at",
            path: path.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if entries
        .iter()
        .any(|n| ![CERT_CHAIN, KEY, ROOT_CERT].contains(&n.as_str()))
    {
        return Err(DnsCertError::InTheWay {
            path: path.to_owned(),
            entries,
        });
    }
    std::fs::remove_dir_all(path).map_err(|source| DnsCertError::Io {
        what: "cannot replace",
        path: path.to_owned(),
        source,
    })
}

/// Why a DNS certificate set could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DnsCertError {
    /// The authority cannot issue it.
    #[error(transparent)]
    Issue(#[from] crate::roots::authority::AuthorityError),
    /// A file or directory of the set cannot be made.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A directory of someone else's is where the set's link goes.
    #[error(
        "{} is a directory with other files in it ({entries:?}); move it away so that zident can manage it",
        path.display()
    )]
    InTheWay {
        /// The directory.
        path: std::path::PathBuf,
        /// What is in it.
        entries: Vec<String>,
    },
}

/// Deletes the sets of entries no longer listed, and data directories no set points to (left
/// by a crash between writing and swapping). Only zident's own symlinks and directories.
fn remove_others(dir: &Path, keep: &BTreeSet<&str>, state: &CaState) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut linked = HashMap::new();
    let mut data_dirs = Vec::new();
    for e in read.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(DATA_PREFIX) {
            data_dirs.push(name);
            continue;
        }
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with(DATA_PREFIX) {
            continue;
        }
        if keep.contains(name.as_str()) {
            linked.insert(target, name);
        } else if std::fs::remove_file(&path).is_ok() {
            let _ = std::fs::remove_dir_all(dir.join(&target));
            state.metrics.forget_dns_cert(&name);
            tracing::info!(target: "zident::ca", secret = %name, "deleted a DNS certificate no longer in the mesh file");
        }
    }
    for d in data_dirs {
        if !linked.contains_key(&d) && !d.ends_with(".link") {
            let _ = std::fs::remove_dir_all(dir.join(&d));
        }
    }
}
