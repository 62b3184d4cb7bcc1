//! What the agent takes from a control plane, at most. A control plane is trusted to say what
//! the mesh is, not to make a node hold anything it sends: a response, a resource name, or a
//! type's resources past these bounds is refused (the stream ended for a response too large to
//! read, a NACK naming the bound otherwise), and the last good view stays in force.

/// The bounds; `zident agent --xds-max-response-bytes`, `--xds-max-resources`,
/// `--xds-max-name-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdsBounds {
    /// The largest response read (a reconnect's full push of a large mesh is the largest).
    pub max_response_bytes: usize,
    /// The most resources of one type held (workloads and services, or policies).
    pub max_resources: usize,
    /// The longest resource name.
    pub max_name_bytes: usize,
}

impl Default for XdsBounds {
    fn default() -> Self {
        Self {
            max_response_bytes: crate::defaults::XDS_MAX_RESPONSE_BYTES,
            max_resources: crate::defaults::XDS_MAX_RESOURCES,
            max_name_bytes: crate::defaults::XDS_MAX_NAME_BYTES,
        }
    }
}
