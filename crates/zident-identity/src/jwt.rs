//! JWT-SVIDs (SPIFFE JWT-SVID standard): compact JWS tokens signed `ES256` (ECDSA P-256,
//! SHA-256), whose `sub` is a SPIFFE ID and whose `aud` names who may accept them.
//!
//! X.509-SVIDs prove identity inside a TLS handshake; a JWT-SVID proves it where TLS ends
//! before the receiver (an HTTP proxy in between, a cloud provider's OIDC federation). The
//! signing keys are not the X.509 roots: they are published in the same SPIFFE bundle with
//! `"use": "jwt-svid"`, and rotate on the same schedule.
//!
//! Each key's `kid` is its RFC 7638 thumbprint, so the name follows from the key and needs no
//! storage of its own, and two CAs holding the same key agree on it.

use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::format::unix_seconds;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The only signature algorithm zident signs and accepts.
pub const ALG: &str = "ES256";

/// The `use` of a JWT signing key in a SPIFFE bundle.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// At most this many audiences in one token: enough for any real caller, and a bound on what
/// a request can make the CA sign.
pub const MAX_AUDIENCES: usize = 16;

/// At most this many bytes per audience.
pub const MAX_AUDIENCE_BYTES: usize = 512;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What went wrong with a key, a token or a request for one. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// A private key is not a PKCS#8 P-256 key.
    #[error("not a usable JWT signing key (PKCS#8 EC P-256 PEM): {0}")]
    BadKey(String),
    /// A JWK does not describe a P-256 public key.
    #[error("not a P-256 JWT key: {0}")]
    BadJwk(String),
    /// The audience list is empty or too large.
    #[error("{0}")]
    BadAudience(String),
    /// The token is not a compact JWS of three base64url parts with JSON inside.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token uses another algorithm than ES256 (or none).
    #[error("unsupported algorithm {0:?}: JWT-SVIDs here are signed ES256")]
    Algorithm(String),
    /// No key of the bundle has the token's `kid`.
    #[error("no JWT key with kid {kid:?} in the bundle of {trust_domain}")]
    UnknownKey {
        /// The token's key id.
        kid: String,
        /// Whose bundle was searched.
        trust_domain: String,
    },
    /// The signature does not verify with the key the `kid` names.
    #[error("the signature does not verify with key {0}")]
    Signature(String),
    /// `sub` is missing or not a SPIFFE ID of the bundle's trust domain.
    #[error("subject: {0}")]
    Subject(String),
    /// The token has expired, or is not valid yet.
    #[error("{0}")]
    Time(String),
    /// The audience asked for is not among the token's.
    #[error("audience {wanted:?} is not among the token's {found:?}")]
    Audience {
        /// What the validator expected.
        wanted: String,
        /// What the token holds.
        found: Vec<String>,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A JWT signing key's public half, as published in the bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtKey {
    kid: String,
    /// The uncompressed SEC1 point: 0x04, x, y.
    point: Vec<u8>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).finish()
    }
}

/// The JWK of a JWT signing key (only the fields zident writes and reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EcJwk {
    pub kty: String,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none", default)]
    pub use_: Option<String>,
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub crv: String,
    #[serde(default)]
    pub x: String,
    #[serde(default)]
    pub y: String,
}

impl JwtKey {
    /// A key from its uncompressed P-256 point, named by its thumbprint.
    pub fn from_point(point: &[u8]) -> Result<Self, JwtError> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err(JwtError::BadJwk(
                "the public key is not an uncompressed P-256 point".into(),
            ));
        }
        let mut key = Self {
            kid: String::new(),
            point: point.to_vec(),
        };
        key.kid = key.thumbprint();
        Ok(key)
    }

    /// The key id: the RFC 7638 thumbprint (SHA-256, base64url) of the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn x(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.point[1..33])
    }

    fn y(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.point[33..])
    }

    fn thumbprint(&self) -> String {
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.x(),
            self.y()
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// The JWK as it appears in a SPIFFE bundle (`"use": "jwt-svid"`).
    pub(crate) fn to_jwk(&self) -> EcJwk {
        EcJwk {
            kty: "EC".into(),
            use_: Some(JWT_SVID_USE.into()),
            kid: self.kid.clone(),
            crv: "P-256".into(),
            x: self.x(),
            y: self.y(),
        }
    }

    /// Reads a JWK; `kid` is kept as given (another issuer may name keys its own way).
    pub(crate) fn from_jwk(jwk: &EcJwk) -> Result<Self, JwtError> {
        if jwk.kty != "EC" || jwk.crv != "P-256" {
            return Err(JwtError::BadJwk(format!(
                "kty {:?} crv {:?}: only EC P-256 keys sign JWT-SVIDs here",
                jwk.kty, jwk.crv
            )));
        }
        if jwk.kid.is_empty() {
            return Err(JwtError::BadJwk("a JWT key must have a kid".into()));
        }
        let coord = |name: &str, v: &str| {
            URL_SAFE_NO_PAD
                .decode(v)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| JwtError::BadJwk(format!("{name} is not 32 base64url bytes")))
        };
        let mut point = vec![0x04];
        point.extend(coord("x", &jwk.x)?);
        point.extend(coord("y", &jwk.y)?);
        Ok(Self {
            kid: jwk.kid.clone(),
            point,
        })
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point)
            .verify(message, signature)
            .is_ok()
    }
}

