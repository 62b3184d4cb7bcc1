//! Handing identities to workloads: a SPIFFE Workload API socket per local workload, and,
//! optionally, PEM files per workload.
//!
//! Layout, under the configured directories: `<dir>/<namespace>/<workload name>/agent.sock`
//! and, for an Envoy, `<dir>/<namespace>/<workload name>/workload-spiffe-uds/socket` (SDS;
//! both serve both APIs; mount that one directory into the workload) and `<svid-dir>/<namespace>/<workload name>/`
//! `{svid.pem, svid_key.pem, bundle.pem}`. Directories are 0700 and sockets 0600: only the
//! agent's user, and whoever the directory is mounted for, get in. Sockets and files appear and
//! disappear with the workloads in the mesh file; a workload whose identity changes keeps its
//! socket path and directory, served as the new identity.

pub mod attest;
mod files;
pub mod sds;
mod service;
pub mod shared;
mod traverse;
mod uds_h2;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zident_identity::CertificateProvider;

pub use crate::config::DeliveryConfig;
pub use files::{write_version, write_version_for};
pub use service::WorkloadApiService;

use crate::workloads::LocalWorkload;
use traverse::traversable;

struct Served {
    id: zident_identity::SpiffeId,
    run_as: Option<crate::unix_users::RunAs>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The sockets (Workload API, then SDS) and the files they were bound as (device, inode):
    /// a socket bound later at the same path for the same workload (a new identity) is another
    /// file, and must survive the old one's clean-up.
    sockets: Vec<(PathBuf, (u64, u64))>,
    /// The SVID file directory.
    files: Option<PathBuf>,
}

type Key = (String, String);

impl Served {
    /// Ends the streams and tasks, then removes what is no longer wanted: the socket file if
    /// it is still this one, and the SVID files (private keys among them) if the workload is
    /// gone from `map` by then. Removal takes the map's lock, so it cannot race a `sync` that
    /// serves the workload again.
    fn shut(self, key: Key, map: Arc<Mutex<BTreeMap<Key, Served>>>) {
        let _ = self.stop.send(true);
        tokio::spawn(async move {
            for t in self.tasks {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
            }
            let (sockets, files) = (self.sockets, self.files);
            let _ = tokio::task::spawn_blocking(move || {
                let served = map.lock().unwrap_or_else(|e| e.into_inner());
                // Served again (a new identity, or re-added): its new socket is at this path.
                // Otherwise remove the socket if it is still the one bound here (an inode can
                // be reused, so the identity check alone would not do).
                for (path, ours) in sockets {
                    if !served.contains_key(&key) && file_id(&path).is_some_and(|now| now == ours) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                if let Some(dir) = files
                    && !served.contains_key(&key)
                    && std::fs::symlink_metadata(&dir).is_ok()
                {
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => tracing::info!(target: "zident::identity", dir = %dir.display(), "removed the SVID files of {}/{}", key.0, key.1),
                        Err(e) => tracing::warn!(target: "zident::identity", "cannot remove the SVID files in {}: {e}", dir.display()),
                    }
                }
            })
            .await;
        });
    }
}

/// The (device, inode) of the file at `path`, without following a link.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The sockets and files of all local workloads, served from a [`CertificateProvider`].
pub struct Delivery<P> {
    config: DeliveryConfig,
    provider: Arc<P>,
    served: Arc<Mutex<BTreeMap<Key, Served>>>,
    /// Workload API clients, the workloads they are attested against, and the counts.
    clients: Arc<shared::Clients>,
    /// Stops the shared socket.
    shared_stop: watch::Sender<bool>,
}

impl<P> Drop for Delivery<P> {
    fn drop(&mut self) {
        let _ = self.shared_stop.send(true);
        if let Some(path) = &self.config.shared_socket {
            let _ = std::fs::remove_file(path);
        }
        let served = std::mem::take(&mut *self.served.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, s) in served {
            let _ = s.stop.send(true);
            for t in &s.tasks {
                t.abort();
            }
            for (socket, ours) in &s.sockets {
                if file_id(socket).is_some_and(|now| now == *ours) {
                    let _ = std::fs::remove_file(socket);
                }
            }
        }
    }
}

impl<P: CertificateProvider> Delivery<P> {
    /// Delivery for the provider's identities.
    pub fn new(config: DeliveryConfig, provider: Arc<P>, clients: Arc<shared::Clients>) -> Self {
        Self {
            config,
            provider,
            served: Arc::new(Mutex::new(BTreeMap::new())),
            clients,
            shared_stop: watch::channel(false).0,
        }
    }

