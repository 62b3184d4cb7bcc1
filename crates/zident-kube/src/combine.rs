//! The cluster's part and a mesh file's part as one mesh, checked whole by the same rules a
//! file passes. A rule that one cluster object breaks (two Services with one cluster IP, a
//! service name a file already uses) leaves that object out with a finding, and the check runs
//! again; the rest of the mesh goes on. A rule the file's own part breaks refuses the whole.

use std::collections::HashSet;

use zident_mesh::{MeshError, MeshFile, MeshOrigin};

use crate::finding::{Finding, ObjectRef, Severity};
use crate::translate::ClusterMesh;

/// A checked mesh and the objects left out on the way.
#[derive(Debug)]
pub struct Combined {
    /// The mesh in force.
    pub mesh: MeshFile,
    /// Objects left out because the combined mesh broke a rule with them.
    pub findings: Vec<Finding>,
}

/// At most this many objects are left out one by one before the whole is refused (each pass
/// checks the whole mesh once).
const MAX_LEFT_OUT: usize = 1000;

/// `base` (the file's nodes, identities and entries; or an empty mesh) with `cluster` added,
/// as the mesh from the API server at `server`.
pub fn combine(
    base: &MeshFile,
    cluster: &ClusterMesh,
    server: &str,
) -> Result<Combined, MeshError> {
    let origin = MeshOrigin::Kubernetes(server.to_owned());
    let mut left_out: HashSet<(&'static str, usize)> = HashSet::new();
    let mut settings_refused = false;
    let mut findings = Vec::new();
    loop {
        let mut mesh = base.clone();
        if !settings_refused {
            mesh.ca_certificates
                .extend(cluster.settings.ca_certificates.iter().cloned());
            mesh.certificates
                .extend(cluster.settings.certificates.iter().cloned());
        }
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        let mut policies = Vec::new();
        add(
            &mut mesh.workloads,
            &mut workloads,
            &cluster.workloads,
            "workloads",
            &left_out,
        );
        add(
            &mut mesh.services,
            &mut services,
            &cluster.services,
            "services",
            &left_out,
        );
        add(
            &mut mesh.policies,
            &mut policies,
            &cluster.policies,
            "policies",
            &left_out,
        );
        let error = match mesh.received(&origin) {
            Ok(mesh) => return Ok(Combined { mesh, findings }),
            Err(e) => e,
        };
        let at_fault: Option<(&ObjectRef, (&'static str, usize))> = match error.entry() {
            Some(("workloads", i)) => at(&workloads, base.workloads.len(), i, "workloads"),
            Some(("services", i)) => at(&services, base.services.len(), i, "services"),
            Some(("policies", i)) => at(&policies, base.policies.len(), i, "policies"),
            Some(("caCertificates", i)) if i >= base.ca_certificates.len() && !settings_refused => {
                cluster.settings_from.as_ref().map(|o| (o, ("settings", 0)))
            }
            Some(("certificates", i)) if i >= base.certificates.len() && !settings_refused => {
                cluster.settings_from.as_ref().map(|o| (o, ("settings", 0)))
            }
            _ => None,
        };
        let Some((object, key)) = at_fault else {
            return Err(error);
        };
        if left_out.len() >= MAX_LEFT_OUT {
            return Err(error);
        }
        if key.0 == "settings" {
            settings_refused = true;
        } else {
            left_out.insert(key);
        }
        let message = match &error {
            MeshError::Invalid { field, message, .. } => format!("{field}: {message}"),
            other => other.to_string(),
        };
        findings.push(Finding {
            object: object.clone(),
            severity: Severity::Refused,
            reason: "MeshRule",
            message,
        });
    }
}

/// Appends the cluster's entries not left out, noting which cluster entry each index holds.
fn add<'a, T: Clone>(
    into: &mut Vec<T>,
    origin_of: &mut Vec<(&'a ObjectRef, usize)>,
    from: &'a [(ObjectRef, T)],
    section: &'static str,
    left_out: &HashSet<(&'static str, usize)>,
) {
    for (i, (object, item)) in from.iter().enumerate() {
        if !left_out.contains(&(section, i)) {
            into.push(item.clone());
            origin_of.push((object, i));
        }
    }
}

/// The cluster object at index `i` of the combined section, if it is one (the file's entries
/// come first).
fn at<'a>(
    origin_of: &[(&'a ObjectRef, usize)],
    from_file: usize,
    i: usize,
    section: &'static str,
) -> Option<(&'a ObjectRef, (&'static str, usize))> {
    let (object, index) = origin_of.get(i.checked_sub(from_file)?)?;
    Some((object, (section, *index)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::ObjectRef;

    fn object(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Service",
            api_version: "v1",
            namespace: "ns".into(),
            name: name.into(),
            uid: String::new(),
            resource_version: String::new(),
        }
    }

    #[test]
    fn an_object_that_breaks_a_rule_with_the_file_is_left_out_alone() {
        let base = MeshFile::parse(
            std::path::Path::new("mesh.yaml"),
            "nodes: [{name: n, token: t}]\nservices:\n- {name: f, namespace: ns, hostname: f.ns, vips: ['/10.0.0.1']}\n",
        )
        .expect("base");
        let svc = |name: &str, vip: &str| {
            let mut s = zident_mesh::Service::new(name, "ns", format!("{name}.ns"));
            s.vips.push(vip.into());
            (object(name), s)
        };
        let cluster = ClusterMesh {
            services: vec![
                svc("takes-the-file-vip", "/10.0.0.1"),
                svc("fine", "/10.0.0.2"),
            ],
            ..Default::default()
        };
        let c = combine(&base, &cluster, "https://k").expect("combined");
        let names: Vec<&str> = c.mesh.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["f", "fine"]);
        assert_eq!(c.findings.len(), 1);
        assert_eq!(c.findings[0].object.name, "takes-the-file-vip");
        assert!(
            c.findings[0].message.contains("VIP"),
            "{}",
            c.findings[0].message
        );
    }
}
