//! JSON helpers for the admin endpoints: times as RFC 3339 in UTC.

use std::time::SystemTime;

use serde::Serializer;

pub use zident_identity::rfc3339;

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

/// Reads a time written by [`time`].
pub fn parse_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    zident_identity::parse_rfc3339(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time")))
}
