//! How zident writes certificates' numbers and times: serials and fingerprints in hex, times
//! as Unix seconds and RFC 3339, durations as people read them. Their own module, because the
//! SVID checks, the JWT-SVIDs, the trust bundle and every report use them.

use std::time::{Duration, SystemTime};

use x509_parser::time::ASN1Time;

/// Converts an X.509 time to `SystemTime` (times before 1970 become the epoch).
pub fn to_system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs <= 0 {
        SystemTime::UNIX_EPOCH
    } else {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    }
}

/// A serial number as lowercase hex, without the sign-padding zero bytes DER adds.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[start..])
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A certificate's SHA-256 fingerprint, lowercase hex: how the CA's state files, the agent's
/// `/debug/certs` and `zident certs` name roots.
pub fn fingerprint(der: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// Whole seconds since the Unix epoch (0 for a time before it): how the CA's ledger and
/// state files, the metrics and the JSON count time.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A time as RFC 3339 in UTC, to the second, e.g. `2026-11-27T20:35:31Z`: how zident shows
/// times in logs, JSON and tables.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t) as i64;
    ::time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Reads a time written by [`rfc3339`] (or any RFC 3339 time); `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    ::time::OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A duration as people read it: `42s`, `3m07s`, `5h12m`, `12d3h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}
