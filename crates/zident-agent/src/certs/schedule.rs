//! When to renew, and how long to wait after a failure.

use std::time::{Duration, SystemTime};

use zident_identity::WorkloadCertificate;

use crate::config::RenewalPolicy;

/// A uniform random number in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// When to renew `cert`: notBefore + ratio × lifetime, moved earlier by up to `jitter` ×
/// lifetime at random (`unit` in [0, 1) picks how much), but never sooner than
/// `min_interval` after receipt — capped at half of what was left of the certificate's life
/// then, so a short-lived certificate is still renewed before it expires.
///
/// The floor is what stops a renewal loop: with a lifetime shorter than the CA's backdate,
/// notBefore + ratio × lifetime is already in the past when the certificate arrives.
pub fn renewal_time(cert: &WorkloadCertificate, policy: &RenewalPolicy, unit: f64) -> SystemTime {
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    let planned = cert.not_before + lifetime.mul_f64(policy.ratio)
        - lifetime.mul_f64(policy.jitter * unit.clamp(0.0, 1.0));
    let left_at_receipt = cert
        .not_after
        .duration_since(cert.received_at)
        .unwrap_or_default();
    let floor = cert.received_at + policy.min_interval.min(left_at_receipt / 2);
    planned.max(floor)
}

/// Exponential backoff, per identity: initial, doubling to max, each delay randomized to
/// 50–150% so many identities failing together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff from a rotation policy.
    pub fn new(policy: &RenewalPolicy) -> Self {
        Self {
            initial: policy.backoff_initial,
            max: policy.backoff_max,
            failures: 0,
        }
    }

    /// The delay before the next try, given `unit` in [0, 1).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        base.mul_f64(0.5 + unit.clamp(0.0, 1.0)).min(self.max)
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zident_identity::{SpiffeId, WorkloadKey};

    fn cert(nb: u64, na: u64, received: u64) -> WorkloadCertificate {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        WorkloadCertificate::new(
            SpiffeId::new("spiffe://td/a").unwrap(),
            vec![],
            vec![],
            t(nb),
            t(na),
            "01".into(),
            t(received),
            WorkloadKey::generate().unwrap(),
        )
    }

    fn secs(t: SystemTime) -> f64 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    #[test]
    fn half_life_with_jitter_only_earlier() {
        let p = RenewalPolicy::default();
        // 24h certificate backdated 2 minutes, received at 1000.
        let c = cert(1000 - 120, 1000 + 86400, 1000);
        let mid = 880.0 + 86520.0 / 2.0;
        assert_eq!(secs(renewal_time(&c, &p, 0.0)), mid);
        let early = secs(renewal_time(&c, &p, 0.999));
        assert!(early < mid && early >= mid - 0.05 * 86520.0);
    }

    #[test]
    fn a_ttl_shorter_than_the_backdate_does_not_loop() {
        let p = RenewalPolicy::default();
        // 10 s TTL from a CA that backdates 120 s: half-life is long past on arrival.
        let c = cert(1000 - 120, 1000 + 10, 1000);
        let at = secs(renewal_time(&c, &p, 0.0));
        assert_eq!(at, 1005.0, "half of the 10 s left, not at once");
        // A long certificate received late in life: the floor is min_interval.
        let c = cert(0, 100_000, 99_000);
        assert_eq!(secs(renewal_time(&c, &p, 0.0)), 99_010.0);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_randomization() {
        let p = RenewalPolicy::default();
        let mut b = Backoff::new(&p);
        let d: Vec<u64> = (0..12).map(|_| b.next_delay(0.5).as_secs()).collect();
        assert_eq!(&d[..8], &[1, 2, 4, 8, 16, 32, 64, 128]);
        assert!(d[8..].iter().all(|x| *x == 150));
        let mut b = Backoff::new(&p);
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        b.reset();
        assert_eq!(b.next_delay(0.99).as_millis(), 1490);
    }
}
