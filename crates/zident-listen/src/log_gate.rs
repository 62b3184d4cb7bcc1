//! Warnings a client can cause, said at most once per source and kind per [`LOG_EVERY`], with
//! how many were held back since: a flood of bad handshakes or requests from one address costs
//! a line every few seconds, not one per attempt, and the count still says how big it was.
//! (Metrics count every one.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::limits::LOG_EVERY;
use crate::source::Source;

/// A source and a kind of warning.
type Key = (Source, &'static str);

/// When a key was last said, and how many of it were held back since.
type Said = (Instant, u64);

/// The last time each (source, kind) was said, and how many were held back since.
#[derive(Debug, Default)]
pub struct LogGate {
    said: Mutex<HashMap<Key, Said>>,
}

impl LogGate {
    /// A gate with nothing said yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(held back since the last line)` when a line of `kind` for `source` may be said
    /// now; `None` (and it is counted) when one was said within [`LOG_EVERY`].
    pub fn allow(&self, source: impl Into<Source>, kind: &'static str) -> Option<u64> {
        let source = source.into();
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((at, held)) = said.get_mut(&(source, kind))
            && now.duration_since(*at) < LOG_EVERY
        {
            *held += 1;
            return None;
        }
        // Forget what is old, so the table does not grow with every source ever seen.
        if said.len() > 4096 {
            said.retain(|_, (at, _)| now.duration_since(*at) < LOG_EVERY);
        }
        let held = said.insert((source, kind), (now, 0)).map_or(0, |(_, h)| h);
        Some(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn one_line_per_source_and_kind_then_the_count_of_what_was_held_back() {
        let gate = LogGate::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(gate.allow(a, "tls"), Some(0));
        for _ in 0..99 {
            assert_eq!(gate.allow(a, "tls"), None);
        }
        assert_eq!(gate.allow(a, "socks"), Some(0), "another kind is said");
        assert_eq!(gate.allow(b, "tls"), Some(0), "another source is said");
        // Once the interval is over, the next line carries the count.
        gate.said
            .lock()
            .unwrap()
            .get_mut(&(a.into(), "tls"))
            .unwrap()
            .0 -= LOG_EVERY;
        assert_eq!(gate.allow(a, "tls"), Some(99));
    }
}
