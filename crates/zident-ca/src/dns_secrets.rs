//! The mesh's DNS certificates (`meshConfig.certificates`) as `kubernetes.io/tls` Secrets: for
//! each entry, a Secret named by its `secretName` with `tls.crt` (the chain), `tls.key` and
//! `ca.crt` (the trust bundle), equal to the files `dns_certs` keeps and renews, so a webhook or
//! a gateway mounts it as it would any TLS Secret.
//!
//! The Secret goes to the namespace its DNS names name (`<service>.<namespace>.svc`, with or
//! without the cluster domain after it) when they all agree, and to the control plane's
//! namespace otherwise. The CA overwrites and deletes only Secrets it made itself (recorded in
//! `<data dir>/dns-secrets.json`): a Secret of that name made by someone else is left alone
//! and said so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zident_kube::{CallError, Connection, StateSecret};
use zident_mesh::DnsCertificate;

use crate::dns_certs::{CERT_CHAIN, KEY, ROOT_CERT};
use crate::persist::write_atomic;
use crate::state::CaState;

/// The record of the Secrets this CA made, in its data dir.
const RECORD: &str = "dns-secrets.json";
/// The label each Secret carries.
const LABEL: (&str, &str) = ("zident.io/dns-certificate", "true");
/// How often the files are compared with what was written.
const POLL: Duration = Duration::from_secs(2);

/// `namespace/name`.
type Key = (String, String);

/// The namespace `names` name, when every name of the `<service>.<namespace>.svc…` form
/// agrees on one (and at least one has that form).
fn namespace_of(names: &[String]) -> Option<String> {
    let mut found: Option<&str> = None;
    for name in names {
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() >= 3 && labels[2] == "svc" && !labels[1].is_empty() {
            match found {
                None => found = Some(labels[1]),
                Some(ns) if ns == labels[1] => {}
                Some(_) => return None,
            }
        }
    }
    found.map(str::to_owned)
}

/// The Secret's data from the files of `dir/<secretName>/`, or `None` before they exist.
fn data_of(dir: &Path, entry: &DnsCertificate) -> Option<BTreeMap<String, Vec<u8>>> {
    let set = dir.join(&entry.secret_name);
    let read = |f: &str| std::fs::read(set.join(f)).ok();
    Some(
        [
            ("tls.crt".to_owned(), read(CERT_CHAIN)?),
            ("tls.key".to_owned(), read(KEY)?),
            ("ca.crt".to_owned(), read(ROOT_CERT)?),
        ]
        .into(),
    )
}

fn load_record(path: &Path) -> BTreeSet<Key> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_record(path: &Path, ours: &BTreeSet<Key>) {
    let json = serde_json::to_vec_pretty(ours).unwrap_or_default();
    if let Err(e) = write_atomic(path, &json, 0o600) {
        tracing::error!(target: "zident::ca", path = %path.display(), "cannot record the DNS certificate Secrets made: {e}");
    }
}

/// Keeps a Secret per DNS certificate equal to its files in `dir`, for as long as it runs.
pub(crate) async fn run(
    state: Arc<CaState>,
    dir: PathBuf,
    data_dir: PathBuf,
    connection: Connection,
    control_namespace: String,
) {
    let record = data_dir.join(RECORD);
    let mut ours = load_record(&record);
    let mut written: BTreeMap<Key, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut said: BTreeSet<Key> = BTreeSet::new();
    let mut mesh = state.subscribe_mesh();
    loop {
        let wanted = mesh.borrow_and_update().mesh.certificates.clone();
        let mut keep = BTreeSet::new();
        for entry in &wanted {
            let ns = namespace_of(&entry.dns_names).unwrap_or_else(|| control_namespace.clone());
            let key = (ns.clone(), entry.secret_name.clone());
            keep.insert(key.clone());
            let Some(data) = data_of(&dir, entry) else {
                continue; // not issued yet
            };
            if written.get(&key) == Some(&data) {
                continue;
            }
            let secret = StateSecret::new(&connection, &ns, &entry.secret_name)
                .typed("kubernetes.io/tls", LABEL);
            let result = if ours.contains(&key) {
                match secret.replace_any(&data).await {
                    Err(CallError::NotFound(_)) => secret.create(&data).await,
                    other => other,
                }
            } else {
                secret.create(&data).await
            };
            match result {
                Ok(()) => {
                    tracing::info!(target: "zident::ca", secret = %secret.describe(), "DNS certificate written as a kubernetes.io/tls Secret");
                    if ours.insert(key.clone()) {
                        save_record(&record, &ours);
                    }
                    written.insert(key.clone(), data);
                    said.remove(&key);
                }
                Err(CallError::Conflict(_)) => {
                    if said.insert(key.clone()) {
                        tracing::warn!(target: "zident::ca", secret = %secret.describe(), "a Secret of this name exists and was not made by zident: it is not overwritten; delete it or give the certificate another secretName");
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "zident::ca", secret = %secret.describe(), "cannot write the DNS certificate's Secret, retrying: {e}");
                }
            }
        }
        let gone: Vec<Key> = ours.difference(&keep).cloned().collect();
        for key in gone {
            let secret = StateSecret::new(&connection, &key.0, &key.1);
            match secret.delete().await {
                Ok(()) => {
                    tracing::info!(target: "zident::ca", secret = %secret.describe(), "DNS certificate no longer in the mesh: its Secret is deleted");
                    ours.remove(&key);
                    written.remove(&key);
                    save_record(&record, &ours);
                }
                Err(e) => {
                    tracing::warn!(target: "zident::ca", secret = %secret.describe(), "cannot delete the Secret of a removed DNS certificate, retrying: {e}");
                }
            }
        }
        tokio::select! {
            changed = mesh.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_the_one_every_service_name_names() {
        let n = |v: &[&str]| namespace_of(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(n(&["hook.shop.svc"]).as_deref(), Some("shop"));
        assert_eq!(
            n(&[
                "hook.shop.svc",
                "hook.shop.svc.cluster.local",
                "hook.example.com"
            ])
            .as_deref(),
            Some("shop"),
            "names of other forms do not vote"
        );
        assert_eq!(
            n(&["a.shop.svc", "a.bank.svc"]),
            None,
            "two namespaces: none"
        );
        assert_eq!(n(&["example.com", "a.b.c"]), None);
    }
}
