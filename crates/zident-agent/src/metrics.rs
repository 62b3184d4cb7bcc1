//! Agent metrics: what Istio's users ask for and ztunnel does not export, chiefly when each
//! certificate expires.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use zident_identity::TrustBundle;

/// `identity` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabel {
    /// The SPIFFE ID.
    pub identity: String,
}

/// `outcome` and `reason` labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabel {
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// `ok`, or what failed (`ca_unreachable`, `permission_denied`, `wrong_identity`, ...).
    pub reason: &'static str,
}

/// `state` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `Initializing`, `Available` or `Unavailable`.
    pub state: &'static str,
}

/// `outcome` label of a reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `applied` or `rejected`.
    pub outcome: &'static str,
}

/// `serial` label of a trust bundle root.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootLabel {
    /// Serial number, hex.
    pub serial: String,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct AgentMetrics {
    /// notAfter of the current certificate, per identity.
    pub expiry: Family<IdentityLabel, Gauge<i64>>,
    /// Rotations (certificate fetches) by outcome and reason.
    pub rotations: Family<RotationLabel, Counter>,
    /// Identities by state.
    pub identities: Family<StateLabel, Gauge<i64>>,
    /// CA request latency.
    pub ca_latency: Histogram,
    /// Roots in the trust bundle.
    pub bundle_roots: Gauge<i64>,
    /// notAfter of each trust bundle root.
    pub root_expiry: Family<RootLabel, Gauge<i64>>,
    /// Changes of the trust bundle.
    pub bundle_changes: Counter,
    /// Mesh file reloads by outcome.
    pub config_reloads: Family<OutcomeLabel, Counter>,
    /// The CA's clock minus this node's, seconds, as last measured (NaN while unknown).
    pub clock_skew: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The lower bound a failed handshake implied (NaN while none).
    pub clock_skew_at_least: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Certificates the CRLs in force list.
    pub crl_revoked: Gauge<i64>,
    /// The number of the CRLs in force.
    pub crl_number: Gauge<i64>,
    /// Their nextUpdate, Unix seconds.
    pub crl_next_update: Gauge<i64>,
    /// 1 while the CRLs in force are past their nextUpdate (kept: see `ca/crl_poll.rs`).
    pub crl_stale: Gauge<i64>,
    /// CRLs refused (forged, stale or older than the one in force).
    pub crl_refused: Counter,
}

impl AgentMetrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            expiry: Default::default(),
            rotations: Default::default(),
            identities: Default::default(),
            ca_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            bundle_roots: Default::default(),
            root_expiry: Default::default(),
            bundle_changes: Default::default(),
            config_reloads: Default::default(),
            clock_skew: Default::default(),
            clock_skew_at_least: Default::default(),
            crl_revoked: Default::default(),
            crl_number: Default::default(),
            crl_next_update: Default::default(),
            crl_stale: Default::default(),
            crl_refused: Default::default(),
        };
        registry.register(
            "zident_crl_revoked_certificates",
            "Certificates the CA's CRLs in force on this node list as revoked",
            m.crl_revoked.clone(),
        );
        registry.register(
            "zident_crl_number",
            "The number of the CRLs in force on this node",
            m.crl_number.clone(),
        );
        registry.register(
            "zident_crl_next_update_timestamp_seconds",
            "The nextUpdate of the CRLs in force on this node (unix seconds)",
            m.crl_next_update.clone(),
        );
        registry.register(
            "zident_crl_stale",
            "1 while the CRLs in force are past their nextUpdate and no newer one could be fetched (they stay in force)",
            m.crl_stale.clone(),
        );
        registry.register(
            "zident_crl_refused",
            "CRLs from the CA refused: signed by no root of the bundle, past their nextUpdate, or older than the ones in force",
            m.crl_refused.clone(),
        );
        // Unknown until the CA answers: NaN, never a 0 that would say the clocks agree.
        m.clock_skew.set(f64::NAN);
        m.clock_skew_at_least.set(f64::NAN);
        registry.register(
            "zident_certificate_expiration_timestamp_seconds",
            "When the current certificate of an identity expires (unix seconds)",
            m.expiry.clone(),
        );
        registry.register(
            "zident_certificate_rotations",
            "Certificate fetches by outcome and reason",
            m.rotations.clone(),
        );
        registry.register(
            "zident_identities",
            "Local identities by certificate state",
            m.identities.clone(),
        );
        registry.register(
            "zident_ca_request_duration_seconds",
            "Time for the CA to answer a certificate request",
            m.ca_latency.clone(),
        );
        registry.register(
            "zident_clock_skew_seconds",
            "The CA's clock minus this node's, as measured on the last exchange with the CA",
            m.clock_skew.clone(),
        );
        registry.register(
            "zident_clock_skew_at_least_seconds",
            "What a handshake that failed on the CA's certificate's validity implies: the CA's clock minus this node's is at least this far from 0 (positive: this node is behind); NaN while nothing implies one",
            m.clock_skew_at_least.clone(),
        );
        registry.register(
            "zident_trust_bundle_roots",
            "Roots in this node's trust bundle",
            m.bundle_roots.clone(),
        );
        registry.register(
            "zident_trust_bundle_root_expiration_timestamp_seconds",
            "When each trust bundle root expires (unix seconds)",
            m.root_expiry.clone(),
        );
        registry.register(
            "zident_trust_bundle_changes",
            "Changes of this node's trust bundle",
            m.bundle_changes.clone(),
        );
        registry.register(
            "zident_config_reloads",
            "Mesh file reloads by outcome (applied or rejected)",
            m.config_reloads.clone(),
        );
        m
    }

    /// Counts a fetch.
    pub fn renewal(&self, success: bool, reason: &'static str) {
        let outcome = if success { "success" } else { "failure" };
        self.rotations
            .get_or_create(&RotationLabel { outcome, reason })
            .inc();
    }

    /// Moves one identity between states (`from` None = new, `to` None = forgotten).
    pub fn state_change(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if from == to {
            return;
        }
        if let Some(s) = from {
            self.identities
                .get_or_create(&StateLabel { state: s })
                .dec();
        }
        if let Some(s) = to {
            self.identities
                .get_or_create(&StateLabel { state: s })
                .inc();
        }
    }

    /// Sets the CRL gauges from the list put in force.
    pub fn set_crl(&self, list: &zident_identity::RevocationList) {
        self.crl_revoked.set(list.count as i64);
        self.crl_number
            .set(i64::try_from(list.number).unwrap_or(i64::MAX));
        self.crl_next_update.set(
            list.next_update
                .map(|t| zident_identity::unix_seconds(t) as i64)
                .unwrap_or(0),
        );
    }

    /// Records the trust bundle's roots.
    pub fn set_bundle(&self, bundle: &TrustBundle) {
        self.bundle_roots.set(bundle.roots().len() as i64);
        self.root_expiry.clear();
        for root in bundle.roots() {
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(root) {
                self.root_expiry
                    .get_or_create(&RootLabel {
                        serial: zident_identity::serial_hex(c.raw_serial()),
                    })
                    .set(c.validity().not_after.timestamp());
            }
        }
    }
}
