//! Why the shared state could not be read or written, and PostgreSQL's own words for it.

use super::kek::KekError;

/// Why the shared state could not be read or written.
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
    /// The request does not follow from what is stored, or what is stored is unusable.
    #[error("{0}")]
    Refused(String),
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
