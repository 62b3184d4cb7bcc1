//! Revocation for `zident ca --kubernetes --roots-in-cluster` replicas on a real API server:
//! `zident ca revoke --kubernetes` by identity, node and serial reaches what *each* replica
//! issued (its own ledger names it), and what a replica that is gone for good issued (its
//! serials record names it), every replica's `/crl` lists it, a node's denial of
//! reissue is enforced by every replica until `allow-reissue` lifts it, a serial no replica
//! issued changes nothing, and a replica started afterwards serves the same list.
//!
//! Needs the API server `scripts/k8s/build.sh` builds (.ci/run builds it); skipped with a
//! message without it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use zident_identity::pem::certs_from_pem;
use zident_identity::{RevocationList, check_leaf};
use zident_testkit::kube_api::{KubeApi, namespace};
use zident_testkit::kube_replica::{CaReplica, ca_command};

const BIN: &str = env!("CARGO_BIN_EXE_zident");
const DEADLINE: Duration = Duration::from_secs(60);
const NS: &str = "zident-revoke";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";
const FLAGS: &[&str] = &["--max-ttl", "600s", "--default-ttl", "600s"];

/// `zident ca <args> --kubernetes …` against the test's API server: exit code and output.
fn revoke_cmd(api: &KubeApi, args: &[&str]) -> (i32, String) {
    ca_command(BIN, api, NS, args)
}

/// A certificate for `id` from replica `r` with `token`, and its serial.
async fn issue(r: &CaReplica, token: &str, id: &str) -> Result<(Vec<u8>, String), String> {
    let chain =
        zident_testkit::ca::request_certificate(r.port, r.root_pem().as_bytes(), token, id, 600)
            .await?;
    let leaf = certs_from_pem(chain[0].as_bytes())
        .map_err(|e| e.to_string())?
        .remove(0)
        .to_vec();
    let serial = check_leaf(&leaf).map_err(|e| e.to_string())?.serial_hex;
    Ok((leaf, serial))
}

/// The CRLs replica `r` serves at `/crl` over TLS, verified against its roots.
fn served_crl(r: &CaReplica) -> Option<RevocationList> {
    let root = r.dir.join("root-cert.pem");
    let (code, body) = zident_testkit::curl(&[
        "--cacert",
        root.to_str()?,
        "--resolve",
        &format!("localhost:{}:127.0.0.1", r.port),
        &format!("https://localhost:{}/crl", r.port),
    ]);
    if code != 200 {
        return None;
    }
    let roots = certs_from_pem(r.root_pem().as_bytes()).ok()?;
    RevocationList::from_pem(&body, &roots, SystemTime::now(), None).ok()
}

/// Waits until `check` holds, for up to `DEADLINE`.
async fn until(what: &str, replicas: &[&CaReplica], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}",
            replicas
                .iter()
                .map(|r| format!("\n--- {} ---\n{}", r.name, r.output()))
                .collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `dir`'s ledger names `serial` (it is appended within milliseconds of issuance).
