//! The agent's xDS stream. It subscribes to every type zident serves, sends the versions it
//! already holds (from the last stream or the on-disk copy) so a reconnect carries only what
//! changed, and judges what arrives as a whole:
//!
//! - the answers to a stream's first requests are applied together once every type has
//!   answered, so policies never lag behind the workloads they guard;
//! - later responses that arrive together (one edit touching several types) are applied
//!   together too;
//! - what is applied must read and pass the mesh rules and this node's checks, as an edited
//!   file must; otherwise every response of the batch is NACKed with the reason and the last
//!   good view stays in force.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use zident_mesh::MeshOrigin;
use zident_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use zident_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node, Status};
use zident_xds::{Resource, Snapshot};

use super::bounds::XdsBounds;
use super::error::{Nack, StreamEnded};
use super::status::{Event, XdsStatusCell};
use crate::ca::client::CaClient;
use crate::reload::MeshApplier;
use crate::workloads::MeshRefused;

/// The first retry after a stream ends; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Opening the stream (TCP, TLS, HTTP/2, response headers) must finish within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the stream task needs.
pub(crate) struct XdsClient {
    pub(crate) ca: Arc<CaClient>,
    pub(crate) applier: Arc<MeshApplier>,
    pub(crate) status: Arc<XdsStatusCell>,
    pub(crate) cache: Option<PathBuf>,
    /// Set once a view is in force (from the cache or the stream).
    pub(crate) ready: watch::Sender<bool>,
    /// What it takes from the control plane, at most.
    pub(crate) bounds: XdsBounds,
}

/// A response not yet ACKed or NACKed.
struct Unanswered {
    type_url: String,
    nonce: String,
    version: String,
}

