//! JWT-SVIDs through the Workload API, checked with a client nobody here wrote: the `spiffe`
//! crate fetches tokens and JWT bundles from a real agent (in front of a real CA) and validates
//! the tokens itself (its `jwt-verify-aws-lc-rs` backend), across a JWT key rotation.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use spiffe::{JwtBundleSet, JwtSvid, WorkloadApiClient};
use tonic::codegen::tokio_stream::StreamExt;
use zident_ca::dir_store;
use zident_ca::rotation::Phase;

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

async fn client(path: &Path) -> WorkloadApiClient {
    let endpoint = format!("unix:{}", path.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match WorkloadApiClient::connect_to(&endpoint).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to {endpoint}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn td() -> spiffe::TrustDomain {
    spiffe::TrustDomain::new("cluster.local").unwrap()
}

fn kids(set: &JwtBundleSet) -> Vec<String> {
    let mut k: Vec<String> = set
        .get(&td())
        .expect("a JWT bundle for cluster.local")
        .jwt_authorities()
        .map(|a| a.key_id().to_owned())
        .collect();
    k.sort();
    k
}

/// Fetches a token, retrying while the agent's first certificate is still on its way.
async fn fetch(c: &WorkloadApiClient, audience: &[&str]) -> JwtSvid {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_jwt_svid(audience, None).await {
            Ok(svid) => return svid,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no JWT-SVID: {e}\n{}",
                    log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_crate_fetches_and_validates_jwt_svids() {
    logs();
    let world = World::new(0).await;
    let (_agent, sockets) = agent_with_sockets(&world, Duration::from_secs(3600)).await;
    let c = client(&sockets.join("default/frontend/agent.sock")).await;

    let svid = fetch(&c, &["api", "db"]).await;
    assert_eq!(svid.spiffe_id().to_string(), FRONTEND);
    assert_eq!(svid.audience(), &["api".to_string(), "db".to_string()]);
    let bundles = c.fetch_jwt_bundles().await.unwrap();
    assert_eq!(kids(&bundles), vec![svid.key_id().to_owned()]);
    // The crate's own validation: signature, exp, aud, kid from the bundle.
    let checked = JwtSvid::parse_and_validate(svid.token(), &bundles, &["db"]).unwrap();
    assert_eq!(checked.spiffe_id().to_string(), FRONTEND);
    assert!(JwtSvid::parse_and_validate(svid.token(), &bundles, &["other"]).is_err());

    // Cached per identity and audience set: the same token, in any order of audiences.
    assert_eq!(fetch(&c, &["db", "api", "db"]).await.token(), svid.token());
    assert_ne!(fetch(&c, &["api"]).await.token(), svid.token());

    // ValidateJWTSVID: the claims come back; a wrong audience or a forged token is refused.
    let validated = c.validate_jwt_token("api", svid.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), FRONTEND);
    let e = c
        .validate_jwt_token("nope", svid.token())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("audience"), "{e}");
    let mut forged = svid.token().to_owned();
    forged.pop();
    forged.push(if svid.token().ends_with('A') {
        'B'
    } else {
        'A'
    });
    assert!(c.validate_jwt_token("api", &forged).await.is_err());

    // Only the caller's own identity; an audience is required.
    let other = spiffe::SpiffeId::new("spiffe://cluster.local/ns/default/sa/backend").unwrap();
    let e = c.fetch_jwt_svid(&["api"], Some(&other)).await.unwrap_err();
    assert!(e.to_string().contains("cannot have a JWT-SVID"), "{e}");
    let none: [&str; 0] = [];
    assert!(c.fetch_jwt_svid(&none, None).await.is_err());

    // Refreshed at half its life (the CA here signs for 20 s): the same token before 10 s,
    // a new one after, never one with less than half its life left.
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        let now = SystemTime::now();
        let t = fetch(&c, &["api", "db"]).await;
        if t.token() != svid.token() {
            break t;
        }
        let issued = svid.expiry().unix_timestamp() as u64 - 20;
        let elapsed = zident_identity::unix_seconds(now).saturating_sub(issued);
        assert!(
            elapsed <= 11,
            "the token was not refreshed after half its life ({elapsed}s)"
        );
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(renewed.expiry() > svid.expiry());
    // Issued no earlier than half the first one's life (10 s of 20; whole seconds, so 1 s of
    // slack): a cache that refreshed every few seconds would fail here.
    let issued = |t: &JwtSvid| t.expiry().unix_timestamp() - 20;
    assert!(
        issued(&renewed) >= issued(&svid) + 9,
        "refreshed {} s after the first, before half its life",
        issued(&renewed) - issued(&svid)
    );
}

/// The next JWT bundle set on `stream` with `want` keys.
async fn next_bundle<S, E>(stream: &mut S, want: usize) -> JwtBundleSet
where
    S: tonic::codegen::tokio_stream::Stream<Item = Result<JwtBundleSet, E>> + Unpin,
    E: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let set = stream.next().await.unwrap().unwrap();
            if kids(&set).len() == want {
                return set;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no JWT bundle with {want} keys\n{}", log_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_key_rotation_never_fails_a_validation() {
    logs();
    let world = World::new(0).await;
    let (_agent, sockets) = agent_with_sockets(&world, Duration::from_secs(3600)).await;
    let c = client(&sockets.join("default/frontend/agent.sock")).await;
    let data_dir = world.dir.path().join("ca");
    let first = fetch(&c, &["before"]).await;
    let mut stream = c.stream_jwt_bundles().await.unwrap();
    let initial = stream.next().await.unwrap().unwrap();
    assert_eq!(kids(&initial), vec![first.key_id().to_owned()]);

    // Every token handed out during the rotation validates with the bundle the workload
    // holds at that moment, and so does the first one, until the forced retire.
    let lifetime = Duration::from_secs(3600);
    dir_store::apply(&data_dir, Phase::Prepare, SystemTime::now(), true, lifetime).unwrap();
    let both = next_bundle(&mut stream, 2).await;
    assert!(kids(&both).contains(&first.key_id().to_owned()));
    JwtSvid::parse_and_validate(first.token(), &both, &["before"]).unwrap();
    // Prepared: the new key is published, the old one still signs.
    let during = fetch(&c, &["during"]).await;
    assert_eq!(during.key_id(), first.key_id());

    dir_store::apply(
        &data_dir,
        Phase::Activate,
        SystemTime::now(),
        true,
        lifetime,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let after = loop {
        // A fresh audience each time, so that the cache does not answer.
        n += 1;
        let aud = format!("after-{n}");
        let t = fetch(&c, &[aud.as_str()]).await;
        JwtSvid::parse_and_validate(t.token(), &both, &[aud.as_str()])
            .expect("every token validates with the bundle the workload holds");
        if t.key_id() != first.key_id() {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the new key never signed\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kids(&both).contains(&after.key_id().to_owned()));
    JwtSvid::parse_and_validate(first.token(), &both, &["before"]).unwrap();
    assert_eq!(
        c.validate_jwt_token("before", first.token())
            .await
            .unwrap()
            .spiffe_id()
            .to_string(),
        FRONTEND
    );

    // Retire (forced here, before the old tokens expired): the old key leaves the bundle and
    // what it signed no longer validates; the new key's tokens do.
    dir_store::apply(&data_dir, Phase::Retire, SystemTime::now(), true, lifetime).unwrap();
    let last = next_bundle(&mut stream, 1).await;
    assert_eq!(kids(&last), vec![after.key_id().to_owned()]);
    assert!(JwtSvid::parse_and_validate(first.token(), &last, &["before"]).is_err());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.validate_jwt_token("before", first.token()).await {
            Err(e) if e.to_string().contains("no JWT key with kid") => break,
            other => {
                assert!(Instant::now() < deadline, "still accepted: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    JwtSvid::parse_and_validate(after.token(), &last, &[after.audience()[0].as_str()]).unwrap();
}

/// A token is handed out only if the node's own bundle can validate it: an agent that never
/// learns the CA's JWT keys (no `/bundle` polling) refuses, and names the key and what to check,
/// rather than give a workload a token nobody on the node can verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_key_the_node_does_not_serve_is_refused() {
    logs();
    let world = World::new(0).await;
    let sockets = world.dir.path().join("wl");
    let mut config = world.agent_config(Duration::from_secs(3600));
    config.ca.poll_bundle = false;
    config.delivery = zident_agent::workload_api::DeliveryConfig {
        socket_dir: Some(sockets.clone()),
        ..Default::default()
    };
    let _agent = start_agent(config).await;
    let c = client(&sockets.join("default/frontend/agent.sock")).await;
    // The X.509 side works without the bundle endpoint (CA_ROOT_CA is enough).
    let x509 = c.fetch_x509_svid().await.expect("an X.509-SVID");
    assert_eq!(x509.spiffe_id().to_string(), FRONTEND);
    let err = c
        .fetch_jwt_svid(&["api"], None)
        .await
        .expect_err("a token the node's bundle cannot validate was handed out");
    let err = err.to_string();
    assert!(
        err.contains("not in this node's bundle") && err.contains("/bundle"),
        "{err}"
    );
    let bundles = c.fetch_jwt_bundles().await.expect("JWT bundles");
    assert!(kids(&bundles).is_empty(), "the node serves no JWT key");
}
