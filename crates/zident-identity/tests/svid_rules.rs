//! The X509-SVID rules, each broken on purpose, checked against `verify_svid`; plus a
//! certificate issued to our own profile read by the `spiffe` crate, a parser nobody here wrote.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use zident_identity::{
    CertificateDer, SpiffeId, SvidError, TrustBundle, TrustDomain, WorkloadKey, profile,
    verify_csr_pem, verify_svid,
};

struct Ca {
    key: KeyPair,
    der: CertificateDer<'static>,
    not_after: SystemTime,
}

impl Ca {
    fn new(td: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let params = profile::root_params(
            &TrustDomain::new(td).unwrap(),
            SystemTime::now(),
            Duration::from_secs(3600 * 24),
        );
        let cert = params.self_signed(&key).unwrap();
        Self {
            key,
            der: cert.der().clone(),
            not_after: SystemTime::now() + Duration::from_secs(3600 * 24),
        }
    }

    fn issuer(&self) -> Issuer<'static, &KeyPair> {
        Issuer::from_ca_cert_der(&self.der, &self.key).unwrap()
    }

    fn bundle(&self, td: &str) -> TrustBundle {
        let mut b = TrustBundle::new(TrustDomain::new(td).unwrap());
        b.add_root(self.der.clone()).unwrap();
        b
    }

    /// A leaf from our own profile for `id`.
    fn leaf(&self, id: &str) -> CertificateDer<'static> {
        let id = SpiffeId::new(id).unwrap();
        let params = profile::leaf_params(
            &id,
            SystemTime::now(),
            Duration::from_secs(600),
            self.not_after,
        )
        .unwrap();
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> CertificateDer<'static> {
        let subject = KeyPair::generate().unwrap();
        params
            .signed_by(&subject, &self.issuer())
            .unwrap()
            .der()
            .clone()
    }
}

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

fn td() -> &'static str {
    "cluster.local"
}

/// A hand-built leaf starting from a sane baseline the test then breaks.
fn base_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cluster.local");
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    p.not_after = OffsetDateTime::now_utc() + time::Duration::minutes(10);
    p
}

#[test]
fn a_leaf_of_our_profile_verifies() {
    let ca = Ca::new(td());
    let leaf = ca.leaf(ID);
    let info = verify_svid(
        std::slice::from_ref(&leaf),
        &ca.bundle(td()),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(info.id.as_str(), ID);
    assert!(
        info.serial_hex.len() >= 30,
        "128-bit serial: {}",
        info.serial_hex
    );
    // The chain may also carry the root, as Istio responses do.
    verify_svid(&[leaf, ca.der.clone()], &ca.bundle(td()), SystemTime::now()).unwrap();
}

#[test]
fn the_baseline_used_for_breaking_is_itself_valid() {
    let ca = Ca::new(td());
    let leaf = ca.sign(base_params());
    verify_svid(&[leaf], &ca.bundle(td()), SystemTime::now()).unwrap();
}

#[test]
fn each_broken_rule_has_its_own_error() {
    let ca = Ca::new(td());
    let bundle = ca.bundle(td());
    let now = SystemTime::now();
    let check = |params: CertificateParams| verify_svid(&[ca.sign(params)], &bundle, now);

    let mut p = base_params();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(check(p), Err(SvidError::NotALeaf));

    let mut p = base_params();
    p.subject_alt_names = vec![SanType::DnsName("web".try_into().unwrap())];
    assert_eq!(check(p), Err(SvidError::NoUriSan));

    let mut p = base_params();
    p.subject_alt_names
        .push(SanType::URI("spiffe://cluster.local/x".try_into().unwrap()));
    assert_eq!(check(p), Err(SvidError::SeveralUriSans(2)));

    let mut p = base_params();
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/a//b".try_into().unwrap(),
    )];
    assert!(matches!(check(p), Err(SvidError::BadSpiffeId { .. })));

    let mut p = base_params();
    p.key_usages = vec![];
    assert_eq!(check(p), Err(SvidError::KeyUsageMissing));

    let mut p = base_params();
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(check(p), Err(SvidError::NoDigitalSignature));

    let mut p = base_params();
    p.key_usages.push(KeyUsagePurpose::CrlSign);
    assert_eq!(check(p), Err(SvidError::ForbiddenKeyUsage("cRLSign")));

    let mut p = base_params();
    p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    assert_eq!(check(p), Err(SvidError::ForbiddenKeyUsage("keyCertSign")));

    let mut p = base_params();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(
        check(p),
        Err(SvidError::ExtKeyUsageIncomplete("clientAuth"))
    );

    let mut p = base_params();
    p.distinguished_name = DistinguishedName::new();
    // rcgen marks the SAN critical for an empty subject; put it in a non-critical extension.
    let mut ext = zident_identity::uri_san_extension(&SpiffeId::new(ID).unwrap());
    ext.set_criticality(false);
    p.subject_alt_names = vec![];
    p.custom_extensions = vec![ext];
    assert_eq!(check(p), Err(SvidError::SanNotCritical));

    let mut p = base_params();
    p.not_before = OffsetDateTime::now_utc() - time::Duration::hours(2);
    p.not_after = OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert!(matches!(check(p), Err(SvidError::Expired { .. })));

    let mut p = base_params();
    p.not_before = OffsetDateTime::now_utc() + time::Duration::hours(1);
    p.not_after = OffsetDateTime::now_utc() + time::Duration::hours(2);
    assert!(matches!(check(p), Err(SvidError::NotYetValid { .. })));
}