fn in_ledger(dir: &Path, serial: &str) -> bool {
    zident_ca::ledger::certificates(dir, SystemTime::now())
        .iter()
        .any(|c| c.certificate.serial == serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_what_every_replica_issued() {
    let Some(api) = KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    namespace(&client, NS, json!({})).await;
    let base = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        base.path().join("mesh.yaml"),
        "trustDomain: cluster.local\n\
         nodes:\n- {name: node-a, token: token-a}\n- {name: node-b, token: token-b}\n\
         workloads:\n\
         - {uid: w, name: web, namespace: default, serviceAccount: web, node: node-a}\n\
         - {uid: d, name: db, namespace: default, serviceAccount: db, node: node-b}\n",
    )
    .expect("mesh file");
    let r0 = CaReplica::start(BIN, api, base.path(), NS, "ca-0", FLAGS);
    let r1 = CaReplica::start(BIN, api, base.path(), NS, "ca-1", FLAGS);
    let mut gone = CaReplica::start(BIN, api, base.path(), NS, "ca-gone", FLAGS);
    until("three replicas serve", &[&r0, &r1, &gone], || {
        [&r0, &r1, &gone]
            .iter()
            .all(|r| r.serving() && r.root_pem() == r0.root_pem())
    })
    .await;
    let both = [&r0, &r1];

    // A replica issues web a certificate, and is then gone for good with its data dir (a pod
    // with an emptyDir, deleted): what it issued is known only from its serials record.
    let (web_gone, s_gone) = issue(&gone, "token-a", WEB)
        .await
        .expect("web from ca-gone");
    let records: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = records
            .get_opt("zident-ca-serials-ca-gone")
            .await
            .ok()
            .flatten()
            .and_then(|cm| cm.data?.remove("certificates"))
            .unwrap_or_default();
        if text.contains(&s_gone) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ca-gone's serials record never listed {s_gone}: {text}{}",
            gone.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gone.kill9();
    std::fs::remove_dir_all(&gone.dir).expect("remove ca-gone's data dir");

    // web from each replica, db from ca-1: each replica's ledger names only its own.
    let (web0, s_web0) = issue(&r0, "token-a", WEB).await.expect("web from ca-0");
    let (web1, s_web1) = issue(&r1, "token-a", WEB).await.expect("web from ca-1");
    let (db1, s_db1) = issue(&r1, "token-b", DB).await.expect("db from ca-1");
    until("the ledgers name what each issued", &both, || {
        in_ledger(&r0.dir, &s_web0) && in_ledger(&r1.dir, &s_web1) && in_ledger(&r1.dir, &s_db1)
    })
    .await;
    assert!(
        !in_ledger(&r0.dir, &s_web1),
        "ca-0 never saw ca-1's certificate"
    );

    // By identity: both replicas answer, each with its own certificate of web. The time from
    // the command's start to every replica serving the CRL is measured while it runs.
    let started = Instant::now();
    let command = tokio::task::spawn_blocking(move || {
        revoke_cmd(
            api,
            &["revoke", "--identity", WEB, "--reason", "keyCompromise"],
        )
    });
    until("every replica's /crl lists web's three", &both, || {
        both.iter().all(|r| {
            served_crl(r).is_some_and(|l| {
                l.is_revoked(&web0)
                    && l.is_revoked(&web1)
                    && l.is_revoked(&web_gone)
                    && !l.is_revoked(&db1)
            })
        })
    })
    .await;
    eprintln!(
        "from `zident ca revoke --kubernetes` to both replicas' /crl: {:?}",
        started.elapsed()
    );
    let (code, out) = command.await.expect("the command ran");
    assert_eq!(code, 0, "{out}{}{}", r0.output(), r1.output());
    assert!(
        out.contains(&s_web0) && out.contains(&s_web1) && !out.contains(&s_db1),
        "{out}"
    );
    // ca-0 and ca-1 each revoke their own; the first to answer also ca-gone's, from its record.
    assert!(out.contains(&s_gone), "{out}");
    assert!(
        out.contains("replica ca-gone did not answer (gone?): replica ca-"),
        "{out}"
    );
    assert!(
        out.contains("replica ca-0 answered:") && out.contains("replica ca-1 answered:"),
        "{out}"
    );
    // web is not denied: its node renews it at once.
    issue(&r0, "token-a", WEB).await.expect("web renews");

    // By node, with reissue denied: db's certificate, and every replica refuses node-b.
    let (code, out) = revoke_cmd(api, &["revoke", "--node", "node-b", "--deny-reissue"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&s_db1) && out.contains("refused until"),
        "{out}"
    );
    for r in both {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match issue(r, "token-b", DB).await {
                Err(e) if e.contains("revoked: node node-b") => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{} still serves node-b: {other:?}{}",
                    r.name,
                    r.output()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    issue(&r1, "token-a", WEB)
        .await
        .expect("node-a is untouched");
    until("every replica's /crl lists db's", &both, || {
        both.iter()
            .all(|r| served_crl(r).is_some_and(|l| l.is_revoked(&db1)))
    })
    .await;
    let (code, out) = revoke_cmd(api, &["revocations"]);
    assert_eq!(code, 0, "{out}");
    for s in [&s_web0, &s_web1, &s_db1] {
        assert!(out.contains(s.as_str()), "{out}");
    }
    assert!(out.contains("reissue denied: node node-b"), "{out}");

    // A replica's data dir is its working copy of the cluster's state: revoking there alone is
    // refused, naming the namespace to give instead.
    let out = Command::new(BIN)
        .args(["ca", "revoke", "--identity", WEB, "--data-dir"])
        .arg(&r0.dir)
        .output()
        .expect("zident runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("--kubernetes --kubernetes-namespace {NS}")),
        "{err}"
    );

    // A serial no replica issued: refused, and nothing stays behind.
    let (code, out) = revoke_cmd(api, &["revoke", "--serial", "0f:ee:dd"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    let (_, json_out) = revoke_cmd(api, &["revocations", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json_out).expect("JSON");
    assert_eq!(
        doc["requests"].as_array().map(Vec::len),
        Some(2),
        "{json_out}"
    );

    // A replica started now follows the same list.
    let r2 = CaReplica::start(BIN, api, base.path(), NS, "ca-2", FLAGS);
    until("a new replica serves the list", &[&r2], || {
        served_crl(&r2)
            .is_some_and(|l| l.is_revoked(&web0) && l.is_revoked(&web1) && l.is_revoked(&db1))
    })
    .await;

    // Lifted: every replica issues db again.
    let (code, out) = revoke_cmd(api, &["allow-reissue", "--node", "node-b"]);
    assert_eq!(code, 0, "{out}");
    for r in [&r0, &r1, &r2] {
        let deadline = Instant::now() + DEADLINE;
        while let Err(e) = issue(r, "token-b", DB).await {
            assert!(
                e.contains("revoked") && Instant::now() < deadline,
                "{} after the denial was lifted: {e}",
                r.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (code, out) = revoke_cmd(api, &["allow-reissue", "--node", "node-b"]);
    assert_ne!(
        code, 0,
        "lifting twice says there is nothing to lift: {out}"
    );
}
