//! A small, fast, seedable pseudo-random number generator.
//!
//! The engine never draws from a global random source: message IDs, tokens, retransmission
//! jitter and multicast leisure all come from an RNG handed to it at construction, so a run is a
//! pure function of its inputs and its seed. [`SeededRng`] is the generator we supply for that:
//! xoshiro256\*\* (Blackman and Vigna, "Scrambled Linear Pseudorandom Number Generators", 2018)
//! with its 256-bit state filled from a single `u64` by SplitMix64, the seeding the authors
//! recommend.
//!
//! It is **not** cryptographically secure. CoAP tokens only need to be hard to guess when the
//! transport is unprotected and the token is the sole defence against spoofed responses
//! (RFC 7252 §5.3.1); callers with that need should hand the engine an RNG built on a CSPRNG
//! instead — every engine API accepts any [`RngCore`].
//!
//! ```
//! use coap_proto::rng::SeededRng;
//!
//! let mut a = SeededRng::new(7);
//! let mut b = SeededRng::new(7);
//! assert_eq!(a.gen_range_u64(0, 100), b.gen_range_u64(0, 100));
//! let x = a.gen_range_u64(10, 20);
//! assert!((10..20).contains(&x));
//! ```

use core::fmt;

use rand_core::{Error, RngCore, SeedableRng};

/// SplitMix64's increment: the odd integer closest to 2^64 divided by the golden ratio.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Advances a SplitMix64 state and returns the next output (Steele, Lea and Flood, 2014).
///
/// Every output is a bijective mix of the state, so consecutive outputs from any starting value
/// are distinct and well spread; that is what makes it a good way to expand one `u64` seed.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic xoshiro256\*\* generator, seeded from a `u64` through SplitMix64.
///
/// Two generators built from the same seed produce the same stream on every platform. Implements
/// [`RngCore`] and [`SeedableRng`] (rand_core 0.6), so it plugs into anything that takes an RNG.
///
/// The period is 2^256 − 1; the all-zero state (the one state xoshiro cannot leave) is never
/// produced by [`SeededRng::new`], and [`SeedableRng::from_seed`] replaces an all-zero seed.
#[derive(Clone, PartialEq, Eq)]
pub struct SeededRng {
    s: [u64; 4],
}

impl SeededRng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> SeededRng {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // Four consecutive SplitMix64 outputs are distinct (the mix is a bijection of distinct
        // states), so at most one of them is zero and the state is never all zero.
        SeededRng { s }
    }

    /// A generator starting from exactly this internal state (used for known-answer tests).
    ///
    /// An all-zero state would output zero forever, so it is replaced by the state of
    /// `SeededRng::new(0)`.
    pub fn from_state(s: [u64; 4]) -> SeededRng {
        if s == [0; 4] {
            SeededRng::new(0)
        } else {
            SeededRng { s }
        }
    }

    /// The next 64 random bits.
    #[inline]
    fn next(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniformly distributed integer in `lo..hi_exclusive`, without bias.
    ///
    /// An empty range (`hi_exclusive <= lo`) returns `lo` and draws nothing; it never panics.
    ///
    /// Uses Lemire's multiply-and-reject method ("Fast Random Integer Generation in an
    /// Interval", 2019): one draw almost always, a retry with probability below `span / 2^64`.
    pub fn gen_range_u64(&mut self, lo: u64, hi_exclusive: u64) -> u64 {
        if hi_exclusive <= lo {
            return lo;
        }
        let span = hi_exclusive - lo;
        let mut m = u128::from(self.next()) * u128::from(span);
        // The low half of the product tells whether this draw landed in the short, biased
        // stretch of the 2^64 range; `threshold` is 2^64 mod span.
        if (m as u64) < span {
            let threshold = span.wrapping_neg() % span;
            while (m as u64) < threshold {
                m = u128::from(self.next()) * u128::from(span);
            }
        }
        // `m >> 64` is below `span`, so the sum stays below `hi_exclusive`.
        lo + (m >> 64) as u64
    }

    /// A uniformly distributed integer in `lo..=hi_inclusive`; returns `lo` if `hi_inclusive < lo`.
    pub fn gen_range_inclusive_u64(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        if hi_inclusive < lo {
            return lo;
        }
        match hi_inclusive.checked_add(1) {
            Some(hi) => self.gen_range_u64(lo, hi),
            // `lo..=u64::MAX`: the full range needs no reduction when `lo` is zero; otherwise
            // shift a draw of the same width.
            None if lo == 0 => self.next(),
            None => lo + self.gen_range_u64(0, (u64::MAX - lo) + 1),
        }
    }

    /// A uniformly distributed `f64` in `[0, 1)`, with 53 random bits.
    pub fn gen_f64(&mut self) -> f64 {
        // 2^-53: the spacing of doubles in [0.5, 1).
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next() >> 11) as f64 * SCALE
    }

    /// `true` with probability `p`.
    ///
    /// `p <= 0` (and NaN) is always `false` and `p >= 1` always `true`; neither draws from the
    /// stream, so a disabled probability does not perturb later draws.
    pub fn gen_bool(&mut self, p: f64) -> bool {
        if p >= 1.0 {
            return true;
        }
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        self.gen_f64() < p
    }

    /// Fills `dest` with random bytes.
    pub fn fill(&mut self, dest: &mut [u8]) {
        let mut chunks = dest.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bytes = self.next().to_le_bytes();
            // `rest` is shorter than 8 bytes, so the zip stops at its end.
            for (d, s) in rest.iter_mut().zip(bytes) {
                *d = s;
            }
        }
    }
}

