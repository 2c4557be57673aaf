//! TSC calibration against the 8254 PIT's channel 0, read through counter
//! latches. Every PC-compatible QEMU machine has the PIT, `microvm` included;
//! `microvm` lacks port `0x61`, so the classic channel-2 gate method cannot be
//! used there and this module polls channel 0's count instead.
//!
//! Ports and command bytes from the Intel 8254 data sheet: `0x40` channel 0
//! data, `0x43` mode/command (`SC1 SC0 RW1 RW0 M2 M1 M0 BCD`; `RW = 00` is
//! the counter-latch command). Channel 0's output is IRQ 0, which the kernel
//! keeps masked.

use crate::arch::PortIo;
use crate::time::{frequency, PIT_HZ};

const CH0_DATA: u16 = 0x40;
const MODE: u16 = 0x43;
/// Channel 0, lobyte/hibyte, mode 2 (rate generator), binary.
const CH0_RATE_GENERATOR: u8 = 0b0011_0100;
/// Channel 0, counter latch.
const CH0_LATCH: u8 = 0b0000_0000;

/// Why calibration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalibrationError {
    /// The PIT's count did not move: no PIT, or a broken one.
    NoPit,
    /// The counter being calibrated did not advance.
    Stalled,
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoPit => "the PIT's channel 0 does not count",
            Self::Stalled => "the counter did not advance during calibration",
        })
    }
}

impl core::error::Error for CalibrationError {}

fn read_count<P: PortIo>(io: &mut P) -> u16 {
    io.write8(MODE, CH0_LATCH);
    let lo = io.read8(CH0_DATA);
    let hi = io.read8(CH0_DATA);
    u16::from_le_bytes([lo, hi])
}

/// Measures the frequency of `counter` (for example `rdtsc`) over at least
/// `pit_ticks` PIT ticks: channel 0 runs as a rate generator with the full
/// 16-bit period, and the count is polled, summing the decrements (modulo
/// 2^16, so the poll interval must stay under 55 ms).
///
/// # Errors
/// [`CalibrationError::NoPit`] when the count has not reached `pit_ticks`
/// after `max_polls` reads; [`CalibrationError::Stalled`] when `counter` did
/// not move.
pub fn calibrate<P: PortIo>(
    io: &mut P,
    mut counter: impl FnMut() -> u64,
    pit_ticks: u32,
    max_polls: u64,
) -> Result<u64, CalibrationError> {
    io.write8(MODE, CH0_RATE_GENERATOR);
    io.write8(CH0_DATA, 0); // reload value 0 means 65536
    io.write8(CH0_DATA, 0);
    // Wait for the first decrement, so timing starts on a tick edge.
    let mut prev = read_count(io);
    let mut polls = 0u64;
    loop {
        let c = read_count(io);
        polls += 1;
        if c != prev {
            prev = c;
            break;
        }
        if polls >= max_polls {
            return Err(CalibrationError::NoPit);
        }
    }
    let start = counter();
    let mut elapsed = 0u64;
    while elapsed < u64::from(pit_ticks) {
        let c = read_count(io);
        elapsed += u64::from(prev.wrapping_sub(c));
        prev = c;
        polls += 1;
        if polls >= max_polls {
            return Err(CalibrationError::NoPit);
        }
    }
    let ticks = counter().wrapping_sub(start);
    if ticks == 0 {
        return Err(CalibrationError::Stalled);
    }
    frequency(ticks, elapsed, PIT_HZ).ok_or(CalibrationError::Stalled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A fake PIT whose count drops by `step` per latch; each latch also
    /// advances a fake TSC by `tsc_per_latch`.
    struct FakePit<'a> {
        count: u16,
        step: u16,
        latched: Option<u16>,
        high_next: bool,
        tsc: &'a Cell<u64>,
        tsc_per_latch: u64,
        programmed: Vec<(u16, u8)>,
    }

    impl<'a> FakePit<'a> {
        fn new(step: u16, tsc: &'a Cell<u64>, tsc_per_latch: u64) -> Self {
            Self { count: 0, step, latched: None, high_next: false, tsc, tsc_per_latch, programmed: vec![] }
        }
    }

    impl PortIo for FakePit<'_> {
        fn read8(&mut self, port: u16) -> u8 {
            assert_eq!(port, CH0_DATA);
            let v = self.latched.expect("read without latch");
            let b = if self.high_next {
                self.latched = None;
                (v >> 8) as u8
            } else {
                v as u8
            };
            self.high_next = !self.high_next;
            b
        }
        fn write8(&mut self, port: u16, value: u8) {
            self.programmed.push((port, value));
            if port == MODE && value == CH0_LATCH {
                self.count = self.count.wrapping_sub(self.step);
                self.tsc.set(self.tsc.get() + self.tsc_per_latch);
                self.latched = Some(self.count);
                self.high_next = false;
            }
        }
    }

    #[test]
    fn measures_the_counter_frequency_across_wraps() {
        let tsc = Cell::new(0);
        // 1000 PIT ticks per latch, 838_000 TSC ticks per latch: 1000 PIT
        // ticks are 838.1 us, so the TSC runs at about 1 GHz.
        let mut pit = FakePit::new(1000, &tsc, 838_000);
        let hz = calibrate(&mut pit, || tsc.get(), 200_000, 1 << 20).unwrap();
        assert!((999_000_000..1_001_000_000).contains(&hz), "{hz}");
        assert_eq!(&pit.programmed[..3], &[(MODE, 0x34), (CH0_DATA, 0), (CH0_DATA, 0)]);
    }

    #[test]
    fn a_missing_or_stuck_pit_is_an_error() {
        let tsc = Cell::new(0);
        let mut pit = FakePit::new(0, &tsc, 1);
        assert_eq!(calibrate(&mut pit, || tsc.get(), 1000, 100), Err(CalibrationError::NoPit));
        let mut pit = FakePit::new(10, &tsc, 0);
        assert_eq!(calibrate(&mut pit, || tsc.get(), 1000, 1000), Err(CalibrationError::Stalled));
    }
}
