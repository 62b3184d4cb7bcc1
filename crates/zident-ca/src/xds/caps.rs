//! How many xDS streams one caller, one connection and the whole CA may hold at once. A node
//! needs one stream (ztunnel and the agent open one; a restart may overlap the next for a
//! moment), so a caller that opens hundreds (any known token could) is refused with
//! `RESOURCE_EXHAUSTED` before its streams cost the CA anything, counted by which cap it met,
//! and logged once until it is back under the cap. The total cap is the CA's memory budget for
//! xDS: a stream queues at most a few responses its client has not read (`service.rs`), made of
//! resources encoded once for every stream, and follows the latest generation (a slow stream
//! skips the versions in between), so the CA's xDS memory is bounded by the cap times one
//! stream's cost (72–110 KiB measured, BENCHMARKS.md), however many callers there are.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The caps; `zident ca --max-xds-streams`, `--max-xds-streams-per-caller`,
/// `--max-xds-streams-per-connection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdsLimits {
    /// Streams the CA holds in all.
    pub max_streams: usize,
    /// Streams one caller (one node token, one identity token, one ServiceAccount's pod) may
    /// hold, over every connection.
    pub max_streams_per_caller: usize,
    /// Streams one connection may carry.
    pub max_streams_per_connection: usize,
}

impl Default for XdsLimits {
    fn default() -> Self {
        Self {
            max_streams: crate::defaults::MAX_XDS_STREAMS,
            max_streams_per_caller: crate::defaults::MAX_XDS_STREAMS_PER_CALLER,
            max_streams_per_connection: crate::defaults::MAX_XDS_STREAMS_PER_CONNECTION,
        }
    }
}

/// What a stream counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Total,
    Caller(String),
    Connection(u64),
}

/// The streams held, by caller and by connection.
#[derive(Debug)]
pub(crate) struct StreamCaps {
    limits: XdsLimits,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    counts: HashMap<Key, usize>,
    /// Keys whose refusal was logged, until they are back under their cap.
    said: HashSet<Key>,
}

/// Which cap a stream met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The CA's, over every caller.
    Total,
    /// The caller's.
    PerCaller,
    /// The connection's.
    PerConnection,
}

impl Exceeded {
    /// The metric's label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Exceeded::Total => "total",
            Exceeded::PerCaller => "per_caller",
            Exceeded::PerConnection => "per_connection",
        }
    }
}

/// A refusal: which cap, the message for the client, and whether to log it (the first time).
pub(crate) struct Refused {
    pub(crate) exceeded: Exceeded,
    pub(crate) message: String,
    pub(crate) first: bool,
}

/// A stream's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    caps: Arc<StreamCaps>,
    keys: Vec<Key>,
}

impl StreamCaps {
    pub(crate) fn new(limits: XdsLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            held: Mutex::default(),
        })
    }

    /// A place for one more stream of `caller` (as logs name it) on `connection`, or which cap
    /// it would pass.
    pub(crate) fn take(
        self: &Arc<Self>,
        caller: &str,
        connection: Option<u64>,
    ) -> Result<Slot, Refused> {
        let mut keys = vec![Key::Total, Key::Caller(caller.to_owned())];
        keys.extend(connection.map(Key::Connection));
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            let (cap, exceeded, whose) = match key {
                Key::Total => (
                    self.limits.max_streams,
                    Exceeded::Total,
                    "the CA holds".to_owned(),
                ),
                Key::Caller(_) => (
                    self.limits.max_streams_per_caller,
                    Exceeded::PerCaller,
                    format!("{caller} holds"),
                ),
                Key::Connection(_) => (
                    self.limits.max_streams_per_connection,
                    Exceeded::PerConnection,
                    "this connection carries".to_owned(),
                ),
            };
            if held.counts.get(key).copied().unwrap_or(0) >= cap {
                let first = held.said.insert(key.clone());
                let flag = match exceeded {
                    Exceeded::Total => "--max-xds-streams",
                    Exceeded::PerCaller => "--max-xds-streams-per-caller",
                    Exceeded::PerConnection => "--max-xds-streams-per-connection",
                };
                return Err(Refused {
                    exceeded,
                    message: format!(
                        "{whose} {cap} xDS streams already, the most the CA allows ({flag}); close one before opening another"
                    ),
                    first,
                });
            }
        }
        for key in &keys {
            *held.counts.entry(key.clone()).or_default() += 1;
        }
        Ok(Slot {
            caps: self.clone(),
            keys,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.caps.held.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(n) = held.counts.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.counts.remove(key);
                }
            }
            held.said.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_and_a_connection_are_capped_apart_and_a_closed_stream_frees_its_place() {
        let caps = StreamCaps::new(XdsLimits {
            max_streams: 100,
            max_streams_per_caller: 3,
            max_streams_per_connection: 2,
        });
        let a1 = caps.take("node a", Some(1)).ok().unwrap();
        let _a2 = caps.take("node a", Some(1)).ok().unwrap();
        let on_full_connection = caps.take("node a", Some(1)).err().unwrap();
        assert_eq!(on_full_connection.exceeded, Exceeded::PerConnection);
        assert!(
            on_full_connection
                .message
                .contains("--max-xds-streams-per-connection")
        );
        let _a3 = caps.take("node a", Some(2)).ok().unwrap();
        let over = caps.take("node a", Some(3)).err().unwrap();
        assert_eq!(over.exceeded, Exceeded::PerCaller);
        assert!(
            over.first && over.message.contains("node a holds 3"),
            "{}",
            over.message
        );
        assert!(
            !caps.take("node a", Some(3)).err().unwrap().first,
            "logged once"
        );
        // Another caller is not affected.
        let _b = caps.take("node b", Some(3)).ok().unwrap();
        drop(a1);
        let again = caps.take("node a", Some(3));
        assert!(again.is_ok(), "a closed stream frees its place");
        assert!(
            caps.take("node a", Some(4)).err().unwrap().first,
            "said again after it fell under"
        );
    }

    #[test]
    fn the_total_cap_holds_over_every_caller() {
        let caps = StreamCaps::new(XdsLimits {
            max_streams: 2,
            max_streams_per_caller: 16,
            max_streams_per_connection: 4,
        });
        let a = caps.take("node a", Some(1)).ok().unwrap();
        let _b = caps.take("node b", Some(2)).ok().unwrap();
        let over = caps.take("node c", Some(3)).err().unwrap();
        assert_eq!(over.exceeded, Exceeded::Total);
        assert!(
            over.message.contains("the CA holds 2") && over.message.contains("(--max-xds-streams)"),
            "{}",
            over.message
        );
        drop(a);
        assert!(caps.take("node c", Some(3)).is_ok());
    }
}
