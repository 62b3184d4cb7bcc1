//! Who holds a server's connections, so that idle ones cannot exhaust it.
//!
//! Every accepted connection is entered here with its source address, how many requests it
//! is serving, and when it last did anything. A connection with no request in flight for
//! [`ConnectionLimits::idle_timeout`] is closed. There is a cap on all connections (by default
//! what the process's descriptor limit leaves after a reserve for its own files) and one per
//! source address; a new connection over a cap makes room by closing the longest-idle
//! connection (of that source, for the per-source cap), and is refused only when every
//! connection is busy. Each refusal and eviction is logged with the source, at most once per
//! source per [`crate::LOG_EVERY`], so a flood cannot flood the log too.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::limits::{ConnectionLimits, DESCRIPTOR_RESERVE};
use crate::log_gate::LogGate;
use crate::source::Source;

/// The open connections, and how many each source holds (kept with them, so that admitting a
/// connection does not count the whole table).
#[derive(Default)]
struct Table {
    entries: BTreeMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
}

impl Table {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn from(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    fn insert(&mut self, id: u64, entry: Entry) {
        *self.per_source.entry(entry.peer).or_default() += 1;
        self.entries.insert(id, entry);
    }

    fn remove(&mut self, id: &u64) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        if let Some(n) = self.per_source.get_mut(&entry.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.peer);
            }
        }
        Some(entry)
    }
}

struct Entry {
    peer: Source,
    active: usize,
    last_activity: Instant,
    close: Arc<Notify>,
}

/// A server's open connections (or several servers', sharing one budget).
pub struct Connections {
    /// The server's name in log lines (`CA`, `agent`).
    name: &'static str,
    limits: ConnectionLimits,
    total: usize,
    next: AtomicU64,
    table: Mutex<Table>,
    logged: LogGate,
}

/// One connection's place in the table; leaving drops it from the table.
pub struct Slot {
    connections: Arc<Connections>,
    id: u64,
    /// Fires when the connection should close (idle, or evicted to make room).
    pub close: Arc<Notify>,
}

/// A request in flight on a connection; the connection is not idle while one is held.
/// Requests carry it as an [`InFlight`] extension, so a handler whose answer is a long-lived
/// stream (xDS) keeps its connection from being closed as idle for as long as the stream runs.
pub struct Busy {
    connections: Arc<Connections>,
    id: u64,
}

