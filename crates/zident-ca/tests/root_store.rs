//! One root rotation scenario, run against every [`RootStore`]: the data directory,
//! PostgreSQL and the Kubernetes API (the roots Secret). The rules are the same function for both (`rotation::plan`); what each store
//! must keep is the same too: a step refused changes nothing, a step planned on a state another
//! writer has since changed is refused as a conflict and planned again, two writers racing to
//! prepare make one generation, and a retired generation's keys are gone.
//!
//! The PostgreSQL store needs Debian's `postgresql` package (.ci/run installs it), the
//! Kubernetes one the API server `scripts/k8s/build.sh` builds; each is skipped with a message
//! without it.

use std::time::{Duration, SystemTime};

use zident_ca::cluster_state::SecretRoots;
use zident_ca::datastore::{Kek, Store};
use zident_ca::dir_store::{self, DirStore};
use zident_ca::rotation::{self, Phase, RotationError, RotationState, StepRequest, Timing};
use zident_ca::store::{RootStore, take_step};
use zident_identity::TrustDomain;
use zident_testkit::postgres::Postgres;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn timing() -> Timing {
    Timing {
        activate_delay_secs: 10,
        retire_delay_secs: 100,
        renewal_margin_secs: rotation::RENEWAL_MARGIN_SECS,
    }
}

fn request(phase: Phase, now: SystemTime, force: bool) -> StepRequest {
    StepRequest {
        phase,
        now,
        force,
        root_lifetime: YEAR,
        timing: None,
    }
}

/// The generations a store still holds keys for (root and JWT), read through the seam.
async fn keyed_generations<S: RootStore>(store: &mut S) -> Vec<u32> {
    let state = store.state().await.unwrap().unwrap();
    let mut all: Vec<u32> = state.history.iter().map(|e| e.generation).collect();
    all.push(state.active);
    all.sort_unstable();
    all.dedup();
    let mut keyed: Vec<u32> = store
        .generations(&all)
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.key_pem.is_some() && g.jwt_key_pem.is_some())
        .map(|g| g.generation)
        .collect();
    keyed.sort_unstable();
    keyed
}

/// The authority the store's state and generations make: it signs with the active root's key
/// and trusts exactly the generations in the bundle.
async fn authority_agrees<S: RootStore>(store: &mut S, data_dir: &std::path::Path) {
    let state = store.state().await.unwrap().unwrap();
    let generations = store.generations(&state.in_bundle()).await.unwrap();
    let td = TrustDomain::new(&state.trust_domain).unwrap();
    let authority =
        zident_ca::Authority::from_generations(data_dir, &td, &state, &generations).unwrap();
    let active = generations
        .iter()
        .find(|g| g.generation == state.active)
        .unwrap();
    let active_der = zident_identity::pem::certs_from_pem(active.cert_pem.as_bytes()).unwrap();
    assert_eq!(authority.signer(), &active_der[0], "the active root signs");
    assert_eq!(authority.bundle().roots().len(), state.in_bundle().len());
    assert_eq!(authority.bundle().sequence(), state.sequence);
    assert!(
        authority.jwt_kid().is_some(),
        "the active generation's JWT key signs"
    );
}

async fn refused<S: RootStore>(store: &mut S, req: StepRequest, needle: &str) {
    let before = store.state().await.unwrap();
    let e = take_step(store, &req).await.unwrap_err();
    assert!(
        matches!(e, RotationError::Refused(_)) && e.to_string().contains(needle),
        "{e}"
    );
    assert_eq!(
        store.state().await.unwrap(),
        before,
        "a refusal changes nothing"
    );
}

