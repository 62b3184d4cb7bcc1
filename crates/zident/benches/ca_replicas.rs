//! CA replicas on one PostgreSQL: issuance with one and two replicas beside a CA with no
//! database (the baseline: the database must not be on the issuance path), and the time from
//! killing the leader (kill -9) until another replica holds the leader lock, i.e. until the
//! next rotation step can be taken.
//!
//! Run: `cargo bench -p zident --bench ca_replicas` (optionally `-- REQUESTS CONCURRENCY`,
//! default 4,000 and 64). Needs Debian's `postgresql` package; the server is started in a
//! temporary directory.

mod common;

use std::time::{Duration, Instant};

use common::median;
use zident_identity::SpiffeId;
use zident_testkit::postgres::Postgres;

const ROUNDS: usize = 3;
/// The leader lock's key (`zident_ca::datastore`'s LOCK_LEADER), as pg_locks shows it.
const LEADER_CLASSID: u32 = 0x7a69_6465;
const LEADER_OBJID: u32 = 0x6e74_0003;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(4_000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let pg = Postgres::start().expect("PostgreSQL starts (apt-get install postgresql)");
    let dir = tempfile::tempdir().expect("tempdir");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [9u8; 32]).expect("kek");
    let id = SpiffeId::new("spiffe://cluster.local/ns/bench/sa/app-0").expect("id");
    let url = pg.url();
    let replica = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("mesh.yaml"), common::mesh(1)).expect("mesh");
        let mut args = vec!["--datastore", url.as_str(), "--kek-file"];
        args.push(kek.to_str().expect("path"));
        args.extend(["--replica-name", name]);
        common::start_ca_with(&d, &args)
    };
    let file_dir = dir.path().join("file");
    std::fs::create_dir_all(&file_dir).expect("dir");
    std::fs::write(file_dir.join("mesh.yaml"), common::mesh(1)).expect("mesh");

    let (mut base, mut one, mut two) = (vec![], vec![], vec![]);
    for round in 1..=ROUNDS {
        let ca = common::start_ca(&file_dir);
        let root = std::fs::read(file_dir.join("ca/root-cert.pem")).expect("root");
        let b = runtime.block_on(common::drive(&ca, &root, &id, requests, concurrency));
        drop(ca);

        let r1 = replica("r1");
        let root = std::fs::read(dir.path().join("r1/ca/root-cert.pem")).expect("root");
        let o = runtime.block_on(common::drive(&r1, &root, &id, requests, concurrency));
        let r2 = replica("r2");
        let (x, y) = runtime.block_on(async {
            tokio::join!(
                common::drive(&r1, &root, &id, requests / 2, concurrency / 2),
                common::drive(&r2, &root, &id, requests / 2, concurrency / 2)
            )
        });
        drop((r1, r2));
        eprintln!(
            "round {round}: no database {:.0}/s, one replica {:.0}/s, two replicas {:.0}/s",
            b.per_sec,
            o.per_sec,
            x.per_sec + y.per_sec
        );
        base.push(b.per_sec);
        one.push(o.per_sec);
        two.push(x.per_sec + y.per_sec);
    }

    // Leader failover: three replicas; the leader is killed; until another holds the lock.
    let mut failovers = Vec::new();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("bench connects");
        tokio::spawn(conn);
        let holder = || async {
            client
                .query_opt(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::oid \
                     AND objid = $2::oid AND objsubid = 1 AND granted",
                    &[&LEADER_CLASSID, &LEADER_OBJID],
                )
                .await
                .expect("pg_locks")
                .map(|r| r.get::<_, i32>(0))
        };
        let store = zident_ca::datastore::Store::connect(&url)
            .await
            .expect("bench reads the datastore");
        let mut replicas: Vec<(String, common::Ca)> = ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), replica(n)))
            .collect();
        for round in 0..ROUNDS {
            // Who leads, as it reports itself, and which session holds the lock.
            let start = Instant::now();
            let (name, pid) = loop {
                assert!(start.elapsed() < Duration::from_secs(30), "a replica leads");
                let leader = store
                    .replicas()
                    .await
                    .expect("replicas")
                    .into_iter()
                    .find(|r| {
                        r.leader
                            && r.seconds_ago < 2.0
                            && replicas.iter().any(|(n, _)| *n == r.name)
                    });
                if let (Some(l), Some(pid)) = (leader, holder().await) {
                    break (l.name, pid);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let i = replicas
                .iter()
                .position(|(n, _)| *n == name)
                .expect("the leader is ours");
            let (_, leader) = replicas.remove(i);
            let killed_at = Instant::now();
            drop(leader);
            let mut next = None;
            while next.is_none() {
                assert!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "another replica leads"
                );
                next = holder().await.filter(|p| *p != pid);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failovers.push(killed_at.elapsed().as_secs_f64() * 1000.0);
            let fresh = format!("n{round}");
            replicas.push((fresh.clone(), replica(&fresh)));
        }
    });

    let (b, o, t) = (median(base), median(one), median(two));
    println!(
        "zident CA replicas on PostgreSQL (median of {ROUNDS} rounds, {requests} requests, {concurrency} in flight)"
    );
    println!("  issuance, no database (baseline): {b:.0} certificates/s");
    println!(
        "  issuance, one replica:            {o:.0} certificates/s (ratio {:.2})",
        o / b
    );
    println!(
        "  issuance, two replicas together:  {t:.0} certificates/s (ratio {:.2})",
        t / b
    );
    println!(
        "  leader killed -> another replica holds the leader lock: median {:.0} ms, max {:.0} ms (replicas wait in the lock; PostgreSQL hands it over when the holder's session ends)",
        median(failovers.clone()),
        failovers.iter().copied().fold(0.0, f64::max)
    );
}
