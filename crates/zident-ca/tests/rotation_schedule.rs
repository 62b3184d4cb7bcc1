//! The CA rotates its self-signed root on its own: once the active root has used its share of
//! life it prepares a new one, activates it once agents have had a refresh hint to fetch it,
//! and retires the old one once nothing it signed can still be valid. Each step changes what
//! the running CA serves: its bundle, and the root its certificates chain to.

mod common;

use std::time::{Duration, Instant};

use common::{MESH, config, start_ca};
use zident_ca::TtlPolicy;
use zident_ca::dir_store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_runs_prepare_activate_retire() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("node-b.token"), common::NODE_B_TOKEN).unwrap();
    let mut c = config(dir.path());
    c.refresh_hint = Duration::from_secs(1);
    c.ttl = TtlPolicy {
        default_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(2),
    };
    // Every root is "old" at once: it was backdated two minutes of a one-hour life.
    c.rotation.prepare_at = 0.01;
    c.rotation.root_lifetime = Duration::from_secs(3600);
    c.rotation.activate_delay = Some(Duration::from_secs(1));
    c.rotation.retire_margin = Duration::from_secs(1);
    let ca_dir = c.data_dir.clone();
    let ca = start_ca(c).await;
    let first = ca.state.authority().signer().clone();

    // Prepared: two roots served, the old one still signing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ca.state.authority().bundle().roots().len() < 2 {
        assert!(Instant::now() < deadline, "never prepared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ca.state.authority().signer(), &first);
    let mut client = common::client(&ca).await;

    // Activated, then retired: the first root gone, the one signing is another.
    while ca.state.authority().bundle().roots().contains(&first) {
        assert!(
            Instant::now() < deadline,
            "never retired: {:?}",
            dir_store::read_state(&ca_dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(ca.state.authority().signer(), &first);
    let state = dir_store::read_state(&ca_dir).unwrap().unwrap();
    let steps: Vec<_> = state
        .history
        .iter()
        .take(3)
        .map(|e| (e.phase.as_str(), e.generation))
        .collect();
    assert_eq!(steps, vec![("prepare", 2), ("activate", 2), ("retire", 1)]);
    // What it issues now chains to a root it serves.
    let (_, chain) = common::issue_frontend(&mut client, 2).await;
    let leaf = zident_identity::pem::certs_from_pem(chain[0].as_bytes()).unwrap();
    zident_identity::verify_svid(
        &leaf,
        ca.state.authority().bundle(),
        std::time::SystemTime::now(),
    )
    .unwrap();
}
