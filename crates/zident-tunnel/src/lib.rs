//! The HBONE tunnel of a node: the inbound HBONE server ([`Inbound`]) and the outbound side
//! ([`Outbound`]: SOCKS5 and captured connections over pooled HTTP/2), both reaching
//! certificates only through [`zident_identity::CertificateProvider`]; [`start`] runs them for
//! one node and follows its [`zident_mesh::NodeView`].
//!
//! - `node`: one node's listeners, following each accepted mesh;
//! - `inbound`, `outbound`, `socks5`, `sni`, `headers`, `pump`: the data path;
//! - `mesh_view`: routes and local workloads indexed from the node view;
//! - `policy`: authorization policy in ztunnel's local-config shape ([`Authorizer`]);
//! - `verify`: the rustls verifiers that make both ends prove their SPIFFE identities;
//! - `observe`, `listeners`: metrics, open tunnels and listener states ([`Observer`]);
//! - `sizes`: buffer sizes and HTTP/2 windows of the data path;
//! - [`defaults`]: the default addresses and port;
//! - `error`: why a tunnel or a view could not be made.
//!
//! The modules are private; what other crates use is re-exported here.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod defaults;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod inbound;
mod listeners;
mod mesh_view;
mod node;
mod observe;
mod outbound;
mod policy;
mod pump;
mod read_ahead;
mod sizes;
mod sni;
mod socks5;
mod verify;

pub use error::{TunnelError, ViewError};
pub use inbound::{Destinations, Inbound, LocalTarget, Serves};
pub use listeners::ListenerPhase;
pub use node::{RunningTunnel, TunnelConfig, start};
pub use observe::{Direction, Observer, Reason, tls_failure};
pub use outbound::{Directory, NoRoute, Outbound, Route, Source};
pub use policy::{Authorizer, Connection, Destination};
pub use socks5::Target;
pub use verify::{
    BundleSource, RevocationSource, SKEW_TOLERANCE, SpiffeClientVerifier, SpiffeServerVerifier,
    provider as crypto_provider,
};