impl Connections {
    /// An empty table with `limits`, for the server `name` (as log lines name it).
    pub fn new(name: &'static str, limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            name,
            total: limits.total(),
            limits,
            next: AtomicU64::new(0),
            table: Mutex::new(Table::default()),
            logged: LogGate::new(),
        })
    }

    /// The process's one table with the default limits, made (and the descriptor limit read)
    /// once: for a listener built without a table of its own (a test, an embedding).
    pub fn process_default() -> Arc<Self> {
        static DEFAULT: std::sync::OnceLock<Arc<Connections>> = std::sync::OnceLock::new();
        DEFAULT
            .get_or_init(|| Self::new("default", ConnectionLimits::default()))
            .clone()
    }

    /// The total cap in force.
    pub fn cap(&self) -> usize {
        self.total
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Logs `message` for `peer` unless a line of this `kind` was logged for it lately.
    fn log(&self, peer: Source, kind: &'static str, message: impl FnOnce() -> String) {
        if let Some(held) = self.logged.allow(peer, kind) {
            tracing::warn!(target: "zident::listen", server = self.name, source = %peer, held_back = held, "{}", message());
        }
    }

    /// Enters a new connection from `peer` (a TCP peer's address, or a Unix-socket peer's
    /// user), closing the longest-idle one if a cap is reached; `None` when it must be refused
    /// (every connection busy).
    pub fn admit(self: &Arc<Self>, peer: impl Into<Source>) -> Option<Slot> {
        let source: Source = peer.into();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = table.from(source);
        let over_source = from_source >= self.limits.max_per_source;
        let over_total = table.len() >= self.total;
        if over_source || over_total {
            // The longest-idle connection (of this source, when its own cap is the one hit).
            let victim = table
                .entries
                .iter()
                .filter(|(_, e)| e.active == 0 && (!over_source || e.peer == source))
                .min_by_key(|(_, e)| e.last_activity)
                .map(|(id, _)| *id);
            let which = if over_source {
                format!(
                    "{from_source} connections from {source}, the most one source may hold (--max-connections-per-source {})",
                    self.limits.max_per_source
                )
            } else {
                format!(
                    "{} connections open, the most the {} holds (--max-connections, or the descriptor limit less {DESCRIPTOR_RESERVE})",
                    table.len(),
                    self.name
                )
            };
            match victim.and_then(|id| table.remove(&id)) {
                Some(old) => {
                    old.close.notify_one();
                    let old_peer = old.peer;
                    drop(table);
                    self.log(source, "evicted", || {
                        format!("{which}: closed an idle connection from {old_peer} to admit one from {source}")
                    });
                    table = self.table.lock().unwrap_or_else(|e| e.into_inner());
                }
                None => {
                    drop(table);
                    self.log(source, "refused", || {
                        format!("{which}, all busy: refused a connection from {source}")
                    });
                    return None;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        table.insert(
            id,
            Entry {
                peer: source,
                active: 0,
                last_activity: Instant::now(),
                close: close.clone(),
            },
        );
        Some(Slot {
            connections: self.clone(),
            id,
            close,
        })
    }

    fn touch(&self, id: u64, delta: isize) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.entries.get_mut(&id) {
            e.active = e.active.saturating_add_signed(delta);
            e.last_activity = Instant::now();
        }
    }

    /// When the connection becomes closable for idleness, if it is idle now.
    fn idle_deadline(&self, id: u64) -> Option<Option<Instant>> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let e = table.entries.get(&id)?;
        Some((e.active == 0).then(|| e.last_activity + self.limits.idle_timeout))
    }
}

impl Slot {
    /// A handle that marks requests on this connection, for the service.
    pub fn tracker(&self) -> Tracker {
        Tracker {
            connections: self.connections.clone(),
            id: self.id,
        }
    }

    /// Resolves when the connection should close, saying why: idle past the timeout (a
    /// server may close it gracefully), or evicted to make room (it must close now: its
    /// descriptor is what the new connection needs).
    pub async fn closing(&self) -> Closing {
        loop {
            let deadline = match self.connections.idle_deadline(self.id) {
                None => return Closing::Evicted,
                Some(Some(at)) => at,
                Some(None) => Instant::now() + self.connections.limits.idle_timeout,
            };
            tokio::select! {
                () = self.close.notified() => return Closing::Evicted,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if let Some(Some(at)) = self.connections.idle_deadline(self.id)
                        && at <= Instant::now()
                    {
                        return Closing::Idle;
                    }
                }
            }
        }
    }
}

/// Why a connection is asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Nothing in flight for the idle timeout: close it, gracefully if the protocol can.
    Idle,
    /// Closed to make room for a new connection: drop it at once, without waiting for the
    /// client (a half-sent request is exactly what a flood sends).
    Evicted,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Marks requests on one connection (cloned into its service).
#[derive(Clone)]
pub struct Tracker {
    connections: Arc<Connections>,
    id: u64,
}

impl Tracker {
    /// A request starts; it is in flight until the guard drops.
    pub fn busy(&self) -> Busy {
        self.connections.touch(self.id, 1);
        Busy {
            connections: self.connections.clone(),
            id: self.id,
        }
    }
}

/// The request's [`Busy`] guard, shared: a streaming handler keeps a clone for the stream's
/// life.
#[derive(Clone)]
pub struct InFlight {
    _held: Arc<Busy>,
}