impl XdsClient {
    /// Keeps a stream open for as long as the agent runs. `held` is the view in force.
    pub(crate) async fn run(self, mut held: Snapshot) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let ended = self.stream(&mut held).await;
            let message = match ended {
                Ok(()) => StreamEnded::Closed.to_string(),
                Err(e) => e.to_string(),
            };
            self.status.update(|s| {
                s.connected = false;
                s.connected_since = None;
                s.last_error = Some(message.clone());
            });
            if started.elapsed() > Duration::from_secs(30) {
                backoff = FIRST_BACKOFF;
            }
            tracing::warn!(
                target: "zident::identity",
                ca = %self.ca.address(),
                retry_in_ms = backoff.as_millis() as u64,
                "xDS stream to the control plane ended, keeping the last good mesh: {message}"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn stream(&self, held: &mut Snapshot) -> Result<(), StreamEnded> {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        for type_url in zident_xds::TYPES {
            let request = DeltaDiscoveryRequest {
                node: Some(self.node()),
                type_url: type_url.to_owned(),
                initial_resource_versions: held
                    .of(type_url)
                    .map(|r| (r.name.clone(), r.version.clone()))
                    .collect(),
                ..Default::default()
            };
            tx.send(request)
                .await
                .map_err(|_| StreamEnded::QueueClosed)?;
        }
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut request = tonic::Request::new(outbound);
        request
            .metadata_mut()
            .insert("authorization", self.ca.authorization().await?);
        let (replica, channel) = self.ca.channel();
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.bounds.max_response_bytes);
        let opened =
            match tokio::time::timeout(OPEN_TIMEOUT, client.delta_aggregated_resources(request))
                .await
            {
                Ok(Ok(o)) => o,
                Ok(Err(s)) => {
                    let ended = StreamEnded::status(replica.clone(), &s);
                    if s.code() == tonic::Code::Unavailable {
                        // The next attempt goes to another replica, if there is one.
                        self.ca.unreachable(&replica, &ended.cause());
                    }
                    return Err(ended);
                }
                Err(_) => {
                    let ended = StreamEnded::Timeout {
                        replica: replica.clone(),
                        timeout: OPEN_TIMEOUT,
                    };
                    self.ca.unreachable(&replica, &ended.cause());
                    return Err(ended);
                }
            };
        let mut responses = opened.into_inner();
        self.status.update(|s| {
            s.connected = true;
            s.connected_since = Some(zident_identity::rfc3339(SystemTime::now()));
            s.last_error = None;
            s.replica = Some(replica.clone());
        });
        tracing::info!(target: "zident::identity", ca = %replica, "xDS stream to the control plane established");

        let mut awaiting: HashSet<&str> = zident_xds::TYPES.into_iter().collect();
        let mut staged = held.clone();
        let mut unanswered: Vec<Unanswered> = Vec::new();
        loop {
            let first = match responses.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    // A response past --xds-max-response-bytes cannot be read, so not NACKed
                    // either: the stream ends, saying which bound, and the last view stays.
                    return Err(StreamEnded::Status {
                        replica: replica.clone(),
                        code: s.code(),
                        message: format!(
                            "{}; this node reads responses of at most {} bytes (--xds-max-response-bytes)",
                            s.message(),
                            self.bounds.max_response_bytes
                        ),
                    });
                }
                Err(s) => {
                    // The replica went away: the next stream opens to another, if any.
                    let ended = StreamEnded::status(replica.clone(), &s);
                    self.ca.unreachable(&replica, &ended.cause());
                    return Err(ended);
                }
            };
            // What has already arrived goes into the same judgement.
            let mut batch = vec![first];
            while let Some(Ok(Some(m))) = responses.message().now_or_never() {
                batch.push(m);
            }
            let mut broken = None;
            for response in batch {
                awaiting.remove(response.type_url.as_str());
                self.status.update(|s| {
                    s.pushes += 1;
                    s.last_push = Some(Event::now(
                        &response.type_url,
                        &response.system_version_info,
                        None,
                    ));
                });
                if let Err(e) = stage(&mut staged, &response, &self.bounds) {
                    broken.get_or_insert(e);
                }
                unanswered.push(Unanswered {
                    type_url: response.type_url,
                    nonce: response.nonce,
                    version: response.system_version_info,
                });
            }
            if broken.is_none() && !awaiting.is_empty() {
                // The first answers of this stream are judged together.
                continue;
            }
            let verdict = match broken {
                Some(e) => Err(e),
                None => self.put_in_force(&staged).await.map_err(Nack::from),
            };
            match verdict {
                Ok(()) => {
                    *held = staged.clone();
                    self.store(held).await;
                    for u in unanswered.drain(..) {
                        self.answer(&tx, &u, None).await?;
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    self.applier.refused("control plane mesh", &e);
                    staged = held.clone();
                    for u in unanswered.drain(..) {
                        self.answer(&tx, &u, Some(e.clone())).await?;
                    }
                }
            }
            self.status.update(|s| {
                s.resources = zident_xds::TYPES
                    .iter()
                    .map(|t| (zident_xds::short_name(t), held.count(t)))
                    .collect();
            });
        }
    }

    /// Puts `staged` in force if it passes every check; the reason otherwise. Decoding and
    /// the mesh rules run here; resolving users (`/etc/passwd`) and putting the mesh in force
    /// (Workload API directories, sockets, SVID files) touch the disk, so they run on the
    /// blocking pool, never on the runtime worker that also carries the node's tunnels.
    async fn put_in_force(&self, staged: &Snapshot) -> Result<(), MeshRefused> {
        let origin = MeshOrigin::ControlPlane(self.ca.address().to_owned());
        let mesh = staged
            .to_mesh(&self.applier.trust_domain)?
            .received(&origin)?;
        let applier = self.applier.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let accepted = applier.check(mesh, origin)?;
            let (view, mesh) = (&accepted.view, accepted.view.mesh());
            tracing::info!(
                target: "zident::identity",
                workloads = mesh.workloads.len(),
                policies = mesh.policies.len(),
                services = mesh.services.len(),
                identities = view.identities().len(),
                "mesh from the control plane applied"
            );
            applier.apply(accepted);
            Ok::<(), MeshRefused>(())
        })
        .await;
        match applied {
            Ok(result) => result?,
            // A panic there is a bug: it ends this task as it would have inline.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down, and this task with it.
            Err(_) => return Ok(()),
        }
        self.status.update(|s| s.view_from = "stream");
        self.ready.send_replace(true);
        Ok(())
    }

    async fn answer(
        &self,
        tx: &mpsc::Sender<DeltaDiscoveryRequest>,
        u: &Unanswered,
        error: Option<String>,
    ) -> Result<(), StreamEnded> {
        let event = Event::now(&u.type_url, &u.version, error.clone());
        self.status.update(|s| {
            if error.is_some() {
                s.nacks += 1;
                s.last_nack = Some(event);
            } else {
                s.acks += 1;
                s.last_ack = Some(event);
            }
        });
        tx.send(DeltaDiscoveryRequest {
            type_url: u.type_url.clone(),
            response_nonce: u.nonce.clone(),
            error_detail: error.map(|message| Status {
                // google.rpc.Code.INVALID_ARGUMENT
                code: 3,
                message,
            }),
            ..Default::default()
        })
        .await
        .map_err(|_| StreamEnded::QueueClosed)
    }

    async fn store(&self, held: &Snapshot) {
        let Some(path) = self.cache.clone() else {
            return;
        };
        let snapshot = held.clone();
        let written =
            tokio::task::spawn_blocking(move || super::cache::store(&path, &snapshot)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(target: "zident::identity", "cannot keep the mesh from the control plane on disk (a restart during an outage would start empty): {e}")
            }
            Err(e) => {
                tracing::warn!(target: "zident::identity", "writing the xDS cache failed: {e}")
            }
        }
    }

    fn node(&self) -> Node {
        use prost_types::value::Kind;
        let text = |s: &str| prost_types::Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        let name = &self.applier.node;
        Node {
            id: format!("zident~{name}"),
            cluster: String::new(),
            metadata: Some(prost_types::Struct {
                fields: [
                    ("NODE_NAME".to_owned(), text(name)),
                    ("NAME".to_owned(), text(name)),
                    ("ZIDENT_VERSION".to_owned(), text(env!("CARGO_PKG_VERSION"))),
                ]
                .into(),
            }),
        }
    }
}

