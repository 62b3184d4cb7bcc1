//! How the source tells what changed: a counter per kind, bumped each time that kind's watch
//! announces a change, so that a follower of some kinds (the root ConfigMaps follow namespaces
//! and themselves) is not woken by the others (pods coming and going).

use std::collections::BTreeMap;

/// How many changes each kind's watch has announced, by the kind's name in the source status.
pub type KindChanges = BTreeMap<&'static str, u64>;