impl InFlight {
    /// Shares `busy` with the request's handler.
    pub fn new(busy: Arc<Busy>) -> Self {
        Self { _held: busy }
    }

    /// The connection's number, unique while the process runs.
    pub fn connection(&self) -> u64 {
        self._held.id
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connections.touch(self.id, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::open_files_limit;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn limits(total: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            idle_timeout: Duration::from_secs(60),
            max_connections: Some(total),
            max_per_source: per_source,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        format!("{s}:1000").parse().unwrap()
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_and_refuses_only_when_all_are_busy() {
        let c = Connections::new("test", limits(2, 10));
        let first = c.admit(addr("10.0.0.1")).unwrap();
        let second = c.admit(addr("10.0.0.2")).unwrap();
        let _busy = second.tracker().busy();
        // Full: the idle first one makes room.
        let third = c.admit(addr("10.0.0.3")).unwrap();
        assert_eq!(c.open(), 2);
        assert!(c.idle_deadline(first.id).is_none(), "first was evicted");
        // Full of busy connections: refused.
        let _busy3 = third.tracker().busy();
        assert!(c.admit(addr("10.0.0.4")).is_none());
        drop(first);
        assert_eq!(c.open(), 2);
    }

    #[test]
    fn one_source_cannot_take_the_others_slots() {
        let c = Connections::new("test", limits(100, 2));
        let a1 = c.admit(addr("10.0.0.1")).unwrap();
        let b = c.admit(addr("10.0.0.2")).unwrap();
        let a2 = c.admit(addr("10.0.0.1")).unwrap();
        // A third from the same source evicts that source's oldest idle one, not b's.
        let _a3 = c.admit(addr("10.0.0.1")).unwrap();
        assert!(c.idle_deadline(a1.id).is_none());
        assert!(c.idle_deadline(b.id).is_some());
        assert!(c.idle_deadline(a2.id).is_some());
        // The per-source counts follow evictions and closes.
        let from = |ip: &str| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            c.table.lock().unwrap().from(ip.into())
        };
        assert_eq!((from("10.0.0.1"), from("10.0.0.2")), (2, 1));
        drop((a1, a2, _a3, b));
        assert_eq!((from("10.0.0.1"), from("10.0.0.2"), c.open()), (0, 0, 0));
    }

    #[test]
    fn a_unix_sockets_users_are_sources_of_their_own_and_an_evicted_one_is_told_so() {
        let c = Connections::new("test", limits(100, 1));
        let first = c.admit(Source::User(1000)).unwrap();
        // An address is another source than a user; another user is another source.
        let by_addr = c.admit(addr("10.0.0.1")).unwrap();
        let other_user = c.admit(Source::User(0)).unwrap();
        // User 1000's second connection makes room by closing its first.
        let _second = c.admit(Source::User(1000)).unwrap();
        assert!(c.idle_deadline(first.id).is_none());
        assert!(c.idle_deadline(by_addr.id).is_some());
        assert!(c.idle_deadline(other_user.id).is_some());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(first.closing()), Closing::Evicted);
        // One with nothing in flight past the idle timeout is idle, not evicted.
        let quick = Connections::new(
            "test",
            ConnectionLimits {
                idle_timeout: Duration::from_millis(10),
                ..limits(100, 10)
            },
        );
        let idle = quick.admit(Source::User(7)).unwrap();
        assert_eq!(runtime.block_on(idle.closing()), Closing::Idle);
    }

    #[test]
    fn the_descriptor_limit_sets_the_default_cap() {
        let l = ConnectionLimits::default();
        let soft = open_files_limit().unwrap();
        let total = l.total();
        assert!(
            total < soft.saturating_sub(DESCRIPTOR_RESERVE),
            "the open descriptors are left out too"
        );
        assert!(
            total + DESCRIPTOR_RESERVE + 1024 > soft,
            "{total} of {soft}"
        );
    }
}
