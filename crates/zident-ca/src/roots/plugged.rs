//! Root rotation with plugged-in keys: the operator changes the files in `ROOT_CA_DIR`, and the
//! CA makes the change follow the same three phases as a self-signed rotation, refusing any
//! change that would break handshakes:
//!
//! 1. **prepare**: `root-cert.pem` gains the new root beside the old one (signing files
//!    unchanged). Applied at once: the bundle grows and `spiffe_sequence` increases.
//! 2. **activate**: the signing files (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`) move to an
//!    intermediate under the new root. Refused until that root has been in the bundle for the
//!    activation delay (agents fetch the bundle at its refresh hint).
//! 3. **retire**: `root-cert.pem` loses the old root. Refused while that root still signs, or
//!    while certificates signed under it may be valid (activation + the longest lifetime).
//!
//! A refused change leaves the current keys signing; the log says what to do and from when. The
//! CA re-reads the directory when its files change, so the operator writes the files again once
//! the time has come. What the CA knows of the roots (when each was first published, until when
//! each may have signed) is kept in `<data dir>/plugged-in.json`, so a restart forgets nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;
use zident_identity::{fingerprint, rfc3339};

use crate::persist::{create_private_dir, write_atomic};
use crate::roots::authority::Authority;
use crate::roots::files::FileError;
use crate::roots::rotation::Timing;

/// The state file.
pub const STATE_FILE: &str = "plugged-in.json";

/// What the CA remembers of plugged-in roots, keyed by SHA-256 fingerprint (hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluggedState {
    /// `spiffe_sequence` of the bundle.
    pub sequence: u64,
    /// Root → unix seconds it was first published (0: in the bundle at the first start).
    pub published: BTreeMap<String, u64>,
    /// Roots that stopped signing → unix seconds until which what they signed may be valid.
    pub signed_until: BTreeMap<String, u64>,
    /// The root the signing key chains to.
    pub signing_root: Option<String>,
    /// Subject of each known root, for people reading the file or `zident ca status`.
    #[serde(default)]
    pub subjects: BTreeMap<String, String>,
    /// The last change of the files that the CA refused, kept until a change is applied, so
    /// `zident ca status` can say why the CA still signs with the files it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<Refusal>,
}

/// A change of the plugged-in files that the CA refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Unix seconds of the refusal.
    pub at: u64,
    /// Why, and what to do instead.
    pub reason: String,
}

use zident_identity::unix_seconds;

fn at(s: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(s))
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

fn subject(der: &CertificateDer<'_>) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

/// The root of `authority`'s bundle that its signing chain ends at.
pub fn signing_root(authority: &Authority) -> Option<String> {
    let top = authority
        .intermediates()
        .last()
        .unwrap_or(authority.signer());
    let (_, top_cert) = X509Certificate::from_der(top).ok()?;
    authority
        .bundle()
        .roots()
        .iter()
        .find(|r| {
            *r == top
                || X509Certificate::from_der(r).is_ok_and(|(_, root)| {
                    top_cert.verify_signature(Some(root.public_key())).is_ok()
                })
        })
        .map(|r| fingerprint(r))
}

fn roots(authority: &Authority) -> Vec<(String, CertificateDer<'static>)> {
    authority
        .bundle()
        .roots()
        .iter()
        .map(|r| (fingerprint(r), r.clone()))
        .collect()
}

/// Reads the state of `data_dir`, if any.
pub fn read(data_dir: &Path) -> Result<Option<PluggedState>, FileError> {
    let path = data_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| FileError::Invalid {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Io { path, source }),
    }
}

fn write(data_dir: &Path, state: &PluggedState) -> Result<(), FileError> {
    create_private_dir(data_dir).map_err(|source| FileError::Io {
        path: data_dir.to_owned(),
        source,
    })?;
    let path: PathBuf = data_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).map_err(|e| FileError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &json, 0o644).map_err(|source| FileError::Io { path, source })
}

