//! How far this node's clock is from the CA's, measured on every exchange with the CA.
//!
//! A wrong clock looks like something else: a certificate "expired 4 minutes ago" the moment
//! it arrives (this node ahead), or "not valid yet" (behind), or TLS to the CA failing on
//! validity. The CA (zident's) sends its time with each response (`zident-ca-time`, Unix
//! milliseconds); other CAs send an HTTP `date` header (whole seconds). The offset is the CA's
//! time minus the midpoint of the request on this node's clock, so network delay cancels out.
//!
//! Beyond a threshold (by default the backdate the CA gives certificates of this lifetime:
//! a tenth of it, at most 2 minutes, which is the skew a fresh certificate absorbs), the agent
//! logs once per change which way and by how much, and errors that skew would cause say so.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use zident_identity::profile::MAX_BACKDATE;

/// The response metadata key with the CA's time, Unix milliseconds.
pub const CA_TIME_HEADER: &str = "zident-ca-time";

/// The threshold for certificates of `ttl`: the backdate the CA gives them (a tenth of the
/// lifetime, at most [`MAX_BACKDATE`]), which is the skew a fresh certificate absorbs.
pub fn threshold_for(ttl: Duration) -> Duration {
    zident_identity::profile::backdate_for(ttl)
}

/// The CA's time read from response metadata: `zident-ca-time`, else the HTTP `date` header.
pub fn ca_time(md: &tonic::metadata::MetadataMap) -> Option<SystemTime> {
    if let Some(ms) = md
        .get(CA_TIME_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Some(UNIX_EPOCH + Duration::from_millis(ms));
    }
    let date = md.get("date")?.to_str().ok()?;
    let t =
        time::OffsetDateTime::parse(date, &time::format_description::well_known::Rfc2822).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).ok()?))
}

/// Which way a clock is off.
fn direction(offset_secs: f64) -> &'static str {
    if offset_secs < 0.0 {
        "ahead of"
    } else {
        "behind"
    }
}

/// The measured offset and what was last said about it.
#[derive(Debug)]
pub struct ClockSkew {
    threshold: Duration,
    state: Mutex<SkewState>,
}

#[derive(Debug, Default)]
struct SkewState {
    /// CA time minus this node's time, seconds, from the last exchange that told it.
    offset: Option<f64>,
    /// What a failed handshake implied since (the CA's certificate outside its validity by
    /// this node's clock): the offset is at least this far from zero, on this side.
    at_least: Option<f64>,
    /// The offset last logged as skewed (`None`: the clock was last said to be fine).
    reported: Option<f64>,
}

