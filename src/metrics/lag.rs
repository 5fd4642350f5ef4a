//! A lock-free copy of the publish→deliver lag histogram that the console can read back
//! (`prometheus_client` histograms cannot be read): the same bucket bounds as
//! `mcp_fanout_publish_deliver_lag_seconds` (0.25 ms × 2^i, i < 16, then overflow), one relaxed
//! atomic add per observation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Finite bounds plus the overflow bucket.
pub const BUCKETS: usize = 17;
const FIRST_BOUND_SECS: f64 = 0.000_25;

#[derive(Default)]
pub struct LagBuckets {
    counts: [AtomicU64; BUCKETS],
}

impl LagBuckets {
    pub fn observe(&self, secs: f64) {
        self.counts[bucket_of(secs)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts so far, per bucket.
    pub fn snapshot(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

fn bucket_of(secs: f64) -> usize {
    let mut bound = FIRST_BOUND_SECS;
    for i in 0..BUCKETS - 1 {
        if secs <= bound {
            return i;
        }
        bound *= 2.0;
    }
    BUCKETS - 1
}

/// Upper bound of bucket `i`, in milliseconds (the overflow bucket reports the last finite one).
fn bound_ms(i: usize) -> f64 {
    let i = i.min(BUCKETS - 2);
    FIRST_BOUND_SECS * 1000.0 * f64::from(1u32 << i)
}

/// The `q` quantile of the observations counted in `counts`, as the upper bound of the bucket
/// it falls in (a resolution of ×2); `None` with no observations.
pub fn quantile_ms(counts: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bound_ms(i));
        }
    }
    Some(bound_ms(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let b = LagBuckets::default();
        assert_eq!(quantile_ms(&b.snapshot(), 0.5), None);
        for _ in 0..98 {
            b.observe(0.0001); // ≤ 0.25 ms
        }
        b.observe(0.003); // ≤ 4 ms
        b.observe(100.0); // overflow
        let s = b.snapshot();
        assert_eq!(s[0], 98);
        assert_eq!(s[4], 1);
        assert_eq!(s[BUCKETS - 1], 1);
        assert_eq!(quantile_ms(&s, 0.5), Some(0.25));
        assert_eq!(quantile_ms(&s, 0.99), Some(4.0));
        assert_eq!(quantile_ms(&s, 1.0), Some(8192.0));
    }
}