/// Why a change of the plugged-in files would break handshakes, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafeChange {
    /// The new signing key chains to a root nodes were never given.
    #[error(
        "the new signing key chains to root {root}, which is not in the bundle yet: first add that root to root-cert.pem beside the current one (prepare), wait {wait_secs}s for nodes to fetch it, then switch the signing files (activate)"
    )]
    RootNotPublished {
        /// The root's fingerprint, short.
        root: String,
        /// How long nodes need to fetch a new bundle.
        wait_secs: u64,
    },
    /// The new root was published too recently for every node to have fetched it.
    #[error(
        "too early to sign under root {root}: nodes may not have fetched it yet; write the signing files again from {} (in {}s)",
        at(*safe_from),
        safe_from - now
    )]
    NotFetchedYet {
        /// The root's fingerprint, short.
        root: String,
        /// Unix seconds from which it is safe.
        safe_from: u64,
        /// Unix seconds now.
        now: u64,
    },
    /// Clients that learn roots only from responses have not renewed since the root appeared.
    #[error(
        "too early to sign under root {root}: {count} identities hold a certificate issued before it was published and have not renewed since (clients that learn roots only from CreateCertificate responses, like ztunnel, do not trust it yet), e.g. {example}; write the signing files again once they have renewed, at the latest from {} (in {}s)",
        at(*safe_from),
        safe_from - now
    )]
    ClientsWaiting {
        /// The root's fingerprint, short.
        root: String,
        /// How many identities wait.
        count: usize,
        /// One of them.
        example: String,
        /// Unix seconds by which the last will have renewed.
        safe_from: u64,
        /// Unix seconds now.
        now: u64,
    },
    /// A root that still signs would leave the bundle.
    #[error(
        "root {root} still signs: switch the signing files to an intermediate under the new root first (activate), and remove the old root (retire) once its certificates have expired"
    )]
    StillSigns {
        /// The root's fingerprint, short.
        root: String,
    },
    /// A root whose certificates may still be valid would leave the bundle.
    #[error(
        "certificates signed under root {root} may be valid until {} (in {}s): remove it from root-cert.pem (retire) then",
        at(*valid_until),
        valid_until - now
    )]
    StillValid {
        /// The root's fingerprint, short.
        root: String,
        /// Unix seconds until which its certificates may be valid.
        valid_until: u64,
        /// Unix seconds now.
        now: u64,
    },
}

impl PluggedState {
    /// The state after the CA started with `authority`: the roots present at a first start
    /// count as long published; a root that appeared while the CA was stopped is published
    /// now, and a change of signing root while stopped is logged and recorded.
    pub fn on_start(
        data_dir: &Path,
        authority: &Authority,
        timing: &Timing,
        now: SystemTime,
    ) -> Result<Self, FileError> {
        let previous = read(data_dir)?;
        let first = previous.is_none();
        let mut state = previous.unwrap_or_default();
        let t = unix_seconds(now);
        let old_signing = state.record(authority, if first { 0 } else { t }, t, timing);
        if let Some(old) = old_signing.filter(|_| !first) {
            tracing::warn!(
                target: "zident::ca",
                old_root = short(&old),
                new_root = state.signing_root.as_deref().map(short).unwrap_or("?"),
                "the plugged-in signing root changed while the CA was stopped; nodes that do not trust the new root yet fail until they fetch the bundle (use the phases of docs/root-rotation.md)"
            );
        }
        if first {
            state.sequence = 1;
        }
        write(data_dir, &state)?;
        Ok(state)
    }

