//! The objects the watchers hold, translated in one pass into the parts of a mesh: workloads,
//! services, policies and settings, each entry tagged with the object it came from, and a
//! finding for each object refused or only partly enforced. Pure: the same objects always give
//! the same mesh, so a resync after an outage changes only what changed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::DynamicObject;
use zident_identity::TrustDomain;
use zident_mesh::{Authorization, Scope, Workload};

use crate::finding::{Finding, ObjectRef, Severity};
use crate::mesh_config::{self, MeshSettings};
use crate::policy::{self, Translated};
use crate::services;
use crate::workloads;

/// What the watchers hold at one moment.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Every namespace (their labels enroll pods).
    pub namespaces: Vec<Arc<Namespace>>,
    /// Every pod.
    pub pods: Vec<Arc<Pod>>,
    /// Every service.
    pub services: Vec<Arc<Service>>,
    /// istiod's mesh ConfigMap, if it exists.
    pub mesh_config: Option<Arc<ConfigMap>>,
    /// Every `security.istio.io/v1` AuthorizationPolicy.
    pub policies: Vec<Arc<DynamicObject>>,
}

/// The mesh parts the cluster gives, each entry with the object it came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMesh {
    /// The settings in force: MeshConfig's, or the last good ones while it is refused.
    pub settings: MeshSettings,
    /// The ConfigMap the settings came from, if any.
    pub settings_from: Option<ObjectRef>,
    /// One per pod in the mesh.
    pub workloads: Vec<(ObjectRef, Workload)>,
    /// One per Service.
    pub services: Vec<(ObjectRef, zident_mesh::Service)>,
    /// One per policy ztunnel enforces.
    pub policies: Vec<(ObjectRef, Authorization)>,
    /// What was refused or left out, by object.
    pub findings: Vec<Finding>,
}

