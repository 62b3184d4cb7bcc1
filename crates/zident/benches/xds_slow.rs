//! xDS clients that never read: what they cost the CA while the mesh keeps changing.
//!
//! Run: `cargo bench -p zident --bench xds_slow` (optionally `-- WORKLOADS EDITS`, default
//! 3,000 20).
//!
//! The real `zident ca` process holds a mesh of 3,000 workloads. Streams subscribe as ztunnel
//! does and then never read a byte; the mesh file is rewritten every 1.2 s (one workload moved
//! each time). Measured for 20 and then 80 such streams: the CA's resident memory before the
//! streams, after the edits, and after the streams close. Beside it, the same number of streams
//! that read and ACK everything (the baseline a stream costs anyway).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::xds::{Seen, mesh, open_stream, open_unread_stream, wait};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let workloads = args.first().copied().unwrap_or(3_000);
    let edits = args.get(1).copied().unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(workloads, edits));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn run(workloads: usize, edits: usize) {
    println!("xDS clients that never read: {workloads} workloads, {edits} edits 1.2 s apart");
    for streams in [20, 80] {
        for reading in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("mesh.yaml");
            std::fs::write(&path, mesh(workloads, 0)).expect("mesh file");
            let ca = common::start_ca(dir.path());
            let root = std::fs::read(dir.path().join("ca/root-cert.pem")).expect("root");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = common::process_rss(ca.pid());
            let mut unread = Vec::new();
            let seen: Vec<Arc<Seen>> = (0..streams).map(|_| Arc::new(Seen::default())).collect();
            for s in &seen {
                if reading {
                    open_stream(&ca.addr, &root, s.clone()).await;
                } else {
                    unread.push(open_unread_stream(&ca.addr, &root).await);
                }
            }
            if reading {
                wait(
                    "every stream has the mesh",
                    Duration::from_secs(120),
                    || seen.iter().all(|s| s.count.load(Ordering::SeqCst) >= 1),
                )
                .await;
            }
            for edit in 1..=edits {
                let tmp = dir.path().join("mesh.yaml.tmp");
                std::fs::write(&tmp, mesh(workloads, edit)).expect("write");
                std::fs::rename(&tmp, &path).expect("rename");
                tokio::time::sleep(Duration::from_millis(1200)).await;
            }
            let after = common::process_rss(ca.pid());
            let closed = if reading {
                String::new()
            } else {
                drop(unread);
                tokio::time::sleep(Duration::from_secs(2)).await;
                format!(
                    ", {:.1} MiB after they close",
                    mib(common::process_rss(ca.pid()))
                )
            };
            println!(
                "  {streams} streams {}: CA {:.1} MiB before, {:.1} MiB after the edits ({:.0} KiB per stream){closed}",
                if reading {
                    "that read (baseline)"
                } else {
                    "that never read"
                },
                mib(before),
                mib(after),
                after.saturating_sub(before) as f64 / 1024.0 / streams as f64,
            );
        }
    }
}
