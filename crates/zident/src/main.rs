//! `zident`: workload identity for a zero-trust service mesh.
//!
//! One binary: `zident ca` runs the certificate authority, `zident agent` the node agent, and
//! `zident up` both, on an embedded default mesh, for a first look.

mod certs;
mod cli;
mod duration;
mod heap;
mod inspect;
mod logging;
mod rotate;
mod style;
mod up;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let heap = heap::tune();
    let cli = cli::Cli::parse();
    let (log, _log_guard) = logging::init(cli.log_format);
    tracing::debug!(target: "zident", ?heap, "heap settings for the data path");
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
