//! Time as newtypes: [`Instant`] (an absolute point on the CPU's monotonic
//! clock) and [`Nanos`] (a duration), both in nanoseconds.

use core::ops::{Add, Sub};

/// A duration in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero length.
    pub const ZERO: Nanos = Nanos(0);
    /// `n` microseconds.
    pub const fn from_micros(n: u64) -> Self {
        Nanos(n * 1_000)
    }
    /// `n` milliseconds.
    pub const fn from_millis(n: u64) -> Self {
        Nanos(n * 1_000_000)
    }
    /// The length in nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
}

impl Add for Nanos {
    type Output = Nanos;
    fn add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(rhs.0))
    }
}

/// An absolute time in nanoseconds since the clock's epoch (boot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// The clock's epoch.
    pub const ZERO: Instant = Instant(0);
    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// The time elapsed since `earlier`, or zero if the clock went backwards.
    pub fn saturating_since(self, earlier: Instant) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Nanos> for Instant {
    type Output = Instant;
    fn add(self, rhs: Nanos) -> Instant {
        Instant(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Instant {
    type Output = Nanos;
    /// Saturating: a backwards step reads as zero.
    fn sub(self, rhs: Instant) -> Nanos {
        self.saturating_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Instant(5) - Instant(9), Nanos::ZERO);
        assert_eq!(Instant(u64::MAX) + Nanos(1), Instant(u64::MAX));
        assert_eq!(Instant(1) + Nanos::from_millis(2), Instant(2_000_001));
    }
}