impl ClockSkew {
    /// A tracker that complains beyond `threshold`.
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            state: Mutex::default(),
        }
    }

    /// The threshold.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// Records an exchange sent at `sent` and answered at `received` (this node's clock) that
    /// the CA stamped with `ca`.
    pub fn observe(&self, sent: SystemTime, received: SystemTime, ca: SystemTime) {
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let midpoint = (secs(sent) + secs(received)) / 2.0;
        let offset = secs(ca) - midpoint;
        let limit = self.threshold.as_secs_f64();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.offset = Some(offset);
        s.at_least = None;
        let skewed = offset.abs() > limit;
        match (skewed, s.reported) {
            (true, None) => {
                tracing::warn!(target: "zident::identity", clock_skew_seconds = offset, "this node's clock is {:.1} s {} the CA's (more than the {:.0} s a certificate's backdate absorbs): certificates will look {} on this node; fix the clock (NTP: `timedatectl`, `chronyc tracking`)", offset.abs(), direction(offset), limit, if offset < 0.0 { "expired early" } else { "not valid yet" });
                s.reported = Some(offset);
            }
            // Said again only when it changed by more than the threshold (or flipped sides).
            (true, Some(prev)) if (prev - offset).abs() > limit => {
                tracing::warn!(target: "zident::identity", clock_skew_seconds = offset, "this node's clock is now {:.1} s {} the CA's (was {:.1} s {}); fix the clock (NTP)", offset.abs(), direction(offset), prev.abs(), direction(prev));
                s.reported = Some(offset);
            }
            (false, Some(_)) => {
                tracing::info!(target: "zident::identity", clock_skew_seconds = offset, "this node's clock agrees with the CA's again ({offset:.1} s)");
                s.reported = None;
            }
            _ => {}
        }
    }

    /// CA time minus this node's time, seconds, if an exchange has told it.
    pub fn offset(&self) -> Option<f64> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).offset
    }

    /// Records what a handshake that failed on the CA's certificate's validity implies: the
    /// CA's time minus this node's is at least `bound` (positive: this node is behind) or at
    /// most it (negative: ahead). The measured offset, from before, no longer holds.
    pub fn observe_bound(&self, bound: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Said once, and again only when it moved by more than the threshold: each retry
        // finds the bound a little smaller as time passes.
        let limit = self.threshold.as_secs_f64();
        if s.at_least.is_none_or(|prev| (prev - bound).abs() > limit) {
            tracing::warn!(target: "zident::identity", clock_skew_at_least_seconds = bound, "this node's clock is at least {:.0} s {} the CA's: the CA's TLS certificate is outside its validity by this node's clock; fix the clock (NTP: `timedatectl`, `chronyc tracking`)", bound.abs(), direction(bound));
        }
        s.offset = None;
        s.at_least = Some(bound);
    }

    /// The lower bound of the offset a failed handshake implied, until an exchange measures it.
    pub fn at_least(&self) -> Option<f64> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .at_least
    }

    /// A sentence to add to an error that skew may have caused, when the clock is off by more
    /// than the threshold (or has never been measured).
    pub fn hint(&self) -> Option<String> {
        match self.offset() {
            Some(o) if o.abs() > self.threshold.as_secs_f64() => Some(format!(
                "likely cause: this node's clock is {:.1} s {} the CA's; fix the clock (NTP)",
                o.abs(),
                direction(o)
            )),
            Some(_) => None,
            None if self.at_least().is_some() => self.at_least().map(|b| {
                format!(
                    "likely cause: this node's clock is at least {:.0} s {} the CA's; fix the clock (NTP)",
                    b.abs(),
                    direction(b)
                )
            }),
            None => Some(
                "if the certificate is fresh, check this node's clock against the CA's (NTP)"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(s)
    }

    #[test]
    fn the_offset_is_the_ca_time_against_the_midpoint() {
        let c = ClockSkew::new(Duration::from_secs(6));
        // Sent at 1000, answered at 1002 (local); the CA said 1301: 300 s behind.
        c.observe(t(1000.0), t(1002.0), t(1301.0));
        assert_eq!(c.offset(), Some(300.0));
        assert!(c.hint().unwrap().contains("300.0 s behind the CA's"));
        // Ahead.
        c.observe(t(1000.0), t(1000.0), t(700.0));
        assert!(c.hint().unwrap().contains("300.0 s ahead of the CA's"));
        // Within the threshold: no hint.
        c.observe(t(1000.0), t(1000.0), t(1003.0));
        assert_eq!(c.hint(), None);
        // A handshake that failed on validity: a bound, no measured offset, until the next
        // exchange measures it again.
        c.observe_bound(180.0);
        assert_eq!((c.offset(), c.at_least()), (None, Some(180.0)));
        assert!(c.hint().unwrap().contains("at least 180 s behind"));
        c.observe(t(1000.0), t(1000.0), t(1001.0));
        assert_eq!((c.offset(), c.at_least()), (Some(1.0), None));
    }

    #[test]
    fn the_time_comes_from_our_header_or_the_date() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("date", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(
            ca_time(&md),
            Some(UNIX_EPOCH + Duration::from_secs(784111777))
        );
        md.insert(CA_TIME_HEADER, "784111777500".parse().unwrap());
        assert_eq!(
            ca_time(&md),
            Some(UNIX_EPOCH + Duration::from_millis(784111777500))
        );
    }
}
