//! What `/debug/connections` shows of the xDS stream: whether it is up and since when, the
//! last push, ACK and NACK, and how many resources of each type the agent holds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use zident_identity::rfc3339;

/// The stream's state, as shown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdsStatus {
    /// The control plane's address.
    pub address: String,
    /// Whether a stream is open.
    pub connected: bool,
    /// The CA replica the stream is (or was last) open to.
    pub replica: Option<String>,
    /// When the open stream was established (RFC 3339).
    pub connected_since: Option<String>,
    /// The last response received: when, its type and the control plane's version.
    pub last_push: Option<Event>,
    /// The last response accepted.
    pub last_ack: Option<Event>,
    /// The last response refused, with the reason sent back.
    pub last_nack: Option<Event>,
    /// Why the last stream ended or could not start.
    pub last_error: Option<String>,
    /// Where the view in force came from: `none`, `cache` or `stream`.
    pub view_from: &'static str,
    /// Resources held, by type.
    pub resources: BTreeMap<&'static str, usize>,
    /// Responses received, accepted and refused since start.
    pub pushes: u64,
    /// Responses accepted.
    pub acks: u64,
    /// Responses refused.
    pub nacks: u64,
}

/// One response.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When (RFC 3339).
    pub at: String,
    /// Its type (short name).
    pub r#type: String,
    /// The control plane's version of the mesh.
    pub version: String,
    /// The reason, for a NACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    pub(crate) fn now(type_url: &str, version: &str, error: Option<String>) -> Self {
        Self {
            at: rfc3339(SystemTime::now()),
            r#type: zident_xds::short_name(type_url).to_owned(),
            version: version.to_owned(),
            error,
        }
    }
}

/// Shared between the stream task and the admin endpoint.
#[derive(Debug, Default)]
pub struct XdsStatusCell(Mutex<XdsStatus>);

impl XdsStatusCell {
    pub(crate) fn update(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy of the current state.
    pub fn get(&self) -> XdsStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
