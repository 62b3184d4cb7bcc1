//! What the translation found wrong with one object: refused whole, or kept with something
//! left out. Each finding is logged, counted and recorded as a Kubernetes Event on its object.

/// Which object: enough to log it and to address an Event to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `Pod`, `Service`, `Namespace`, `ConfigMap`, `AuthorizationPolicy`.
    pub kind: &'static str,
    /// The API version the kind is served under (for the Event's `regarding`).
    pub api_version: &'static str,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid (an Event names the exact object, not a later one of the same name).
    pub uid: String,
    /// The version that was read, so that an edit that changes nothing is not reported twice.
    pub resource_version: String,
}

impl ObjectRef {
    /// The object of `kind` (served under `api_version`) that `meta` describes.
    pub fn of(
        kind: &'static str,
        api_version: &'static str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Self {
        Self {
            kind,
            api_version,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// How much of the object is in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Left out of the mesh entirely; everything else goes on.
    Refused,
    /// In the mesh, with part of it left out (a policy's HTTP rules), failing closed.
    Degraded,
}

impl Severity {
    /// As a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Degraded => "degraded",
        }
    }
}

/// One object's finding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Finding {
    /// The object.
    pub object: ObjectRef,
    /// Refused or degraded.
    pub severity: Severity,
    /// A short CamelCase reason (an Event's `reason`, a metric label): `NoServiceAccount`,
    /// `DuplicateAddress`, `UnknownAction`, ….
    pub reason: &'static str,
    /// What is wrong and what to change.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.severity {
            Severity::Refused => "refused",
            Severity::Degraded => "partly enforced",
        };
        write!(
            f,
            "{} {what} ({}): {}",
            self.object, self.reason, self.message
        )
    }
}
