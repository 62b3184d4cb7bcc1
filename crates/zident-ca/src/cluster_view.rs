//! What the Kubernetes source shows an operator: the watches' health, what was refused, the
//! sizes at the last rebuild; read by `/ready` and `/debug/kubernetes`.

use std::time::SystemTime;

use zident_kube::{Finding, SourceStatus};

/// What the source shows on `/debug/kubernetes` and `/ready`.
#[derive(Debug, Default)]
pub(crate) struct ClusterView {
    /// The watches' health.
    pub(crate) status: SourceStatus,
    /// What was refused or left out, now.
    pub(crate) findings: Vec<Finding>,
    /// Objects read and workloads made at the last rebuild.
    pub(crate) counts: Counts,
    /// When the mesh was last rebuilt from the cluster.
    pub(crate) rebuilt: Option<SystemTime>,
    /// Why the last rebuild was refused whole, if it was.
    pub(crate) refused: Option<String>,
}

/// Sizes at the last rebuild.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct Counts {
    pub(crate) namespaces: usize,
    pub(crate) pods: usize,
    pub(crate) services: usize,
    pub(crate) policies: usize,
    pub(crate) workloads: usize,
}

impl ClusterView {
    /// `/ready`'s note while a watch fails: the CA still serves, from the last good view.
    pub(crate) fn stale_note(&self) -> Option<String> {
        let since = self.status.stale_since()?;
        let secs = SystemTime::now()
            .duration_since(since)
            .unwrap_or_default()
            .as_secs();
        let error = self
            .status
            .kinds
            .values()
            .find_map(|h| h.last_error.clone())
            .unwrap_or_default();
        Some(format!(
            "the Kubernetes view is stale for {secs}s (since {}): serving the last good mesh; {error}",
            zident_identity::rfc3339(since)
        ))
    }

    /// `/debug/kubernetes` as JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let kinds: serde_json::Map<String, serde_json::Value> = self
            .status
            .kinds
            .iter()
            .map(|(kind, h)| {
                (
                    (*kind).to_owned(),
                    serde_json::json!({
                        "synced": h.synced,
                        "failing_since": h.failing_since.map(zident_identity::rfc3339),
                        "last_error": h.last_error,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "server": self.status.server,
            "stale": self.status.stale_since().is_some(),
            "stale_since": self.status.stale_since().map(zident_identity::rfc3339),
            "watches": kinds,
            "policies_watched": self.status.policies_watched,
            "objects": self.counts,
            "rebuilt": self.rebuilt.map(zident_identity::rfc3339),
            "refused": self.refused,
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "kind": f.object.kind,
                "namespace": f.object.namespace,
                "name": f.object.name,
                "severity": f.severity.as_str(),
                "reason": f.reason,
                "message": f.message,
            })).collect::<Vec<_>>(),
        })
    }
}
