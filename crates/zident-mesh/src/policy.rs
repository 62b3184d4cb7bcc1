//! Authorization policies in ztunnel's local-config shape. Parsed here, address ranges
//! included, so a typo or a range that cannot be enforced refuses the file when it is loaded
//! (on the CA and on every agent alike); evaluated by the tunnel.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;

/// One authorization policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Policy name.
    pub name: String,
    /// Policy namespace.
    pub namespace: String,
    /// Which workloads it applies to.
    #[serde(default)]
    pub scope: Scope,
    /// Allow or deny on match.
    #[serde(default)]
    pub action: Action,
    /// Logged but not enforced.
    #[serde(default)]
    pub dry_run: bool,
    /// Rules: any rule matching makes the policy match; a rule is a list of clauses that must
    /// all match; a clause is a list of matches of which any may match.
    #[serde(default)]
    pub rules: Vec<Vec<Vec<RbacMatch>>>,
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Scope {
    /// Every workload in the mesh.
    #[default]
    Global,
    /// Workloads in the policy's namespace.
    Namespace,
    /// Workloads that name the policy in `authorizationPolicies`.
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Action {
    /// Allow the connection.
    #[default]
    Allow,
    /// Deny the connection.
    Deny,
}

/// One match of a clause; every field present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacMatch {
    /// Source namespaces.
    #[serde(default)]
    pub namespaces: Vec<StringMatch>,
    /// Source namespaces that must not match.
    #[serde(default)]
    pub not_namespaces: Vec<StringMatch>,
    /// Source service accounts.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source service accounts that must not match.
    #[serde(default)]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Source principals (SPIFFE IDs without `spiffe://`).
    #[serde(default)]
    pub principals: Vec<StringMatch>,
    /// Source principals that must not match.
    #[serde(default)]
    pub not_principals: Vec<StringMatch>,
    /// Source address ranges (CIDR).
    #[serde(default)]
    pub source_ips: Vec<Cidr>,
    /// Source ranges that must not match.
    #[serde(default)]
    pub not_source_ips: Vec<Cidr>,
    /// Destination address ranges (CIDR).
    #[serde(default)]
    pub destination_ips: Vec<Cidr>,
    /// Destination ranges that must not match.
    #[serde(default)]
    pub not_destination_ips: Vec<Cidr>,
    /// Destination ports.
    #[serde(default)]
    pub destination_ports: Vec<u16>,
    /// Destination ports that must not match.
    #[serde(default)]
    pub not_destination_ports: Vec<u16>,
}

/// A string match, written `{Exact: "..."}`, `{Prefix: ...}`, `{Suffix: ...}` or
/// `{Presence: []}`: a map with exactly one of those keys, as ztunnel writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawStringMatch")]
pub enum StringMatch {
    /// Equal to.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Any value at all.
    Presence(Ignored),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    #[serde(rename = "Exact", default)]
    exact: Option<String>,
    #[serde(rename = "Prefix", default)]
    prefix: Option<String>,
    #[serde(rename = "Suffix", default)]
    suffix: Option<String>,
    #[serde(rename = "Presence", default)]
    presence: Option<Ignored>,
}

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = &'static str;
    fn try_from(raw: RawStringMatch) -> Result<Self, Self::Error> {
        match (raw.exact, raw.prefix, raw.suffix, raw.presence) {
            (Some(v), None, None, None) => Ok(Self::Exact(v)),
            (None, Some(v), None, None) => Ok(Self::Prefix(v)),
            (None, None, Some(v), None) => Ok(Self::Suffix(v)),
            (None, None, None, Some(i)) => Ok(Self::Presence(i)),
            _ => Err("a string match needs exactly one of Exact, Prefix, Suffix or Presence"),
        }
    }
}

/// A value that is accepted and thrown away: the body of `{Presence: []}`, and keys of
/// ztunnel's format that zident does not use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ignored;

impl Serialize for Ignored {
    /// Shown as `[]`, the way ztunnel writes `{Presence: []}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(std::iter::empty::<()>())
    }
}

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

/// A `{namespace, serviceAccount}` pair.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}
