//! `zident up`: the first command a new user runs. Starts zident on an embedded mesh, writes
//! everything under one directory, and says where things are and what to try.

use std::path::Path;

use zident_ca::{CaConfig, RunningCa};

use crate::cli::{UpArgs, wait_for_shutdown};

/// The embedded default mesh: a few workloads on one node.
pub const LOCAL_MESH: &str = include_str!("../../../examples/local.yaml");

/// Runs `zident up`.
pub async fn run(args: UpArgs) -> Result<(), String> {
    let mesh_path = match args.config {
        Some(p) => p,
        None => {
            let p = args.data_dir.join("local.yaml");
            if !p.exists() {
                std::fs::create_dir_all(&args.data_dir)
                    .and_then(|()| std::fs::write(&p, LOCAL_MESH))
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            p
        }
    };
    let mut config = CaConfig::new(&mesh_path);
    config.data_dir = args.data_dir.join("ca");
    let mut ca = RunningCa::start(config).await.map_err(|e| e.to_string())?;
    print_banner(&ca, &mesh_path);
    wait_for_shutdown(&mut ca).await;
    Ok(())
}

fn print_banner(ca: &RunningCa, mesh: &Path) {
    let td = ca.state.registry().trust_domain().clone();
    let root = ca.root_cert_path.display();
    let port = ca.addr.port();
    println!();
    println!("zident is up (trust domain {td})");
    println!();
    println!(
        "  CA, gRPC over TLS 1.3   {}   istio.v1.auth.IstioCertificateService",
        ca.addr
    );
    println!("  trust bundle            {root}   (CA_ROOT_CA for agents)");
    println!("                          https://localhost:{port}/bundle  and  /bundle.pem");
    if let Some(m) = ca.metrics_addr {
        println!("  metrics                 http://{m}/metrics");
    }
    println!(
        "  mesh file               {}   (edit it: reloaded on save)",
        mesh.display()
    );
    println!();
    println!("Try:");
    println!("  curl --cacert {root} https://localhost:{port}/bundle");
    println!("  openssl x509 -in {root} -noout -subject -dates");
    if let Some(m) = ca.metrics_addr {
        println!("  curl -s http://{m}/metrics | grep citadel_server");
    }
    println!();
    println!("The node agent is not part of this build yet, so nothing here asks for or");
    println!("rotates workload certificates. Only the CA is running.");
    println!(
        "Ctrl-C to stop. State is kept under {}.",
        ca.root_cert_path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .display()
    );
}
