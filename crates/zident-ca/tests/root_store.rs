//! One root rotation scenario, run against every [`RootStore`]: the data directory and
//! PostgreSQL. The rules are the same function for both (`rotation::plan`); what each store
//! must keep is the same too: a step refused changes nothing, a step planned on a state another
//! writer has since changed is refused as a conflict and planned again, two writers racing to
//! prepare make one generation, and a retired generation's keys are gone.
//!
//! The PostgreSQL half needs Debian's `postgresql` package (.ci/run installs it); it is skipped
//! with a message without it.

use std::time::{Duration, SystemTime};

use zident_ca::datastore::{Kek, Store, StoredRoot};
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

/// What the scenario asks of a store beyond the trait: which generations still have keys.
trait Keys {
    async fn keyed_generations(&mut self) -> Vec<u32>;
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
async fn scenario<S: RootStore + Keys>(a: &mut S, b: &mut S) {
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
    assert_eq!(a.keyed_generations().await, vec![1, 2]);

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
        a.keyed_generations().await,
        vec![2],
        "the retired generation's keys are gone"
    );
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

impl Keys for DirStore {
    async fn keyed_generations(&mut self) -> Vec<u32> {
        let state = self.state().await.unwrap().unwrap();
        let dir = self.data_dir().to_owned();
        let mut all: Vec<u32> = state.history.iter().map(|e| e.generation).collect();
        all.push(state.active);
        all.sort_unstable();
        all.dedup();
        all.into_iter()
            .filter(|g| {
                let d = dir_store::generation_dir(&dir, *g);
                d.join("ca-key.pem").exists() && d.join("jwt-key.pem").exists()
            })
            .collect()
    }
}

#[tokio::test]
async fn the_data_dir_store_keeps_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    dir_store::make_root(dir.path(), &td, 1, SystemTime::now(), YEAR).unwrap();
    dir_store::ensure_state(dir.path(), &td, timing()).unwrap();
    let mut a = DirStore::new(dir.path());
    let mut b = DirStore::new(dir.path());
    scenario(&mut a, &mut b).await;
}

/// A PostgreSQL session as a store, with the KEK its steps seal keys under.
struct Pg {
    store: Store,
    kek: Kek,
}

impl RootStore for Pg {
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

impl Keys for Pg {
    async fn keyed_generations(&mut self) -> Vec<u32> {
        let roots: Vec<StoredRoot> = self.store.roots().await.unwrap();
        roots
            .into_iter()
            .filter(|r| r.key_sealed.is_some() && r.jwt_key_sealed.is_some())
            .map(|r| r.generation)
            .collect()
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
    scenario(&mut a, &mut b).await;
}
