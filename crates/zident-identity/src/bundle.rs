//! Trust bundles: the set of root certificates that vouch for one trust domain.
//!
//! A bundle holds several roots at once on purpose: during a root rotation the old and the new
//! root are both trusted, so certificates signed by either verify and no handshake fails.
//! Bundles are read and written as concatenated PEM (what `openssl` and Istio's
//! `root-cert.pem` use) and as the SPIFFE bundle format, a JWK Set.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry;
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::jwt::{EcJwk, JWT_SVID_USE, JwtKey};
use crate::pem::{PemError, certs_from_pem, certs_to_pem};
use crate::spiffe_id::TrustDomain;

/// The `use` value of a JWK that holds an X.509 root in a SPIFFE bundle.
const X509_SVID_USE: &str = "x509-svid";

/// Why a bundle or a root could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The PEM text is unusable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A root does not parse.
    #[error("root {index} is not valid X.509: {reason}")]
    Malformed {
        /// Position in the input.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A root is not a CA certificate.
    #[error("root {index} ({subject}) is not a CA certificate (basicConstraints CA=true missing)")]
    NotACa {
        /// Position in the input.
        index: usize,
        /// Its subject, to find it.
        subject: String,
    },
    /// The JSON is not a SPIFFE bundle.
    #[error("not a SPIFFE bundle JWK Set: {0}")]
    Json(String),
    /// A JWK is not well formed for an X.509 root.
    #[error("JWK {index}: {reason}")]
    BadJwk {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The roots trusted for one trust domain, with the SPIFFE bundle metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    /// The roots parsed for webpki once, when they change, rather than at every verification.
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    /// The keys that sign JWT-SVIDs (not X.509 roots: separate keys, published beside them).
    jwt_keys: Vec<JwtKey>,
    sequence: u64,
    refresh_hint: Option<Duration>,
}

impl TrustBundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            roots: Vec::new(),
            anchors: Vec::new(),
            jwt_keys: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// A bundle of the CA certificates in `pem` (concatenated `CERTIFICATE` blocks).
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let mut bundle = Self::new(trust_domain);
        for (index, der) in certs_from_pem(pem)?.into_iter().enumerate() {
            check_root(index, &der)?;
            bundle.push_unique(der);
        }
        Ok(bundle)
    }

    /// The trust domain these roots vouch for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, oldest first.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// `spiffe_sequence`: increases whenever the set of roots changes.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Sets `spiffe_sequence`.
    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    /// `spiffe_refresh_hint`: how often a consumer should fetch the bundle again.
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// Sets `spiffe_refresh_hint`.
    pub fn set_refresh_hint(&mut self, hint: Option<Duration>) {
        self.refresh_hint = hint;
    }

    /// Adds a CA certificate unless it is already present; says whether it was added.
    pub fn add_root(&mut self, der: CertificateDer<'static>) -> Result<bool, BundleError> {
        check_root(self.roots.len(), &der)?;
        Ok(self.push_unique(der))
    }

    /// Removes a root; says whether it was there.
    pub fn remove_root(&mut self, der: &[u8]) -> bool {
        let before = self.roots.len();
        self.roots.retain(|r| r.as_ref() != der);
        self.anchors = self.roots.iter().filter_map(|r| anchor(r)).collect();
        before != self.roots.len()
    }

    /// The JWT-SVID signing keys, oldest first.
    pub fn jwt_keys(&self) -> &[JwtKey] {
        &self.jwt_keys
    }

    /// Adds a JWT signing key unless one with its `kid` is present; says whether it was added.
    pub fn add_jwt_key(&mut self, key: JwtKey) -> bool {
        if self.jwt_keys.iter().any(|k| k.kid() == key.kid()) {
            return false;
        }
        self.jwt_keys.push(key);
        true
    }

    /// The JWT keys alone as a JWK Set: what `FetchJWTBundles` sends per trust domain.
    pub fn jwt_jwks_json(&self) -> Result<String, BundleError> {
        let keys: Vec<EcJwk> = self.jwt_keys.iter().map(JwtKey::to_jwk).collect();
        serde_json::to_string(&serde_json::json!({ "keys": keys }))
            .map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Whether `der` is one of the roots.
    pub fn contains(&self, der: &[u8]) -> bool {
        self.roots.iter().any(|r| r.as_ref() == der)
    }

    fn push_unique(&mut self, der: CertificateDer<'static>) -> bool {
        if self.contains(&der) {
            return false;
        }
        if let Some(a) = anchor(&der) {
            self.anchors.push(a);
        }
        self.roots.push(der);
        true
    }

    /// The roots as concatenated PEM.
    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }

    /// The roots as webpki trust anchors, for chain verification. Roots that webpki cannot
    /// use are left out (they were checked on the way in, so none should be).
    pub fn trust_anchors(&self) -> &[rustls_pki_types::TrustAnchor<'static>] {
        &self.anchors
    }

    /// The SPIFFE bundle JSON: a JWK Set with one `x509-svid` key per root, then one
    /// `jwt-svid` key per JWT signing key.
    pub fn to_jwks_json(&self) -> Result<String, BundleError> {
        let mut keys = self
            .roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                jwk_for(index, der).and_then(|jwk| {
                    serde_json::to_value(jwk).map_err(|e| BundleError::Json(e.to_string()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for key in &self.jwt_keys {
            keys.push(
                serde_json::to_value(key.to_jwk()).map_err(|e| BundleError::Json(e.to_string()))?,
            );
        }
        let set = JwkSet {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint.map(|d| d.as_secs()),
        };
        serde_json::to_string_pretty(&set).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Reads SPIFFE bundle JSON: `x509-svid` keys become roots (each must hold exactly one
    /// certificate whose public key matches the JWK), `jwt-svid` keys JWT signing keys (EC
    /// P-256 with a `kid`); keys of any other use are skipped.
    pub fn from_jwks_json(trust_domain: TrustDomain, json: &str) -> Result<Self, BundleError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence = set.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint = set.spiffe_refresh_hint.map(Duration::from_secs);
        for (index, value) in set.keys.into_iter().enumerate() {
            let bad = |reason: String| BundleError::BadJwk { index, reason };
            let use_ = value.get("use").and_then(|u| u.as_str()).unwrap_or("");
            if use_ == JWT_SVID_USE {
                let jwk: EcJwk = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
                let key = JwtKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))?;
                bundle.add_jwt_key(key);
                continue;
            }
            if use_ != X509_SVID_USE {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            let bad = |reason: String| BundleError::BadJwk { index, reason };
            let [cert] = jwk.x5c.as_slice() else {
                return Err(bad(format!(
                    "x5c must hold exactly one certificate, found {}",
                    jwk.x5c.len()
                )));
            };
            let der = STANDARD
                .decode(cert)
                .map_err(|e| bad(format!("x5c is not base64: {e}")))?;
            let der = CertificateDer::from(der);
            check_root(index, &der)?;
            let expected = jwk_for(index, &der)?;
            if expected.key_fields() != jwk.key_fields() {
                return Err(bad(
                    "the key parameters do not match the certificate in x5c".into(),
                ));
            }
            bundle.push_unique(der);
        }
        Ok(bundle)
    }
}

fn anchor(der: &CertificateDer<'_>) -> Option<rustls_pki_types::TrustAnchor<'static>> {
    webpki::anchor_from_trusted_cert(der)
        .ok()
        .map(|a| a.to_owned())
}

fn check_root(index: usize, der: &[u8]) -> Result<(), BundleError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| BundleError::Malformed {
        index,
        reason: e.to_string(),
    })?;
    if !cert.is_ca() {
        return Err(BundleError::NotACa {
            index,
            subject: cert.subject().to_string(),
        });
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(rename = "use", default)]
    use_: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    e: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

impl Jwk {
    fn key_fields(&self) -> [&Option<String>; 5] {
        [&self.crv, &self.x, &self.y, &self.n, &self.e]
    }
}

/// The JWK for a root: its public key parameters plus the certificate in `x5c`.
fn jwk_for(index: usize, der: &[u8]) -> Result<Jwk, BundleError> {
    let bad = |reason: String| BundleError::BadJwk { index, reason };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| BundleError::Malformed {
        index,
        reason: e.to_string(),
    })?;
    let spki = cert.public_key();
    let mut jwk = Jwk {
        kty: String::new(),
        use_: X509_SVID_USE.to_owned(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        x5c: vec![STANDARD.encode(der)],
    };
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| bad("EC key without a named curve".into()))?;
            let (crv, len) = if curve == oid_registry::OID_EC_P256 {
                ("P-256", 32)
            } else if curve == oid_registry::OID_NIST_EC_P384 {
                ("P-384", 48)
            } else {
                return Err(bad(format!("unsupported EC curve {curve}")));
            };
            let data = point.data();
            if data.len() != 1 + 2 * len || data[0] != 0x04 {
                return Err(bad("EC point is not uncompressed".into()));
            }
            jwk.kty = "EC".into();
            jwk.crv = Some(crv.into());
            jwk.x = Some(URL_SAFE_NO_PAD.encode(&data[1..1 + len]));
            jwk.y = Some(URL_SAFE_NO_PAD.encode(&data[1 + len..]));
        }
        Ok(PublicKey::RSA(rsa)) => {
            let strip = |b: &[u8]| {
                let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                URL_SAFE_NO_PAD.encode(&b[start..])
            };
            jwk.kty = "RSA".into();
            jwk.n = Some(strip(rsa.modulus));
            jwk.e = Some(strip(rsa.exponent));
        }
        _ => return Err(bad("unsupported public key type".into())),
    }
    Ok(jwk)
}
