//! A real kube-apiserver and etcd for a test binary, started with the project's own
//! `scripts/k8s/start.sh` from the binaries `scripts/k8s/build.sh` made (under
//! `target/k8s/bin`, or `ZIDENT_K8S_BIN`). One server per test binary: it takes ~300 MB and a few
//! seconds to start, so the tests of a binary share it, each in namespaces of its own. It stops
//! when the test process is gone (the script watches our pid). There is no kubelet: a test plays
//! it by patching a Pod's status.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A running API server.
pub struct KubeApi {
    dir: PathBuf,
    port: u16,
    etcd_port: u16,
    bin: PathBuf,
}

static SHARED: OnceLock<Result<KubeApi, String>> = OnceLock::new();

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl KubeApi {
    /// The test binary's server, started on first use; `Err` says why there is none (the test
    /// skips with it).
    pub fn shared() -> Result<&'static KubeApi, String> {
        SHARED
            .get_or_init(Self::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn start() -> Result<Self, String> {
        let bin = std::env::var_os("ZIDENT_K8S_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/k8s/bin"));
        if !bin.join("kube-apiserver").exists() {
            return Err(format!(
                "no kube-apiserver in {} (build it with scripts/k8s/build.sh; .ci/run does)",
                bin.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("zident-kube-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let (port, etcd_port) = (free_port()?, free_port()?);
        let api = Self {
            dir,
            port,
            etcd_port,
            bin,
        };
        api.run_start()?;
        Ok(api)
    }

    fn run_start(&self) -> Result<(), String> {
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/k8s/start.sh"))
            .arg(&self.dir)
            .arg(self.port.to_string())
            .arg(self.etcd_port.to_string())
            .env("K8S_BIN", &self.bin)
            .env("WATCH_PID", std::process::id().to_string())
            .output()
            .map_err(|e| format!("cannot run scripts/k8s/start.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/k8s/start.sh failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// The kubeconfig of an admin (system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Stops the API server only (etcd keeps the data): an outage.
    pub fn stop_apiserver(&self) -> Result<(), String> {
        let status = Command::new("bash")
            .arg(workspace_root().join("scripts/k8s/stop.sh"))
            .arg(&self.dir)
            .arg("apiserver")
            .status()
            .map_err(|e| e.to_string())?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("stop.sh exited with {status}"))
    }

    /// Starts the API server again after [`KubeApi::stop_apiserver`], on the same port.
    pub fn start_apiserver(&self) -> Result<(), String> {
        self.run_start()
    }
}
