//! `zident`: workload identity for a zero-trust service mesh.
//!
//! One binary: `zident ca` runs the certificate authority, `zident agent` the node agent, and
//! `zident up` both, on an embedded default mesh, for a first look.

mod batched_stdout;
mod certs;
mod cli;
mod datastore_cli;
mod duration;
mod inspect;
mod logging;
mod open_files;
mod print;
mod revoke;
mod revoke_cluster;
mod rotate;
mod rotate_cluster;
mod rotation_text;
mod style;
mod up;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

/// Reports (`certs`, `inspect`, `ca status`, `ca rotate`) end quietly when their reader goes
/// away (`zident ca status | head -1`), as `cat` and `ls` do: the default action of SIGPIPE,
/// which Rust's runtime sets to "ignore" so that `println!` would panic instead.
fn end_quietly_on_closed_pipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it runs before any thread is
    // started, so nothing else observes the change half-made.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// jemalloc, the allocator ztunnel ships with. A tunnel allocates read buffers of up to
/// 256 KiB and TLS records of 16 KiB and frees them as soon as the bytes move on; glibc's
/// malloc, untuned, handed each one fresh pages (a third less throughput), and even tuned it
/// kept more memory at idle than ztunnel (18 MiB per agent against 16). jemalloc reuses
/// them on its own and holds 15 (BENCHMARKS.md). Operators tune it with `_RJEM_MALLOC_CONF`.
///
/// Rust's allocations only: the C library's `malloc` stays for aws-lc. With jemalloc replacing
/// that too (as ztunnel builds it), the process hung at start under an `LD_PRELOAD`ed
/// libfaketime, which the clock-skew test uses and operators use to test clock skew.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let report = match &cli.command {
        cli::Command::Certs(_) | cli::Command::Inspect(_) => true,
        cli::Command::Ca(args) => args.action.is_some(),
        cli::Command::Agent(_) | cli::Command::Up(_) => false,
    };
    if report {
        end_quietly_on_closed_pipe();
    }
    let (log, _log_guard) = match logging::init(cli.log_format) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("zident: cannot start the log writer thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !report {
        // Servers only: a report has no connections to hold.
        match open_files::raise_to_hard_limit() {
            Ok(r) if r.to > r.from => {
                tracing::info!(target: "zident", "open files limit raised from {} to {} (the hard limit)", r.from, r.to);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "zident", "cannot raise the open files limit ({e}); connections are capped by the current one");
            }
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let cli::Command::Agent(args) = &cli.command {
        builder.worker_threads(args.worker_threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zident: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command, std::sync::Arc::new(log))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zident: error: {e}");
            ExitCode::FAILURE
        }
    }
}
