//! A real kube-apiserver and etcd for a test binary, started with the project's own
//! `scripts/k8s/start.sh` from the binaries `scripts/k8s/build.sh` made (under
//! `target/k8s/bin`, or `ZIDENT_K8S_BIN`). One server per test binary: it takes ~300 MB and a few
//! seconds to start, so the tests of a binary share it, each in namespaces of its own. It stops
//! when the test process is gone (the script watches our pid). There is no kubelet: a test plays
//! it by patching a Pod's status.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

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

    /// [`KubeApi::shared`] for a test: `None`, after printing `SKIPPED:` and the reason, when
    /// there is no server.
    pub fn for_test() -> Option<&'static KubeApi> {
        match Self::shared() {
            Ok(api) => Some(api),
            Err(why) => {
                eprintln!("SKIPPED: no Kubernetes API server for this test: {why}");
                None
            }
        }
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

impl KubeApi {
    /// A ServiceAccount token from the TokenRequest API for `audience`, bound to `pod`
    /// (`(name, uid)`) when given, as the kubelet projects one into a pod.
    pub async fn token(
        &self,
        client: &Client,
        namespace: &str,
        service_account: &str,
        pod: Option<(&str, &str)>,
        audience: &str,
    ) -> String {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let mut spec = json!({"audiences": [audience], "expirationSeconds": 3600});
        if let Some((name, uid)) = pod {
            spec["boundObjectRef"] =
                json!({"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid});
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let answer: TokenRequest = api
            .create_subresource("token", service_account, &PostParams::default(), &body)
            .await
            .expect("TokenRequest");
        answer.status.and_then(|s| s.token).expect("a token")
    }

    /// `token` (one the API server issued) with its times moved an hour into the past and
    /// signed again with the server's ServiceAccount key: the same token, expired.
    pub fn expired(&self, token: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
            panic!("not a JWT: {token}");
        };
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(payload).expect("base64")).expect("claims");
        for key in ["exp", "iat", "nbf"] {
            if let Some(t) = claims[key].as_i64() {
                claims[key] = json!(t - 7200);
            }
        }
        let signed = format!("{header}.{}", b64.encode(claims.to_string()));
        let input = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(input.path(), &signed).expect("write");
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(self.dir.join("pki/sa.key"))
            .arg(input.path())
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl dgst -sign failed");
        format!("{signed}.{}", b64.encode(out.stdout))
    }

    /// kubectl, built beside the server by scripts/k8s/build.sh, as the admin; `None` when it
    /// was not built.
    pub fn kubectl(&self) -> Option<Command> {
        let path = self.bin.join("kubectl");
        path.exists().then(|| {
            let mut c = Command::new(path);
            c.env("KUBECONFIG", self.kubeconfig());
            c
        })
    }

    /// A kubeconfig at `path` for a user presenting `token` (a ServiceAccount's), otherwise the
    /// admin's.
    pub fn kubeconfig_with_token(&self, path: &Path, token: &str) {
        let admin = std::fs::read_to_string(self.kubeconfig()).expect("the admin's kubeconfig");
        let admin_token = std::fs::read_to_string(self.dir.join("token")).expect("the admin token");
        assert!(
            admin.contains(admin_token.trim()),
            "the kubeconfig holds the admin token"
        );
        std::fs::write(path, admin.replace(admin_token.trim(), token)).expect("write kubeconfig");
    }

    /// A client with the admin's kubeconfig.
    pub async fn client(&self) -> Client {
        zident_kube::Connection::from_kubeconfig(&self.kubeconfig())
            .await
            .expect("a client for the test's API server")
            .client
    }
}

/// Creates an object given as JSON.
pub async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("object json");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// Creates namespace `name` with `labels`.
pub async fn namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    create(
        &api,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels}}),
    )
    .await;
}

/// Creates ServiceAccount `namespace/name` (no controller makes them on the test's server).
pub async fn service_account(client: &Client, namespace: &str, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), namespace);
    create(
        &api,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
}

/// A pod `name` with `service_account` (none when `None`) on `node`, labelled `labels`, with
/// one container port named `http` (8080). It never runs until [`run_pod`] says so.
pub fn pod(
    name: &str,
    service_account: Option<&str>,
    node: &str,
    labels: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({
        "nodeName": node,
        "automountServiceAccountToken": false,
        "containers": [{"name": "app", "image": "example.invalid/app",
                        "ports": [{"name": "http", "containerPort": 8080}]}],
    });
    if let Some(sa) = service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels}, "spec": spec})
}

/// Plays the kubelet: the pod runs, has address `ip`, and is ready.
pub async fn run_pod(pods: &Api<Pod>, name: &str, ip: &str) {
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch pod status");
}

/// Installs the AuthorizationPolicy CRD (group, kind and version as Istio's; the schema keeps any
/// spec, so that a test can store what Istio's own schema would refuse) and waits until it is
/// served.
pub async fn install_policy_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "authorizationpolicies.security.istio.io"},
        "spec": {"group": "security.istio.io", "scope": "Namespaced",
                 "names": {"plural": "authorizationpolicies", "singular": "authorizationpolicy",
                           "kind": "AuthorizationPolicy", "listKind": "AuthorizationPolicyList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                   "properties": {"spec": {"type": "object",
                                       "x-kubernetes-preserve-unknown-fields": true}}}}}]}
    });
    let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("crd json");
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create CRD: {e}"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client
            .list_api_group_resources("security.istio.io/v1")
            .await
            .is_ok_and(|l| {
                l.resources
                    .iter()
                    .any(|r| r.name == "authorizationpolicies")
            })
        {
            return;
        }
        assert!(Instant::now() < deadline, "the CRD is never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An AuthorizationPolicy `name` with `spec`, to create in a namespace.
pub fn policy(name: &str, spec: serde_json::Value) -> kube::api::DynamicObject {
    let mut obj =
        kube::api::DynamicObject::new(name, &zident_kube::authorization_policy_resource());
    obj.data = json!({"spec": spec});
    obj
}
