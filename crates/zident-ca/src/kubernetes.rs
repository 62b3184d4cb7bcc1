//! `zident ca --kubernetes`: the mesh from the API server, with the mesh file's nodes, tokens
//! and entries beside it when one is given. Every change any watch sees rebuilds the cluster's
//! part (pure, see `zident_kube::translate`), combines it with the file's and checks the whole;
//! the CA publishes it only when it differs, so xDS pushes only what changed. Through an API
//! outage the last good view stays in force and `/ready` and `/debug/kubernetes` say since when.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zident_identity::TrustDomain;
use zident_kube::{ClusterMesh, Connection, EventPublisher, MeshSettings, SourceConfig, Watching};
use zident_mesh::{CallerToken, MeshError, MeshFile};

use crate::cluster_view::{ClusterView, Counts};
use crate::config::KubernetesConfig;
use crate::metrics::CaMetrics;
use crate::node_authorizer::NodeAuthorizer;
use crate::state::CaState;

/// The mesh file's part: its entries and its callers' tokens, read once per edit of the file.
pub(crate) struct FileBase {
    pub(crate) mesh: MeshFile,
    pub(crate) tokens: Vec<(String, CallerToken)>,
}

/// Where an edited mesh file goes when the cluster is the source: it is combined with the
/// cluster's part, not applied alone.
pub(crate) type FileSink = Arc<watch::Sender<Arc<FileBase>>>;

