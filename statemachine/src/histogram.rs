//! A fixed-size, log-bucketed histogram of microsecond durations, for latency and queue-time
//! percentiles that cost the same memory after a minute as after a day.
//!
//! Owns bucketing and percentile reading only: values below 16 µs are exact, above that each
//! power of two is split into 8 buckets, so a reported percentile is at most 12.5 % above the
//! true one (the bucket's upper edge is reported, never an under-estimate); count, sum and max
//! are exact. It must never keep individual samples (that is the point of it).

const EXACT: u64 = 16;
const SUB: u64 = 8;
/// Up to 2^44 µs (about 200 days): anything longer lands in the last bucket.
const MAX_EXP: u64 = 44;
const BUCKETS: usize = (EXACT + (MAX_EXP - 3) * SUB) as usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = u64::from(63 - v.leading_zeros());
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (v >> (exp - 3)) & (SUB - 1);
    ((EXACT + (exp - 4) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The largest value that lands in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let exp = (i - EXACT) / SUB + 4;
    let sub = (i - EXACT) % SUB;
    ((SUB + sub + 1) << (exp - 3)) - 1
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(micros);
        self.max = self.max.max(micros);
    }

    /// Records a signed difference of two clocks; a negative one (clock step) counts as 0.
    pub fn record_signed(&mut self, micros: i64) {
        self.record(micros.max(0) as u64);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of every recorded value (saturating), µs.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The `q`-quantile (0..=1) in µs: the upper edge of the bucket holding it, capped at the
    /// exact maximum; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut prev = None;
        for v in 0..200_000u64 {
            let i = index(v);
            assert!(v <= upper(i), "{v} above its bucket's edge {}", upper(i));
            if i > 0 {
                assert!(v > upper(i - 1), "{v} belongs in an earlier bucket");
            }
            if let Some(p) = prev {
                assert!(i >= p);
            }
            prev = Some(i);
        }
    }

    #[test]
    fn quantiles_within_an_eighth() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.999, 9_990.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                got >= exact && got <= exact * 1.125,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.sum(), 50_005_000);
        assert!((h.mean() - 5_000.5).abs() < 1e-9);
        let mut e = Histogram::default();
        assert_eq!(e.quantile(0.5), 0);
        e.merge(&h);
        assert_eq!(e, h);
    }
}
