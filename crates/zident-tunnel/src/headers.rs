//! The request headers ztunnel puts on an HBONE `CONNECT` besides the authority, so that a
//! ztunnel peer (and our own inbound side) can say who is calling in its logs and metrics:
//!
//! - `baggage` (W3C baggage): the source workload's attributes, in OpenTelemetry's names
//!   (`k8s.cluster.name`, `k8s.namespace.name`, `k8s.<workload type>.name`, `service.name`,
//!   `service.version`).
//! - `traceparent` (W3C trace context): one trace per tunnel, so the two sides' log lines of
//!   one connection can be joined.
//! - `forwarded` (RFC 7239): `for="<client address>"`, the original client.
//!
//! They carry information, never authority: policy decides on the verified certificate and
//! the connection's address, not on anything a client can write in a header.

use std::fmt;
use std::net::SocketAddr;

use zident_mesh::Workload;

/// `baggage`.
pub const BAGGAGE: &str = "baggage";
/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `forwarded`.
pub const FORWARDED: &str = "forwarded";

/// The value of the `baggage` header for a source workload, as ztunnel writes it: only the
/// attributes the workload has, in ztunnel's order.
pub fn baggage_of(w: &Workload) -> String {
    let kind = if w.workload_type.is_empty() {
        "pod"
    } else {
        w.workload_type.as_str()
    };
    let name = if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    };
    [
        ("k8s.cluster.name".to_owned(), w.cluster_id.as_str()),
        ("k8s.namespace.name".to_owned(), w.namespace.as_str()),
        (format!("k8s.{kind}.name"), name.as_str()),
        ("service.name".to_owned(), w.canonical_name.as_str()),
        ("service.version".to_owned(), w.canonical_revision.as_str()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={v}"))
    .collect::<Vec<_>>()
    .join(",")
}

/// What a `baggage` header says of the caller, for the access log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `k8s.{pod,deployment,job,cronjob,...}.name`.
    pub workload: Option<String>,
    /// `service.name`.
    pub service: Option<String>,
}

impl Baggage {
    /// Reads a `baggage` value; members it does not know are skipped, as ztunnel does.
    pub fn parse(value: &str) -> Self {
        let mut caller = Self::default();
        for member in value.split(',') {
            let Some((key, v)) = member.split_once('=') else {
                continue;
            };
            // A member may carry properties after `;`.
            let v = v.split(';').next().unwrap_or("").trim();
            if v.is_empty() {
                continue;
            }
            let key = key.trim();
            match key {
                "k8s.namespace.name" => caller.namespace = Some(v.to_owned()),
                "service.name" => caller.service = Some(v.to_owned()),
                k if k.starts_with("k8s.") && k.ends_with(".name") && k != "k8s.cluster.name" => {
                    caller.workload = Some(v.to_owned())
                }
                _ => {}
            }
        }
        caller
    }

    /// `namespace/workload`, when both are known.
    pub fn name(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.namespace.as_ref()?,
            self.workload.as_ref()?
        ))
    }
}

/// A W3C `traceparent`: version 00, a trace ID and a parent (span) ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// A new trace, from the system's secure random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; 24];
        // A failing random source leaves zeros: an all-zero trace ID, which readers treat
        // as "no trace", rather than a failed connection.
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let (t, p) = bytes.split_at(16);
        Self {
            trace_id: u128::from_be_bytes(t.try_into().unwrap_or_default()),
            parent_id: u64::from_be_bytes(p.try_into().unwrap_or_default()),
            flags: 0,
        }
    }

    /// Reads `00-<32 hex>-<16 hex>-<2 hex>`; anything else is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || version.len() != 2
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        u8::from_str_radix(version, 16).ok()?;
        Some(Self {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            parent_id: u64::from_str_radix(parent, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The trace ID, as log lines show it (32 hex digits).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// `for="<client>"`, as ztunnel writes `forwarded`.
pub fn forwarded(client: SocketAddr) -> String {
    format!("for=\"{client}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(yaml: &str) -> Workload {
        let mesh = zident_mesh::MeshFile::parse(
            std::path::Path::new("m.yaml"),
            &format!("nodes: [{{name: n, token: t}}]\nworkloads:\n- {yaml}\n"),
        )
        .unwrap();
        mesh.workloads[0].clone()
    }

    #[test]
    fn baggage_as_ztunnel_writes_it_and_reads_back() {
        let w = workload(
            "{name: front-7d9, namespace: shop, node: n, clusterId: c1, workloadName: front, \
             workloadType: deployment, canonicalName: front, canonicalRevision: v2}",
        );
        let b = baggage_of(&w);
        assert_eq!(
            b,
            "k8s.cluster.name=c1,k8s.namespace.name=shop,k8s.deployment.name=front,service.name=front,service.version=v2"
        );
        let c = Baggage::parse(&b);
        assert_eq!(c.name().as_deref(), Some("shop/front"));
        assert_eq!(c.service.as_deref(), Some("front"));
        // With only what zident's own files usually hold: the pod name.
        let w = workload("{name: web, namespace: default, node: n}");
        assert_eq!(
            baggage_of(&w),
            "k8s.namespace.name=default,k8s.pod.name=web"
        );
        assert_eq!(Baggage::parse("junk,=,a=b;p=1").name(), None);
    }

    #[test]
    fn traceparent_round_trips_and_refuses_junk() {
        let t = TraceParent::random();
        let s = t.to_string();
        assert_eq!(s.len(), 55);
        assert_eq!(TraceParent::parse(&s), Some(t));
        assert_ne!(TraceParent::random(), t);
        assert_eq!(
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .map(|t| t.trace_id()),
            Some("0af7651916cd43dd8448eb211c80319c".into())
        );
        for bad in [
            "",
            "00-xyz-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        assert_eq!(
            forwarded("127.0.0.2:4000".parse().unwrap()),
            "for=\"127.0.0.2:4000\""
        );
    }
}