/// The scenario. `a` and `b` are two writers on one store (two replicas, or a CA and
/// `zident ca rotate`).
async fn scenario<S: RootStore>(a: &mut S, b: &mut S, data_dir: &std::path::Path) {
    let t0 = SystemTime::now();
    let start = a.state().await.unwrap().expect("the store was set up");
    assert_eq!((start.active, start.prepared, start.sequence), (1, None, 1));

    refused(
        a,
        request(Phase::Activate, t0, false),
        "run `prepare` first",
    )
    .await;
    refused(a, request(Phase::Retire, t0, false), "nothing to retire").await;

    // Two writers prepare at once: one generation is made, the other is told it exists.
    let prepare = request(Phase::Prepare, t0, false);
    let (ra, rb) = tokio::join!(take_step(a, &prepare), take_step(b, &prepare));
    let outcomes = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "exactly one prepare wins: {ra:?} {rb:?}"
    );
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(
        loser.unwrap_err().to_string().contains("already prepared"),
        "the other is refused by the rules, after planning again"
    );
    let s = a.state().await.unwrap().unwrap();
    assert_eq!((s.active, s.prepared, s.sequence), (1, Some(2), 2));
    assert_eq!(keyed_generations(a).await, vec![1, 2]);

    authority_agrees(a, data_dir).await;
    refused(a, request(Phase::Activate, t0, false), "too early").await;

    // A change planned on a state another writer has since moved is a conflict, and
    // nothing of it lands.
    let snap = a.snapshot().await.unwrap().unwrap();
    let stale = rotation::plan(
        &snap.state,
        &snap.issued,
        &request(Phase::Activate, t0 + Duration::from_secs(10), false),
    )
    .unwrap();
    let after_b = take_step(
        b,
        &request(Phase::Activate, t0 + Duration::from_secs(10), false),
    )
    .await
    .unwrap();
    assert!(matches!(
        a.commit(&snap.state, &stale).await,
        Err(RotationError::Conflict)
    ));
    let s = a.state().await.unwrap().unwrap();
    assert_eq!(s, after_b, "the conflicting commit changed nothing");
    assert_eq!((s.active, s.previous, s.sequence), (2, Some(1), 2));
    authority_agrees(a, data_dir).await;

    refused(a, request(Phase::Prepare, t0, false), "retire it first").await;
    refused(
        a,
        request(Phase::Retire, t0 + Duration::from_secs(20), false),
        "too early",
    )
    .await;
    let s = take_step(
        a,
        &request(Phase::Retire, t0 + Duration::from_secs(110), false),
    )
    .await
    .unwrap();
    assert_eq!((s.active, s.previous, s.sequence), (2, None, 3));
    assert_eq!(
        keyed_generations(a).await,
        vec![2],
        "the retired generation's keys are gone"
    );
    authority_agrees(a, data_dir).await;
    let phases: Vec<&str> = s.history.iter().map(|e| e.phase.as_str()).collect();
    assert_eq!(
        phases,
        ["prepare", "activate", "retire"],
        "no phase skipped or doubled"
    );

    // The next rotation makes generation 3; --force skips the waits.
    let s = take_step(
        a,
        &request(Phase::Prepare, t0 + Duration::from_secs(120), false),
    )
    .await
    .unwrap();
    assert_eq!(s.prepared, Some(3));
    take_step(b, &request(Phase::Activate, t0, true))
        .await
        .unwrap();
    let s = take_step(a, &request(Phase::Retire, t0, true))
        .await
        .unwrap();
    assert_eq!(
        (s.active, s.prepared, s.previous, s.sequence),
        (3, None, None, 5)
    );
}

#[tokio::test]
async fn the_data_dir_store_keeps_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    dir_store::make_root(dir.path(), &td, 1, SystemTime::now(), YEAR).unwrap();
    dir_store::ensure_state(dir.path(), &td, timing()).unwrap();
    let mut a = DirStore::new(dir.path());
    let mut b = DirStore::new(dir.path());
    scenario(&mut a, &mut b, dir.path()).await;
}

/// A PostgreSQL session as a store, with the KEK its steps seal keys under.
struct Pg {
    store: Store,
    kek: Kek,
}

impl RootStore for Pg {
    async fn generations(
        &mut self,
        which: &[u32],
    ) -> Result<Vec<zident_ca::generation::StoredGeneration>, RotationError> {
        self.roots().generations(which).await
    }
    async fn state(&mut self) -> Result<Option<RotationState>, RotationError> {
        self.roots().state().await
    }
    async fn snapshot(&mut self) -> Result<Option<zident_ca::store::RootSnapshot>, RotationError> {
        self.roots().snapshot().await
    }
    async fn commit(
        &mut self,
        base: &RotationState,
        change: &rotation::Change,
    ) -> Result<(), RotationError> {
        self.roots().commit(base, change).await
    }
}

impl Pg {
    fn roots(&mut self) -> zident_ca::datastore::PgRoots<'_> {
        zident_ca::datastore::PgRoots {
            store: &mut self.store,
            kek: &self.kek,
            by: "root_store test",
        }
    }
}

#[tokio::test]
async fn the_postgres_store_keeps_the_rules() {
    let pg = match Postgres::start() {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("SKIPPED: cannot start PostgreSQL here: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let kek_path = dir.path().join("kek");
    std::fs::write(&kek_path, [7u8; 32]).unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let mut first = Store::connect(&pg.url()).await.unwrap();
    first
        .bootstrap(
            &td,
            YEAR,
            timing(),
            &Kek::load(&kek_path).unwrap(),
            None,
            "test",
        )
        .await
        .unwrap();
    let mut a = Pg {
        store: first,
        kek: Kek::load(&kek_path).unwrap(),
    };
    let mut b = Pg {
        store: Store::connect(&pg.url()).await.unwrap(),
        kek: Kek::load(&kek_path).unwrap(),
    };
    scenario(&mut a, &mut b, dir.path()).await;
}

#[tokio::test]
async fn the_kubernetes_secret_store_keeps_the_rules() {
    let Some(api) = zident_testkit::kube_api::KubeApi::for_test() else {
        return;
    };
    let client = api.client().await;
    zident_testkit::kube_api::namespace(&client, "root-store", serde_json::json!({})).await;
    let connection = zident_kube::Connection::from_kubeconfig(&api.kubeconfig())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let mut a = SecretRoots::new(&connection, "root-store", "replica-a");
    let mut b = SecretRoots::new(&connection, "root-store", "replica-b");
    // Two replicas starting at once: one makes the first root, the other finds it.
    let (made_a, made_b) = tokio::join!(
        a.create_first(&td, SystemTime::now(), YEAR, timing()),
        b.create_first(&td, SystemTime::now(), YEAR, timing())
    );
    assert_eq!(
        [made_a.unwrap(), made_b.unwrap()]
            .iter()
            .filter(|m| **m)
            .count(),
        1,
        "one first root"
    );
    scenario(&mut a, &mut b, dir.path()).await;
}
