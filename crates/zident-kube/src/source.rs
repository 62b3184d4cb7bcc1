//! Watching the API server: one reflector per kind (namespaces, pods, services, the mesh
//! ConfigMap, AuthorizationPolicies), each a list-then-watch that resumes from its last
//! resourceVersion and re-lists after an outage, never a poll. The stores keep the last good
//! view through an outage; the status says which watch is failing and since when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::changes::{Follow, KindChanges};
use crate::connection::{Connection, REQUEST_TIMEOUT, WATCH_SECONDS};
use crate::error::SourceError;
use crate::mesh_config;
use crate::translate::Objects;

/// What to watch.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The control plane's namespace, where istiod's mesh ConfigMap lives (`istio-system`).
    pub namespace: String,
    /// How long the first full list of every kind may take before start-up fails.
    pub initial_sync: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            namespace: mesh_config::DEFAULT_ROOT_NAMESPACE.into(),
            initial_sync: Duration::from_secs(60),
        }
    }
}

/// The health of one watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchHealth {
    /// Has listed everything once.
    pub synced: bool,
    /// Failing since this time (`None`: healthy).
    pub failing_since: Option<SystemTime>,
    /// Its last error.
    pub last_error: Option<String>,
}

/// The source's health, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// The API server.
    pub server: String,
    /// Each watched kind's health.
    pub kinds: BTreeMap<&'static str, WatchHealth>,
    /// Whether AuthorizationPolicies are watched (their CRD was served at start).
    pub policies_watched: bool,
}

impl SourceStatus {
    /// Since when the view has been stale (the earliest failing watch), or `None` when every
    /// watch is healthy.
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.kinds.values().filter_map(|h| h.failing_since).min()
    }
}

/// Running watchers. Dropping it stops them.
pub struct Watching {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    config_maps: Store<ConfigMap>,
    /// `istio-ca-root-cert` in every namespace (see `root_config_maps`).
    root_config_maps: Store<ConfigMap>,
    policies: Option<Store<DynamicObject>>,
    changes: watch::Receiver<KindChanges>,
    status: watch::Receiver<SourceStatus>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The kind and version of istiod's AuthorizationPolicy.
pub fn authorization_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy"),
        "authorizationpolicies",
    )
}

