//! Time from the TSC: a calibrated clock and the arithmetic around it.

/// A TSC calibrated to a frequency. Conversions use 128-bit arithmetic so
/// they neither overflow nor lose precision for any `u64` tick count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscClock {
    hz: u64,
}

impl TscClock {
    /// A clock ticking at `hz`; `None` for 0 Hz.
    pub const fn new(hz: u64) -> Option<Self> {
        if hz == 0 {
            None
        } else {
            Some(Self { hz })
        }
    }
    /// The frequency in Hz.
    pub const fn hz(self) -> u64 {
        self.hz
    }
    /// Ticks to nanoseconds (saturating).
    pub const fn ticks_to_ns(self, ticks: u64) -> u64 {
        let ns = ticks as u128 * 1_000_000_000 / self.hz as u128;
        if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        }
    }
    /// Ticks to microseconds (saturating).
    pub const fn ticks_to_us(self, ticks: u64) -> u64 {
        self.ticks_to_ns(ticks) / 1000
    }
    /// Nanoseconds to ticks (saturating).
    pub const fn ns_to_ticks(self, ns: u64) -> u64 {
        let t = ns as u128 * self.hz as u128 / 1_000_000_000;
        if t > u64::MAX as u128 {
            u64::MAX
        } else {
            t as u64
        }
    }
}

/// The frequency of the 8254 PIT's input clock, in Hz (1.193182 MHz).
pub const PIT_HZ: u64 = 1_193_182;

/// The frequency of a counter that advanced `ticks` while the reference
/// (running at `ref_hz`) advanced `ref_ticks`; `None` if the reference did not
/// move.
pub const fn frequency(ticks: u64, ref_ticks: u64, ref_hz: u64) -> Option<u64> {
    if ref_ticks == 0 {
        return None;
    }
    let hz = ticks as u128 * ref_hz as u128 / ref_ticks as u128;
    if hz > u64::MAX as u128 {
        None
    } else {
        Some(hz as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn conversions() {
        let c = TscClock::new(2_500_000_000).unwrap();
        assert_eq!(c.ticks_to_ns(2_500), 1_000);
        assert_eq!(c.ticks_to_us(2_500_000), 1_000);
        assert_eq!(c.ns_to_ticks(1_000), 2_500);
        assert_eq!(TscClock::new(1).unwrap().ticks_to_ns(u64::MAX), u64::MAX);
        assert!(TscClock::new(0).is_none());
        // 10 ms of PIT ticks while the TSC advanced 25 M ticks: 2.5 GHz.
        assert_eq!(frequency(25_000_000, PIT_HZ / 100, PIT_HZ), Some(2_500_171_821));
        assert_eq!(frequency(1, 0, PIT_HZ), None);
    }

    proptest! {
        #[test]
        fn round_trip_within_one_tick(hz in 1_000_000u64..10_000_000_000, ns in 0u64..1_000_000_000_000) {
            let c = TscClock::new(hz).unwrap();
            let back = c.ticks_to_ns(c.ns_to_ticks(ns));
            // Truncation twice loses at most one tick's worth of nanoseconds.
            prop_assert!(back <= ns);
            prop_assert!(ns - back <= 1_000_000_000 / hz + 1);
        }
    }
}
