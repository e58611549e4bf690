//! A log-linear latency histogram in the style of HdrHistogram.
//!
//! Values are unsigned integers (the load tool records nanoseconds). Values below 256 have a
//! bucket each; above that every power of two is split into 128 equal buckets, so a recorded
//! value is known to within 1/128 (0.8 %) of itself. Recording is an index computation and
//! an increment; the whole `u64` range fits in 7 424 counters (58 KiB).

/// log2 of the number of sub-buckets per power of two.
const SUB_BITS: u32 = 7;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << SUB_BITS;
/// Number of counters needed for the whole `u64` range.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// The counter index of `v`.
#[inline]
fn index_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    // (v >> shift) is in [SUB, 2 * SUB).
    ((shift as usize + 1) << SUB_BITS) + ((v >> shift) - SUB) as usize
}

/// The smallest and largest value that land in counter `i`.
fn bounds_of(i: usize) -> (u64, u64) {
    if i < 2 * SUB as usize {
        return (i as u64, i as u64);
    }
    let shift = (i >> SUB_BITS) as u32 - 1;
    let sub = (i as u64 & (SUB - 1)) + SUB;
    let low = sub << shift;
    let high = low + ((1u64 << shift) - 1);
    (low, high)
}

/// A latency histogram: record values, then read counts, extremes and percentiles.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl core::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("max", &self.max())
            .finish()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index_of(v)) {
            *c += 1;
        }
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Forgets every recorded value.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The smallest recorded value, exactly (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// The largest recorded value, exactly (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The arithmetic mean of the recorded values (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0.0 ..= 1.0): the smallest `v` such that at least a fraction
    /// `q` of the recorded values are `<= v`, reported as the upper end of its bucket (so at
    /// most 0.8 % above the true value) and never above [`Histogram::max`]. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == 1 {
            return self.min;
        }
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bounds_of(i).1.min(self.max).max(self.min);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..256u64 {
            assert_eq!(index_of(v), v as usize);
            assert_eq!(bounds_of(v as usize), (v, v));
        }
    }

    #[test]
    fn whole_range_fits() {
        assert_eq!(index_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bounds_of(BUCKETS - 1).1, u64::MAX);
        let mut h = Histogram::new();
        h.record(u64::MAX);
        h.record(0);
        assert_eq!(h.count(), 2);
        assert_eq!(h.quantile(1.0), u64::MAX);
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn buckets_tile_the_line() {
        // Each bucket starts right after the previous one ends.
        for i in 1..BUCKETS {
            assert_eq!(bounds_of(i).0, bounds_of(i - 1).1 + 1, "bucket {i}");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_run() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.01, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.01, "p99 {p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.quantile(0.0), 1000);
        assert_eq!(h.min(), 1000);
        assert!((h.mean() - 5_000_500.0).abs() < 1.0);
    }

    #[test]
    fn clear_and_merge() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.min(), 10);
        a.clear();
        assert_eq!(a.count(), 0);
        assert_eq!(a.quantile(0.99), 0);
        assert_eq!(a.min(), 0);
    }

    proptest! {
        #[test]
        fn value_lies_in_its_bucket(v in any::<u64>()) {
            let (lo, hi) = bounds_of(index_of(v));
            prop_assert!(lo <= v && v <= hi);
            // Relative width of a bucket is at most 1/128.
            prop_assert!((hi - lo) <= lo / SUB);
        }

        #[test]
        fn index_is_monotonic(a in any::<u64>(), b in any::<u64>()) {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(index_of(a) <= index_of(b));
        }

        #[test]
        fn quantile_is_close_to_exact(mut values in prop::collection::vec(0u64..10_000_000_000, 1..400),
                                      q in 0.0f64..=1.0) {
            let mut h = Histogram::new();
            for &v in &values {
                h.record(v);
            }
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[rank - 1];
            let got = h.quantile(q);
            prop_assert!(got >= exact);
            prop_assert!(got - exact <= exact / SUB, "got {got}, exact {exact}");
        }
    }
}
