//! The CPU's one-shot timer for a tickless scheduler: the local APIC in
//! TSC-deadline mode when CPUID reports it (CPUID.01H:ECX bit 24, SDM vol. 3A
//! §11.5.4.1), else the APIC timer's one-shot mode with the deadline turned
//! into timer ticks through the boot-time calibration.
//!
//! Deadlines are absolute TSC values. Arming replaces the previous deadline;
//! disarming leaves the timer silent (no periodic tick ever runs).
//!
//! In one-shot mode the APIC timer's rate relative to the TSC comes from a
//! calibration ([`calibrate`]); a timer that fires early finds nothing due
//! and the scheduler re-arms it for the rest.

use crate::arch;
use crate::lapic::Lapic;

/// `IA32_TSC_DEADLINE` (SDM vol. 4, table 2-2): writing 0 disarms.
const IA32_TSC_DEADLINE: u32 = 0x6e0;

/// How the timer is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// The APIC fires when the TSC reaches `IA32_TSC_DEADLINE`.
    TscDeadline,
    /// The APIC's count-down timer, `lapic_hz` ticks per second.
    OneShot {
        /// The APIC timer's calibrated rate.
        lapic_hz: u64,
    },
}

/// One CPU's one-shot timer.
#[derive(Debug)]
pub struct OneShot {
    lapic: &'static Lapic,
    vector: u8,
    mode: TimerMode,
    tsc_hz: u64,
}

impl OneShot {
    /// The timer of the CPU this runs on, firing `vector`; `None` without a
    /// local APIC or a calibrated clock.
    pub fn new(vector: u8) -> Option<Self> {
        let lapic = super::lapic()?;
        let tsc_hz = super::clock().hz();
        let mode = if arch::cpuid(1, 0).ecx & (1 << 24) != 0 {
            TimerMode::TscDeadline
        } else {
            TimerMode::OneShot { lapic_hz: calibrate(lapic, 5, 4_000_000)? }
        };
        Some(Self::with_mode(lapic, vector, mode, tsc_hz))
    }

    /// The timer in a given mode (a kernel may force one-shot mode).
    pub fn with_mode(lapic: &'static Lapic, vector: u8, mode: TimerMode, tsc_hz: u64) -> Self {
        if mode == TimerMode::TscDeadline {
            lapic.tsc_deadline_mode(vector);
            // SDM vol. 3A §11.5.4.1: the LVT write must be ordered before
            // the first write of IA32_TSC_DEADLINE.
            // SAFETY: `mfence` only orders memory accesses.
            unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
        } else {
            lapic.stop();
        }
        Self { lapic, vector, mode, tsc_hz }
    }

    /// The mode in use.
    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// Fires once when the TSC reaches `deadline` (at once if it already
    /// has); `None` disarms. Call with interrupts off.
    pub fn arm(&mut self, deadline: Option<u64>) {
        match (self.mode, deadline) {
            (TimerMode::TscDeadline, d) => {
                if d.is_some() {
                    // Re-assert the mode: other code may have used the APIC
                    // timer in one-shot mode meanwhile (SDM: order the LVT
                    // write before the MSR write).
                    self.lapic.tsc_deadline_mode(self.vector);
                    // SAFETY: `mfence` only orders memory accesses.
                    unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
                }
                // Zero disarms; a deadline in the past fires at once.
                let v = d.map_or(0, |d| d.max(1));
                // SAFETY: CPUID reported TSC-deadline mode, so the MSR exists.
                unsafe { arch::wrmsr(IA32_TSC_DEADLINE, v) };
            }
            (TimerMode::OneShot { .. }, None) => self.lapic.stop(),
            (TimerMode::OneShot { lapic_hz }, Some(d)) => {
                let ticks = oneshot_ticks(d.saturating_sub(arch::rdtsc()), self.tsc_hz, lapic_hz);
                self.lapic.oneshot(self.vector, ticks);
            }
        }
    }
}

/// The APIC timer's rate against the TSC: the median of `windows` counts
/// over `window_ns` of TSC each. The boot-time figure comes from one 2 ms
/// window; under emulation on a loaded host single windows were seen to
/// disagree by a factor of 3, and the median of several is steadier.
/// `None` without a calibrated clock or if the timer does not count.
pub fn calibrate(lapic: &Lapic, windows: usize, window_ns: u64) -> Option<u64> {
    let clock = super::clock();
    let mut samples = [0u64; 9];
    let n = windows.clamp(1, samples.len());
    for s in samples.iter_mut().take(n) {
        lapic.start_masked(u32::MAX);
        let t0 = arch::rdtsc();
        let wait = clock.ns_to_ticks(window_ns);
        while arch::rdtsc().wrapping_sub(t0) < wait {
            core::hint::spin_loop();
        }
        let counted = u32::MAX - lapic.current();
        let elapsed = arch::rdtsc().wrapping_sub(t0);
        lapic.stop();
        *s = u64::try_from(u128::from(counted) * u128::from(clock.hz()) / u128::from(elapsed.max(1))).ok()?;
    }
    let s = &mut samples[..n];
    s.sort_unstable();
    Some(s[n / 2]).filter(|&hz| hz > 0)
}

/// APIC timer ticks for `tsc_ticks` of TSC: at least 1 (0 would stop the
/// timer), at most `u32::MAX` (a longer wait fires early and is re-armed by
/// the caller, which finds nothing due yet).
pub fn oneshot_ticks(tsc_ticks: u64, tsc_hz: u64, lapic_hz: u64) -> u32 {
    let t = (u128::from(tsc_ticks) * u128::from(lapic_hz)).div_ceil(u128::from(tsc_hz.max(1)));
    u32::try_from(t).unwrap_or(u32::MAX).max(1)
}
