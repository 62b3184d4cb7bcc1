//! xDS at scale: 10,000 workloads, 100 streams subscribed as ztunnel subscribes (wildcard,
//! `istio.workload.Address` and `istio.security.Authorization`), each on its own TLS
//! connection to the real `zident ca` process.
//!
//! Run: `cargo bench -p zident --bench xds_push` (optionally `-- WORKLOADS STREAMS EDITS`,
//! default 10,000 100 21).
//!
//! Measured, each beside its baseline from the same run:
//! - an edit of one workload (the mesh file rewritten, as an operator would): time from the
//!   write until every stream has received the push and ACKed it, and the CA's own
//!   `pilot_proxy_convergence_time` (edit accepted → ACK), against the time the same streams
//!   took to receive the whole mesh at the start (what a push of everything costs);
//! - the bytes of that push against the bytes of the whole mesh;
//! - the CA's CPU and memory per stream.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::xds::{Seen, mesh, metric, metrics_text, open_stream, wait};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let workloads = args.first().copied().unwrap_or(10_000);
    let streams = args.get(1).copied().unwrap_or(100);
    let edits = args.get(2).copied().unwrap_or(21);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(workloads, streams, edits));
}

async fn run(workloads: usize, streams: usize, edits: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, mesh(workloads, 0)).expect("mesh file");
    let (ca, reloads) = common::start_ca_watching_reloads(dir.path());
    let root = std::fs::read(dir.path().join("ca/root-cert.pem")).expect("root");
    let rss_idle = common::process_rss(ca.pid());
    let cpu_before = common::process_cpu(ca.pid());

    // Every stream receives the whole mesh.
    let seen: Vec<Arc<Seen>> = (0..streams).map(|_| Arc::new(Seen::default())).collect();
    let start = Instant::now();
    for s in &seen {
        open_stream(&ca.addr, &root, s.clone()).await;
    }
    wait(
        "every stream has the mesh",
        Duration::from_secs(600),
        || seen.iter().all(|s| s.count.load(Ordering::SeqCst) >= 1),
    )
    .await;
    let full_sync = start.elapsed();
    let full_bytes = seen[0].last.lock().expect("lock").map_or(0, |l| l.2);
    let cpu_sync = common::process_cpu(ca.pid()) - cpu_before;
    // Let the ACKs land before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_streams = common::process_rss(ca.pid());

    // Edits of one workload.
    let metrics_before = metrics_text(&ca).await;
    let cpu_before_edits = common::process_cpu(ca.pid());
    let mut times = Vec::new();
    let mut accepted_times = Vec::new();
    let mut push_bytes = 0;
    for edit in 1..=edits {
        let counts: Vec<u64> = seen
            .iter()
            .map(|s| s.count.load(Ordering::SeqCst))
            .collect();
        let yaml = mesh(workloads, edit);
        let tmp = dir.path().join("mesh.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write");
        let t0 = Instant::now();
        std::fs::rename(&tmp, &path).expect("rename");
        wait("every stream has the edit", Duration::from_secs(60), || {
            seen.iter()
                .zip(&counts)
                .all(|(s, c)| s.count.load(Ordering::SeqCst) > *c)
        })
        .await;
        let receipts: Vec<(Instant, SystemTime, usize)> = seen
            .iter()
            .filter_map(|s| *s.last.lock().expect("lock"))
            .collect();
        let last = receipts.iter().map(|r| r.0).max().expect("a receipt");
        let last_wall = receipts.iter().map(|r| r.1).max().expect("a receipt");
        times.push(last.duration_since(t0).as_secs_f64() * 1000.0);
        // The CA's own moment of acceptance, from its log line.
        let accepted = reloads
            .recv_timeout(Duration::from_secs(10))
            .expect("the CA logs the reload");
        while reloads.try_recv().is_ok() {}
        accepted_times.push(
            last_wall
                .duration_since(accepted)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
        );
        push_bytes = seen[0].last.lock().expect("lock").map_or(0, |l| l.2);
    }
    let cpu_edits = common::process_cpu(ca.pid()) - cpu_before_edits;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The streams' steady cost: connected, holding the mesh, after 21 small pushes.
    let rss_after_edits = common::process_rss(ca.pid());
    let metrics_after = metrics_text(&ca).await;

    // The memory a stream costs, apart from what the edits left in the allocator: as many
    // streams again, each sent the whole mesh, then idle.
    let more: Vec<Arc<Seen>> = (0..streams).map(|_| Arc::new(Seen::default())).collect();
    for s in &more {
        open_stream(&ca.addr, &root, s.clone()).await;
    }
    wait(
        "every added stream has the mesh",
        Duration::from_secs(600),
        || more.iter().all(|s| s.count.load(Ordering::SeqCst) >= 1),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_more = common::process_rss(ca.pid());
    let conv_sum = metric(&metrics_after, "pilot_proxy_convergence_time_sum")
        - metric(&metrics_before, "pilot_proxy_convergence_time_sum");
    let conv_count = metric(&metrics_after, "pilot_proxy_convergence_time_count")
        - metric(&metrics_before, "pilot_proxy_convergence_time_count");

    let accepted_median = common::median(accepted_times.clone());
    let accepted_max = accepted_times.iter().copied().fold(0.0, f64::max);
    let median_ms = common::median(times.clone());
    let max_ms = times.iter().copied().fold(0.0, f64::max);
    println!("xDS push: {workloads} workloads, {streams} streams, {edits} edits of one workload");
    println!(
        "  whole mesh to every stream at start: {:.0} ms ({:.1} MiB per stream, CA CPU {:.2} s = {:.1} ms per stream)",
        full_sync.as_secs_f64() * 1000.0,
        full_bytes as f64 / (1024.0 * 1024.0),
        cpu_sync.as_secs_f64(),
        cpu_sync.as_secs_f64() * 1000.0 / streams as f64
    );
    println!(
        "  one edit, accepted by the CA -> every stream has it and ACKs: median {accepted_median:.1} ms, max {accepted_max:.1} ms (goal: median under 100 ms; ratio to the whole-mesh push: {:.3})",
        accepted_median / (full_sync.as_secs_f64() * 1000.0)
    );
    println!(
        "  one edit, file written -> every stream has it (adds the CA's 150 ms settle for editors' multi-step saves and the parse): median {median_ms:.1} ms, max {max_ms:.1} ms"
    );
    println!(
        "  one edit, accepted -> ACKed (CA's pilot_proxy_convergence_time, mean of {conv_count:.0}): {:.1} ms",
        if conv_count > 0.0 {
            conv_sum / conv_count * 1000.0
        } else {
            f64::NAN
        }
    );
    println!(
        "  push of one edit: {push_bytes} bytes per stream, against {full_bytes} for the whole mesh (ratio {:.6})",
        push_bytes as f64 / full_bytes.max(1) as f64
    );
    println!(
        "  CA CPU per edit (parse + check {workloads} workloads, diff, {streams} pushes): {:.1} ms",
        cpu_edits.as_secs_f64() * 1000.0 / edits as f64
    );
    println!(
        "  CA memory: {:.1} MiB idle with the mesh, {:.1} MiB with {streams} streams ({:.1} KiB per stream)",
        rss_idle as f64 / (1024.0 * 1024.0),
        rss_streams as f64 / (1024.0 * 1024.0),
        (rss_streams.saturating_sub(rss_idle)) as f64 / 1024.0 / streams as f64
    );
    println!(
        "  CA memory after the edits: {:.1} MiB; with {streams} more streams: {:.1} MiB ({:.1} KiB per added stream; goal: under 100)",
        rss_after_edits as f64 / (1024.0 * 1024.0),
        rss_more as f64 / (1024.0 * 1024.0),
        (rss_more.saturating_sub(rss_after_edits)) as f64 / 1024.0 / streams as f64
    );
}