/// Why the cluster's mesh could not be had at start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The API server cannot be used.
    #[error(transparent)]
    Source(#[from] zident_kube::SourceError),
    /// The file and the cluster together break a rule the file's own entries are part of.
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// The source, started and synced; [`ClusterSource::follow`] keeps the mesh up to date.
pub(crate) struct ClusterSource {
    watching: Watching,
    api: Connection,
    config: KubernetesConfig,
    /// The file's tokens in force, so that an edit of a token alone is applied too.
    applied_tokens: Vec<(String, CallerToken)>,
    trust_domain: TrustDomain,
    base: watch::Receiver<Arc<FileBase>>,
    base_tx: FileSink,
    settings: MeshSettings,
    events: EventPublisher,
    pub(crate) view: Arc<Mutex<ClusterView>>,
    /// The first mesh, for the CA to start with.
    pub(crate) initial: MeshFile,
}

impl ClusterSource {
    /// Connects, lists every kind, and builds the first mesh.
    pub(crate) async fn start(
        config: &KubernetesConfig,
        mesh_path: &Path,
    ) -> Result<Self, KubernetesError> {
        let api = match &config.kubeconfig {
            Some(path) => Connection::from_kubeconfig(path).await?,
            None => Connection::infer().await?,
        };
        let source = SourceConfig {
            namespace: config.namespace.clone(),
            initial_sync: config.initial_sync,
        };
        let watching = Watching::start(&api, &source).await?;
        let objects = watching.objects(&config.namespace);
        let base = if config.with_mesh_file {
            let mesh = MeshFile::load(mesh_path)?;
            let tokens = mesh.resolve_tokens(mesh_path)?;
            FileBase { mesh, tokens }
        } else {
            // The API alone: the trust domain is MeshConfig's, when it names one.
            let settings = objects
                .mesh_config
                .as_ref()
                .and_then(|c| c.data.as_ref()?.get(zident_kube::mesh_config::KEY).cloned())
                .and_then(|yaml| zident_kube::mesh_config::parse(&yaml).ok());
            let td = settings
                .and_then(|s| s.trust_domain)
                .unwrap_or_else(zident_mesh::default_trust_domain);
            FileBase {
                mesh: MeshFile::empty(td),
                tokens: Vec::new(),
            }
        };
        let trust_domain = base.mesh.trust_domain.clone();
        let base_tokens = base.tokens.clone();
        let (base_tx, base_rx) = watch::channel(Arc::new(base));
        let events = EventPublisher::new(&api, "zident-ca", config.instance.clone());
        let mut source = Self {
            watching,
            api,
            config: config.clone(),
            applied_tokens: base_tokens,
            trust_domain,
            base: base_rx,
            base_tx: Arc::new(base_tx),
            settings: MeshSettings::default(),
            events,
            view: Arc::default(),
            initial: MeshFile::empty(zident_mesh::default_trust_domain()),
        };
        source.initial = source.rebuild(None)?.0;
        Ok(source)
    }

    /// The client of the API server.
    pub(crate) fn connection(&self) -> &Connection {
        &self.api
    }

    /// The judge of ServiceAccount tokens: TokenReviews on this API server, pods from this
    /// source's watch.
    pub(crate) fn kube_auth(&self) -> crate::kube_auth::KubeAuth {
        crate::kube_auth::KubeAuth::new(
            &self.api,
            self.watching.pods(),
            self.config.trusted_node_accounts.clone(),
        )
    }

    /// Keeps `istio-ca-root-cert` in every namespace equal to the CA's roots in force, for as
    /// long as the task runs, while `leading` says this replica leads (`None`: a CA without
    /// replicas always does; see `zident_kube::root_config_maps`).
    pub(crate) fn publish_roots(
        &self,
        state: Arc<CaState>,
        leading: Option<watch::Receiver<bool>>,
    ) -> JoinHandle<()> {
        let targets = self.watching.root_targets();
        let connection = self.api.clone();
        let (tx, rx) = watch::channel(state.authority().bundle().to_pem());
        let mut changes = state.subscribe_authority();
        let follower = state.clone();
        tokio::spawn(async move {
            let follow = async move {
                while changes.changed().await.is_ok() {
                    let pem = follower.authority().bundle().to_pem();
                    tx.send_if_modified(|held| {
                        let changed = *held != pem;
                        *held = pem;
                        changed
                    });
                }
            };
            let publish =
                zident_kube::publish_roots(connection, targets, rx, leading, move |round| {
                    state.metrics.root_config_maps(round)
                });
            tokio::select! {
                () = follow => {}
                () = publish => {}
            }
        })
    }

    /// Where an edited mesh file goes.
    pub(crate) fn file_sink(&self) -> FileSink {
        self.base_tx.clone()
    }

    /// The cluster's part and the file's, as one checked mesh; findings logged, counted and
    /// recorded as Events.
    /// Returns the mesh with the file's tokens it was built with.
    fn rebuild(
        &mut self,
        metrics: Option<&CaMetrics>,
    ) -> Result<(MeshFile, Vec<(String, CallerToken)>), MeshError> {
        let objects = self.watching.objects(&self.config.namespace);
        let cluster: ClusterMesh =
            zident_kube::translate(&objects, &self.trust_domain, &self.settings);
        self.settings = cluster.settings.clone();
        let base = self.base.borrow().clone();
        let combined = zident_kube::combine(&base.mesh, &cluster, &self.api.server);
        let mut findings = cluster.findings.clone();
        let result = combined.map(|c| {
            findings.extend(c.findings);
            (c.mesh, base.tokens.clone())
        });
        findings.sort();
        for f in self.events.publish(&findings) {
            tracing::warn!(target: "zident::ca", object = %f.object, reason = f.reason, "{f}");
            if let Some(m) = metrics {
                m.kubernetes_finding(f.object.kind, f.reason, f.severity.as_str());
            }
        }
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        view.status = self.watching.status().borrow().clone();
        view.findings = findings;
        view.counts = Counts {
            namespaces: objects.namespaces.len(),
            pods: objects.pods.len(),
            services: objects.services.len(),
            policies: objects.policies.len(),
            workloads: cluster.workloads.len(),
        };
        view.rebuilt = Some(SystemTime::now());
        view.refused = result.as_ref().err().map(ToString::to_string);
        result
    }

    /// Rebuilds on every change of the cluster or the file and puts each new mesh in force.
    pub(crate) fn follow(mut self, state: Arc<CaState>) -> JoinHandle<()> {
        // What the first view found was published before the metrics existed: count it now.
        for f in &self.view.lock().unwrap_or_else(|e| e.into_inner()).findings {
            state
                .metrics
                .kubernetes_finding(f.object.kind, f.reason, f.severity.as_str());
        }
        tokio::spawn(async move {
            let mut changes = self.watching.mesh_changes();
            let mut status = self.watching.status();
            let mut base = self.base.clone();
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_none() { return },
                    r = base.changed() => if r.is_err() { return },
                    r = status.changed() => {
                        if r.is_err() { return }
                        let s = status.borrow_and_update().clone();
                        self.view.lock().unwrap_or_else(|e| e.into_inner()).status = s;
                        continue;
                    }
                }
                base.borrow_and_update();
                // Translating, combining and checking a large cluster takes milliseconds: off
                // the threads serving requests, as the xDS generations are built.
                let judge = state.clone();
                let built = tokio::task::spawn_blocking(move || {
                    let result = self.rebuild(Some(&judge.metrics));
                    (self, result)
                })
                .await;
                let result;
                (self, result) = match built {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::error!(target: "zident::ca", "rebuilding the mesh from the cluster failed, and the cluster is no longer followed: {e}");
                        return;
                    }
                };
                match result {
                    Ok((mesh, tokens)) => self.apply(&state, mesh, tokens),
                    Err(e) => {
                        state.metrics.reload("kubernetes", false);
                        tracing::error!(target: "zident::ca", "the mesh from the cluster was refused, keeping the last good one: {e}");
                    }
                }
            }
        })
    }

    fn apply(&mut self, state: &CaState, mesh: MeshFile, tokens: Vec<(String, CallerToken)>) {
        if *state.subscribe_mesh().borrow().mesh == mesh && tokens == self.applied_tokens {
            return;
        }
        let authorizer = NodeAuthorizer::from_tokens(&mesh, tokens.clone());
        self.applied_tokens = tokens;
        tracing::info!(
            target: "zident::ca",
            workloads = mesh.workloads.len(),
            services = mesh.services.len(),
            policies = mesh.policies.len(),
            "mesh rebuilt from the cluster"
        );
        state.set_mesh(mesh, authorizer);
        state.metrics.reload("kubernetes", true);
    }
}