impl fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The state is not secret (this is not a CSPRNG), but dumping it is noise in test output.
        f.debug_struct("SeededRng").finish_non_exhaustive()
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        // The upper bits of xoshiro256** are its best; take those.
        (self.next() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.next()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill(dest);
        Ok(())
    }
}

impl SeedableRng for SeededRng {
    /// The 256-bit state as four little-endian `u64` words.
    type Seed = [u8; 32];

    fn from_seed(seed: [u8; 32]) -> SeededRng {
        let mut s = [0u64; 4];
        for (word, bytes) in s.iter_mut().zip(seed.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *word = u64::from_le_bytes(b);
        }
        SeededRng::from_state(s)
    }

    /// Same as [`SeededRng::new`]: SplitMix64 expansion, not rand_core's generic default.
    fn seed_from_u64(seed: u64) -> SeededRng {
        SeededRng::new(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn splitmix64_matches_the_reference_outputs() {
        // First outputs of the reference splitmix64.c from state 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut s), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64(&mut s), 0x06c4_5d18_8009_454f);
        assert_eq!(splitmix64(&mut s), 0xf88b_b8a8_724c_81ec);
    }

    #[test]
    fn xoshiro256starstar_matches_the_reference_outputs() {
        // Outputs of the reference xoshiro256starstar.c from the state {1, 2, 3, 4}.
        let expected: [u64; 10] = [
            11520,
            0,
            1509978240,
            1215971899390074240,
            1216172134540287360,
            607988272756665600,
            16172922978634559625,
            8476171486693032832,
            10595114339597558777,
            2904607092377533576,
        ];
        let mut rng = SeededRng::from_state([1, 2, 3, 4]);
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

    #[test]
    fn from_seed_reads_little_endian_words() {
        let mut seed = [0u8; 32];
        for (i, w) in [1u64, 2, 3, 4].iter().enumerate() {
            seed[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let mut rng = SeededRng::from_seed(seed);
        assert_eq!(rng.next_u64(), 11520);
        assert_eq!(rng.next_u64(), 0);
        assert_eq!(rng.next_u64(), 1509978240);
    }

    #[test]
    fn seeding_from_u64_expands_with_splitmix64() {
        // State = four SplitMix64 outputs from 42, as other xoshiro ports seed it.
        let mut rng = SeededRng::seed_from_u64(42);
        assert_eq!(rng.next_u64(), 1546998764402558742);
        assert_eq!(rng.next_u64(), 6990951692964543102);
        assert_eq!(rng.next_u64(), 12544586762248559009);
        assert_eq!(rng.next_u64(), 17057574109182124193);
        assert_eq!(SeededRng::new(42), SeededRng::seed_from_u64(42));
    }

    #[test]
    fn an_all_zero_seed_does_not_produce_a_stuck_generator() {
        let mut rng = SeededRng::from_seed([0; 32]);
        assert!((0..4).any(|_| rng.next_u64() != 0));
        assert_eq!(SeededRng::from_state([0; 4]), SeededRng::new(0));
    }

    #[test]
    fn next_u32_is_the_upper_half() {
        let mut a = SeededRng::new(9);
        let mut b = a.clone();
        assert_eq!(u64::from(a.next_u32()), b.next_u64() >> 32);
    }

    #[test]
    fn fill_covers_every_length_and_matches_the_word_stream() {
        for len in 0..=33 {
            let mut a = SeededRng::new(3);
            let mut b = SeededRng::new(3);
            let mut buf = vec![0u8; len];
            a.fill(&mut buf);
            let mut expect = Vec::new();
            while expect.len() < len {
                expect.extend_from_slice(&b.next_u64().to_le_bytes());
            }
            expect.truncate(len);
            assert_eq!(buf, expect, "len {len}");
            // Both consumed the same number of words.
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut rng = SeededRng::new(5);
        let mut buf = [0u8; 16];
        rng.try_fill_bytes(&mut buf).unwrap();
        assert_ne!(buf, [0u8; 16]);
    }

    #[test]
    fn empty_and_degenerate_ranges() {
        let mut rng = SeededRng::new(1);
        let before = rng.clone();
        assert_eq!(rng.gen_range_u64(5, 5), 5);
        assert_eq!(rng.gen_range_u64(9, 2), 9);
        assert_eq!(rng.gen_range_u64(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(rng.gen_range_inclusive_u64(4, 3), 4);
        assert_eq!(rng, before, "empty ranges draw nothing");
        assert_eq!(rng.gen_range_u64(7, 8), 7);
        assert_eq!(rng.gen_range_inclusive_u64(7, 7), 7);
        // Full-width ranges do not overflow.
        let _ = rng.gen_range_inclusive_u64(0, u64::MAX);
        assert!(rng.gen_range_inclusive_u64(u64::MAX - 1, u64::MAX) >= u64::MAX - 1);
        assert!(rng.gen_range_u64(1, u64::MAX) >= 1);
    }

    #[test]
    fn gen_bool_edges() {
        let mut rng = SeededRng::new(1);
        let before = rng.clone();
        assert!(!rng.gen_bool(0.0));
        assert!(!rng.gen_bool(-1.0));
        assert!(!rng.gen_bool(f64::NAN));
        assert!(rng.gen_bool(1.0));
        assert!(rng.gen_bool(7.5));
        assert_eq!(rng, before, "certain outcomes draw nothing");
    }

    #[test]
    fn small_ranges_are_uniform() {
        // Chi-squared over 10 buckets, 100_000 draws: 9 degrees of freedom, and 27.9 is the
        // 0.999 quantile, so a correct generator fails this about once in a thousand seeds
        // (and this seed is fixed).
        let mut rng = SeededRng::new(0xc0a9);
        let mut counts = [0u32; 10];
        let n = 100_000u32;
        for _ in 0..n {
            let x = rng.gen_range_u64(100, 110);
            counts[(x - 100) as usize] += 1;
        }
        let expected = f64::from(n) / 10.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| {
                let d = f64::from(c) - expected;
                d * d / expected
            })
            .sum();
        assert!(chi2 < 27.9, "chi2 {chi2}, counts {counts:?}");
    }

    #[test]
    fn a_range_just_above_half_the_space_is_not_biased() {
        // span = 2^63 + 2^62: a biased "x % span" would put 2/3 of draws below 2^62.
        let span = (1u64 << 63) + (1u64 << 62);
        let mut rng = SeededRng::new(11);
        let n = 30_000;
        let below = (0..n)
            .filter(|_| rng.gen_range_u64(0, span) < (1u64 << 62))
            .count();
        let frac = below as f64 / f64::from(n);
        // Unbiased: 1/3. Standard deviation about 0.0027.
        assert!((frac - 1.0 / 3.0).abs() < 0.015, "fraction {frac}");
    }

    #[test]
    fn gen_bool_frequency_matches_p() {
        let mut rng = SeededRng::new(77);
        for p in [0.01, 0.1, 0.5, 0.9] {
            let n = 50_000;
            let hits = (0..n).filter(|_| rng.gen_bool(p)).count();
            let frac = hits as f64 / f64::from(n);
            let sd = (p * (1.0 - p) / f64::from(n)).sqrt();
            assert!((frac - p).abs() < 5.0 * sd, "p {p}: got {frac}");
        }
    }

    #[test]
    fn gen_f64_is_in_the_unit_interval_and_fills_it() {
        let mut rng = SeededRng::new(2);
        let (mut lo, mut hi) = (1.0f64, 0.0f64);
        for _ in 0..10_000 {
            let x = rng.gen_f64();
            assert!((0.0..1.0).contains(&x));
            lo = lo.min(x);
            hi = hi.max(x);
        }
        assert!(lo < 0.001 && hi > 0.999);
    }

    #[test]
    fn different_seeds_give_different_streams() {
        let a: Vec<u64> = {
            let mut r = SeededRng::new(1);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SeededRng::new(2);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn gen_range_stays_in_range(seed: u64, lo: u64, hi: u64) {
            let mut rng = SeededRng::new(seed);
            let x = rng.gen_range_u64(lo, hi);
            if hi <= lo {
                prop_assert_eq!(x, lo);
            } else {
                prop_assert!(lo <= x && x < hi);
            }
            let y = rng.gen_range_inclusive_u64(lo, hi);
            if hi < lo {
                prop_assert_eq!(y, lo);
            } else {
                prop_assert!(lo <= y && y <= hi);
            }
        }

        #[test]
        fn same_seed_same_stream(seed: u64) {
            let mut a = SeededRng::new(seed);
            let mut b = SeededRng::new(seed);
            for _ in 0..16 {
                prop_assert_eq!(a.next_u64(), b.next_u64());
            }
        }
    }
}