impl Watching {
    /// Starts every watch and waits for each kind's first full list.
    pub async fn start(api: &Connection, config: &SourceConfig) -> Result<Self, SourceError> {
        let (client, server) = (api.client.clone(), api.server.clone());
        let policies_served = tokio::time::timeout(REQUEST_TIMEOUT, serves_policies(&client))
            .await
            .unwrap_or(Err(kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            )))))
            .map_err(|source| SourceError::Unreachable {
                server: server.clone(),
                source,
            })?;
        if !policies_served {
            tracing::warn!(
                target: "zident::kube",
                "the API server does not serve security.istio.io/v1 AuthorizationPolicy (the CRD is not installed): no policies are read; install the CRD and restart the CA to enforce them"
            );
        }
        let (status_tx, status) = watch::channel(SourceStatus {
            server: server.clone(),
            policies_watched: policies_served,
            ..Default::default()
        });
        let (changed, changes) = watch::channel(KindChanges::new());
        let status_tx = Arc::new(Mutex::new(status_tx));
        let mut tasks = Vec::new();
        let ctx = WatchCtx {
            changed: Arc::new(changed),
            status: status_tx.clone(),
        };
        let namespaces = ctx.reflect(
            "Namespace",
            Api::<Namespace>::all(client.clone()),
            (watch_config(), ()),
            slim::<Namespace>,
            &mut tasks,
        );
        let pods = ctx.reflect(
            "Pod",
            Api::<Pod>::all(client.clone()),
            (watch_config(), ()),
            slim_pod,
            &mut tasks,
        );
        let services = ctx.reflect(
            "Service",
            Api::<Service>::all(client.clone()),
            (watch_config(), ()),
            slim::<Service>,
            &mut tasks,
        );
        let config_maps = ctx.reflect(
            "ConfigMap",
            Api::<ConfigMap>::namespaced(client.clone(), &config.namespace),
            (
                watch_config().fields(&format!("metadata.name={}", mesh_config::CONFIG_MAP)),
                (),
            ),
            slim::<ConfigMap>,
            &mut tasks,
        );
        let root_config_maps = ctx.reflect(
            ROOT_CONFIG_MAP_KIND,
            Api::<ConfigMap>::all(client.clone()),
            (
                watch_config().fields(&format!(
                    "metadata.name={}",
                    crate::root_config_maps::ROOT_CONFIG_MAP
                )),
                (),
            ),
            slim::<ConfigMap>,
            &mut tasks,
        );
        let policies = policies_served.then(|| {
            let resource = authorization_policy_resource();
            ctx.reflect(
                "AuthorizationPolicy",
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                (watch_config(), resource),
                slim::<DynamicObject>,
                &mut tasks,
            )
        });
        tasks.push(tokio::spawn(probe_while_failing(
            client.clone(),
            status_tx.clone(),
            status.clone(),
        )));
        let watching = Self {
            namespaces,
            pods,
            services,
            config_maps,
            root_config_maps,
            policies,
            changes,
            status,
            tasks,
        };
        watching.wait_synced(&server, config.initial_sync).await?;
        Ok(watching)
    }

    async fn wait_synced(&self, server: &str, timeout: Duration) -> Result<(), SourceError> {
        let mut status = self.status.clone();
        let mut expected = vec![
            "Namespace",
            "Pod",
            "Service",
            "ConfigMap",
            ROOT_CONFIG_MAP_KIND,
        ];
        if self.policies.is_some() {
            expected.push("AuthorizationPolicy");
        }
        let outcome = tokio::time::timeout(
            timeout,
            status.wait_for(|s| {
                expected
                    .iter()
                    .all(|k| s.kinds.get(k).is_some_and(|h| h.synced))
            }),
        )
        .await;
        if matches!(outcome, Ok(Ok(_))) {
            return Ok(());
        }
        let s = self.status.borrow().clone();
        let missing: Vec<&str> = expected
            .into_iter()
            .filter(|k| !s.kinds.get(k).is_some_and(|h| h.synced))
            .collect();
        let last_error = s
            .kinds
            .values()
            .find_map(|h| h.last_error.clone())
            .unwrap_or_else(|| "no error was reported".into());
        Err(SourceError::InitialSync {
            server: server.to_owned(),
            kinds: missing.join(", "),
            timeout,
            last_error,
        })
    }

    /// What the stores hold now.
    pub fn objects(&self, namespace: &str) -> Objects {
        Objects {
            namespaces: self.namespaces.state(),
            pods: self.pods.state(),
            services: self.services.state(),
            mesh_config: self.config_maps.state().into_iter().find(|c| {
                c.metadata.name.as_deref() == Some(mesh_config::CONFIG_MAP)
                    && c.metadata.namespace.as_deref() == Some(namespace)
            }),
            policies: self.policies.as_ref().map(Store::state).unwrap_or_default(),
        }
    }

    /// What [`crate::publish_roots`] reads: the namespaces and their `istio-ca-root-cert`.
    pub fn root_targets(&self) -> crate::root_config_maps::Targets {
        crate::root_config_maps::Targets {
            namespaces: self.namespaces.clone(),
            config_maps: self.root_config_maps.clone(),
            changes: Follow::new(self.changes.clone(), |kind| {
                kind == "Namespace" || kind == ROOT_CONFIG_MAP_KIND
            }),
        }
    }

    /// The watched pods, for lookups by the node authorizer.
    pub fn pods(&self) -> crate::pods::PodDirectory {
        crate::pods::PodDirectory::new(self.pods.clone(), self.changes.clone(), "Pod")
    }

    /// Changes of the kinds the mesh is made of (every kind but the CA's own root ConfigMaps).
    pub fn mesh_changes(&self) -> Follow {
        Follow::new(self.changes.clone(), |kind| kind != ROOT_CONFIG_MAP_KIND)
    }

    /// The watches' health.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }
}

/// Shared by the watch tasks: where they report changes and health.
struct WatchCtx {
    /// Each kind's changes, counted.
    changed: Arc<watch::Sender<KindChanges>>,
    status: Arc<Mutex<watch::Sender<SourceStatus>>>,
}

impl WatchCtx {
    /// One kind's reflector (`dyntype`: `()` for a typed kind, the `ApiResource` of a custom
    /// one), its objects slimmed by `slim` before they are stored.
    fn reflect<K>(
        &self,
        kind: &'static str,
        api: Api<K>,
        (config, dyntype): (watcher::Config, K::DynamicType),
        slim: fn(&mut K),
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
    {
        let writer = reflector::store::Writer::new(dyntype);
        let reader = writer.as_reader();
        let stream =
            reflector::reflector(writer, watcher(api, config).default_backoff().modify(slim));
        tasks.push(tokio::spawn(self.follow(kind, stream)));
        reader
    }

    /// Drives one watch, recording its health and announcing each change.
    fn follow<K, S>(
        &self,
        kind: &'static str,
        stream: S,
    ) -> impl std::future::Future<Output = ()> + use<K, S>
    where
        S: futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    {
        let changed = self.changed.clone();
        let status = self.status.clone();
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let mut announce = false;
                {
                    let status = status.lock().unwrap_or_else(|e| e.into_inner());
                    status.send_modify(|s| {
                        let h = s.kinds.entry(kind).or_default();
                        match &event {
                            Ok(e) => {
                                if h.failing_since.take().is_some() {
                                    tracing::info!(target: "zident::kube", kind, "watch restored");
                                }
                                h.last_error = None;
                                match e {
                                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                                    watcher::Event::InitDone => {
                                        h.synced = true;
                                        announce = true;
                                    }
                                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                                        announce = h.synced;
                                    }
                                }
                            }
                            Err(e) => {
                                if h.failing_since.is_none() {
                                    h.failing_since = Some(SystemTime::now());
                                    tracing::warn!(target: "zident::kube", kind, "watch failing, serving the last good view: {e}");
                                }
                                h.last_error = Some(e.to_string());
                            }
                        }
                    });
                }
                if announce {
                    changed.send_modify(|m| *m.entry(kind).or_default() += 1);
                }
            }
        }
    }
}