/// Applies one response to `staged`; refuses a resource of another type than the response's,
/// and what passes `bounds` (then `staged` may hold part of it: the caller drops it).
fn stage(
    staged: &mut Snapshot,
    response: &DeltaDiscoveryResponse,
    bounds: &XdsBounds,
) -> Result<(), Nack> {
    let type_url = response.type_url.as_str();
    if !zident_xds::is_known_type(type_url) {
        return Err(Nack::UnknownType(type_url.to_owned()));
    }
    let names = response
        .resources
        .iter()
        .map(|r| &r.name)
        .chain(&response.removed_resources);
    if let Some(long) = names.into_iter().find(|n| n.len() > bounds.max_name_bytes) {
        return Err(Nack::NameTooLong {
            len: long.len(),
            start: long.chars().take(40).collect(),
            max: bounds.max_name_bytes,
        });
    }
    // Counted before anything is copied: at most what is held and what arrives.
    if response.resources.len() > bounds.max_resources {
        return Err(Nack::TooMany {
            type_url: type_url.to_owned(),
            count: response.resources.len(),
            max: bounds.max_resources,
        });
    }
    let mut changed = Vec::with_capacity(response.resources.len());
    for r in &response.resources {
        let Some(any) = &r.resource else {
            return Err(Nack::NoBody(r.name.clone()));
        };
        if any.type_url != type_url {
            return Err(Nack::WrongType {
                name: r.name.clone(),
                found: any.type_url.clone(),
                expected: type_url.to_owned(),
            });
        }
        changed.push(Resource {
            name: r.name.clone(),
            version: r.version.clone(),
            value: any.value.clone(),
        });
    }
    staged.apply(type_url, changed, &response.removed_resources);
    let count = staged.count(type_url);
    if count > bounds.max_resources {
        return Err(Nack::TooMany {
            type_url: type_url.to_owned(),
            count,
            max: bounds.max_resources,
        });
    }
    Ok(())
}

/// Loads the on-disk copy at `path` for a start without the control plane; `None` (with a
/// log line saying why) when there is none or it cannot be used.
pub(crate) fn load_cache(path: &Path) -> Option<Snapshot> {
    match super::cache::load(path) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(target: "zident::identity", "ignoring the xDS cache: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zident_proto::xds::Resource as WireResource;

    fn response(names: &[String]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: zident_xds::ADDRESS.into(),
            resources: names
                .iter()
                .map(|n| WireResource {
                    name: n.clone(),
                    version: "1".into(),
                    resource: Some(prost_types::Any {
                        type_url: zident_xds::ADDRESS.into(),
                        value: Vec::new(),
                    }),
                })
                .collect(),
            nonce: "1".into(),
            ..Default::default()
        }
    }

    /// `e` refuses `count` resources past a bound of 3.
    fn too_many(e: &Nack, count: usize) -> bool {
        matches!(e, Nack::TooMany { count: c, max: 3, .. } if *c == count)
    }

    #[test]
    fn a_response_past_a_bound_is_refused_saying_which() {
        let bounds = XdsBounds {
            max_response_bytes: 1 << 20,
            max_resources: 3,
            max_name_bytes: 64,
        };
        let mut staged = Snapshot::default();
        let names = |n: usize, from: usize| -> Vec<String> {
            (from..from + n).map(|i| format!("w{i}")).collect()
        };
        assert!(stage(&mut staged, &response(&names(2, 0)), &bounds).is_ok());
        // A name of 2 MB: refused before anything is copied.
        let long = vec!["x".repeat(2 << 20)];
        let e = stage(&mut staged, &response(&long), &bounds).unwrap_err();
        assert!(matches!(e, Nack::NameTooLong { len, max: 64, .. } if len == 2 << 20));
        assert!(e.to_string().contains("--xds-max-name-bytes"), "{e}");
        assert!(
            e.to_string().len() < 300,
            "the name is not repeated whole: {e}"
        );
        // Too many in one response, and too many held after one.
        let e = stage(&mut staged, &response(&names(4, 10)), &bounds).unwrap_err();
        assert!(too_many(&e, 4), "{e}");
        let mut again = Snapshot::default();
        stage(&mut again, &response(&names(2, 0)), &bounds).unwrap();
        let e = stage(&mut again, &response(&names(2, 20)), &bounds).unwrap_err();
        assert!(too_many(&e, 4), "{e}");
        assert!(e.to_string().contains("--xds-max-resources"), "{e}");
    }
}
