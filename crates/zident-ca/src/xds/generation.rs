//! Each accepted version of the mesh, as xDS resources. What changed since the version before
//! is worked out here once, not once per stream: a stream that held the previous generation
//! sends exactly that, so a push of one edited workload costs the same with 10 workloads or
//! 10,000. A stream that fell further behind compares whole snapshots instead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zident_xds::{Delta, Snapshot};

use crate::state::{CaState, MeshVersion};

/// One accepted mesh version as resources.
#[derive(Debug)]
pub(crate) struct Generation {
    /// The mesh version it was built from ([`MeshVersion::number`]).
    pub(crate) number: u64,
    /// The generation `since_previous` is relative to.
    pub(crate) previous: u64,
    /// Every resource.
    pub(crate) snapshot: Arc<Snapshot>,
    /// When the mesh version was accepted.
    pub(crate) accepted: Instant,
    /// What changed since generation `previous`, by type.
    pub(crate) since_previous: HashMap<&'static str, Delta>,
}

impl Generation {
    fn build(version: &MeshVersion, previous: Option<&Generation>) -> Self {
        let snapshot = Arc::new(Snapshot::from_mesh_sharing(
            &version.mesh,
            previous.map(|p| p.snapshot.as_ref()),
        ));
        let since_previous = match previous {
            Some(p) => zident_xds::TYPES
                .iter()
                .map(|t| (*t, p.snapshot.delta(&snapshot, t)))
                .collect(),
            None => HashMap::new(),
        };
        Self {
            number: version.number,
            previous: previous.map_or(0, |p| p.number),
            snapshot,
            accepted: version.accepted,
            since_previous,
        }
    }

    /// What a client holding `held` needs to hold this generation, for `type_url`.
    pub(crate) fn delta_from(&self, held: &Generation, type_url: &str) -> Delta {
        if held.number == self.number {
            return Delta::default();
        }
        if held.number == self.previous
            && let Some(d) = self.since_previous.get(type_url)
        {
            return d.clone();
        }
        held.snapshot.delta(&self.snapshot, type_url)
    }
}

/// The current generation, rebuilt on every accepted mesh version for as long as the task
/// runs.
pub(crate) fn follow_mesh(state: &CaState) -> (watch::Receiver<Arc<Generation>>, JoinHandle<()>) {
    let mut versions = state.subscribe_mesh();
    let first = Generation::build(&versions.borrow_and_update(), None);
    let (tx, rx) = watch::channel(Arc::new(first));
    let task = tokio::spawn(async move {
        while versions.changed().await.is_ok() {
            let version = versions.borrow_and_update().clone();
            let previous = tx.borrow().clone();
            let started = Instant::now();
            // Encoding a large mesh takes milliseconds: off the threads serving requests.
            let built =
                tokio::task::spawn_blocking(move || Generation::build(&version, Some(&previous)))
                    .await;
            match built {
                Ok(g) => {
                    let changed: usize = g
                        .since_previous
                        .values()
                        .map(|d| d.changed.len() + d.removed.len())
                        .sum();
                    tracing::info!(
                        target: "zident::ca",
                        version = g.number,
                        changed,
                        build_ms = started.elapsed().as_millis() as u64,
                        "mesh version ready for xDS streams"
                    );
                    tx.send_replace(Arc::new(g));
                }
                Err(e) => {
                    tracing::error!(target: "zident::ca", "building the xDS resources failed: {e}")
                }
            }
        }
    });
    (rx, task)
}
