//! One set of limits for every server zident runs (the CA's gRPC and metrics ports, the agent's
//! admin, metrics and readiness ports, the tunnel's HBONE, SOCKS5 and capture listeners, the
//! Workload API's Unix sockets), so that no client can hold a server's descriptors or attention:
//!
//! - `limits`: the limits and their defaults, in one place;
//! - `table`: the connections held, a total and a per-source cap that make room by closing the
//!   longest-idle connection, and idle closing; a request in flight keeps its connection;
//! - `accept`: the accept loop within the table, with failed accepts backed off and logged at
//!   most once per interval;
//! - `source`: who a connection comes from: an address, or a Unix-socket peer's user;
//! - `log_gate`: warnings a client can cause, said once per source and kind per interval with
//!   the count held back;
//! - `http` (feature `http`): an axum router served over plain HTTP within the limits, with a
//!   header timeout.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod accept;
#[cfg(feature = "http")]
mod http;
mod limits;
mod log_gate;
mod source;
mod table;

pub use accept::{AcceptErrors, accept_loop};
#[cfg(feature = "http")]
pub use http::{serve_connection, serve_http};
pub use limits::{
    ConnectionLimits, DESCRIPTOR_RESERVE, HANDSHAKE_TIMEOUT, HEADER_TIMEOUT, IDLE_TIMEOUT,
    LOG_EVERY, MAX_CONNECTIONS_PER_SOURCE,
};
pub use log_gate::LogGate;
pub use source::Source;
pub use table::{Busy, Closing, Connections, InFlight, Slot, Tracker};
