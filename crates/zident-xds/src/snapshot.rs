//! Resource sets: what the control plane holds for every stream, and what an agent has
//! received. A resource's version is a digest of its bytes, so an unchanged resource keeps its
//! version across edits and across restarts of the control plane, and a client that
//! reconnects with the versions it holds is sent only what changed meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::digest;
use prost::Message;
use zident_identity::TrustDomain;
use zident_mesh::MeshFile;
use zident_proto::zident_mesh as zm;

use crate::decode::{self, BadValue, DecodeError, Item};

/// One named resource: its version and its encoded message (the `value` of its `Any`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The name clients key it by.
    pub name: String,
    /// A digest of `value`: equal versions, equal bytes.
    pub version: String,
    /// The encoded message.
    pub value: Vec<u8>,
}

impl Resource {
    /// A resource whose version is the digest of `value`.
    pub fn new(name: String, value: Vec<u8>) -> Self {
        Self {
            version: version_of(&value),
            name,
            value,
        }
    }
}

/// The version of an encoded message: the first 8 bytes of its SHA-256, in hex.
fn version_of(value: &[u8]) -> String {
    digest::digest(&digest::SHA256, value).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What changed in one type between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Resources that are new or whose version changed.
    pub changed: Vec<Arc<Resource>>,
    /// Names that are gone.
    pub removed: Vec<String>,
}

impl Delta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Every resource of every type, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, BTreeMap<String, Arc<Resource>>>,
}

impl Snapshot {
    /// The resources of `mesh` (a mesh that passed its checks).
    pub fn from_mesh(mesh: &MeshFile) -> Self {
        Self::from_mesh_sharing(mesh, None)
    }

    /// [`Snapshot::from_mesh`], sharing with `previous` every resource whose bytes did not
    /// change: a control plane that keeps several versions alive (a slow client still holds an
    /// older one) pays for what changed between them, not for each whole.
    pub fn from_mesh_sharing(mesh: &MeshFile, previous: Option<&Snapshot>) -> Self {
        let mut out = Self::default();
        for e in crate::encode::mesh_resources(mesh) {
            let fresh = Resource::new(e.name, e.value);
            let resource = previous
                .and_then(|p| p.get(e.type_url, &fresh.name))
                .filter(|old| old.version == fresh.version && old.value == fresh.value)
                .cloned()
                .unwrap_or_else(|| Arc::new(fresh));
            out.types
                .entry(e.type_url.to_owned())
                .or_default()
                .insert(resource.name.clone(), resource);
        }
        out
    }

    /// The resources of `type_url`, by name.
    pub fn of(&self, type_url: &str) -> impl Iterator<Item = &Arc<Resource>> {
        self.types
            .get(type_url)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// One resource.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.types.get(type_url)?.get(name)
    }

    /// How many resources of `type_url` there are.
    pub fn count(&self, type_url: &str) -> usize {
        self.types.get(type_url).map_or(0, BTreeMap::len)
    }

    /// What a client holding `self` needs to hold `newer`, for `type_url`.
    pub fn delta(&self, newer: &Snapshot, type_url: &str) -> Delta {
        let empty = BTreeMap::new();
        let old = self.types.get(type_url).unwrap_or(&empty);
        let new = newer.types.get(type_url).unwrap_or(&empty);
        Delta {
            changed: new
                .iter()
                .filter(|(name, r)| old.get(*name).is_none_or(|o| o.version != r.version))
                .map(|(_, r)| r.clone())
                .collect(),
            removed: old
                .keys()
                .filter(|name| !new.contains_key(*name))
                .cloned()
                .collect(),
        }
    }

    /// What a client that says it holds `known` (name → version) needs to hold `self`, for
    /// `type_url`: a reconnecting client's `initial_resource_versions`.
    pub fn delta_from_versions(&self, known: &BTreeMap<String, String>, type_url: &str) -> Delta {
        let empty = BTreeMap::new();
        let new = self.types.get(type_url).unwrap_or(&empty);
        Delta {
            changed: new
                .iter()
                .filter(|(name, r)| known.get(*name) != Some(&r.version))
                .map(|(_, r)| r.clone())
                .collect(),
            removed: known
                .keys()
                .filter(|name| !new.contains_key(*name))
                .cloned()
                .collect(),
        }
    }

    /// Applies a received change to `type_url`: `changed` replaces or adds, `removed` goes.
    pub fn apply(&mut self, type_url: &str, changed: Vec<Resource>, removed: &[String]) {
        let set = self.types.entry(type_url.to_owned()).or_default();
        for name in removed {
            set.remove(name);
        }
        for r in changed {
            set.insert(r.name.clone(), Arc::new(r));
        }
    }

    /// The mesh these resources describe, not yet checked by the mesh rules (call
    /// [`MeshFile::received`]). `trust_domain` is used when there is no `zident.mesh.Mesh`
    /// resource (a control plane that is not zident).
    pub fn to_mesh(&self, trust_domain: &TrustDomain) -> Result<MeshFile, DecodeError> {
        let mut mesh = MeshFile::empty(trust_domain.clone());
        if let Some(r) = self.get(crate::MESH, crate::MESH_RESOURCE)
            && let Item::Mesh(m) = decode::item(crate::MESH, &r.name, &r.value, trust_domain)?
        {
            mesh.trust_domain = TrustDomain::new(&m.trust_domain).map_err(|e| {
                DecodeError::new(crate::MESH, &r.name, BadValue::TrustDomain(e).into())
            })?;
            mesh.ca_certificates = m.ca_certificates;
        }
        for type_url in [crate::NODE, crate::ADDRESS, crate::AUTHORIZATION] {
            for r in self.of(type_url) {
                match decode::item(type_url, &r.name, &r.value, &mesh.trust_domain)? {
                    Item::Node(n) => mesh.nodes.push(n),
                    Item::Workload(w) => mesh.workloads.push(*w),
                    Item::Service(s) => mesh.services.push(s),
                    Item::Policy(p) => mesh.policies.push(p),
                    Item::Mesh(_) => {}
                }
            }
        }
        Ok(mesh)
    }

    /// The snapshot as bytes, for an agent's on-disk copy of its last good view.
    pub fn to_bytes(&self) -> Vec<u8> {
        zm::Cache {
            types: self
                .types
                .iter()
                .map(|(type_url, set)| zm::TypedResources {
                    type_url: type_url.clone(),
                    resources: set
                        .values()
                        .map(|r| zm::CachedResource {
                            version: r.version.clone(),
                            name: r.name.clone(),
                            resource: Some(prost_types::Any {
                                type_url: type_url.clone(),
                                value: r.value.clone(),
                            }),
                        })
                        .collect(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Reads what [`Snapshot::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        let cache = zm::Cache::decode(bytes)?;
        let mut out = Self::default();
        for t in cache.types {
            let set = out.types.entry(t.type_url).or_default();
            for r in t.resources {
                let value = r.resource.map(|a| a.value).unwrap_or_default();
                // The version as the control plane gave it, to be sent back on reconnect.
                set.insert(
                    r.name.clone(),
                    Arc::new(Resource {
                        name: r.name,
                        version: r.version,
                        value,
                    }),
                );
            }
        }
        Ok(out)
    }
}
