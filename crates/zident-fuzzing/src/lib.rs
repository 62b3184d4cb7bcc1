//! One function per fuzz target, each taking the bytes libFuzzer makes (or a corpus file) and
//! feeding them to a parser of outside input the way zident meets it. A target passes when
//! the parser returns, an answer or an error, for any bytes: a panic, a hang or a crash is a
//! finding. The fuzz binaries in `fuzz/` call these; `tests/corpus.rs` replays every file of
//! `fuzz/corpus/<target>/` (the seeds from the tests' fixtures and each crash kept as a
//! regression) through them in `cargo test`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use zident_identity::{SpiffeId, TrustBundle, TrustDomain};

/// A target: bytes in, and it returns whatever the parser made of them.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: [(&str, Target); 11] = [
    ("spiffe_id", spiffe_id),
    ("csr", csr),
    ("pem_bundle", pem_bundle),
    ("mesh_file", mesh_file),
    ("xds_resources", xds_resources),
    ("hbone_headers", hbone_headers),
    ("socks5", socks5),
    ("jwt_svid", jwt_svid),
    ("kube_pod", kube_pod),
    ("mesh_config", mesh_config),
    ("crl", crl),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn td() -> TrustDomain {
    zident_mesh::default_trust_domain()
}

/// A SPIFFE ID and a trust domain, as a CSR's SAN, a mesh file or an xDS resource gives them.
pub fn spiffe_id(data: &[u8]) {
    let s = text(data);
    if let Ok(id) = SpiffeId::new(&s) {
        let _ = id.to_string();
    }
    let _ = TrustDomain::new(&s);
}

/// A CSR as `CreateCertificate` receives it, DER and PEM.
pub fn csr(data: &[u8]) {
    let _ = zident_identity::verify_csr_der(data);
    let _ = zident_identity::verify_csr_pem(&text(data));
}

/// PEM certificates (a root file, a plugged-in chain) and a SPIFFE bundle (JWKS JSON) as the
/// agent fetches it.
pub fn pem_bundle(data: &[u8]) {
    let _ = zident_identity::pem::certs_from_pem(data);
    let _ = zident_identity::pem::certs_from_pem_or_der(data);
    let _ = TrustBundle::from_jwks_json(td(), &text(data));
}

/// A mesh file, read and checked whole as `zident ca` and the agent read it.
pub fn mesh_file(data: &[u8]) {
    let _ = zident_mesh::MeshFile::parse(Path::new("fuzz.yaml"), &text(data));
}

/// xDS resources as a control plane sends them: the bytes split into resources of each type
/// (the first byte picks the type, then a length-prefixed name and value), decoded into a mesh
/// as the agent does before its checks.
pub fn xds_resources(data: &[u8]) {
    let mut snapshot = zident_xds::Snapshot::default();
    let mut rest = data;
    while rest.len() >= 3 {
        let type_url = zident_xds::TYPES[rest[0] as usize % zident_xds::TYPES.len()];
        let name_len = (rest[1] as usize).min(rest.len() - 2);
        let name = String::from_utf8_lossy(&rest[2..2 + name_len]).into_owned();
        rest = &rest[2 + name_len..];
        let value_len = rest
            .first()
            .map(|n| (*n as usize) * 4)
            .unwrap_or(0)
            .min(rest.len().saturating_sub(1));
        let value = rest.get(1..1 + value_len).unwrap_or_default().to_vec();
        rest = rest.get(1 + value_len..).unwrap_or_default();
        snapshot.apply(type_url, vec![zident_xds::Resource::new(name, value)], &[]);
    }
    if let Ok(mesh) = snapshot.to_mesh(&td()) {
        let _ = mesh.received(&zident_mesh::MeshOrigin::ControlPlane("fuzz".into()));
    }
}

/// The headers of an HBONE CONNECT a peer sends (`baggage`, `traceparent`).
pub fn hbone_headers(data: &[u8]) {
    zident_tunnel::fuzzing::headers(&text(data));
}

/// A SOCKS5 greeting and request, as a local client sends them.
pub fn socks5(data: &[u8]) {
    zident_tunnel::fuzzing::socks5(data);
}

/// A JWT-SVID presented for validation, against a fixed key set.
pub fn jwt_svid(data: &[u8]) {
    let keys = [];
    let _ = zident_identity::jwt::validate(
        &text(data),
        &keys,
        &td(),
        "fuzz",
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
}

/// A Pod as the API server sends it, translated into the mesh as the CA does.
pub fn kube_pod(data: &[u8]) {
    let Ok(pod) = serde_json::from_slice::<k8s_openapi::api::core::v1::Pod>(data) else {
        return;
    };
    let namespace = serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(
        serde_json::json!({"metadata": {"name": pod.metadata.namespace.clone().unwrap_or_default(),
            "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    let objects = zident_kube::Objects {
        namespaces: namespace.map(|n| vec![Arc::new(n)]).unwrap_or_default(),
        pods: vec![Arc::new(pod)],
        ..Default::default()
    };
    let _ = zident_kube::translate(&objects, &td(), &Default::default());
}

/// istiod's meshConfig (the `mesh` key of the ConfigMap `istio`).
pub fn mesh_config(data: &[u8]) {
    let _ = zident_kube::mesh_config::parse(&text(data));
}

/// A CRL as the agent fetches it from the CA's `/crl` (PEM) and the DER inside, checked
/// against a root that signed none of them, and a certificate looked up in an empty list.
pub fn crl(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = zident_identity::RevocationList::from_pem(&text(data), &[], now, None);
    let _ = zident_identity::RevocationList::from_der(&[data.to_vec()], &[], now, None);
    let _ = zident_identity::RevocationList::default().is_revoked(data);
}
