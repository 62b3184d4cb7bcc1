//! xDS metrics, under istiod's names where it has one, so a dashboard built for istiod reads
//! them: connected streams, pushes and rejects by type, and the time from an accepted edit to
//! a client's ACK of it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::IstioCounter;

/// Label: the resource type, short (`address`, `authorization`, `mesh`, `node`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TypeLabel {
    pub(crate) r#type: &'static str,
}

/// Label for [`XdsMetrics::ignored`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IgnoredLabel {
    pub(crate) why: &'static str,
}

/// Every xDS metric.
#[derive(Debug)]
pub(crate) struct XdsMetrics {
    /// Streams open now.
    pub(crate) streams: Gauge,
    /// Responses sent, by type.
    pub(crate) pushes: Family<TypeLabel, IstioCounter>,
    /// Responses a client rejected (NACK), by type.
    pub(crate) rejects: Family<TypeLabel, IstioCounter>,
    /// Seconds from an edit being accepted to a client's ACK of the push that carried it.
    pub(crate) convergence: Histogram,
    /// Requests a client sent that the stream ignores: replies naming a nonce it never sent
    /// (or no longer waits on), and subscriptions to types zident does not serve. Counted apart
    /// from `rejects`, so that a client cannot inflate the count of real rejections.
    pub(crate) ignored: Family<IgnoredLabel, Counter>,
    /// Bytes of resources in one push, to show a change's push does not grow with the mesh.
    pub(crate) push_bytes: Histogram,
    /// Streams refused at the per-caller or per-connection cap.
    pub(crate) refused: Family<IgnoredLabel, Counter>,
}

impl XdsMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            streams: Gauge::default(),
            pushes: Family::default(),
            rejects: Family::default(),
            ignored: Family::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            push_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 12)),
            refused: Family::default(),
        };
        registry.register(
            "zident_xds_streams_refused",
            "xDS streams refused, by why: per_caller (the caller holds --max-xds-streams-per-caller), per_connection (--max-xds-streams-per-connection), total (the CA holds --max-xds-streams)",
            m.refused.clone(),
        );
        registry.register(
            "pilot_xds",
            "Number of endpoints connected to this control plane using xDS",
            m.streams.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected by a client (NACK), by type",
            m.rejects.clone(),
        );
        registry.register(
            "zident_xds_requests_ignored",
            "xDS requests ignored, by why: unknown_nonce (an ACK or NACK of nothing this stream sent or waits on), unknown_type (a type zident does not serve)",
            m.ignored.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from a mesh edit being accepted to a client acknowledging it",
            m.convergence.clone(),
        );
        registry.register(
            "zident_xds_push_bytes",
            "Bytes of resources in one xDS response",
            m.push_bytes.clone(),
        );
        m
    }
}
