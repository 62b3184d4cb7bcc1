//! Why the shared state could not be read or written, and PostgreSQL's own words for it.

use std::path::PathBuf;

use zident_identity::TrustDomain;
use zident_mesh::MeshError;

use super::kek::KekError;
use crate::roots::rotation::RotationError;

/// Why the shared state could not be read or written. [`StoreError::Unreachable`] and
/// [`StoreError::Db`] may pass (a replica retries and serves from its working copy meanwhile);
/// the others need someone to act, and each says what.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection (refused, timed out, or lost).
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// A statement failed.
    #[error("database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A sealed key does not open, or the KEK is unusable.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// A rotation step was refused by the rules, or its material could not be made.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// The `--datastore` URL does not parse.
    #[error("--datastore {url}: {message}")]
    BadUrl {
        /// The URL, its password hidden.
        url: String,
        /// What the parser said.
        message: String,
    },
    /// TLS is required but zident was given no CA certificate to verify the server with.
    #[error(
        "--datastore {url} asks for sslmode=require: give the server's CA certificate as sslrootcert=FILE in the URL, so that zident can verify it"
    )]
    TlsWithoutRoot {
        /// The URL, its password hidden.
        url: String,
    },
    /// The `sslrootcert` file is unusable.
    #[error("sslrootcert {}: {message}", path.display())]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The stored rotation state does not read.
    #[error("the stored rotation state is unreadable: {0}")]
    CorruptState(serde_json::Error),
    /// The database's roots belong to another trust domain than the mesh's.
    #[error("the database holds roots for trust domain {stored}, but the mesh says {mesh}")]
    TrustDomainMismatch {
        /// The stored roots' trust domain.
        stored: String,
        /// The mesh's.
        mesh: TrustDomain,
    },
    /// A newer zident migrated the database.
    #[error(
        "the database's schema is at version {found}, newer than this zident's ({supported}); upgrade zident"
    )]
    SchemaTooNew {
        /// The database's schema version.
        found: i64,
        /// The newest this zident knows.
        supported: i64,
    },
    /// The database holds no mesh and none was given to import.
    #[error(
        "{url} holds no mesh yet: store one with `zident ca apply -f mesh.yaml --datastore …`, or start this replica with --config mesh.yaml to import it"
    )]
    NoMesh {
        /// The URL, its password hidden.
        url: String,
    },
    /// A stored mesh version, or one to store, is unusable.
    #[error(transparent)]
    Mesh(#[from] MeshForStoreError),
    /// The stored revocation list does not read.
    #[error("{0}")]
    Corrupt(String),
    /// A change was refused by its own rule (nothing to revoke); nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The replica's working copy in its data dir cannot be written.
    #[error("the working copy: cannot write {}: {source}", path.display())]
    WorkingCopy {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a mesh cannot be stored in the database (or read back from it).
#[derive(Debug, thiserror::Error)]
pub enum MeshForStoreError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mesh breaks a rule.
    #[error(transparent)]
    Invalid(#[from] MeshError),
    /// A caller's token is in a file, which would not be there for the other replicas.
    #[error(
        "{}: {field} has a tokenFile; a mesh stored in the database must carry its tokens inline (token: …), since the file would not be there for the other replicas",
        path.display()
    )]
    TokenFile {
        /// The mesh file.
        path: PathBuf,
        /// Which entry, e.g. `nodes[0] (node-a)`.
        field: String,
    },
}

/// What PostgreSQL said, in full: the client library's own text for a server error is only
/// "db error".
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}): {detail}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => {
            let mut text = e.to_string();
            let mut next = std::error::Error::source(e);
            while let Some(inner) = next {
                text.push_str(&format!(": {inner}"));
                next = inner.source();
            }
            text
        }
    }
}

/// Why a replica reports itself not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The database is away: the replica issues from what it holds and takes no rotation step.
    #[error(
        "degraded: {reason}; issuing from the roots and mesh version {mesh_version} held, taking no rotation step"
    )]
    Degraded {
        /// Why the database is away.
        reason: String,
        /// The mesh version the replica serves.
        mesh_version: i64,
    },
    /// The Kubernetes API is away: the replica issues from the roots it holds and takes no
    /// rotation step.
    #[error("degraded: {reason}; issuing from the roots held, taking no rotation step")]
    ClusterDegraded {
        /// Why the API server cannot be used.
        reason: String,
    },
}
