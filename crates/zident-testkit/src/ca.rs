//! A CA for a test's directory, started in the test process: the configuration every test
//! begins from, and a start that waits out a port still held by a CA the test just stopped.

use std::path::Path;
use std::time::{Duration, Instant};

use zident_ca::{CaConfig, RunningCa};

/// The CA of `dir`: the mesh file `dir/mesh.yaml`, its data in `dir/ca`, an ephemeral
/// loopback port and no metrics port. Tests change what they exercise from here.
pub fn ca_config(dir: &Path) -> CaConfig {
    let mut c = CaConfig::new(dir.join("mesh.yaml"));
    c.data_dir = dir.join("ca");
    c.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.metrics_addr = None;
    c
}

/// Starts `config`; a port or data dir still held by a CA stopped a moment ago (a restart
/// on the same port) is tried again for up to 20 s. Any other failure fails the test.
pub async fn start_ca(config: CaConfig) -> RunningCa {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match RunningCa::start(config.clone()).await {
            Ok(ca) => return ca,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("CA start: {e}"),
        }
    }
}
