//! A `zident ca --kubernetes --roots-in-cluster` replica as its own process (so a test can kill
//! it with SIGKILL), on the test's API server, with its state in namespace `namespace`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::kube_api::KubeApi;

/// A running replica; killed when dropped.
pub struct CaReplica {
    child: Child,
    /// Its name (`--replica-name`): its identity in the Lease.
    pub name: String,
    /// Its data dir.
    pub dir: PathBuf,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    /// Its metrics port on 127.0.0.1.
    pub metrics_port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl CaReplica {
    /// Starts `bin ca` as replica `name` with the mesh file `base/mesh.yaml`, its data in
    /// `base/<name>`, its log in `base/<name>.log`, and `extra` flags.
    pub fn start(
        bin: &str,
        api: &KubeApi,
        base: &Path,
        namespace: &str,
        name: &str,
        extra: &[&str],
    ) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let dir = base.join(name);
        let log = base.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(["ca", "--kubernetes", "--roots-in-cluster"])
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .args(["--kubernetes-namespace", namespace, "--replica-name", name])
            .arg("--config")
            .arg(base.join("mesh.yaml"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("start zident ca");
        Self {
            child,
            name: name.into(),
            dir,
            port,
            metrics_port,
            log,
        }
    }

    /// Whether it answers `/ready` with 200.
    pub fn serving(&self) -> bool {
        crate::curl(&[&format!("http://127.0.0.1:{}/ready", self.metrics_port)]).0 == 200
    }

    /// The roots it publishes (`root-cert.pem`), empty before it has.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("root-cert.pem")).unwrap_or_default()
    }

    /// Its log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaReplica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Every replica's log, headed by its name, for a failure's message.
pub fn logs(replicas: &[CaReplica]) -> String {
    replicas
        .iter()
        .map(|r| format!("\n--- {} ---\n{}", r.name, r.output()))
        .collect()
}

/// Polls `check` every 100 ms until it holds; after `deadline`, fails naming `what` with every
/// replica's log.
pub async fn until_replicas<F: std::future::Future<Output = bool>>(
    what: &str,
    replicas: &[CaReplica],
    deadline: std::time::Duration,
    mut check: impl FnMut() -> F,
) {
    let end = std::time::Instant::now() + deadline;
    while !check().await {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}{}",
            logs(replicas)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `bin ca <args> --kubernetes --kubernetes-namespace <namespace>` against `api`: its exit
/// code and its output (stdout, then stderr).
pub fn ca_command(bin: &str, api: &KubeApi, namespace: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .arg("ca")
        .args(args)
        .args([
            "--kubernetes",
            "--kubernetes-namespace",
            namespace,
            "--kubeconfig",
        ])
        .arg(api.kubeconfig())
        .output()
        .expect("zident runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Who holds the Lease `zident-ca-leader` in `namespace`.
pub async fn lease_holder(client: &kube::Client, namespace: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt("zident-ca-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
}
