//! What the certificates zident issues contain, in one place, so the CA, tests
//! and tools all agree on it.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::keys::uri_san_extension;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// How far notBefore is moved into the past to absorb clock skew between nodes.
pub const MAX_BACKDATE: Duration = Duration::from_secs(120);

/// The lifetime of a workload certificate when nobody asks for another (Istio's 24 hours):
/// the CA's default and the agent's request.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime the CA issues by default (90 days).
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// Why a certificate profile could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The signer expires before (or at) the moment of issuance.
    #[error("the signing certificate has expired; no certificate can be issued under it")]
    SignerExpired,
    /// A DNS name for the serving certificate is not valid.
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
    /// The TTL is zero.
    #[error("a certificate lifetime must be more than zero")]
    ZeroTtl,
}

/// The backdate for a lifetime: two minutes, but never more than a tenth of the lifetime, so a
/// certificate of a few seconds is not mostly spent before it arrives.
pub fn backdate_for(ttl: Duration) -> Duration {
    MAX_BACKDATE.min(ttl / 10)
}

/// The validity window `(notBefore, notAfter)` of a leaf issued at `now`: notBefore backdated,
/// notAfter `now + ttl` but never past the signer's notAfter (a leaf never outlives its
/// signer). Times are truncated to whole seconds, as X.509 stores them.
pub fn leaf_validity(
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> Result<(SystemTime, SystemTime), ProfileError> {
    if ttl.is_zero() {
        return Err(ProfileError::ZeroTtl);
    }
    let not_before = truncate(now - backdate_for(ttl));
    let not_after = truncate((now + ttl).min(signer_not_after));
    if not_after <= truncate(now) {
        return Err(ProfileError::SignerExpired);
    }
    Ok((not_before, not_after))
}

/// The parameters of a workload SVID: subject `O=<trust domain>`, one critical URI SAN, key
/// usage digitalSignature + keyEncipherment (critical), EKU serverAuth + clientAuth, CA=false,
/// a random 128-bit serial, and the window from [`leaf_validity`].
pub fn leaf_params(
    id: &SpiffeId,
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> Result<CertificateParams, ProfileError> {
    let mut p = end_entity(id.trust_domain_str(), now, ttl, signer_not_after)?;
    p.custom_extensions = vec![uri_san_extension(id)];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(p)
}

/// What every end-entity certificate the CA issues has: `O=<trust domain>`, CA=false, the
/// authority key identifier, a random 128-bit serial, and the window from [`leaf_validity`].
fn end_entity(
    trust_domain: &str,
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> Result<CertificateParams, ProfileError> {
    let (not_before, not_after) = leaf_validity(now, ttl, signer_not_after)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = org_name(trust_domain);
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(random_serial());
    p.not_before = OffsetDateTime::from(not_before);
    p.not_after = OffsetDateTime::from(not_after);
    Ok(p)
}

/// The parameters of a self-signed root: `O=<trust domain>`, CA=true, keyCertSign + cRLSign
/// (critical), valid from `now` for `lifetime`, backdated as a leaf of that lifetime would be
/// ([`backdate_for`]), so a short-lived root is not mostly spent when it is made.
pub fn root_params(
    trust_domain: &TrustDomain,
    now: SystemTime,
    lifetime: Duration,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = org_name(trust_domain.as_str());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(random_serial());
    p.not_before = OffsetDateTime::from(truncate(now - backdate_for(lifetime)));
    p.not_after = OffsetDateTime::from(truncate(now + lifetime));
    p
}

/// The parameters of generation `generation` of a CA's self-signed root: [`root_params`] with
/// a common name naming the trust domain and the generation. Each generation then has its own
/// subject, so a peer that lacks a new root reports an unknown issuer (it has no root of that
/// name), not a bad signature from a same-named root.
pub fn generation_root_params(
    trust_domain: &TrustDomain,
    generation: u32,
    now: SystemTime,
    lifetime: Duration,
) -> CertificateParams {
    let mut p = root_params(trust_domain, now, lifetime);
    p.distinguished_name.push(
        DnType::CommonName,
        format!("zident root {trust_domain} generation {generation}"),
    );
    p
}

/// The parameters of the CA's own TLS serving certificate: DNS SANs, serverAuth only.
pub fn serving_params(
    trust_domain: &TrustDomain,
    dns_names: &[String],
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> Result<CertificateParams, ProfileError> {
    let mut p = end_entity(trust_domain.as_str(), now, ttl, signer_not_after)?;
    p.subject_alt_names = dns_names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => dns_san(n),
        })
        .collect::<Result<_, _>>()?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(p)
}

/// The parameters of a certificate with DNS names (the mesh file's `certificates:`, Istio's
/// `meshConfig.certificates`): those DNS SANs and no URI SAN (it names no workload), serverAuth
/// and clientAuth, as a webhook server or its client needs.
pub fn dns_params(
    trust_domain: &TrustDomain,
    dns_names: &[String],
    now: SystemTime,
    ttl: Duration,
    signer_not_after: SystemTime,
) -> Result<CertificateParams, ProfileError> {
    let mut p = end_entity(trust_domain.as_str(), now, ttl, signer_not_after)?;
    p.subject_alt_names = dns_names
        .iter()
        .map(|n| dns_san(n))
        .collect::<Result<_, _>>()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(p)
}

fn dns_san(name: &str) -> Result<SanType, ProfileError> {
    name.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| ProfileError::BadDnsName(name.to_owned()))
}

fn org_name(trust_domain: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn
}

/// 128 random bits from the system's CSPRNG; rcgen encodes them as a positive INTEGER.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG only fails if the OS entropy source is gone; a zero serial would then be
    // rejected by every verifier rather than silently reused, but make it unique anyway.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_be_bytes();
    }
    SerialNumber::from_slice(&bytes)
}

/// Drops sub-second precision: X.509 times are whole seconds.
pub fn truncate(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backdate_is_two_minutes_or_a_tenth() {
        assert_eq!(backdate_for(Duration::from_secs(86400)), MAX_BACKDATE);
        assert_eq!(
            backdate_for(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(backdate_for(Duration::from_secs(1200)), MAX_BACKDATE);
    }

    #[test]
    fn leaf_never_outlives_signer() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let signer_end = now + Duration::from_secs(60);
        let (nb, na) = leaf_validity(now, Duration::from_secs(3600), signer_end).unwrap();
        assert_eq!(na, signer_end);
        assert_eq!(nb, now - MAX_BACKDATE);
        let (_, na) = leaf_validity(now, Duration::from_secs(30), signer_end).unwrap();
        assert_eq!(na, now + Duration::from_secs(30));
        assert_eq!(
            leaf_validity(now, Duration::from_secs(30), now),
            Err(ProfileError::SignerExpired)
        );
        assert_eq!(
            leaf_validity(now, Duration::ZERO, signer_end),
            Err(ProfileError::ZeroTtl)
        );
    }

    #[test]
    fn serials_differ() {
        assert_ne!(random_serial(), random_serial());
    }
}