/// A private JWT signing key.
pub struct JwtSigner {
    key: EcdsaKeyPair,
    public: JwtKey,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// A new P-256 key, as PKCS#8 PEM (to be stored before it is used).
    pub fn generate_pem() -> Result<Zeroizing<String>, JwtError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|e| JwtError::BadKey(e.to_string()))?;
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(doc.as_ref()));
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(Zeroizing::new(pem))
    }

    /// The key in PKCS#8 PEM.
    pub fn from_pem(pem: &[u8]) -> Result<Self, JwtError> {
        // Wiped once aws-lc has read it (`PrivateKeyDer` does not wipe what it owns).
        let der = zeroize::Zeroizing::new(
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| JwtError::BadKey(e.to_string()))?,
        );
        let PrivateKeyDer::Pkcs8(pkcs8) = &*der else {
            return Err(JwtError::BadKey("the key is not PKCS#8".into()));
        };
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.secret_pkcs8_der())
                .map_err(|e| JwtError::BadKey(e.to_string()))?;
        let public = JwtKey::from_point(key.public_key().as_ref())?;
        Ok(Self { key, public })
    }

    /// The public half, for the bundle.
    pub fn public(&self) -> &JwtKey {
        &self.public
    }

    /// Signs a JWT-SVID for `id`, accepted by `audience`, issued at `now`, valid for `ttl`.
    pub fn sign(
        &self,
        id: &SpiffeId,
        audience: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<SignedJwt, JwtError> {
        check_audience(audience)?;
        let iat = unix_seconds(now);
        let exp = iat + ttl.as_secs().max(1);
        let header = serde_json::json!({ "alg": ALG, "kid": self.public.kid, "typ": "JWT" });
        let claims =
            serde_json::json!({ "sub": id.as_str(), "aud": audience, "exp": exp, "iat": iat });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| JwtError::Sign(e.to_string()))?;
        Ok(SignedJwt {
            token: format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(signature.as_ref())
            ),
            kid: self.public.kid.clone(),
            id: id.clone(),
            audience: audience.to_vec(),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(iat),
            expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

/// An audience list a token may be signed for: at least one, none empty, within bounds.
pub fn check_audience(audience: &[String]) -> Result<(), JwtError> {
    if audience.is_empty() {
        return Err(JwtError::BadAudience(
            "a JWT-SVID needs at least one audience".into(),
        ));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(JwtError::BadAudience(format!(
            "{} audiences; at most {MAX_AUDIENCES}",
            audience.len()
        )));
    }
    if let Some(bad) = audience
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_AUDIENCE_BYTES)
    {
        return Err(JwtError::BadAudience(format!(
            "audience {bad:?} must be 1 to {MAX_AUDIENCE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A signed token and what it says, for caches and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedJwt {
    /// The compact JWS.
    pub token: String,
    /// The key it names as its signer.
    pub kid: String,
    /// `sub`.
    pub id: SpiffeId,
    /// `aud`.
    pub audience: Vec<String>,
    /// `iat`.
    pub issued_at: SystemTime,
    /// `exp`.
    pub expiry: SystemTime,
}

impl SignedJwt {
    /// Reads what a token says without checking its signature: for a client that received it
    /// from its own CA over an authenticated channel, to learn when to refresh it.
    pub fn read_unverified(token: &str) -> Result<Self, JwtError> {
        let parts = Parts::split(token)?;
        let kid = parts
            .json(0, "header")?
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let claims = parts.claims()?;
        let id = subject(&claims)?;
        let audience = audiences(&claims)?;
        let exp =
            number(&claims, "exp")?.ok_or_else(|| JwtError::Malformed("no exp claim".into()))?;
        let iat = number(&claims, "iat")?.unwrap_or(exp);
        Ok(Self {
            token: token.to_owned(),
            kid,
            id,
            audience,
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(iat),
            expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

/// A token that passed [`validate`]: who it names and every claim it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// `sub`.
    pub id: SpiffeId,
    /// `exp`.
    pub expiry: SystemTime,
    /// Every claim, as the token holds them.
    pub claims: Map<String, Value>,
}

/// Validates a JWT-SVID as the SPIFFE standard asks: ES256 signature by a key of `keys` named
/// by the token's `kid`; `sub` a SPIFFE ID of `trust_domain`; `now < exp` (and `nbf <= now`
/// when present); `audience` among the token's `aud`.
pub fn validate(
    token: &str,
    keys: &[JwtKey],
    trust_domain: &TrustDomain,
    audience: &str,
    now: SystemTime,
) -> Result<ValidatedJwt, JwtError> {
    let parts = Parts::split(token)?;
    let header: Map<String, Value> = parts.json(0, "header")?;
    match header.get("alg").and_then(Value::as_str) {
        Some(ALG) => {}
        Some(other) => return Err(JwtError::Algorithm(other.to_owned())),
        None => return Err(JwtError::Algorithm(String::new())),
    }
    if let Some(typ) = header.get("typ")
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(JwtError::Malformed(format!(
            "typ {typ} (JWT or JOSE expected)"
        )));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Malformed("the header has no kid".into()))?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| JwtError::UnknownKey {
            kid: kid.to_owned(),
            trust_domain: trust_domain.to_string(),
        })?;
    let signature = URL_SAFE_NO_PAD
        .decode(parts.pieces[2])
        .map_err(|e| JwtError::Malformed(format!("signature: {e}")))?;
    if !key.verify(parts.signing_input().as_bytes(), &signature) {
        return Err(JwtError::Signature(kid.to_owned()));
    }
    let claims = parts.claims()?;
    let id = subject(&claims)?;
    if id.trust_domain_str() != trust_domain.as_str() {
        return Err(JwtError::Subject(format!(
            "{id} is not in trust domain {trust_domain}"
        )));
    }
    let at = unix_seconds(now);
    let exp = number(&claims, "exp")?.ok_or_else(|| JwtError::Malformed("no exp claim".into()))?;
    if at >= exp {
        return Err(JwtError::Time(format!(
            "the token expired {}s ago",
            at - exp
        )));
    }
    if let Some(nbf) = number(&claims, "nbf")?
        && at < nbf
    {
        return Err(JwtError::Time(format!(
            "the token is not valid for another {}s (nbf)",
            nbf - at
        )));
    }
    let found = audiences(&claims)?;
    if !found.iter().any(|a| a == audience) {
        return Err(JwtError::Audience {
            wanted: audience.to_owned(),
            found,
        });
    }
    Ok(ValidatedJwt {
        id,
        expiry: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        claims,
    })
}

struct Parts<'a> {
    pieces: [&'a str; 3],
}

impl<'a> Parts<'a> {
    fn split(token: &'a str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed(format!(
                "{} bytes; at most {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let mut it = token.split('.');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => {
                Ok(Self { pieces: [h, p, s] })
            }
            _ => Err(JwtError::Malformed(
                "not a compact JWS (header.payload.signature)".into(),
            )),
        }
    }

    fn signing_input(&self) -> String {
        format!("{}.{}", self.pieces[0], self.pieces[1])
    }

    fn json(&self, index: usize, what: &str) -> Result<Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(self.pieces[index])
            .map_err(|e| JwtError::Malformed(format!("{what} is not base64url: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| JwtError::Malformed(format!("{what} is not a JSON object: {e}")))
    }

    fn claims(&self) -> Result<Map<String, Value>, JwtError> {
        self.json(1, "payload")
    }
}

fn subject(claims: &Map<String, Value>) -> Result<SpiffeId, JwtError> {
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Subject("no sub claim".into()))?;
    SpiffeId::new(sub).map_err(|e| JwtError::Subject(format!("{sub:?}: {e}")))
}

fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    match claims.get("aud") {
        Some(Value::String(a)) => Ok(vec![a.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| JwtError::Malformed("aud holds a non-string".into()))
            })
            .collect(),
        _ => Err(JwtError::Malformed("no aud claim".into())),
    }
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| JwtError::Malformed(format!("{name} is not a whole number of seconds"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn id() -> SpiffeId {
        SpiffeId::new("spiffe://example.org/ns/default/sa/web").unwrap()
    }

    fn signer() -> JwtSigner {
        JwtSigner::from_pem(JwtSigner::generate_pem().unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn a_signed_token_validates_and_every_defect_is_named() {
        let s = signer();
        let now = SystemTime::now();
        let aud = vec!["api".to_string(), "db".to_string()];
        let jwt = s.sign(&id(), &aud, now, Duration::from_secs(300)).unwrap();
        let keys = [s.public().clone()];
        let ok = validate(&jwt.token, &keys, &td(), "db", now).unwrap();
        assert_eq!(ok.id, id());
        assert_eq!(ok.claims["aud"], serde_json::json!(["api", "db"]));
        assert_eq!(SignedJwt::read_unverified(&jwt.token).unwrap(), jwt);

        let e = |r: Result<ValidatedJwt, JwtError>| r.unwrap_err();
        assert!(matches!(
            e(validate(&jwt.token, &keys, &td(), "other", now)),
            JwtError::Audience { .. }
        ));
        let later = now + Duration::from_secs(301);
        assert!(matches!(
            e(validate(&jwt.token, &keys, &td(), "api", later)),
            JwtError::Time(_)
        ));
        let other = signer();
        assert!(matches!(
            e(validate(
                &jwt.token,
                &[other.public().clone()],
                &td(),
                "api",
                now
            )),
            JwtError::UnknownKey { .. }
        ));
        // The right kid on another key: the signature is what decides.
        let impostor = JwtKey {
            kid: s.public().kid.clone(),
            point: other.public().point.clone(),
        };
        assert!(matches!(
            e(validate(&jwt.token, &[impostor], &td(), "api", now)),
            JwtError::Signature(_)
        ));
        let foreign = TrustDomain::new("other.org").unwrap();
        assert!(matches!(
            e(validate(&jwt.token, &keys, &foreign, "api", now)),
            JwtError::Subject(_)
        ));
        // A payload swapped under the same signature.
        let mut pieces: Vec<&str> = jwt.token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"sub": "spiffe://example.org/admin", "aud": ["api"], "exp": 4_000_000_000u64})
                .to_string(),
        );
        pieces[1] = &forged;
        assert!(matches!(
            e(validate(&pieces.join("."), &keys, &td(), "api", now)),
            JwtError::Signature(_)
        ));
        // alg none and HS256 are refused before any key is looked at.
        for alg in ["none", "HS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"x"}}"#));
            let t = format!("{h}.{}.", jwt.token.split('.').nth(1).unwrap());
            assert_eq!(
                e(validate(&t, &keys, &td(), "api", now)),
                JwtError::Algorithm(alg.into())
            );
        }
        assert!(matches!(
            e(validate("a.b", &keys, &td(), "api", now)),
            JwtError::Malformed(_)
        ));
    }

    #[test]
    fn audiences_are_bounded_and_the_kid_is_the_rfc7638_thumbprint() {
        let s = signer();
        let now = SystemTime::now();
        assert!(matches!(
            s.sign(&id(), &[], now, Duration::from_secs(1)),
            Err(JwtError::BadAudience(_))
        ));
        assert!(matches!(
            s.sign(&id(), &["".into()], now, Duration::from_secs(1)),
            Err(JwtError::BadAudience(_))
        ));
        let many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| i.to_string()).collect();
        assert!(s.sign(&id(), &many, now, Duration::from_secs(1)).is_err());

        // RFC 7638 §3.1's example key is RSA; check the construction on our own key instead:
        // the thumbprint is over the canonical members only, so `use` and `kid` do not change it.
        let jwk = s.public().to_jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk.x, jwk.y
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        assert_eq!(s.public().kid(), URL_SAFE_NO_PAD.encode(digest.as_ref()));
        assert_eq!(JwtKey::from_jwk(&jwk).unwrap(), *s.public());
    }

    #[test]
    fn jwt_keys_travel_in_the_spiffe_bundle_beside_the_roots() {
        let (a, b) = (signer(), signer());
        let mut bundle = crate::TrustBundle::new(td());
        assert!(bundle.add_jwt_key(a.public().clone()));
        assert!(!bundle.add_jwt_key(a.public().clone()), "one entry per kid");
        bundle.add_jwt_key(b.public().clone());
        let json = bundle.to_jwks_json().unwrap();
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["keys"][0]["use"], "jwt-svid");
        assert_eq!(value["keys"][0]["kid"], a.public().kid());
        let back = crate::TrustBundle::from_jwks_json(td(), &json).unwrap();
        assert_eq!(back.jwt_keys(), bundle.jwt_keys());
        let only: Value = serde_json::from_str(&bundle.jwt_jwks_json().unwrap()).unwrap();
        assert_eq!(only["keys"].as_array().unwrap().len(), 2);

        let broken = json.replace(&a.public().to_jwk().x, "AAAA");
        let e = crate::TrustBundle::from_jwks_json(td(), &broken).unwrap_err();
        assert!(e.to_string().contains("x is not 32 base64url bytes"), "{e}");
    }
}
