//! The inbound listeners a node wants and whether each is bound, for `/debug/connections` and
//! the `zident_tunnel_inbound_listeners` metric.
//!
//! A listener that cannot bind (its address still held by a listener that is closing, or not
//! yet on the node) keeps trying with backoff; until it succeeds the workload at that address
//! gets no inbound traffic, so an operator must be able to see it without reading logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Whether a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerPhase {
    /// Bound and accepting.
    Listening,
    /// Not bound yet; trying again.
    Retrying,
}

impl ListenerPhase {
    fn as_str(self) -> &'static str {
        match self {
            ListenerPhase::Listening => "listening",
            ListenerPhase::Retrying => "retrying",
        }
    }
}

/// One wanted listener, as `/debug/connections` lists it under `listeners`.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    /// Where it listens (or tries to).
    pub addr: SocketAddr,
    /// Bound, or still trying.
    pub state: ListenerPhase,
    /// Failed binds since it was wanted.
    pub attempts: u32,
    /// Why the last bind failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it entered its current state (RFC 3339).
    pub since: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The node's inbound listeners.
#[derive(Debug, Default)]
pub struct ListenerTable {
    table: Mutex<BTreeMap<SocketAddr, ListenerStatus>>,
    by_state: Family<StateLabel, Gauge>,
    bind_failures: Counter,
}

impl ListenerTable {
    /// Registers `zident_tunnel_inbound_listeners{state}` and
    /// `zident_tunnel_listener_bind_failures`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "zident_tunnel_inbound_listeners",
            "Inbound HBONE listeners the node wants, by state (listening, retrying)",
            self.by_state.clone(),
        );
        registry.register(
            "zident_tunnel_listener_bind_failures",
            "Failed attempts to bind an inbound HBONE listener",
            self.bind_failures.clone(),
        );
    }

    fn recount(&self, table: &BTreeMap<SocketAddr, ListenerStatus>) {
        for phase in [ListenerPhase::Listening, ListenerPhase::Retrying] {
            let n = table.values().filter(|s| s.state == phase).count();
            self.by_state
                .get_or_create(&StateLabel {
                    state: phase.as_str(),
                })
                .set(n as i64);
        }
    }

    /// `addr` is bound and serving.
    pub fn listening(&self, addr: SocketAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let attempts = table.get(&addr).map_or(0, |s| s.attempts);
        table.insert(
            addr,
            ListenerStatus {
                addr,
                state: ListenerPhase::Listening,
                attempts,
                last_error: None,
                since: zident_identity::rfc3339(SystemTime::now()),
            },
        );
        self.recount(&table);
    }

    /// Binding `addr` failed with `error`; returns how many times it has failed so far.
    pub fn failed(&self, addr: SocketAddr, error: &std::io::Error) -> u32 {
        self.bind_failures.inc();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.entry(addr).or_insert_with(|| ListenerStatus {
            addr,
            state: ListenerPhase::Retrying,
            attempts: 0,
            last_error: None,
            since: zident_identity::rfc3339(SystemTime::now()),
        });
        entry.attempts += 1;
        entry.last_error = Some(error.to_string());
        let attempts = entry.attempts;
        self.recount(&table);
        attempts
    }

    /// `addr` is no longer wanted.
    pub fn removed(&self, addr: SocketAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&addr);
        self.recount(&table);
    }

    /// Every wanted listener, by address.
    pub fn list(&self) -> Vec<ListenerStatus> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_moves_from_retrying_to_listening_and_leaves() {
        let t = ListenerTable::default();
        let a: SocketAddr = "127.0.0.2:15008".parse().unwrap();
        let busy = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert_eq!(t.failed(a, &busy), 1);
        assert_eq!(t.failed(a, &busy), 2);
        let l = t.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].state, ListenerPhase::Retrying);
        assert!(l[0].last_error.is_some());
        t.listening(a);
        let l = t.list();
        assert_eq!(l[0].state, ListenerPhase::Listening);
        assert_eq!(l[0].attempts, 2);
        assert_eq!(t.bind_failures.get(), 2);
        t.removed(a);
        assert!(t.list().is_empty());
    }
}
