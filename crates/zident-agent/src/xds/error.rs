//! What can go wrong on the stream from the control plane, by kind: a response refused (and
//! NACKed, the last good mesh kept), the stream ended (and opened again, to another replica if
//! there is one), or the on-disk copy unusable (the agent starts without it).

use std::path::PathBuf;
use std::time::Duration;

use crate::ca::client::CaError;
use crate::workloads::MeshRefused;

/// Why a response was NACKed. Nothing of it is in force.
#[derive(Debug, thiserror::Error)]
pub enum Nack {
    /// A type zident does not serve.
    #[error("zident does not know the type {0}")]
    UnknownType(String),
    /// A resource without its body.
    #[error("resource {0:?} has no body")]
    NoBody(String),
    /// A resource of another type than the response's.
    #[error("resource {name:?} is a {found} in a response of {expected}")]
    WrongType {
        /// The resource.
        name: String,
        /// Its type.
        found: String,
        /// The response's type.
        expected: String,
    },
    /// A resource name past `--xds-max-name-bytes`.
    #[error(
        "a resource name of {len} bytes (starting {start:?}) is longer than the {max} bytes this node takes (--xds-max-name-bytes)"
    )]
    NameTooLong {
        /// Its length.
        len: usize,
        /// Its first bytes.
        start: String,
        /// The bound.
        max: usize,
    },
    /// More resources of one type than `--xds-max-resources`.
    #[error(
        "{count} resources of {type_url} would be held, more than the {max} this node takes (--xds-max-resources)"
    )]
    TooMany {
        /// The type.
        type_url: String,
        /// How many the response would leave held.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// The mesh the resources make is not one this node can put in force.
    #[error(transparent)]
    Refused(#[from] MeshRefused),
}

/// Why a stream ended. The agent opens the next one after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum StreamEnded {
    /// The control plane closed the stream.
    #[error("the control plane closed the stream")]
    Closed,
    /// The queue of requests to send closed (the stream task is going away).
    #[error("the stream's request queue closed")]
    QueueClosed,
    /// No token to present.
    #[error(transparent)]
    Token(#[from] CaError),
    /// The replica answered with an error status.
    #[error("{replica}: {code}: {message}")]
    Status {
        /// The replica.
        replica: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The replica did not answer in time.
    #[error("{replica}: no answer within {timeout:?}")]
    Timeout {
        /// The replica.
        replica: String,
        /// How long was waited.
        timeout: Duration,
    },
}

impl StreamEnded {
    /// The replica's error `status`.
    pub fn status(replica: String, status: &tonic::Status) -> Self {
        Self::Status {
            replica,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// What went wrong with the replica, without its name: what `/debug/connections` shows
    /// as the replica's last error.
    pub fn cause(&self) -> String {
        match self {
            Self::Status { code, message, .. } => format!("{code}: {message}"),
            Self::Timeout { timeout, .. } => format!("no answer within {timeout:?}"),
            other => other.to_string(),
        }
    }
}

/// Why the on-disk copy of the last good mesh cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a cache zident wrote.
    #[error("{} is not a zident xDS cache: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        source: prost::DecodeError,
    },
}
