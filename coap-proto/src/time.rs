//! The engine's notion of time.
//!
//! The engine never reads a clock. Every call that may change state takes the current time as an
//! [`Instant`], a count of microseconds from an origin the caller chooses (the start of the
//! program, of a simulation, or anything else). Adapters convert from their runtime's clock, so a
//! virtual clock works end to end.

use core::fmt;
use core::ops::{Add, AddAssign, Sub};
use core::time::Duration;

/// A point in time, in microseconds from an origin chosen by the caller.
///
/// Only differences between instants matter to the engine; the origin is never interpreted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The origin: zero microseconds.
    pub const ZERO: Instant = Instant { micros: 0 };
    /// The latest representable instant; useful as "never".
    pub const MAX: Instant = Instant { micros: u64::MAX };

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Instant {
        Instant { micros }
    }

    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Instant {
        Instant {
            micros: millis.saturating_mul(1000),
        }
    }

    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Instant {
        Instant {
            micros: secs.saturating_mul(1_000_000),
        }
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        let add = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant {
            micros: self.micros.saturating_add(add),
        }
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating addition: an instant never wraps.
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating difference: zero when `rhs` is later than `self`.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.micros / 1_000_000,
            self.micros % 1_000_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_secs(2);
        assert_eq!(
            t + Duration::from_millis(1500),
            Instant::from_micros(3_500_000)
        );
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(
            Instant::from_secs(1) - Instant::from_secs(3),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_secs(3) - Instant::from_secs(1),
            Duration::from_secs(2)
        );
        assert_eq!(Instant::from_millis(1234).to_string_for_test(), "1.234000s");
    }

    impl Instant {
        fn to_string_for_test(self) -> alloc::string::String {
            alloc::format!("{self}")
        }
    }
}
