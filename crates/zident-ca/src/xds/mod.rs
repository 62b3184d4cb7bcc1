//! The control plane's xDS server: `envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources` on the CA's TLS port, the stream ztunnel opens to istiod, so that
//! a ztunnel or a zident agent needs nothing but the CA's address and a token.
//!
//! - `generation`: each accepted mesh as resources ([`zident_xds::Snapshot`]), with what
//!   changed since the one before, computed once for every stream;
//! - `stream`: one client's subscriptions, what it holds, its ACKs and NACKs;
//! - `service`: authentication (the same bearer tokens as `CreateCertificate`) and the
//!   stream's start and end;
//! - `wire`: each response written from the generation's shared resources in bounded chunks;
//! - `caps`: how many streams one caller and one connection may hold;
//! - `metrics`: under istiod's names (`pilot_xds`, `pilot_xds_pushes`, …).

mod caps;
mod generation;
mod metrics;
mod service;
mod stream;
mod wire;

pub(crate) use caps::StreamCaps;
pub use caps::XdsLimits;
pub(crate) use generation::follow_mesh;
pub(crate) use metrics::XdsMetrics;
pub(crate) use service::XdsService;