    /// Brings the record up to `authority` at unix time `t`: its roots (new ones published at
    /// `published_at`), its signing root (the one it replaces may have signed until
    /// `t` + the retire delay), and the sequence, increased if the set of roots changed.
    /// Returns the signing root that was replaced, if any.
    fn record(
        &mut self,
        authority: &Authority,
        published_at: u64,
        t: u64,
        timing: &Timing,
    ) -> Option<String> {
        let present = roots(authority);
        let changed = present.len() != self.published.len()
            || present
                .iter()
                .any(|(fp, _)| !self.published.contains_key(fp));
        for (fp, der) in &present {
            self.published.entry(fp.clone()).or_insert(published_at);
            self.subjects.insert(fp.clone(), subject(der));
        }
        self.published
            .retain(|fp, _| present.iter().any(|(p, _)| p == fp));
        let signing = signing_root(authority);
        let replaced = if signing != self.signing_root {
            self.signing_root.take()
        } else {
            None
        };
        if let Some(old) = &replaced {
            self.signed_until
                .insert(old.clone(), t + timing.retire_delay_secs);
        }
        self.signing_root = signing;
        self.signed_until
            .retain(|fp, until| *until > t && present.iter().any(|(p, _)| p == fp));
        if changed {
            self.sequence += 1;
        }
        replaced
    }

    /// Whether replacing `current` by `next` keeps every handshake working; the refusal says
    /// what to do instead, and from when.
    pub fn check(
        &self,
        current: &Authority,
        next: &Authority,
        timing: &Timing,
        issued: &std::collections::HashMap<String, crate::roots::ledger::Issuance>,
        now: SystemTime,
    ) -> Result<(), UnsafeChange> {
        let t = unix_seconds(now);
        let next_roots = roots(next);
        let next_signing = signing_root(next);
        if next_signing != self.signing_root
            && let Some(root) = &next_signing
        {
            let safe = self
                .published
                .get(root)
                .map(|p| p + timing.activate_delay_secs);
            match safe {
                None => {
                    return Err(UnsafeChange::RootNotPublished {
                        root: short(root).to_owned(),
                        wait_secs: timing.activate_delay_secs,
                    });
                }
                Some(safe) if t < safe => {
                    return Err(UnsafeChange::NotFetchedYet {
                        root: short(root).to_owned(),
                        safe_from: safe,
                        now: t,
                    });
                }
                Some(_) => {}
            }
            // Clients that learn roots only from responses trust the new root once they
            // renewed after it was published.
            let published = self.published.get(root).copied().unwrap_or(0);
            let waiting =
                crate::roots::ledger::waiting(issued, published, t, timing.renewal_margin_secs);
            if let Some(last) = waiting.last() {
                return Err(UnsafeChange::ClientsWaiting {
                    root: short(root).to_owned(),
                    count: waiting.len(),
                    example: waiting[0].id.clone(),
                    safe_from: last.renews_by,
                    now: t,
                });
            }
        }
        for (fp, _) in roots(current) {
            if next_roots.iter().any(|(p, _)| *p == fp) {
                continue;
            }
            if Some(&fp) == next_signing.as_ref() || Some(&fp) == self.signing_root.as_ref() {
                return Err(UnsafeChange::StillSigns {
                    root: short(&fp).to_owned(),
                });
            }
            if let Some(until) = self.signed_until.get(&fp)
                && t < *until
            {
                return Err(UnsafeChange::StillValid {
                    root: short(&fp).to_owned(),
                    valid_until: *until,
                    now: t,
                });
            }
        }
        Ok(())
    }

    /// Records that `next` replaced the authority in use; returns the new state, already
    /// persisted.
    pub fn applied(
        &self,
        data_dir: &Path,
        next: &Authority,
        timing: &Timing,
        now: SystemTime,
    ) -> Result<Self, FileError> {
        let t = unix_seconds(now);
        let mut state = self.clone();
        state.record(next, t, t, timing);
        state.last_refusal = None;
        write(data_dir, &state)?;
        Ok(state)
    }

    /// Records that a change was refused for `reason`; returns the new state, already
    /// persisted.
    pub fn refused(
        &self,
        data_dir: &Path,
        reason: &str,
        now: SystemTime,
    ) -> Result<Self, FileError> {
        let mut state = self.clone();
        state.last_refusal = Some(Refusal {
            at: unix_seconds(now),
            reason: reason.to_string(),
        });
        write(data_dir, &state)?;
        Ok(state)
    }
}
