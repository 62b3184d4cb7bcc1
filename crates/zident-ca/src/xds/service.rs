//! The `DeltaAggregatedResources` handler: authenticate the caller as `CreateCertificate`
//! does, then run its stream until it ends. Every caller that authenticates sees the whole
//! mesh (a node must reach destinations on every node); what it may get certificates for is
//! decided by `CreateCertificate` alone.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use zident_proto::xds::aggregated_discovery_service_server::AggregatedDiscoveryService;
use zident_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::generation::Generation;
use super::metrics::XdsMetrics;
use super::stream::StreamState;
use crate::connections::InFlight;
use crate::node_authorizer::Caller;
use crate::service::{authenticate, peer_of};
use crate::state::CaState;

/// A stream that sends no first request within this long is closed.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued for a client that does not read before the stream waits for it.
const QUEUE: usize = 16;

/// The xDS service; cheap to clone.
#[derive(Clone)]
pub(crate) struct XdsService {
    state: Arc<CaState>,
    generations: watch::Receiver<Arc<Generation>>,
    metrics: Arc<XdsMetrics>,
}

impl XdsService {
    pub(crate) fn new(
        state: Arc<CaState>,
        generations: watch::Receiver<Arc<Generation>>,
        metrics: Arc<XdsMetrics>,
    ) -> Self {
        Self {
            state,
            generations,
            metrics,
        }
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type DeltaAggregatedResourcesStream = Responses;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let peer = peer_of(&request);
        let registry = self.state.authorizer();
        let caller = authenticate(
            &self.state,
            &registry,
            request.metadata(),
            &peer,
            "xDS stream",
        )
        .map_err(|(status, _)| status)?;
        let in_flight = request.extensions().get::<InFlight>().cloned();
        let requests = request.into_inner();
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(
            requests,
            tx,
            self.generations.clone(),
            self.metrics.clone(),
            Opened {
                peer,
                caller,
                _in_flight: in_flight,
            },
        ));
        let responses =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        Ok(Response::new(Box::pin(responses)))
    }
}

/// Who opened a stream; holding it keeps the connection from counting as idle.
struct Opened {
    peer: String,
    caller: Caller,
    _in_flight: Option<InFlight>,
}

/// Runs one stream until the client goes away.
async fn run(
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    mut generations: watch::Receiver<Arc<Generation>>,
    metrics: Arc<XdsMetrics>,
    opened: Opened,
) {
    let started = Instant::now();
    let mut state = StreamState::new(format!("{} ({})", opened.caller, opened.peer));
    let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(target: "zident::ca", peer = %opened.peer, "xDS stream ended before its first request: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(target: "zident::ca", peer = %opened.peer, caller = %opened.caller, "xDS stream sent no request within {FIRST_REQUEST_TIMEOUT:?}; closed");
            let _ = tx
                .send(Err(Status::deadline_exceeded(
                    "no DeltaDiscoveryRequest within 10s of opening the stream",
                )))
                .await;
            return;
        }
    };
    let node_id = first
        .node
        .as_ref()
        .map(|n| n.id.clone())
        .unwrap_or_default();
    state.set_client(format!("{} {} ({})", opened.caller, node_id, opened.peer));
    metrics.streams.inc();
    tracing::info!(target: "zident::ca", peer = %opened.peer, caller = %opened.caller, node = %node_id, "xDS stream opened");

    let mut next = Some(first);
    let reason = loop {
        let responses = if let Some(req) = next.take() {
            let current = generations.borrow_and_update().clone();
            state.on_request(req, &current, &metrics)
        } else {
            tokio::select! {
                msg = requests.message() => match msg {
                    Ok(Some(req)) => { next = Some(req); continue; }
                    Ok(None) => break "the client closed it".to_owned(),
                    Err(e) => break format!("{e}"),
                },
                changed = generations.changed() => {
                    if changed.is_err() {
                        break "the CA is stopping".to_owned();
                    }
                    let g = generations.borrow_and_update().clone();
                    state.on_generation(&g, &metrics)
                }
            }
        };
        let mut gone = false;
        for r in responses {
            if tx.send(Ok(r)).await.is_err() {
                gone = true;
                break;
            }
        }
        if gone {
            break "the client went away".to_owned();
        }
    };
    metrics.streams.dec();
    let t = state.tally;
    tracing::info!(
        target: "zident::ca",
        peer = %opened.peer,
        caller = %opened.caller,
        node = %node_id,
        seconds = started.elapsed().as_secs(),
        pushes = t.pushes,
        acks = t.acks,
        nacks = t.nacks,
        "xDS stream closed: {reason}"
    );
}