#[test]
fn chain_level_failures() {
    let ca = Ca::new(td());
    // Same subject name (O=cluster.local), different key: a root rotation's new root.
    let other = Ca::new(td());
    let stranger = Ca::new("stranger.org");
    let now = SystemTime::now();

    // Signed by a root the bundle does not hold.
    let leaf = stranger.sign(base_params());
    assert_eq!(
        verify_svid(&[leaf], &ca.bundle(td()), now),
        Err(SvidError::UnknownIssuer)
    );
    // Signed by a root of the same name but another key.
    assert_eq!(
        verify_svid(&[other.leaf(ID)], &ca.bundle(td()), now),
        Err(SvidError::BadSignature)
    );

    // Right issuer, wrong trust domain.
    let leaf = ca.leaf("spiffe://other.domain/ns/a/sa/b");
    assert!(matches!(
        verify_svid(&[leaf], &ca.bundle(td()), now),
        Err(SvidError::WrongTrustDomain { .. })
    ));

    // Malformed DER anywhere in the chain.
    let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert!(matches!(
        verify_svid(std::slice::from_ref(&junk), &ca.bundle(td()), now),
        Err(SvidError::Malformed { index: 0, .. })
    ));
    assert!(matches!(
        verify_svid(&[ca.leaf(ID), junk], &ca.bundle(td()), now),
        Err(SvidError::Malformed { index: 1, .. })
    ));
    assert_eq!(
        verify_svid(&[], &ca.bundle(td()), now),
        Err(SvidError::EmptyChain)
    );

    // A bundle with both roots accepts both leaves: what a root rotation relies on.
    let mut both = ca.bundle(td());
    both.add_root(other.der.clone()).unwrap();
    verify_svid(&[ca.leaf(ID)], &both, now).unwrap();
    verify_svid(&[other.leaf(ID)], &both, now).unwrap();
    // Retiring a root: its leaves stop verifying at once, the other root's keep verifying.
    assert!(both.remove_root(other.der.as_ref()));
    assert!(verify_svid(&[other.leaf(ID)], &both, now).is_err());
    verify_svid(&[ca.leaf(ID)], &both, now).unwrap();
    assert_eq!(both.trust_anchors().len(), 1);
}

