//! How a rotation state reads in `zident ca status`, wherever it is stored (a data dir, the
//! API server): what is safe next and when, and each step taken.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use zident_ca::ledger::Issuance;
use zident_ca::rotation::{self, RotationState};
use zident_identity::rfc3339;

/// The state in one line: trust domain, phase, the generations in the bundle, the sequence.
pub fn summary(state: &RotationState) -> String {
    format!(
        "trust domain {}, phase {}, active generation {}, prepared {}, previous {}, bundle sequence {}",
        state.trust_domain,
        state.phase(),
        state.active,
        state.prepared.map_or("-".into(), |g| g.to_string()),
        state.previous.map_or("-".into(), |g| g.to_string()),
        state.sequence
    )
}

/// The next step and when it is safe; before an activation, the clients that still wait for
/// the new root (they learn roots only from responses).
pub fn print_next_step(state: &RotationState, issued: &HashMap<String, Issuance>, now: u64) {
    match state.next_step() {
        Some((rotation::Phase::Activate, g, after)) => {
            let waiting = rotation::clients_wait(state, issued, now);
            let safe = rotation::activation_safe_at(state, issued, now).unwrap_or(after);
            println!("  next: activate generation {g} (safe from {})", when(safe));
            println!(
                "    bundle rule: agents polling /bundle have it from {}",
                when(after)
            );
            match waiting.last() {
                None => println!(
                    "    clients that learn roots only from responses (ztunnel, istio-agent): none waits"
                ),
                Some(last) => println!(
                    "    clients that learn roots only from responses (ztunnel, istio-agent): {} identities still wait for the new root (they renew by {}; --json lists them)",
                    waiting.len(),
                    when(last.renews_by)
                ),
            }
        }
        Some((phase, g, after)) => println!(
            "  next: {} generation {g} (safe from {})",
            phase.as_str(),
            when(after)
        ),
        None => println!("  next: prepare, when the active root nears its end"),
    }
}

/// Each step taken, oldest first.
pub fn print_history(state: &RotationState) {
    for e in &state.history {
        println!(
            "  {} {} generation {}",
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(e.at)),
            e.phase,
            e.generation
        );
    }
}

/// A unix second as RFC 3339.
pub fn when(unix: u64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}
