//! The CA's roots in every namespace, as istiod publishes them: a ConfigMap
//! `istio-ca-root-cert` with the key `root-cert.pem`, which sidecars, gateways and any pod that
//! must trust the mesh mount.
//!
//! Each round compares every namespace's ConfigMap (from the source's watch) with the roots in
//! force and writes only what differs: a missing one is created, one whose `root-cert.pem`
//! someone edited is put back, and when the roots change (a rotation's prepare adds the new
//! root, its retire removes the old) every one is updated. A round runs when namespaces or these
//! ConfigMaps change (not when pods do) and when the roots change; a round with a failed write is retried with a
//! growing pause. Updates carry the resourceVersion they were computed from, so two replicas
//! doing this at once never overwrite each other's newer roots: the loser's write is refused
//! and its next round starts from what is there.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use crate::call::{CallError, bounded};
use crate::connection::Connection;

/// The ConfigMap's name, istiod's.
pub const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
/// The key holding the roots (PEM).
pub const ROOT_KEY: &str = "root-cert.pem";
/// Namespaces istiod leaves without the ConfigMap.
pub const SKIPPED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// The longest pause between rounds after failed writes.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What a round reads, from the source's watches.
pub struct Targets {
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) config_maps: Store<ConfigMap>,
    /// Changes of the namespaces and of these ConfigMaps (pods coming and going change
    /// nothing here).
    pub(crate) changes: crate::changes::Follow,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// ConfigMaps created (a new namespace, or one deleted).
    pub created: usize,
    /// ConfigMaps put back after someone changed them.
    pub repaired: usize,
    /// ConfigMaps updated to new roots.
    pub updated: usize,
    /// Writes that failed (retried after a pause). A write refused because the ConfigMap
    /// changed since the watch last said is not one: the watch's next event brings a round.
    pub failed: usize,
}

/// Keeps `istio-ca-root-cert` equal to `roots` (PEM) in every namespace for as long as it
/// runs, while `leading` says this replica leads (`None`: always, a CA without replicas); `report`
/// hears of each round that wrote or failed. Only the leader writes, as in istiod: replicas
/// that follow a rotation a moment apart would otherwise put back each other's roots.
pub async fn publish_roots(
    connection: Connection,
    mut targets: Targets,
    mut roots: watch::Receiver<String>,
    mut leading: Option<watch::Receiver<bool>>,
    report: impl Fn(&Round) + Send,
) {
    let mut published: Option<String> = None;
    let mut retry = Duration::from_millis(500);
    loop {
        if let Some(leading) = &mut leading
            && !*leading.borrow_and_update()
        {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            // Another replica published meanwhile: what is there is not this one's to judge.
            published = None;
        }
        let pem = roots.borrow_and_update().clone();
        let round = reconcile(&connection, &targets, &pem, published.as_deref()).await;
        if round != Round::default() {
            report(&round);
        }
        published = Some(pem);
        if round.failed > 0 {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                changed = roots.changed() => if changed.is_err() { return },
            }
            retry = (retry * 2).min(MAX_RETRY);
            continue;
        }
        retry = Duration::from_millis(500);
        let lost = async {
            match &mut leading {
                Some(l) => {
                    let _ = l.wait_for(|l| !*l).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = targets.changes.changed() => if changed.is_none() { return },
            changed = roots.changed() => if changed.is_err() { return },
            () = lost => {}
        }
    }
}

/// One round: every namespace's ConfigMap made equal to `pem`. `previous` is what the last
/// round published, to tell a rotation's update from a repair.
async fn reconcile(
    connection: &Connection,
    targets: &Targets,
    pem: &str,
    previous: Option<&str>,
) -> Round {
    let mut round = Round::default();
    let api_for = |ns: &str| Api::<ConfigMap>::namespaced(connection.client.clone(), ns);
    for namespace in targets.namespaces.state() {
        let Some(ns) = namespace.metadata.name.as_deref() else {
            continue;
        };
        let terminating = namespace.metadata.deletion_timestamp.is_some()
            || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if SKIPPED_NAMESPACES.contains(&ns) || terminating {
            continue;
        }
        let current = targets
            .config_maps
            .get(&ObjectRef::new(ROOT_CONFIG_MAP).within(ns));
        let held = current
            .as_ref()
            .and_then(|c| c.data.as_ref()?.get(ROOT_KEY).cloned());
        if held.as_deref() == Some(pem) {
            continue;
        }
        let api = api_for(ns);
        let (write, what) = match &current {
            None => {
                let cm = desired(ns, pem, None);
                let write = bounded(api.create(&PostParams::default(), &cm))
                    .await
                    .map(drop);
                (write, Write::Created)
            }
            Some(existing) => {
                let cm = desired(ns, pem, Some(existing));
                let what = if held.is_some() && held.as_deref() == previous {
                    Write::Updated
                } else {
                    Write::Repaired
                };
                let write = bounded(api.replace(ROOT_CONFIG_MAP, &PostParams::default(), &cm))
                    .await
                    .map(drop);
                (write, what)
            }
        };
        match write {
            Ok(()) => {
                let said = match what {
                    Write::Created => {
                        round.created += 1;
                        "created"
                    }
                    Write::Updated => {
                        round.updated += 1;
                        "updated to the roots in force"
                    }
                    Write::Repaired => {
                        round.repaired += 1;
                        "repaired (it no longer held the CA's roots)"
                    }
                };
                tracing::info!(target: "zident::kube", namespace = ns, "ConfigMap {ROOT_CONFIG_MAP} {said}");
            }
            Err(CallError::Conflict(e)) => {
                // Someone (this CA a moment ago, another replica) changed it since the watch
                // last said: the watch's next event brings the next round.
                tracing::debug!(target: "zident::kube", namespace = ns, "ConfigMap {ROOT_CONFIG_MAP} changed meanwhile; looking again: {e}");
            }
            Err(e) => {
                tracing::warn!(target: "zident::kube", namespace = ns, "ConfigMap {ROOT_CONFIG_MAP} not written, retrying: {e}");
                round.failed += 1;
            }
        }
    }
    round
}

/// Why a ConfigMap is written.
enum Write {
    Created,
    Updated,
    Repaired,
}

/// The ConfigMap as it should be; an existing one keeps its labels and resourceVersion.
fn desired(namespace: &str, pem: &str, existing: Option<&ConfigMap>) -> ConfigMap {
    let mut labels = existing
        .and_then(|e| e.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert("istio.io/config".into(), "true".into());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            resource_version: existing.and_then(|e| e.metadata.resource_version.clone()),
            ..Default::default()
        },
        data: Some([(ROOT_KEY.to_owned(), pem.to_owned())].into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_desired_config_map_keeps_labels_and_the_version_it_replaces() {
        let mut existing = desired("shop", "OLD", None);
        existing.metadata.resource_version = Some("41".into());
        existing
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("team".into(), "a".into());
        let cm = desired("shop", "NEW", Some(&existing));
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("41"));
        let labels = cm.metadata.labels.unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            labels.get("istio.io/config").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            cm.data.unwrap().get(ROOT_KEY).map(String::as_str),
            Some("NEW")
        );
    }
}