    /// Opens the shared socket (`--workload-api-socket`), if configured: 0666, or 0660 with
    /// the configured group. Call within the runtime.
    pub fn start_shared(&self) -> std::io::Result<()> {
        let Some(path) = self.config.shared_socket.clone() else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path)?;
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        match self.config.shared_socket_group {
            Some(gid) => {
                std::os::unix::fs::chown(&path, None, Some(gid))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
            }
            None => std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?,
        }
        tracing::info!(target: "zident::identity", socket = %path.display(), "serving the Workload API to every local workload, attesting each caller");
        tokio::spawn(shared::run(
            listener,
            path,
            self.clients.clone(),
            self.provider.clone(),
            self.shared_stop.subscribe(),
        ));
        Ok(())
    }

    /// The Workload API clients and attestation counts.
    pub fn clients(&self) -> Arc<shared::Clients> {
        self.clients.clone()
    }

    /// The socket path of a workload.
    pub fn socket_path(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.config
            .socket_dir
            .as_ref()
            .map(|d| d.join(namespace).join(name).join("agent.sock"))
    }

    /// The SDS socket of a workload (istio-agent's path, under the workload's directory).
    pub fn sds_socket_path(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.config.socket_dir.as_ref().map(|d| {
            d.join(namespace)
                .join(name)
                .join(SDS_SOCKET_DIR)
                .join("socket")
        })
    }

    /// The socket of the first workload served (for showing where sockets are).
    pub fn first_socket(&self) -> Option<PathBuf> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find_map(|s| s.sockets.first().map(|(p, _)| p.clone()))
    }

    /// Serves exactly `workloads`: new ones get a socket (and files), gone ones lose theirs, and a
    /// workload whose identity changed is served anew.
    pub fn sync(&self, workloads: &[LocalWorkload]) {
        self.clients.set_workloads(workloads);
        if self.config.socket_dir.is_none() && self.config.svid_dir.is_none() {
            return;
        }
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: BTreeMap<(String, String), &LocalWorkload> = workloads
            .iter()
            .map(|w| ((w.namespace.clone(), w.name.clone()), w))
            .collect();
        let stale: Vec<_> = served
            .iter()
            .filter(|(k, s)| {
                wanted
                    .get(*k)
                    .is_none_or(|w| w.id != s.id || w.run_as != s.run_as)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(s) = served.remove(&key) {
                tracing::info!(target: "zident::identity", "no longer serving {}/{} as {}", key.0, key.1, s.id);
                s.shut(key, self.served.clone());
            }
        }
        for (key, w) in wanted {
            if served.contains_key(&key) {
                continue;
            }
            match self.serve(w) {
                Ok(s) => {
                    served.insert(key, s);
                }
                Err(e) => tracing::error!(
                    target: "zident::identity",
                    "cannot serve identity to {}/{}: {e}",
                    w.namespace,
                    w.name
                ),
            }
        }
    }

    fn serve(&self, w: &LocalWorkload) -> std::io::Result<Served> {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut sockets = Vec::new();
        // The Workload API socket, and the SDS socket where istio-agent puts it; each serves
        // both APIs, as the same workload.
        let paths = [
            (
                self.socket_path(&w.namespace, &w.name),
                2,
                "the Workload API",
            ),
            (self.sds_socket_path(&w.namespace, &w.name), 3, "Envoy SDS"),
        ];
        for (path, depth, what) in paths {
            let Some(path) = path else { continue };
            let listener = bind_private(&path, w.run_as, depth)?;
            let bound_as = file_id(&path).ok_or_else(|| {
                std::io::Error::other(format!("{} vanished as it was bound", path.display()))
            })?;
            tasks.push(tokio::spawn(own_socket(
                listener,
                path.display().to_string(),
                w.id.clone(),
                w.run_as,
                self.clients.clone(),
                self.provider.clone(),
                stop_rx.clone(),
            )));
            tracing::info!(target: "zident::identity", socket = %path.display(), "serving {what} for {}", w.id);
            sockets.push((path, bound_as));
        }
        let mut files_dir = None;
        if let (Some(dir), Some(status)) = (&self.config.svid_dir, self.provider.watch(&w.id)) {
            let dir = dir.join(&w.namespace).join(&w.name);
            files_dir = Some(dir.clone());
            tasks.push(tokio::spawn(files::keep_files(
                dir,
                status,
                self.provider.watch_bundle(),
                stop_rx,
                self.config.svid_command.clone(),
                w.run_as,
            )));
        }
        Ok(Served {
            id: w.id.clone(),
            run_as: w.run_as,
            stop,
            tasks,
            sockets,
            files: files_dir,
        })
    }
}

/// The directory of a workload's SDS socket, under its own directory (istio-agent's name).
pub const SDS_SOCKET_DIR: &str = "workload-spiffe-uds";

/// Binds a Unix socket at `path` in a 0700 directory, with the socket itself 0600, both owned
/// by the workload's declared user and group (if any), so that it needs no root. `depth`: how
/// many directories above the socket's lie under the socket root (they are made traversable).
fn bind_private(
    path: &Path,
    owner: Option<crate::unix_users::RunAs>,
    depth: usize,
) -> std::io::Result<tokio::net::UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // A socket left by a previous run would make bind fail.
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(dir, Some(o.uid), o.gid)?;
        std::os::unix::fs::chown(path, Some(o.uid), o.gid)?;
        // `<dir>/<namespace>` and `<dir>` (and the workload's own directory, for the SDS
        // socket) must let the workload's user through (not list).
        traversable(dir, depth)?;
    }
    Ok(listener)
}

/// Serves a workload's own socket: a caller is that workload, provided it runs as the user the
/// workload declares (or as root); any other is refused with the reason.
async fn own_socket<P: CertificateProvider>(
    listener: tokio::net::UnixListener,
    shown: String,
    id: zident_identity::SpiffeId,
    owner: Option<crate::unix_users::RunAs>,
    clients: Arc<shared::Clients>,
    provider: Arc<P>,
    stop: watch::Receiver<bool>,
) {
    let decide = {
        let clients = clients.clone();
        move |peer: attest::Peer| match owner {
            Some(o) if peer.uid != o.uid && peer.uid != 0 => {
                clients.count("refused");
                Err(attest::AttestRefused::NotTheOwner {
                    pid: peer.pid,
                    uid: peer.uid,
                    id: id.to_string(),
                    owner: o.uid,
                })
            }
            _ => {
                clients.count(attest::Method::Socket.label());
                Ok((id.clone(), attest::Method::Socket))
            }
        }
    };
    shared::accept(listener, shown, clients, provider, stop, decide).await;
}
