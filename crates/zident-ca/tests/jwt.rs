//! `zident.ca.v1.JwtSvidService/CreateJwtSvid` over the wire: judged as `CreateCertificate` is
//! (token, node authorization, lifetime), and the tokens verify with the `jwt-svid` keys of the
//! CA's `/bundle`.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tonic::{Code, Request};
use zident_identity::jwt::{SignedJwt, validate};
use zident_identity::{TrustBundle, TrustDomain};
use zident_proto::zident_ca::CreateJwtSvidRequest;
use zident_proto::zident_ca::jwt_svid_service_client::JwtSvidServiceClient;

fn ask(
    token: Option<&str>,
    id: &str,
    audience: &[&str],
    secs: i64,
) -> Request<CreateJwtSvidRequest> {
    let mut r = Request::new(CreateJwtSvidRequest {
        spiffe_id: format!("spiffe://{TD}/{id}"),
        audience: audience.iter().map(|a| a.to_string()).collect(),
        validity_seconds: secs,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_authorized_like_certificates_and_verify_with_the_bundle() {
    let f = Fixture::start().await;
    let mut c = JwtSvidServiceClient::new(channel(&f.ca).await);
    let fe = "ns/default/sa/frontend";

    // node-a for a workload on it: signed, for the CA's default 5 minutes.
    let token = c
        .create_jwt_svid(ask(Some(NODE_A_TOKEN), fe, &["api"], 0))
        .await
        .unwrap()
        .into_inner()
        .token;
    let jwt = SignedJwt::read_unverified(&token).unwrap();
    assert_eq!(jwt.id, id(fe));
    assert_eq!(
        jwt.expiry.duration_since(jwt.issued_at).unwrap(),
        Duration::from_secs(300)
    );
    let root = f.ca.root_cert_path.clone();
    let json = curl(
        &format!("https://localhost:{}/bundle", f.ca.addr.port()),
        Some(&root),
    );
    assert!(json.contains("\"use\": \"jwt-svid\""), "{json}");
    let bundle = TrustBundle::from_jwks_json(TrustDomain::new(TD).unwrap(), &json).unwrap();
    assert_eq!(bundle.jwt_keys().len(), 1);
    let ok = validate(
        &token,
        bundle.jwt_keys(),
        bundle.trust_domain(),
        "api",
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(ok.id, id(fe));

    // A workload's own token for itself; a lifetime asked for is kept.
    let gw = c
        .create_jwt_svid(ask(
            Some(GW_TOKEN),
            "ns/default/sa/gateway",
            &["a", "b"],
            60,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let gw = SignedJwt::read_unverified(&gw).unwrap();
    assert_eq!(
        gw.expiry.duration_since(gw.issued_at).unwrap(),
        Duration::from_secs(60)
    );

    // Each refusal with the status a caller acts on.
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(c.create_jwt_svid(ask(None, fe, &["api"], 0)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(c.create_jwt_svid(ask(Some("nope"), fe, &["api"], 0)).await),
        Code::Unauthenticated
    );
    // node-a for a workload of node-b; the gateway for another identity.
    assert_eq!(
        code(
            c.create_jwt_svid(ask(
                Some(NODE_A_TOKEN),
                "ns/default/sa/backend",
                &["api"],
                0
            ))
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            c.create_jwt_svid(ask(Some(GW_TOKEN), fe, &["api"], 0))
                .await
        ),
        Code::PermissionDenied
    );
    let none: [&str; 0] = [];
    let e = c
        .create_jwt_svid(ask(Some(NODE_A_TOKEN), fe, &none, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("audience"), "{}", e.message());
    let e = c
        .create_jwt_svid(ask(Some(NODE_A_TOKEN), fe, &["api"], 100 * 24 * 3600))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("maximum"), "{}", e.message());

    let metrics = curl(
        &format!("http://{}/metrics", f.ca.metrics_addr.unwrap()),
        None,
    );
    assert!(
        metrics.contains("zident_ca_jwt_svids_issued_total 2"),
        "{metrics}"
    );
}
