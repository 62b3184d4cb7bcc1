//! The node agent against the real CA on loopback: certificates become Available, rotate at
//! half-life, survive a CA outage until they expire, recover when the CA returns, follow the
//! mesh file, and bad CA responses are refused.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use common::*;
use zident_agent::CertState;
use zident_identity::{
    Cause, CertificateProvider, ProviderError, TrustBundle, TrustDomain, verify_svid,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_become_available_and_rotate_at_half_life() {
    logs();
    let world = World::new(0).await;
    let agent = start_agent(world.agent_config(Duration::from_secs(6))).await;
    let fe = id("ns/default/sa/frontend");

    eventually(
        Duration::from_secs(30),
        "all local identities Available",
        || all_available(&agent),
    )
    .await;
    let ids: std::collections::HashSet<_> = agent
        .manager
        .snapshot()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        ids,
        local_ids(),
        "one certificate per identity: frontend's two workloads share one"
    );

    let old = agent
        .manager
        .current(&fe)
        .expect("frontend has a certificate");
    let lifetime = old.not_after.duration_since(old.not_before).unwrap();
    eventually(Duration::from_secs(30), "frontend rotates", || {
        serial_of(&agent, &fe).is_some_and(|s| s != old.serial_hex)
    })
    .await;
    let new = agent.manager.peek(&fe).unwrap();
    assert_ne!(new.serial_hex, old.serial_hex);
    // Renewal came at notBefore + 50% of the lifetime, up to 5% earlier (jitter); allow a
    // little for the request itself on a loaded machine.
    let renewed_after = new
        .received_at
        .duration_since(old.not_before)
        .unwrap()
        .as_secs_f64();
    let life = lifetime.as_secs_f64();
    assert!(
        renewed_after >= 0.45 * life - 0.01 && renewed_after <= 0.5 * life + 2.0,
        "renewed {renewed_after:.2}s after notBefore, lifetime {life:.2}s"
    );
    // The new key is fresh.
    assert_ne!(
        new.key().public_key_spki_der(),
        old.key().public_key_spki_der()
    );

    // A holder of the old certificate (an open connection) keeps a valid, verifiable one
    // until it expires.
    let bundle: TrustBundle = (*agent.manager.trust().bundle()).clone();
    let now = SystemTime::now();
    if now < old.not_after {
        verify_svid(&old.chain, &bundle, now).expect("the old certificate still verifies");
    }
    let expired = verify_svid(&old.chain, &bundle, old.not_after + Duration::from_secs(1));
    assert!(matches!(
        expired,
        Err(zident_identity::SvidError::Expired { .. })
    ));

    let logs = log_text();
    for line in [
        format!("Certificate rotation started for {fe}"),
        format!("Certificate rotation completed for {fe}"),
    ] {
        assert!(logs.contains(&line), "missing log line {line:?}");
    }
    assert!(
        logs.contains("zident::identity"),
        "logs at target zident::identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_is_invisible_until_expiry_then_fails_closed_and_recovers() {
    logs();
    let mut world = World::new(0).await;
    let agent = start_agent(world.agent_config(Duration::from_secs(5))).await;
    let fe = id("ns/default/sa/frontend");
    eventually(Duration::from_secs(30), "all Available", || {
        all_available(&agent)
    })
    .await;

    world.stop_ca();
    let held = agent.manager.peek(&fe).unwrap();
    // Renewals fail, but the certificate stays Available while it is valid.
    eventually(Duration::from_secs(30), "a renewal fails", || {
        state_of(&agent, &fe).is_some_and(|s| s.last_error.is_some())
    })
    .await;
    if SystemTime::now() + Duration::from_millis(200) < held.not_after {
        assert!(matches!(
            state_of(&agent, &fe).unwrap().state,
            CertState::Available(_)
        ));
    }
    // Past expiry: Unavailable, with the reason.
    eventually(Duration::from_secs(30), "Unavailable after expiry", || {
        matches!(
            state_of(&agent, &fe).map(|s| s.state),
            Some(CertState::Unavailable(_))
        )
    })
    .await;
    let CertState::Unavailable(reason) = state_of(&agent, &fe).unwrap().state else {
        unreachable!()
    };
    // The cause is typed, and it is what to act on: the CA is down (the words say the
    // certificate expired meanwhile). Code tells it from a denial without reading the words.
    assert_eq!(reason.cause, Cause::CaUnreachable, "{reason}");
    assert!(
        reason.detail.contains("expired") && reason.detail.contains("CA unreachable"),
        "{reason}"
    );
    assert_eq!(
        state_of(&agent, &fe).unwrap().last_error.map(|f| f.cause),
        Some(Cause::CaUnreachable)
    );
    assert!(log_text().contains(&format!("Certificate rotation failed for {fe}")));
    // istio-agent's runbook: `grep "SDS connection error"` and `/debug/connections | jq .sds`.
    assert!(log_text().contains("SDS connection error: CA unreachable"));
    let (_, body) = curl(&format!(
        "http://{}/debug/connections",
        agent.admin_addr.unwrap()
    ));
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["sds"]["connected"], false, "{dump}");
    assert!(
        dump["sds"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("CA unreachable")),
        "{dump}"
    );
    // An operator (and `zident certs`) reads the cause by its stable label beside the words.
    let (_, body) = curl(&format!("http://{}/debug/certs", agent.admin_addr.unwrap()));
    let report: zident_agent::http::report::CertsReport = serde_json::from_str(&body).unwrap();
    let shown = report
        .certificates
        .iter()
        .find(|c| c.spiffe_id == fe.as_str())
        .expect("frontend in /debug/certs");
    assert_eq!(shown.state, "Unavailable", "{body}");
    assert_eq!(shown.cause.as_deref(), Some("ca_unreachable"), "{body}");
    assert!(
        shown
            .error
            .as_deref()
            .is_some_and(|e| e.contains("expired")),
        "{body}"
    );
    // A real-time request fails closed with the reason.
    match agent.manager.certificate(&fe, Duration::from_secs(2)).await {
        Err(ProviderError::Unavailable { failure, .. }) => {
            assert_eq!(failure.cause, Cause::CaUnreachable, "{failure}");
            assert!(failure.detail.contains("CA unreachable"), "{failure}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // The CA comes back: a real-time request gets a certificate at once, and every identity
    // recovers within the backoff bound (2 s in this test) plus the request.
    world.restart_ca().await;
    let cert = agent
        .manager
        .certificate(&fe, Duration::from_secs(15))
        .await
        .expect("a real-time request retries at once");
    assert!(cert.is_valid_at(SystemTime::now()));
    eventually(Duration::from_secs(15), "every identity recovers", || {
        all_available(&agent)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_file_edits_add_and_forget_identities_and_broken_edits_change_nothing() {
    logs();
    let world = World::new(0).await;
    let agent = available_agent(&world, Duration::from_secs(3600)).await;
    let new_id = id("ns/shop/sa/cart");
    let be = id("ns/default/sa/backend");

    // Add a workload with a new identity, and take backend off the node.
    let edited = mesh(0).replace(
        "serviceAccount: backend, node: node-a",
        "serviceAccount: backend, node: node-b",
    ) + "- {uid: cart, name: cart, namespace: shop, serviceAccount: cart, node: node-a}\n";
    std::fs::write(world.mesh_path(), &edited).unwrap();
    eventually(
        Duration::from_secs(30),
        "cart Available, backend forgotten",
        || serial_of(&agent, &new_id).is_some() && state_of(&agent, &be).is_none(),
    )
    .await;
    match agent
        .manager
        .certificate(&be, Duration::from_millis(10))
        .await
    {
        Err(ProviderError::UnknownIdentity(_)) => {}
        other => panic!("backend must be unknown now, got {other:?}"),
    }

    // Removing one of frontend's two workloads keeps its certificate.
    let fe = id("ns/default/sa/frontend");
    let fe_serial = serial_of(&agent, &fe).unwrap();

    // A broken edit: rejected, nothing changes.
    let before: Vec<_> = agent
        .manager
        .snapshot()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    std::fs::write(
        world.mesh_path(),
        edited.replace("workloads:", "workloadz:"),
    )
    .unwrap();
    let metrics_url = format!("http://{}/metrics", agent.metrics_addr.unwrap());
    eventually(
        Duration::from_secs(30),
        "the broken edit is rejected",
        || {
            curl(&metrics_url)
                .1
                .contains("zident_config_reloads_total{outcome=\"rejected\"} 1")
        },
    )
    .await;
    let after: Vec<_> = agent
        .manager
        .snapshot()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(before, after);
    assert_eq!(serial_of(&agent, &fe).unwrap(), fe_serial);
    assert!(log_text().contains("mesh file change rejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ca_responses_are_refused() {
    use common::fake_ca::{Mode, start};
    logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh(0)).unwrap();
    for (mode, cause, expected) in [
        (Mode::WrongIdentity, Cause::WrongIdentity, "not for"),
        (Mode::ForeignRoot, Cause::Untrusted, "does not verify"),
        (Mode::WrongKey, Cause::WrongKey, "public key is not the key"),
    ] {
        let ca = start(mode).await;
        let agent = start_agent(ca.agent_config(dir.path(), Duration::from_secs(3600))).await;
        let fe = id("ns/default/sa/frontend");
        eventually(Duration::from_secs(30), "the response is refused", || {
            state_of(&agent, &fe).is_some_and(|s| s.last_error.is_some())
        })
        .await;
        let status = state_of(&agent, &fe).unwrap();
        let err = status.last_error.clone().unwrap();
        assert_eq!(err.cause, cause, "{mode:?}: {err}");
        assert!(err.detail.contains(expected), "{mode:?}: {err}");
        assert!(!status.ever_available, "{mode:?}: nothing was accepted");
        assert!(matches!(status.state, CertState::Unavailable(_)));
        let (code, _) = curl(&format!(
            "http://{}/healthz/ready",
            agent.readiness_addr.unwrap()
        ));
        assert_eq!(code, 503, "not ready without certificates");
    }
}

/// The agent's limit is on requests at the CA (keys, CSRs and the checks of answers are made
/// outside it): with 3 slots and 30 identities, a slow CA never has more than 3 requests of
/// this agent at once, and does have 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_the_ca_are_limited() {
    use common::fake_ca::{Mode, start};
    logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh(27)).unwrap();
    let ca = start(Mode::Slow).await;
    let mut config = ca.agent_config(dir.path(), Duration::from_secs(3600));
    config.concurrency = 3;
    let agent = start_agent(config).await;
    eventually(Duration::from_secs(60), "every identity Available", || {
        all_available(&agent)
    })
    .await;
    let identities = agent.manager.snapshot().len() as u64;
    assert!(identities >= 30, "{identities} identities");
    assert!(ca.requests.load(Ordering::SeqCst) >= identities);
    assert_eq!(ca.in_flight.most.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_shorter_than_the_backdate_does_not_cause_a_renewal_loop() {
    use common::fake_ca::{Mode, start};
    logs();
    let dir = tempfile::tempdir().unwrap();
    // Only the agent's own identity and one workload, to count requests precisely.
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "nodes:\n- {name: node-a, token: token-node-a}\n\
workloads:\n- {uid: a, name: a, namespace: default, serviceAccount: a, node: node-a}\n",
    )
    .unwrap();
    let ca = start(Mode::Backdated).await;
    let agent = start_agent(ca.agent_config(dir.path(), Duration::from_secs(8))).await;
    eventually(Duration::from_secs(30), "Available", || {
        all_available(&agent)
    })
    .await;
    let first = std::time::Instant::now();
    let count_at_start = ca.requests.load(Ordering::SeqCst);
    // With 120 s of backdate, half-life is long past on arrival; the floor (half of the 8 s
    // left) must hold renewals to about one per 4 s, not one per request round-trip.
    eventually(Duration::from_secs(30), "a second certificate", || {
        ca.requests.load(Ordering::SeqCst) > count_at_start
    })
    .await;
    let waited = first.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "renewed after only {waited:?}"
    );
    assert!(ca.requests.load(Ordering::SeqCst) <= count_at_start + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_readiness_and_metrics_endpoints() {
    logs();
    let world = World::new(0).await;
    let agent = available_agent(&world, Duration::from_secs(3600)).await;
    let admin = agent.admin_addr.unwrap();

    let (code, body) = curl(&format!(
        "http://{}/healthz/ready",
        agent.readiness_addr.unwrap()
    ));
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    let (code, body) = curl(&format!("http://{admin}/debug/certs"));
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 3);
    for c in certs {
        assert_eq!(c["state"], "Available");
        for field in [
            "spiffe_id",
            "valid_from",
            "valid_until",
            "serial_number",
            "rotation_at",
            "root_sha256",
        ] {
            assert!(c[field].is_string(), "{field} in {c}");
        }
        // The root it chains to is named as the trust bundle's roots are.
        assert_eq!(c["root_sha256"], v["trust_bundle"][0]["sha256"], "{c}");
        assert!(
            c["chain"][0]["pem"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(c["valid_until"].as_str().unwrap().ends_with('Z'));
    }
    let own: Vec<_> = certs.iter().filter(|c| c["own"] == true).collect();
    assert_eq!(own.len(), 1);
    assert_eq!(
        own[0]["spiffe_id"],
        "spiffe://cluster.local/ns/zident-system/sa/agent"
    );
    assert_eq!(v["trust_bundle"].as_array().unwrap().len(), 1);
    assert!(!body.contains("PRIVATE KEY"), "never a private key");

    let (_, body) = curl(&format!("http://{admin}/config_dump"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &v["certificates"][0];
    assert_eq!(c["state"], "Available");
    for field in ["pem", "serialNumber", "validFrom", "expirationTime"] {
        assert!(c["certChain"][0][field].is_string(), "{field} in {c}");
        assert!(c["rootCerts"][0][field].is_string(), "{field} in {c}");
    }

    let (_, body) = curl(&format!("http://{admin}/debug/connections"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ca"]["connected"], true);
    assert_eq!(v["ca"]["consecutive_failures"], 0);
    assert!(v["ca"]["last_success"].is_string());

    let (_, metrics) = curl(&format!("http://{}/metrics", agent.metrics_addr.unwrap()));
    assert!(metrics.contains(
        "zident_certificate_expiration_timestamp_seconds{identity=\"spiffe://cluster.local/ns/default/sa/frontend\"}"
    ));
    assert!(
        metrics.contains("zident_identities{state=\"Available\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zident_certificate_rotations_total{outcome=\"success\",reason=\"ok\"}")
    );
    assert!(metrics.contains("zident_trust_bundle_roots 1"));
    assert!(metrics.contains("zident_ca_request_duration_seconds_count"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identities_on_one_node_all_become_available() {
    logs();
    let world = World::new(1000).await;
    let agent = start_agent(world.agent_config(Duration::from_secs(3600))).await;
    eventually(
        Duration::from_secs(180),
        "1,003 identities Available",
        || {
            let snap = agent.manager.snapshot();
            snap.len() == 1003
                && snap
                    .iter()
                    .all(|(_, s)| matches!(s.state, CertState::Available(_)))
        },
    )
    .await;
    let bundle = TrustBundle::from_pem(
        TrustDomain::new("cluster.local").unwrap(),
        &std::fs::read(world.root_ca()).unwrap(),
    )
    .unwrap();
    let w999 = agent.manager.peek(&id("ns/load/sa/sa999")).unwrap();
    verify_svid(&w999.chain, &bundle, SystemTime::now()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_tls_with_the_agents_own_certificate() {
    logs();
    let world = World::new(0).await;
    let mut config = world.agent_config(Duration::from_secs(3600));
    config.metrics_tls = true;
    let agent = start_agent(config).await;
    let own = id("ns/zident-system/sa/agent");
    eventually(Duration::from_secs(30), "own certificate Available", || {
        serial_of(&agent, &own).is_some()
    })
    .await;

    // openssl, a client nobody here wrote, sees the agent's SVID and verifies it to the root.
    let addr = agent.metrics_addr.unwrap().to_string();
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(world.root_ca())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let pem_start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("server certificate shown");
    let pem_end =
        text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let leaf = zident_identity::pem::certs_from_pem(&text.as_bytes()[pem_start..pem_end]).unwrap();
    let info = zident_identity::check_leaf(&leaf[0]).unwrap();
    assert_eq!(info.id, own);
    assert_eq!(info.serial_hex, serial_of(&agent, &own).unwrap());

    // And it serves the metrics over that TLS connection.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-k",
            &format!("https://{addr}/metrics"),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("zident_identities"));
}

/// A CA whose TLS certificate chains to a root this node does not trust (its root rotated
/// while the node was down, or CA_ROOT_CA is the wrong file): the failure says so, and what to
/// do, rather than a bare transport error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_behind_an_untrusted_root_is_reported_with_the_fix() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh(0)).unwrap();
    let ca = start_ca(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let other_root = zident_identity::profile::root_params(
        &TrustDomain::new("cluster.local").unwrap(),
        SystemTime::now(),
        Duration::from_secs(86400),
    )
    .self_signed(&key)
    .unwrap();
    let root = dir.path().join("other-root.pem");
    std::fs::write(&root, other_root.pem()).unwrap();
    let config = agent_config(
        &dir.path().join("mesh.yaml"),
        &root,
        &format!("localhost:{}", ca.addr.port()),
        Duration::from_secs(3600),
    );
    let agent = start_agent(config).await;
    let fe = id("ns/default/sa/frontend");
    eventually(Duration::from_secs(30), "the request fails", || {
        state_of(&agent, &fe).is_some_and(|s| s.last_error.is_some())
    })
    .await;
    let status = state_of(&agent, &fe).unwrap();
    let err = status.last_error.unwrap();
    assert_eq!(err.cause, Cause::CaUnreachable, "{err}");
    assert!(err.detail.contains("CA unreachable"), "{err}");
    assert!(
        err.detail.contains("chains to no root this node trusts")
            && err
                .detail
                .contains("give it the CA's current root-cert.pem as CA_ROOT_CA"),
        "{err}"
    );
    assert!(!status.ever_available);
}

/// Whether every certificate of `agent` chains to `root`.
fn all_under(
    agent: &zident_agent::RunningAgent,
    root: &zident_identity::CertificateDer<'_>,
) -> bool {
    let bundle = agent.manager.trust().bundle();
    let snap = agent.manager.snapshot();
    !snap.is_empty()
        && snap.iter().all(|(_, s)| match &s.state {
            CertState::Available(c) => {
                zident_identity::chain_root(&c.chain[0], &c.chain[1..], &bundle, SystemTime::now())
                    .is_ok_and(|r| r == root)
            }
            _ => false,
        })
}

/// A root rotation's activate step is seen by an agent in the first certificate issued under
/// the new root. With `--renew-on-root-change` the node's other certificates follow at once;
/// without it they keep the old root (still trusted) until their normal renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_signing_root_moves_the_other_certificates_only_when_asked() {
    use zident_ca::dir_store;
    use zident_ca::rotation::Phase;
    logs();
    let world = World::new(0).await;
    let old_root = zident_identity::pem::certs_from_pem(&std::fs::read(world.root_ca()).unwrap())
        .unwrap()
        .remove(0);
    let mut config = world.agent_config(Duration::from_secs(3600));
    config.renewal.renew_on_root_change = true;
    let eager = start_agent(config).await;
    let lazy = start_agent(world.agent_config(Duration::from_secs(3600))).await;
    eventually(
        Duration::from_secs(30),
        "both agents have certificates",
        || all_under(&eager, &old_root) && all_under(&lazy, &old_root),
    )
    .await;
    let serials = |agent: &zident_agent::RunningAgent| -> Vec<(String, String)> {
        let mut v: Vec<_> = local_ids()
            .into_iter()
            .map(|i| (i.to_string(), serial_of(agent, &i).unwrap_or_default()))
            .collect();
        v.sort();
        v
    };
    let lazy_before = serials(&lazy);

    // prepare, and both agents fetch the new root; then activate.
    let ca_dir = world.dir.path().join("ca");
    let step = |phase| {
        dir_store::apply(
            &ca_dir,
            phase,
            SystemTime::now(),
            true,
            Duration::from_secs(3600),
        )
        .unwrap()
    };
    step(Phase::Prepare);
    let roots = |a: &zident_agent::RunningAgent| a.manager.trust().bundle().roots().len();
    eventually(
        Duration::from_secs(30),
        "both agents trust the new root",
        || roots(&eager) == 2 && roots(&lazy) == 2,
    )
    .await;
    let ca = world.ca.as_ref().unwrap();
    let old_signer = ca.state.authority().signer().clone();
    step(Phase::Activate);
    eventually(
        Duration::from_secs(30),
        "the CA signs under the new root",
        || *ca.state.authority().signer() != old_signer,
    )
    .await;
    let new_root = ca
        .state
        .authority()
        .bundle()
        .roots()
        .iter()
        .find(|r| **r != old_root)
        .unwrap()
        .clone();

    // A new identity on the node: its certificate is the first under the new root.
    std::fs::write(world.mesh_path(), mesh(1)).unwrap();
    eventually(
        Duration::from_secs(30),
        "the eager agent moves every certificate to the new root",
        || all_under(&eager, &new_root),
    )
    .await;
    assert_eq!(eager.manager.snapshot().len(), local_ids().len() + 1);
    let new_fingerprint = zident_identity::fingerprint(&new_root);
    for (id, s) in eager.manager.snapshot() {
        assert_eq!(s.signing_root.as_ref(), Some(&new_fingerprint), "{id}");
    }
    let extra = id("ns/load/sa/sa0");
    eventually(
        Duration::from_secs(30),
        "the lazy agent has the new identity",
        || serial_of(&lazy, &extra).is_some(),
    )
    .await;
    assert_eq!(
        serials(&lazy),
        lazy_before,
        "without the option, certificates wait for their normal renewal"
    );
    let logged = log_text();
    assert!(logged.contains("renewing this node's certificates under the old root now"));
    assert!(logged.contains("the other certificates move to it at their normal renewal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_ca_outage_takes_seconds_not_a_backoff_step() {
    logs();
    let mut world = World::new(20).await;
    let mut config = world.agent_config(Duration::from_secs(4));
    // Backoff as a real agent has it (doubling), so that after a few failures the next retry
    // is many seconds away: recovery must not wait for it.
    config.renewal.backoff_initial = Duration::from_secs(2);
    config.renewal.backoff_max = Duration::from_secs(60);
    let agent = start_agent(config).await;
    let fe = id("ns/default/sa/frontend");
    let attempts = |agent: &zident_agent::RunningAgent| state_of(agent, &fe).unwrap().attempts;

    world.stop_ca();
    // Three failed tries (at about 0, 2 and 6 s): the next is 8 to 24 s away, and every
    // certificate has expired.
    let before = attempts(&agent);
    eventually(
        Duration::from_secs(60),
        "three failures while the CA is down",
        || {
            attempts(&agent) >= before + 3
                && agent
                    .manager
                    .all(|s| matches!(s.state, CertState::Unavailable(_)))
        },
    )
    .await;
    // A workload that needs its identity now (inbound, the Workload API) gets a retry at once,
    // even with the CA down: its worker tries again without waiting for its backoff.
    let tried = attempts(&agent);
    assert!(CertificateProvider::current(&*agent.manager, &fe).is_none());
    eventually(
        Duration::from_secs(5),
        "a real-time need retries at once",
        || attempts(&agent) > tried,
    )
    .await;

    world.restart_ca().await;
    let back = std::time::Instant::now();
    // Every identity Available again soon after the CA answers (goal: 2 s; the deadline leaves
    // room for a loaded machine, and is far below the backoff step).
    eventually(
        Duration::from_secs(5),
        "every identity Available after the CA returns",
        || all_available(&agent),
    )
    .await;
    let took = back.elapsed();
    assert!(
        log_text().contains("the CA answers again"),
        "the probe noticed"
    );
    eprintln!("recovery: every identity Available {took:?} after the CA answered");
}
