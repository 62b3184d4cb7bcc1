//! One client's stream: what it subscribed to, what it holds, and which push it has not yet
//! acknowledged. Pure bookkeeping (requests and generations in, responses out), so the rules of
//! the protocol can be read in one place:
//!
//! - a type's first request subscribes; no names (or `*`) means every resource (wildcard), and
//!   `initial_resource_versions` says what a reconnecting client already holds, so it is sent
//!   only what changed while it was away, and the names that went away;
//! - the first request of each type is always answered, even with nothing, because ztunnel
//!   counts itself ready only once each type has been answered;
//! - a request carrying `response_nonce` acknowledges that response, or rejects it when it
//!   also carries `error_detail` (logged with the client's reason and counted; the client keeps
//!   what it had);
//! - a new generation sends each subscription only the resources that changed and the names
//!   removed, and nothing at all when its types did not change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use zident_proto::xds::DeltaDiscoveryRequest;
use zident_xds::Delta;

use super::generation::Generation;
use super::metrics::{IgnoredLabel, TypeLabel, XdsMetrics};
use super::wire::WireResponse;
pub(crate) use crate::client_text::clip;

/// The response a client has not acknowledged yet, per type.
struct Pending {
    nonce: String,
    /// When the edit it carries was accepted; `None` for a first answer (not an edit).
    accepted: Option<Instant>,
}

/// One type's subscription.
#[derive(Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// A wildcard subscription's client holds this generation.
    held: Option<Arc<Generation>>,
    /// A named subscription's client holds these versions.
    held_names: BTreeMap<String, String>,
    pending: Option<Pending>,
    /// The highest sequence of this type's responses the client has replied to: a second reply
    /// to one is ignored, so that replaying a NACK cannot inflate the count of rejections.
    replied: u64,
}

/// What the stream has seen of its client: ACKs, NACKs, pushes, and requests it ignored.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) pushes: u64,
    pub(crate) acks: u64,
    pub(crate) nacks: u64,
    /// Replies naming a nonce the stream does not wait on (logged once, then only counted).
    pub(crate) unknown_nonces: u64,
    /// Requests for types zident does not serve (logged once, then only counted).
    pub(crate) unknown_types: u64,
}

/// The state of one stream.
pub(crate) struct StreamState {
    subscriptions: HashMap<String, Subscription>,
    next_nonce: u64,
    /// Who the client is, for logs.
    client: String,
    pub(crate) tally: Tally,
}

impl StreamState {
    pub(crate) fn new(client: String) -> Self {
        Self {
            subscriptions: HashMap::new(),
            next_nonce: 0,
            client,
            tally: Tally::default(),
        }
    }

    /// Who the client is, as logged.
    pub(crate) fn set_client(&mut self, client: String) {
        self.client = client;
    }

