//! The `DeltaAggregatedResources` handler: authenticate the caller as `CreateCertificate`
//! does, then run its stream until it ends. Every caller that authenticates sees the whole
//! mesh (a node must reach destinations on every node); what it may get certificates for is
//! decided by `CreateCertificate` alone.
//!
//! The gRPC method is served here rather than through tonic's generated server so that the
//! responses are written by [`super::wire`] (shared resources, bounded chunks) instead of
//! tonic's encoder, which keeps a buffer the size of the largest response for each stream's
//! life. Requests are still decoded by tonic's `Streaming`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Request, Response};
use tokio::sync::{mpsc, watch};
use tonic::body::Body;
use tonic::codec::Codec;
use tonic::server::NamedService;
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;
use zident_listen::InFlight;
use zident_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::caps::{Slot, StreamCaps};
use super::generation::Generation;
use super::metrics::XdsMetrics;
use super::stream::{StreamState, clip};
use super::wire::{Frames, WireResponse};
use crate::node_authorizer::Caller;
use crate::service::{authenticate, peer_of};
use crate::state::CaState;

/// A stream that sends no first request within this long is closed.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued for a client that does not read before the stream waits for it.
const QUEUE: usize = 16;
/// The largest xDS request accepted: a reconnecting client lists every resource it holds.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// The one method of the service.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The xDS service; cheap to clone.
#[derive(Clone)]
pub(crate) struct XdsService {
    state: Arc<CaState>,
    generations: watch::Receiver<Arc<Generation>>,
    metrics: Arc<XdsMetrics>,
    caps: Arc<StreamCaps>,
}

impl XdsService {
    pub(crate) fn new(
        state: Arc<CaState>,
        generations: watch::Receiver<Arc<Generation>>,
        metrics: Arc<XdsMetrics>,
        caps: Arc<StreamCaps>,
    ) -> Self {
        Self {
            state,
            generations,
            metrics,
            caps,
        }
    }

    /// Checks the call and starts its stream; the body carries the stream's responses.
    async fn open(self, req: Request<Body>) -> Result<ResponseBody, Status> {
        if req.uri().path() != DELTA_PATH {
            return Err(Status::unimplemented(format!(
                "{} is not served here: zident serves DeltaAggregatedResources",
                req.uri().path()
            )));
        }
        if let Some(encoding) = req.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            return Err(Status::unimplemented(
                "compressed xDS requests are not accepted: send them uncompressed",
            ));
        }
        let (parts, body) = req.into_parts();
        let request = tonic::Request::from_http(Request::from_parts(parts, ()));
        let peer = peer_of(&request);
        let registry = self.state.authorizer();
        let caller = authenticate(
            &self.state,
            &registry,
            request.metadata(),
            &peer,
            "xDS stream",
        )
        .await
        .map_err(|(status, _)| status)?;
        let in_flight = request.extensions().get::<InFlight>().cloned();
        let who = caller.to_string();
        let slot = match self
            .caps
            .take(&who, in_flight.as_ref().map(InFlight::connection))
        {
            Ok(slot) => slot,
            Err(refused) => {
                self.metrics
                    .refused
                    .get_or_create(&super::metrics::IgnoredLabel {
                        why: refused.exceeded.label(),
                    })
                    .inc();
                if refused.first {
                    tracing::warn!(target: "zident::ca", %peer, caller = %who, "xDS stream refused: {} (said once until it is back under the cap; zident_xds_streams_refused counts each)", refused.message);
                }
                return Err(Status::resource_exhausted(refused.message));
            }
        };
        let decoder =
            ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default().decoder();
        let requests = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
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
                _slot: slot,
            },
        ));
        Ok(ResponseBody {
            rx,
            frames: None,
            ended: false,
        })
    }
}

impl NamedService for XdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl tower::Service<Request<Body>> for XdsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            Ok(match service.open(req).await {
                Ok(body) => {
                    let mut response = Response::new(Body::new(body));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The response body of one stream: each response's gRPC frame in chunks, then the status
/// as trailers when the stream ends.
pub(crate) struct ResponseBody {
    rx: mpsc::Receiver<Result<WireResponse, Status>>,
    /// The response being written.
    frames: Option<Frames>,
    ended: bool,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(chunk) = this.frames.as_mut().and_then(Iterator::next) {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            this.frames = None;
            let status = match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(response)) => {
                    this.frames = Some(response.into_frames());
                    continue;
                }
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            this.ended = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// The gRPC status as trailers.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", HeaderValue::from_static("13"));
    }
    map
}

/// Who opened a stream; holding it keeps the connection from counting as idle.
struct Opened {
    peer: String,
    caller: Caller,
    _in_flight: Option<InFlight>,
    /// The stream's place under the caps, given back when the stream ends.
    _slot: Slot,
}

/// Ends a stream whose requests could not be read (bytes that are no DeltaDiscoveryRequest, a
/// message over the size limit, a broken stream) with the reader's status, never OK; a client
/// that does not read is not waited for long.
async fn refuse(tx: &mpsc::Sender<Result<WireResponse, Status>>, e: &Status) {
    let status = Status::new(e.code(), clip(e.message()).into_owned());
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
}

/// Runs one stream until the client goes away.
async fn run(
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<WireResponse, Status>>,
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
            tracing::debug!(target: "zident::ca", peer = %opened.peer, "xDS stream ended before its first request: {}: {}", e.code(), clip(e.message()));
            refuse(&tx, &e).await;
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
                    Err(e) => {
                        refuse(&tx, &e).await;
                        break format!("{}: {}", e.code(), clip(e.message()));
                    }
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
        ignored_replies = t.unknown_nonces,
        ignored_types = t.unknown_types,
        "xDS stream closed: {reason}"
    );
}
