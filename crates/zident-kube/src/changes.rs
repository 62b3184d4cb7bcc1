//! How the source tells what changed: a counter per kind, bumped each time that kind's watch
//! announces a change, so that each follower wakes only for the kinds it reads (the mesh is not
//! rebuilt when the CA's own root ConfigMaps change; the root ConfigMaps are not checked when
//! pods come and go).

use std::collections::BTreeMap;

use tokio::sync::watch;

/// How many changes each kind's watch has announced, by the kind's name in the source status.
pub type KindChanges = BTreeMap<&'static str, u64>;

/// The changes of the kinds `wanted` admits, summed.
pub(crate) fn count(changes: &KindChanges, wanted: fn(&str) -> bool) -> u64 {
    changes
        .iter()
        .filter(|(kind, _)| wanted(kind))
        .map(|(_, n)| n)
        .sum()
}

/// Follows the changes of some kinds.
pub struct Follow {
    changes: watch::Receiver<KindChanges>,
    wanted: fn(&str) -> bool,
    seen: u64,
}

impl Follow {
    /// Follows the kinds `wanted` admits. The first [`Follow::changed`] returns at once if
    /// they ever changed: a follower that starts after the source's first view was read
    /// misses nothing that came in between (at worst it looks once for nothing).
    pub(crate) fn new(changes: watch::Receiver<KindChanges>, wanted: fn(&str) -> bool) -> Self {
        Self {
            changes,
            wanted,
            seen: 0,
        }
    }

    /// Waits until one of the kinds changed since the last call; `None` when the source is
    /// gone.
    pub async fn changed(&mut self) -> Option<()> {
        loop {
            let now = count(&self.changes.borrow_and_update(), self.wanted);
            if now != self.seen {
                self.seen = now;
                return Some(());
            }
            self.changes.changed().await.ok()?;
        }
    }
}
