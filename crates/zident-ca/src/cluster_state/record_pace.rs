//! How often a replica rewrites one of its records (its issued record and its serials record,
//! each a ConfigMap written whole, up to 900 KiB).
//!
//! Every write is kept in etcd's history until the API server compacts it (every 5 minutes by
//! default). Written in every one-second round in which the replica issued something, two full
//! records came to ~1.8 MB/s per replica: three replicas busy issuing (a warm-up, a mass
//! restart, short lifetimes) could add ~1.6 GB of history between compactions, against etcd's
//! default quota of 2 GB. A record is now written at most once per [`BYTES_PER_SECOND`] of its
//! size: a small record (a small mesh, every test) still every round, a full one about every
//! 14 s, and never later than its `max_lag` after the round that had something new.

use std::time::{Duration, Instant};

/// The write rate a record is held to, in bytes of record per second.
pub(crate) const BYTES_PER_SECOND: usize = 64 * 1024;

/// The replica's round: no record is written more often.
const ROUND: Duration = Duration::from_secs(1);

/// When a record may be written next.
#[derive(Debug)]
pub(crate) struct RecordPace {
    /// When it was last written, and its size then.
    last: Option<(Instant, usize)>,
    /// The longest wait between writes, whatever the size.
    max_lag: Duration,
}

impl RecordPace {
    /// A record written at once the first time, then paced by its size, waiting at most
    /// `max_lag` (at least one round).
    pub(crate) fn new(max_lag: Duration) -> Self {
        Self {
            last: None,
            max_lag: max_lag.max(ROUND),
        }
    }

    /// Whether the record may be written at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        match self.last {
            None => true,
            Some((at, len)) => now.saturating_duration_since(at) >= self.interval(len),
        }
    }

    /// The record was written at `now`, `len` bytes long.
    pub(crate) fn wrote(&mut self, now: Instant, len: usize) {
        self.last = Some((now, len));
    }

    /// The wait after writing `len` bytes: its share of [`BYTES_PER_SECOND`], between a round
    /// and `max_lag`.
    pub(crate) fn interval(&self, len: usize) -> Duration {
        Duration::from_secs_f64(len as f64 / BYTES_PER_SECOND as f64).clamp(ROUND, self.max_lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_record_is_written_every_round_and_a_full_one_at_its_share_of_the_rate() {
        let pace = RecordPace::new(Duration::from_secs(15));
        assert_eq!(pace.interval(0), ROUND);
        assert_eq!(pace.interval(BYTES_PER_SECOND / 2), ROUND);
        assert_eq!(pace.interval(4 * BYTES_PER_SECOND), Duration::from_secs(4));
        // A full record (900 KiB): about every 14 s, so at most 64 KiB/s of it reaches etcd.
        let full = pace.interval(900 * 1024);
        assert!(
            full > Duration::from_secs(14) && full < Duration::from_secs(15),
            "{full:?}"
        );
        // Never later than the lag allowed, never sooner than a round.
        assert_eq!(
            pace.interval(100 * BYTES_PER_SECOND),
            Duration::from_secs(15)
        );
        let tight = RecordPace::new(Duration::from_millis(10));
        assert_eq!(tight.interval(900 * 1024), ROUND);
    }

    #[test]
    fn the_first_write_is_at_once_and_the_next_waits_for_the_interval() {
        let start = Instant::now();
        let mut pace = RecordPace::new(Duration::from_secs(15));
        assert!(pace.due(start));
        pace.wrote(start, 4 * BYTES_PER_SECOND);
        assert!(!pace.due(start));
        assert!(!pace.due(start + Duration::from_millis(3999)));
        assert!(pace.due(start + Duration::from_secs(4)));
        // A write that made the record small again lets the next come a round later.
        pace.wrote(start + Duration::from_secs(4), 10);
        assert!(!pace.due(start + Duration::from_millis(4999)));
        assert!(pace.due(start + Duration::from_secs(5)));
    }
}
