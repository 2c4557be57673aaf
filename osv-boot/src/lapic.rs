//! The local APIC in xAPIC mode (memory-mapped registers), enough for a
//! one-shot timer, end-of-interrupt and inter-processor interrupts.
//!
//! Register offsets from the Intel SDM vol. 3A, table 11-1 "Local APIC
//! Register Address Map".
#![allow(unsafe_code)]

/// `IA32_APIC_BASE` MSR (SDM vol. 3A §11.4.4).
pub const IA32_APIC_BASE: u32 = 0x1b;
/// Default physical base of the xAPIC registers.
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

const ID: usize = 0x20;
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;
/// ICR delivery status (bit 12): the previous IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;
/// ICR level bit (14): assert (SDM vol. 3A §11.6.1, figure 11-12).
const ICR_ASSERT: u32 = 1 << 14;
/// ICR delivery modes (bits 10:8): fixed, INIT, start-up.
const ICR_FIXED: u32 = 0b000 << 8;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
/// LVT timer mode bits 18:17 = `0b10`: TSC-deadline.
const TSC_DEADLINE_MODE: u32 = 0b10 << 17;
/// LVT mask bit.
const MASKED: u32 = 1 << 16;

/// The vector of the spurious interrupt (its low 4 bits must be 1s on old
/// APICs, SDM §11.9).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// A handle on the local APIC's register page.
#[derive(Debug)]
pub struct Lapic {
    base: *mut u32,
}

// SAFETY: the registers are per CPU by hardware; the handle is only a base
// address, and every access is a single volatile 32-bit read or write.
unsafe impl Send for Lapic {}
// SAFETY: as above; concurrent accesses from one CPU are serialised by the
// caller (the kernel touches the timer with interrupts off).
unsafe impl Sync for Lapic {}

impl Lapic {
    /// A handle on the registers mapped at virtual address `base`.
    ///
    /// # Safety
    /// 1. `base` maps the local APIC's 4 KiB register page, uncached.
    /// 2. The mapping outlives the handle.
    pub const unsafe fn new(base: *mut u32) -> Self {
        Self { base }
    }

    fn read(&self, reg: usize) -> u32 {
        // SAFETY: `new`'s contract: `base` maps the register page, and `reg`
        // is one of this module's offsets inside it.
        unsafe { self.base.byte_add(reg).read_volatile() }
    }

    fn write(&self, reg: usize, v: u32) {
        // SAFETY: as in `read`.
        unsafe { self.base.byte_add(reg).write_volatile(v) }
    }

    /// Software-enables the APIC with the spurious vector, timer masked.
    pub fn enable(&self) {
        self.write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
        self.write(LVT_TIMER, MASKED);
        self.write(TIMER_DIVIDE, 0b1011); // divide by 1
    }

    /// This CPU's APIC ID.
    pub fn id(&self) -> u32 {
        self.read(ID) >> 24
    }

    /// Signals end of interrupt.
    pub fn eoi(&self) {
        self.write(EOI, 0);
    }

    /// Arms the timer once: `vector` fires after `ticks` timer ticks.
    pub fn oneshot(&self, vector: u8, ticks: u32) {
        self.write(LVT_TIMER, u32::from(vector));
        self.write(TIMER_INITIAL, ticks);
    }

    /// Puts the timer in TSC-deadline mode on `vector` (LVT timer mode
    /// `0b10`, SDM vol. 3A §11.5.4.1): it then fires when the TSC reaches
    /// the value written to `IA32_TSC_DEADLINE`.
    pub fn tsc_deadline_mode(&self, vector: u8) {
        self.write(LVT_TIMER, u32::from(vector) | TSC_DEADLINE_MODE);
    }

    /// Starts the timer counting down from `ticks` with its interrupt masked
    /// (for calibration).
    pub fn start_masked(&self, ticks: u32) {
        self.write(LVT_TIMER, MASKED);
        self.write(TIMER_INITIAL, ticks);
    }

    /// The timer's current count.
    pub fn current(&self) -> u32 {
        self.read(TIMER_CURRENT)
    }

    /// Sends an IPI with ICR low word `low` to the xAPIC `dest` (physical
    /// destination mode), after the previous one left. Interrupts are off
    /// between the two ICR writes, so a handler on this CPU cannot interleave
    /// its own IPI (SDM vol. 3A §11.6.1: writing the low word sends).
    fn send(&self, dest: u8, low: u32) {
        crate::arch::without_interrupts(|| {
            while self.read(ICR_LOW) & ICR_PENDING != 0 {
                core::hint::spin_loop();
            }
            self.write(ICR_HIGH, u32::from(dest) << 24);
            self.write(ICR_LOW, low);
        });
    }

    /// Sends `vector` (fixed delivery) to the CPU whose APIC ID is `dest`.
    pub fn send_ipi(&self, dest: u8, vector: u8) {
        self.send(dest, ICR_FIXED | ICR_ASSERT | u32::from(vector));
    }

    /// Sends INIT (level assert) to `dest`: the first step of starting an
    /// application processor (SDM vol. 3A §8.4.4.1).
    pub fn send_init(&self, dest: u8) {
        self.send(dest, ICR_INIT | ICR_ASSERT);
    }

    /// Sends a start-up IPI to `dest`: it starts in real mode at
    /// `page << 12` (a page below 1 MiB).
    pub fn send_startup(&self, dest: u8, page: u8) {
        self.send(dest, ICR_STARTUP | ICR_ASSERT | u32::from(page));
    }

    /// Whether the last IPI has been delivered (ICR delivery status idle).
    pub fn ipi_idle(&self) -> bool {
        self.read(ICR_LOW) & ICR_PENDING == 0
    }

    /// Stops the timer.
    pub fn stop(&self) {
        self.write(TIMER_INITIAL, 0);
        self.write(LVT_TIMER, MASKED);
    }
}