    /// Handles one request against the `current` generation; returns what to send.
    pub(crate) fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        current: &Arc<Generation>,
        metrics: &XdsMetrics,
    ) -> Vec<WireResponse> {
        let type_url = req.type_url.clone();
        if !zident_xds::is_known_type(&type_url) {
            self.tally.unknown_types += 1;
            metrics
                .ignored
                .get_or_create(&IgnoredLabel {
                    why: "unknown_type",
                })
                .inc();
            if self.tally.unknown_types == 1 {
                tracing::warn!(target: "zident::ca", client = %self.client, type_url = %clip(&type_url), "xDS request for a type zident does not serve; ignored (further ones on this stream are only counted)");
            }
            return Vec::new();
        }
        if !req.response_nonce.is_empty() {
            self.on_reply(&type_url, &req, metrics);
        }
        let first = !self.subscriptions.contains_key(&type_url);
        let sub = self.subscriptions.entry(type_url.clone()).or_default();
        let was_wildcard = sub.wildcard;
        if first && req.resource_names_subscribe.is_empty() {
            sub.wildcard = true;
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
                sub.held_names.remove(name);
            }
        }
        let delta = if first {
            let known: BTreeMap<String, String> =
                req.initial_resource_versions.into_iter().collect();
            if sub.wildcard {
                sub.held = Some(current.clone());
                current.snapshot.delta_from_versions(&known, &type_url)
            } else {
                sub.held_names = known
                    .into_iter()
                    .filter(|(n, _)| sub.names.contains(n))
                    .collect();
                named_delta(sub, current, &type_url)
            }
        } else if sub.wildcard && !was_wildcard {
            // Widened to every resource: send what the named part did not hold.
            let held = std::mem::take(&mut sub.held_names);
            sub.held = Some(current.clone());
            current.snapshot.delta_from_versions(&held, &type_url)
        } else if !sub.wildcard && was_wildcard {
            // Narrowed to names: the client keeps the named resources it already holds.
            if let Some(g) = sub.held.take() {
                sub.held_names = sub
                    .names
                    .iter()
                    .filter_map(|n| {
                        Some((n.clone(), g.snapshot.get(&type_url, n)?.version.clone()))
                    })
                    .collect();
            }
            named_delta(sub, current, &type_url)
        } else if !sub.wildcard && !req.resource_names_subscribe.is_empty() {
            named_delta(sub, current, &type_url)
        } else {
            Delta::default()
        };
        if !first && delta.is_empty() {
            return Vec::new();
        }
        vec![self.respond(&type_url, delta, current, None, metrics)]
    }

    /// Sends each subscription what `generation` changed.
    pub(crate) fn on_generation(
        &mut self,
        generation: &Arc<Generation>,
        metrics: &XdsMetrics,
    ) -> Vec<WireResponse> {
        let mut out = Vec::new();
        let types: Vec<String> = self.subscriptions.keys().cloned().collect();
        for type_url in types {
            let Some(sub) = self.subscriptions.get_mut(&type_url) else {
                continue;
            };
            let delta = if sub.wildcard {
                let d = match &sub.held {
                    Some(held) => generation.delta_from(held, &type_url),
                    None => generation
                        .snapshot
                        .delta_from_versions(&BTreeMap::new(), &type_url),
                };
                sub.held = Some(generation.clone());
                d
            } else {
                named_delta(sub, generation, &type_url)
            };
            if !delta.is_empty() {
                out.push(self.respond(
                    &type_url,
                    delta,
                    generation,
                    Some(generation.accepted),
                    metrics,
                ));
            }
        }
        out
    }

    fn on_reply(&mut self, type_url: &str, req: &DeltaDiscoveryRequest, metrics: &XdsMetrics) {
        let label = TypeLabel {
            r#type: zident_xds::short_name(type_url),
        };
        // A reply to the response this stream waits on, or to an earlier one it sent (a client
        // answering a push that a newer one already followed): counted. A nonce this stream
        // never sent is ignored, whatever the reply says.
        let seq = self.sent(&req.response_nonce);
        let Some(sub) = self.subscriptions.get_mut(type_url) else {
            return;
        };
        let fresh = seq.filter(|s| *s > sub.replied);
        if let Some(s) = fresh {
            sub.replied = s;
        }
        let pending = sub
            .pending
            .take_if(|p| fresh.is_some() && p.nonce == req.response_nonce);
        if fresh.is_none() {
            self.tally.unknown_nonces += 1;
            metrics
                .ignored
                .get_or_create(&IgnoredLabel {
                    why: "unknown_nonce",
                })
                .inc();
            if self.tally.unknown_nonces == 1 {
                tracing::warn!(
                    target: "zident::ca",
                    client = %self.client,
                    r#type = label.r#type,
                    nonce = %clip(&req.response_nonce),
                    "xDS reply to a response this stream never sent or already had a reply to; ignored (further ones on this stream are only counted)"
                );
            }
            return;
        };
        if let Some(error) = &req.error_detail {
            self.tally.nacks += 1;
            metrics.rejects.get_or_create(&label).inc();
            tracing::warn!(
                target: "zident::ca",
                client = %self.client,
                r#type = label.r#type,
                nonce = %req.response_nonce,
                "xDS push rejected by the client (it keeps its last good state): {}",
                clip(&error.message)
            );
            return;
        }
        self.tally.acks += 1;
        if let Some(accepted) = pending.and_then(|p| p.accepted) {
            metrics
                .convergence
                .observe(accepted.elapsed().as_secs_f64());
        }
    }

    /// The sequence of the response with `nonce` (`<generation>-<sequence>`, the sequence
    /// counting this stream's responses), if this stream sent it.
    fn sent(&self, nonce: &str) -> Option<u64> {
        let (generation, seq) = nonce.split_once('-')?;
        generation.parse::<u64>().ok()?;
        let seq = seq.parse::<u64>().ok()?;
        (seq >= 1 && seq <= self.next_nonce).then_some(seq)
    }

    fn respond(
        &mut self,
        type_url: &str,
        delta: Delta,
        generation: &Generation,
        accepted: Option<Instant>,
        metrics: &XdsMetrics,
    ) -> WireResponse {
        self.next_nonce += 1;
        let nonce = format!("{}-{}", generation.number, self.next_nonce);
        let bytes: usize = delta
            .changed
            .iter()
            .map(|r| r.value.len() + r.name.len() + r.version.len())
            .chain(delta.removed.iter().map(String::len))
            .sum();
        metrics
            .pushes
            .get_or_create(&TypeLabel {
                r#type: zident_xds::short_name(type_url),
            })
            .inc();
        metrics.push_bytes.observe(bytes as f64);
        self.tally.pushes += 1;
        if let Some(sub) = self.subscriptions.get_mut(type_url) {
            sub.pending = Some(Pending {
                nonce: nonce.clone(),
                accepted,
            });
        }
        WireResponse {
            system_version_info: generation.number.to_string(),
            resources: delta.changed,
            type_url: type_url.to_owned(),
            nonce,
            removed: delta.removed,
        }
    }
}

/// What a named subscription's client needs for `generation`; records it as held.
fn named_delta(sub: &mut Subscription, generation: &Generation, type_url: &str) -> Delta {
    let mut delta = Delta::default();
    for name in &sub.names {
        match generation.snapshot.get(type_url, name) {
            Some(r) => {
                if sub.held_names.get(name) != Some(&r.version) {
                    sub.held_names.insert(name.clone(), r.version.clone());
                    delta.changed.push(r.clone());
                }
            }
            None => {
                if sub.held_names.remove(name).is_some() {
                    delta.removed.push(name.clone());
                }
            }
        }
    }
    delta
}
