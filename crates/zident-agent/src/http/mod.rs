//! The agent's HTTP endpoints: the admin routes and dashboard ([`admin`]), the `/debug/certs`
//! document they share with `zident certs` ([`report`]), readiness and metrics, and serving
//! with the agent's own certificate ([`own_tls`]), and the one HTTP `GET` the
//! agent and `zident certs` make ([`get`]).

pub(crate) mod admin;
pub mod get;
pub(crate) mod json;
pub(crate) mod own_tls;
pub mod report;
mod serve;

pub(crate) use serve::{serve, serve_tls};