/// Translates `objects` for a CA of `trust_domain`. `last_settings` stay in force when the
/// mesh ConfigMap is refused (a typo there must not drop the mesh's DNS certificates).
pub fn translate(
    objects: &Objects,
    trust_domain: &TrustDomain,
    last_settings: &MeshSettings,
) -> ClusterMesh {
    let mut out = ClusterMesh::default();
    read_settings(objects, trust_domain, last_settings, &mut out);

    let namespaces: BTreeMap<String, &Namespace> = objects
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, n.as_ref())))
        .collect();

    // Policies first: a pod names the selector policies of its namespace that match it.
    let mut selectors: Vec<(String, String, BTreeMap<String, String>)> = Vec::new();
    for obj in sorted(&objects.policies, |p| &p.metadata) {
        let object = policy_ref(obj);
        let empty = serde_json::Value::Object(Default::default());
        let spec = obj.data.get("spec").unwrap_or(&empty);
        match policy::translate(
            &object.name,
            &object.namespace,
            spec,
            &out.settings.root_namespace,
        ) {
            Ok(Translated::Enforced {
                policy,
                selector,
                left_out,
            }) => {
                if !left_out.is_empty() {
                    out.findings.push(Finding {
                        object: object.clone(),
                        severity: Severity::Degraded,
                        reason: "UnsupportedValue",
                        message: format!(
                            "an L4 proxy cannot check HTTP attributes (use a waypoint for them); {}",
                            left_out.join("; ")
                        ),
                    });
                }
                if let (Scope::WorkloadSelector, Some(s)) = (policy.scope, selector) {
                    selectors.push((policy.namespace.clone(), policy.name.clone(), s));
                }
                out.policies.push((object, policy));
            }
            Ok(Translated::NotForZtunnel(why)) => {
                tracing::debug!(target: "zident::kube", %object, "not for ztunnel: {why}");
            }
            Err(e) => out.findings.push(Finding {
                object,
                severity: Severity::Refused,
                reason: e.reason(),
                message: e.to_string(),
            }),
        }
    }

    let read_services: Vec<(ObjectRef, services::ReadService)> =
        sorted(&objects.services, |s| &s.metadata)
            .filter_map(|svc| {
                let object = services::service_ref(svc);
                match services::read(svc) {
                    Ok(read) => read.map(|r| (object, r)),
                    Err(e) => {
                        out.findings.push(Finding {
                            object,
                            severity: Severity::Refused,
                            reason: e.reason(),
                            message: e.to_string(),
                        });
                        None
                    }
                }
            })
            .collect();

    // Oldest first, so that of two pods claiming one address the one that had it first keeps it.
    let mut pods: Vec<&Pod> = objects
        .pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| workloads::in_mesh(p, &namespaces))
        .collect();
    pods.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.metadata.namespace.clone(),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut claimed: HashMap<IpAddr, ObjectRef> = HashMap::new();
    for pod in pods {
        let object = workloads::pod_ref(pod);
        let mut w = match workloads::workload(pod, trust_domain) {
            Ok(w) => w,
            Err(e) => {
                out.findings.push(Finding {
                    object,
                    severity: Severity::Refused,
                    reason: e.reason(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        if let Some((ip, holder)) = w
            .workload_ips
            .iter()
            .find_map(|ip| claimed.get(ip).map(|h| (ip, h)))
        {
            out.findings.push(Finding {
                object,
                severity: Severity::Refused,
                reason: "DuplicateAddress",
                message: format!(
                    "address {ip} is already {holder}'s (an address names one workload; the pod that had it first keeps it)"
                ),
            });
            continue;
        }
        for ip in &w.workload_ips {
            claimed.insert(*ip, object.clone());
        }
        let labels = pod.metadata.labels.as_ref();
        w.authorization_policies = selectors
            .iter()
            .filter(|(ns, _, s)| *ns == w.namespace && services::labels_match(s, labels))
            .map(|(ns, name, _)| format!("{ns}/{name}"))
            .collect();
        for (_, svc) in &read_services {
            if svc.selects(pod) {
                let key = format!("{}/{}", svc.service.namespace, svc.service.hostname);
                w.services.insert(key, svc.backend_ports(pod));
            }
        }
        out.workloads.push((object, w));
    }
    out.services = read_services
        .into_iter()
        .map(|(object, r)| (object, r.service))
        .collect();
    out
}

/// MeshConfig from the ConfigMap, or the last good settings with a finding.
fn read_settings(
    objects: &Objects,
    trust_domain: &TrustDomain,
    last: &MeshSettings,
    out: &mut ClusterMesh,
) {
    out.settings = last.clone();
    let Some(cm) = &objects.mesh_config else {
        out.settings = MeshSettings::default();
        return;
    };
    let object = ObjectRef::of("ConfigMap", "v1", &cm.metadata);
    let yaml = cm
        .data
        .as_ref()
        .and_then(|d| d.get(mesh_config::KEY))
        .map(String::as_str)
        .unwrap_or("");
    let refuse = |reason, message: String, out: &mut ClusterMesh| {
        out.findings.push(Finding {
            object: object.clone(),
            severity: Severity::Refused,
            reason,
            message: format!("{message}; the last good mesh settings stay in force"),
        })
    };
    match mesh_config::parse(yaml) {
        Ok(settings) => match &settings.trust_domain {
            Some(td) if td != trust_domain => refuse(
                "TrustDomainChange",
                format!(
                    "trustDomain {td} is not the CA's {trust_domain}; it changes only with a restart of the CA"
                ),
                out,
            ),
            _ => {
                out.settings = settings;
                out.settings_from = Some(object);
            }
        },
        Err(e) => refuse("BadMeshConfig", e.to_string(), out),
    }
}

/// Objects in a stable order (namespace, name), so that one set of objects always gives the
/// same mesh.
fn sorted<K>(
    objects: &[Arc<K>],
    meta: impl Fn(&K) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> impl Iterator<Item = &K> {
    let mut v: Vec<&K> = objects.iter().map(Arc::as_ref).collect();
    v.sort_by(|a, b| {
        let (a, b) = (meta(a), meta(b));
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    v.into_iter()
}

fn policy_ref(obj: &DynamicObject) -> ObjectRef {
    ObjectRef::of("AuthorizationPolicy", "security.istio.io/v1", &obj.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(v).expect("object"))
    }

    fn ns(name: &str, mode: Option<&str>) -> Arc<Namespace> {
        let labels = match mode {
            Some(m) => json!({"istio.io/dataplane-mode": m}),
            None => json!({}),
        };
        obj(json!({"metadata": {"name": name, "labels": labels}}))
    }

    fn pod(ns: &str, name: &str, ip: &str, extra: serde_json::Value) -> Arc<Pod> {
        let mut v = json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                         "labels": {"app": name},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"serviceAccountName": "sa", "nodeName": "n1",
                     "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut v, extra);
        obj(v)
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn td() -> TrustDomain {
        zident_mesh::default_trust_domain()
    }

    fn names(m: &ClusterMesh) -> Vec<&str> {
        m.workloads.iter().map(|(_, w)| w.name.as_str()).collect()
    }

    #[test]
    fn enrollment_and_lifecycle() {
        let objects = Objects {
            namespaces: vec![ns("in", Some("ambient")), ns("out", None)],
            pods: vec![
                pod("in", "a", "10.0.0.1", json!({})),
                pod(
                    "in",
                    "optout",
                    "10.0.0.2",
                    json!({"metadata": {"labels": {"istio.io/dataplane-mode": "none"}}}),
                ),
                pod(
                    "out",
                    "optin",
                    "10.0.0.3",
                    json!({"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}),
                ),
                pod("out", "plain", "10.0.0.4", json!({})),
                pod(
                    "in",
                    "pending",
                    "10.0.0.5",
                    json!({"status": {"phase": "Pending"}}),
                ),
                pod(
                    "in",
                    "leaving",
                    "10.0.0.6",
                    json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:01Z"}}),
                ),
                pod(
                    "in",
                    "host",
                    "10.0.0.7",
                    json!({"spec": {"hostNetwork": true}}),
                ),
                pod(
                    "in",
                    "notready",
                    "10.0.0.8",
                    json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
                ),
            ],
            ..Default::default()
        };
        let m = translate(&objects, &td(), &MeshSettings::default());
        assert_eq!(names(&m), vec!["a", "notready", "optin"]);
        assert!(m.findings.is_empty(), "{:?}", m.findings);
        let a = &m.workloads[0].1;
        assert_eq!(a.uid, "uid-a");
        assert_eq!(a.node, "n1");
        assert_eq!(a.protocol, zident_mesh::Protocol::Hbone);
        assert_eq!(a.status, zident_mesh::HealthStatus::Healthy);
        assert_eq!(
            m.workloads[1].1.status,
            zident_mesh::HealthStatus::Unhealthy
        );
    }

    #[test]
    fn bad_pods_are_refused_alone() {
        let objects = Objects {
            namespaces: vec![ns("in", Some("ambient"))],
            pods: vec![
                pod("in", "first", "10.0.0.1", json!({})),
                pod(
                    "in",
                    "second",
                    "10.0.0.1",
                    json!({"metadata": {"creationTimestamp": "2026-01-02T00:00:00Z"}}),
                ),
                pod(
                    "in",
                    "nosa",
                    "10.0.0.2",
                    json!({"spec": {"serviceAccountName": null}}),
                ),
                pod("in", "badip", "not-an-ip", json!({})),
            ],
            ..Default::default()
        };
        let m = translate(&objects, &td(), &MeshSettings::default());
        assert_eq!(names(&m), vec!["first"]);
        let reasons: Vec<(&str, &str)> = m
            .findings
            .iter()
            .map(|f| (f.object.name.as_str(), f.reason))
            .collect();
        assert!(
            reasons.contains(&("second", "DuplicateAddress")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("nosa", "NoServiceAccount")),
            "{reasons:?}"
        );
        assert!(reasons.contains(&("badip", "BadAddress")), "{reasons:?}");
    }

    #[test]
    fn services_select_backends_and_resolve_named_ports() {
        let svc: Arc<Service> = obj(json!({
            "metadata": {"name": "web", "namespace": "in"},
            "spec": {"selector": {"app": "a"}, "clusterIP": "10.96.0.9",
                     "ports": [{"port": 80, "targetPort": "web"}, {"port": 81, "targetPort": 8081},
                               {"port": 53, "protocol": "UDP"}]}
        }));
        let objects = Objects {
            namespaces: vec![ns("in", Some("ambient"))],
            pods: vec![
                pod("in", "a", "10.0.0.1", json!({})),
                pod("in", "b", "10.0.0.2", json!({})),
            ],
            services: vec![svc],
            ..Default::default()
        };
        let m = translate(&objects, &td(), &MeshSettings::default());
        let (_, s) = &m.services[0];
        assert_eq!(s.hostname, "web.in.svc.cluster.local");
        assert_eq!(s.vips, vec!["/10.96.0.9".to_string()]);
        assert_eq!(s.ports, BTreeMap::from([(80, 0), (81, 8081)]));
        let a = &m.workloads[0].1;
        assert_eq!(
            a.services.get("in/web.in.svc.cluster.local"),
            Some(&BTreeMap::from([(80, 9090), (81, 8081)]))
        );
        assert!(m.workloads[1].1.services.is_empty(), "b is not selected");
    }

    #[test]
    fn a_refused_mesh_config_keeps_the_last_good_settings() {
        let cm = |yaml: &str| -> Option<Arc<ConfigMap>> {
            Some(obj(
                json!({"metadata": {"name": "istio", "namespace": "istio-system"},
                            "data": {"mesh": yaml}}),
            ))
        };
        let good = Objects {
            mesh_config: cm("certificates: [{secretName: s, dnsNames: [a.b]}]"),
            ..Default::default()
        };
        let m = translate(&good, &td(), &MeshSettings::default());
        assert_eq!(m.settings.certificates.len(), 1);
        let bad = Objects {
            mesh_config: cm("trustDomain: [not, a, string]"),
            ..Default::default()
        };
        let m2 = translate(&bad, &td(), &m.settings);
        assert_eq!(m2.settings, m.settings);
        assert_eq!(m2.findings[0].reason, "BadMeshConfig");
        let other = Objects {
            mesh_config: cm("trustDomain: example.org"),
            ..Default::default()
        };
        let m3 = translate(&other, &td(), &m.settings);
        assert_eq!(m3.findings[0].reason, "TrustDomainChange");
        assert_eq!(m3.settings, m.settings);
    }
}
