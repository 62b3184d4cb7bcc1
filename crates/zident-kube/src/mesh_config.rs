//! istiod's mesh settings: the ConfigMap `istio` in the control plane's namespace, key `mesh`,
//! a YAML MeshConfig. zident reads the settings that concern identity; every other key of
//! MeshConfig is istiod's and is accepted and ignored.

use serde::Deserialize;
use serde::de::IgnoredAny;
use zident_identity::TrustDomain;
use zident_mesh::DnsCertificate;

/// The name of istiod's mesh ConfigMap.
pub const CONFIG_MAP: &str = "istio";
/// The key that holds MeshConfig in it.
pub const KEY: &str = "mesh";
/// Where mesh-wide policies live when MeshConfig names no `rootNamespace` (istiod's default).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The settings zident takes from MeshConfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// `trustDomain` (absent: the CA's).
    pub trust_domain: Option<TrustDomain>,
    /// `caCertificates[].pem`: extra roots agents trust.
    pub ca_certificates: Vec<String>,
    /// `certificates`: DNS certificates the CA issues.
    pub certificates: Vec<DnsCertificate>,
    /// `rootNamespace`: where a policy without a selector applies mesh-wide.
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: None,
            ca_certificates: Vec::new(),
            certificates: Vec::new(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    ca_certificates: Vec<RawCaCertificate>,
    #[serde(default)]
    certificates: Vec<RawCertificate>,
    #[serde(default)]
    root_namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCaCertificate {
    #[serde(default)]
    pem: Option<String>,
    #[serde(default)]
    spiffe_bundle_url: Option<String>,
    // Which signers and trust domains the root is for: zident trusts it for all.
    #[serde(default, rename = "certSigners")]
    _cert_signers: Option<IgnoredAny>,
    #[serde(default, rename = "trustDomains")]
    _trust_domains: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCertificate {
    secret_name: String,
    #[serde(default)]
    dns_names: Vec<String>,
}

/// Why the mesh settings were not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshConfigError {
    /// The YAML does not parse as MeshConfig.
    #[error("key {KEY:?} is not MeshConfig YAML: {0}")]
    Yaml(String),
    /// `trustDomain` is not a trust domain.
    #[error("trustDomain {0:?}: {1}")]
    TrustDomain(String, String),
    /// A `caCertificates` entry zident cannot use.
    #[error(
        "caCertificates[{0}]: only `pem` entries are supported (spiffeBundleUrl is not fetched); give the root as PEM"
    )]
    CaCertificate(usize),
}

/// Reads the `mesh` key's YAML.
pub fn parse(yaml: &str) -> Result<MeshSettings, MeshConfigError> {
    if yaml.trim().is_empty() {
        return Ok(MeshSettings::default());
    }
    let raw: Raw =
        serde_yaml_ng::from_str(yaml).map_err(|e| MeshConfigError::Yaml(e.to_string()))?;
    let trust_domain = raw
        .trust_domain
        .map(|td| {
            TrustDomain::new(&td).map_err(|e| MeshConfigError::TrustDomain(td, e.to_string()))
        })
        .transpose()?;
    let mut ca_certificates = Vec::new();
    for (i, c) in raw.ca_certificates.into_iter().enumerate() {
        match (c.pem, c.spiffe_bundle_url) {
            (Some(pem), None) => ca_certificates.push(pem),
            _ => return Err(MeshConfigError::CaCertificate(i)),
        }
    }
    Ok(MeshSettings {
        trust_domain,
        ca_certificates,
        certificates: raw
            .certificates
            .into_iter()
            .map(|c| DnsCertificate {
                secret_name: c.secret_name,
                dns_names: c.dns_names,
            })
            .collect(),
        root_namespace: raw
            .root_namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_identity_settings_and_ignores_the_rest() {
        let s = parse(
            "trustDomain: example.org\naccessLogFile: /dev/stdout\ndefaultConfig: {discoveryAddress: x}\n\
             caCertificates: [{pem: \"PEM\", certSigners: [a]}]\n\
             certificates: [{secretName: dns.webhook, dnsNames: [a.b.svc]}]\n",
        )
        .unwrap();
        assert_eq!(s.trust_domain.unwrap().as_str(), "example.org");
        assert_eq!(s.ca_certificates, vec!["PEM".to_string()]);
        assert_eq!(s.certificates[0].dns_names, vec!["a.b.svc".to_string()]);
        assert_eq!(s.root_namespace, "istio-system");
        assert_eq!(parse(" \n").unwrap(), MeshSettings::default());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(matches!(
            parse("trustDomain: [x]"),
            Err(MeshConfigError::Yaml(_))
        ));
        assert!(matches!(
            parse("trustDomain: 'a b'"),
            Err(MeshConfigError::TrustDomain(..))
        ));
        assert_eq!(
            parse("caCertificates: [{spiffeBundleUrl: https://x}]"),
            Err(MeshConfigError::CaCertificate(0))
        );
    }
}