#[test]
fn the_spiffe_crate_accepts_our_svid() {
    let ca = Ca::new(td());
    let key = WorkloadKey::generate().unwrap();
    let id = SpiffeId::new(ID).unwrap();
    let csr = verify_csr_pem(&key.csr_pem(&id).unwrap()).unwrap();
    let params = profile::leaf_params(
        &csr.id,
        SystemTime::now(),
        Duration::from_secs(600),
        ca.not_after,
    )
    .unwrap();
    let leaf = params.signed_by(&csr.public_key, &ca.issuer()).unwrap();
    let chain: Vec<u8> = [leaf.der().as_ref(), ca.der.as_ref()].concat();
    let svid = spiffe::X509Svid::parse_from_der(&chain, &key.pkcs8_der()).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert_eq!(svid.cert_chain().len(), 2);
    let bundle = spiffe::X509Bundle::parse_from_der(
        spiffe::TrustDomain::new(td()).unwrap(),
        ca.der.as_ref(),
    )
    .unwrap();
    assert_eq!(bundle.authorities().len(), 1);
}

#[test]
fn bundle_round_trips_through_pem_and_jwks() {
    let a = Ca::new(td());
    let b = Ca::new(td());
    let mut bundle = a.bundle(td());
    assert!(bundle.add_root(b.der.clone()).unwrap());
    assert!(
        !bundle.add_root(b.der.clone()).unwrap(),
        "duplicates are not added"
    );
    bundle.set_sequence(7);
    bundle.set_refresh_hint(Some(Duration::from_secs(300)));

    let pem = bundle.to_pem();
    let from_pem = TrustBundle::from_pem(TrustDomain::new(td()).unwrap(), pem.as_bytes()).unwrap();
    assert_eq!(from_pem.roots(), bundle.roots());

    let json = bundle.to_jwks_json().unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["spiffe_sequence"], 7);
    assert_eq!(v["spiffe_refresh_hint"], 300);
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    assert_eq!(v["keys"][0]["use"], "x509-svid");
    assert_eq!(v["keys"][0]["kty"], "EC");
    assert_eq!(v["keys"][0]["crv"], "P-256");
    let back = TrustBundle::from_jwks_json(TrustDomain::new(td()).unwrap(), &json).unwrap();
    assert_eq!(back, bundle);

    // A JWK whose key does not match its certificate is refused.
    let mut tampered = v.clone();
    tampered["keys"][0]["x"] = tampered["keys"][1]["x"].clone();
    let err = TrustBundle::from_jwks_json(TrustDomain::new(td()).unwrap(), &tampered.to_string())
        .unwrap_err();
    assert!(err.to_string().contains("do not match"), "{err}");

    // A leaf is not a root.
    let leaf_pem = zident_identity::pem::certs_to_pem([&a.leaf(ID)]);
    assert!(matches!(
        TrustBundle::from_pem(TrustDomain::new(td()).unwrap(), leaf_pem.as_bytes()),
        Err(zident_identity::BundleError::NotACa { .. })
    ));
}

/// With two roots of one trust domain in the bundle (a rotation's overlap), `chain_root` names
/// the one a leaf really chains to, and the fingerprint that names it matches openssl's.
#[test]
fn the_root_a_leaf_chains_to_is_named_by_its_fingerprint() {
    let old = Ca::new(td());
    let new = Ca::new(td());
    let mut bundle = old.bundle(td());
    bundle.add_root(new.der.clone()).unwrap();
    let now = SystemTime::now();
    let under_old = old.leaf(ID);
    let under_new = new.leaf(ID);
    assert_eq!(
        zident_identity::chain_root(&under_old, &[], &bundle, now).unwrap(),
        &old.der
    );
    assert_eq!(
        zident_identity::chain_root(&under_new, &[], &bundle, now).unwrap(),
        &new.der
    );
    assert!(matches!(
        zident_identity::chain_root(&under_new, &[], &old.bundle(td()), now),
        Err(SvidError::UnknownIssuer | SvidError::BadSignature)
    ));

    let mut openssl = std::process::Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-fingerprint",
            "-sha256",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl on PATH");
    std::io::Write::write_all(&mut openssl.stdin.take().unwrap(), &new.der).unwrap();
    let out = openssl.wait_with_output().unwrap();
    assert!(out.status.success());
    // e.g. "sha256 Fingerprint=AB:CD:..."
    let theirs: String = String::from_utf8_lossy(&out.stdout)
        .split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(zident_identity::fingerprint(&new.der), theirs);
}
