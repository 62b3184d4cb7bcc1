//! JSON helpers for the admin endpoints: times as RFC 3339 in UTC.

use std::time::SystemTime;

use serde::Serializer;

/// RFC 3339 in UTC, e.g. `2026-11-27T20:35:31Z`.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::from(t))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Serializes a time as RFC 3339.
pub fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Serializes an optional time as RFC 3339 or null.
pub fn opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}