/// What the stores keep of an object: everything the translation reads. `managedFields` (the
/// server-side-apply record, often larger than the object) and the last-applied copy kubectl
/// keeps in an annotation are dropped before an object is stored.
fn slim<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A pod as the translation reads it, and nothing more: on a cluster of thousands of pods the
/// rest of a pod (its containers' images, environment, volumes, probes, the kubelet's status
/// details) would be most of the CA's memory.
fn slim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    slim(pod);
    let meta = &mut pod.metadata;
    meta.annotations = None;
    meta.finalizers = None;
    meta.generate_name = None;
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            service_account_name: spec.service_account_name.take(),
            service_account: spec.service_account.take(),
            node_name: spec.node_name.take(),
            host_network: spec.host_network,
            containers: std::mem::take(&mut spec.containers)
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status = PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            conditions: status.conditions.take().map(|conditions| {
                conditions
                    .into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
    }
}

/// How often the server is asked whether it is back while a watch fails.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A watch that resumes after an outage says nothing until an object changes, so its health
/// cannot be read from its events alone: while any watch fails, the server is asked for its
/// version every [`PROBE_EVERY`]; the first answer clears every watch's failure (each watch
/// resumes from its last resourceVersion, or re-lists, within its backoff, and a watch that
/// still fails marks itself again).
async fn probe_while_failing(
    client: Client,
    status_tx: Arc<Mutex<watch::Sender<SourceStatus>>>,
    mut status: watch::Receiver<SourceStatus>,
) {
    loop {
        if status
            .wait_for(|s| s.stale_since().is_some())
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(PROBE_EVERY).await;
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, client.apiserver_version())
            .await
            .is_ok_and(|r| r.is_ok());
        if answered {
            tracing::info!(target: "zident::kube", "the API server answers again; watches resume from where they were");
            let tx = status_tx.lock().unwrap_or_else(|e| e.into_inner());
            tx.send_modify(|s| {
                for h in s.kinds.values_mut() {
                    h.failing_since = None;
                }
            });
        }
    }
}

/// Whether the server serves `security.istio.io/v1` AuthorizationPolicy.
async fn serves_policies(client: &Client) -> Result<bool, kube::Error> {
    match client
        .list_api_group_resources("security.istio.io/v1")
        .await
    {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == "authorizationpolicies")),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The status name of the watch of `istio-ca-root-cert` ConfigMaps.
const ROOT_CONFIG_MAP_KIND: &str = "ConfigMap istio-ca-root-cert";

/// How every watch here is made.
fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{Objects, translate};
    use serde_json::json;

    /// Whatever is dropped from a stored pod, the mesh made from it is the same.
    #[test]
    fn a_slim_pod_makes_the_same_workload() {
        let full: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "in", "uid": "u1", "resourceVersion": "7",
                         "labels": {"app": "p", "version": "v2"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "x": "y"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "p-1",
                                              "uid": "o1", "controller": true}],
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}],
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"serviceAccountName": "sa", "nodeName": "n1",
                     "volumes": [{"name": "v", "emptyDir": {}}],
                     "containers": [{"name": "c", "image": "img", "env": [{"name": "A", "value": "1"}],
                                     "ports": [{"name": "web", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                       "hostIP": "192.168.0.1",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                                      {"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "img", "imageID": "x"}]}
        }))
        .expect("pod");
        let mut slimmed = full.clone();
        slim_pod(&mut slimmed);
        assert!(
            slimmed
                .metadata
                .managed_fields
                .as_ref()
                .is_none_or(|m| m.is_empty())
        );
        assert!(slimmed.metadata.annotations.is_none());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "in",
            "labels": {"istio.io/dataplane-mode": "ambient"}}}))
        .expect("namespace");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "in"},
            "spec": {"selector": {"app": "p"}, "clusterIP": "10.96.0.1",
                     "ports": [{"port": 80, "targetPort": "web"}]}}))
        .expect("service");
        let mesh = |pod: Pod| {
            let objects = Objects {
                namespaces: vec![Arc::new(ns.clone())],
                pods: vec![Arc::new(pod)],
                services: vec![Arc::new(svc.clone())],
                ..Default::default()
            };
            translate(
                &objects,
                &zident_mesh::default_trust_domain(),
                &Default::default(),
            )
        };
        let (a, b) = (mesh(full), mesh(slimmed));
        assert_eq!(a.workloads.len(), 1);
        assert_eq!(a, b);
    }
}
