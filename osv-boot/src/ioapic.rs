//! The I/O APIC: routes a device's interrupt line (a GSI, global system
//! interrupt) to a vector on a local APIC.
//!
//! Registers from the Intel 82093AA I/O APIC datasheet: §3.0 (the
//! `IOREGSEL` index register at offset 0x00 and the `IOWIN` data window at
//! 0x10), §3.2.1 `IOAPICID` (index 0), §3.2.2 `IOAPICVER` (index 1; bits
//! 23:16 the highest redirection entry), §3.2.4 `IOREDTBL[0..n]` (indices
//! 0x10 + 2n (low dword) and 0x11 + 2n (high dword)). Where the I/O APICs
//! are, and which GSIs each serves, comes from the ACPI MADT
//! ([`crate::acpi::Madt::io_apics`]).
//!
//! Register access goes through [`Regs`], so the logic runs in host tests;
//! [`MmioRegs`] is the real window.
#![allow(unsafe_code)]

use core::fmt;

/// `IOREGSEL`/`IOWIN` access by register index.
pub trait Regs {
    /// Reads register `index`.
    fn read(&self, index: u8) -> u32;
    /// Writes register `index`.
    fn write(&self, index: u8, value: u32);
}

/// The memory-mapped registers of one I/O APIC.
#[derive(Debug)]
pub struct MmioRegs {
    base: *mut u32,
}

// SAFETY: a base address only; every access is a select-then-window pair
// that the caller serialises (the kernel programs the I/O APIC with
// interrupts off on one CPU).
unsafe impl Send for MmioRegs {}
// SAFETY: as above.
unsafe impl Sync for MmioRegs {}

/// `IOREGSEL` and `IOWIN` byte offsets (datasheet §3.0).
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;

impl MmioRegs {
    /// A handle on the registers mapped at `base`.
    ///
    /// # Safety
    /// 1. `base` maps an I/O APIC's register page, uncached.
    /// 2. The mapping outlives the handle, and only this handle selects
    ///    registers (no concurrent select/window pairs).
    pub const unsafe fn new(base: *mut u32) -> Self {
        Self { base }
    }
}

impl Regs for MmioRegs {
    fn read(&self, index: u8) -> u32 {
        // SAFETY: `new`'s contract: `base` maps the register page, and both
        // offsets are inside it.
        unsafe {
            self.base.byte_add(IOREGSEL).write_volatile(u32::from(index));
            self.base.byte_add(IOWIN).read_volatile()
        }
    }

    fn write(&self, index: u8, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            self.base.byte_add(IOREGSEL).write_volatile(u32::from(index));
            self.base.byte_add(IOWIN).write_volatile(value);
        }
    }
}

/// Register indices.
mod index {
    pub const ID: u8 = 0x00;
    pub const VERSION: u8 = 0x01;
    pub const REDTBL: u8 = 0x10;
}

/// Bits of a redirection entry's low dword (datasheet §3.2.4).
mod bits {
    /// Bits 10:8 delivery mode; 000 is Fixed.
    pub const DELIVERY_MODE: u32 = 0b111 << 8;
    /// Bit 11: destination mode (0 physical).
    pub const DEST_LOGICAL: u32 = 1 << 11;
    /// Bit 13: interrupt input pin polarity (1 active low).
    pub const ACTIVE_LOW: u32 = 1 << 13;
    /// Bit 15: trigger mode (1 level).
    pub const LEVEL: u32 = 1 << 15;
    /// Bit 16: interrupt mask.
    pub const MASKED: u32 = 1 << 16;
}

/// How an interrupt line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge-triggered (ISA devices).
    Edge,
    /// Level-triggered: the line stays asserted until the device is
    /// acknowledged (PCI INTx, virtio-mmio on QEMU).
    Level,
}

/// One redirection entry: fixed delivery, physical destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redirection {
    /// The vector raised on the local APIC (32..=255).
    pub vector: u8,
    /// Edge or level.
    pub trigger: Trigger,
    /// Polarity: `true` for active low.
    pub active_low: bool,
    /// Masked: the line raises nothing.
    pub masked: bool,
    /// The destination local APIC ID (physical mode).
    pub dest: u8,
}

impl Redirection {
    /// The (low, high) dwords.
    pub const fn to_bits(self) -> (u32, u32) {
        let mut lo = self.vector as u32;
        if self.active_low {
            lo |= bits::ACTIVE_LOW;
        }
        if matches!(self.trigger, Trigger::Level) {
            lo |= bits::LEVEL;
        }
        if self.masked {
            lo |= bits::MASKED;
        }
        (lo, (self.dest as u32) << 24)
    }

    /// From the (low, high) dwords; `None` for an entry this module does
    /// not produce (another delivery mode, logical destination).
    pub const fn from_bits(lo: u32, hi: u32) -> Option<Self> {
        if lo & (bits::DELIVERY_MODE | bits::DEST_LOGICAL) != 0 {
            return None;
        }
        Some(Self {
            vector: lo as u8,
            trigger: if lo & bits::LEVEL != 0 { Trigger::Level } else { Trigger::Edge },
            active_low: lo & bits::ACTIVE_LOW != 0,
            masked: lo & bits::MASKED != 0,
            dest: (hi >> 24) as u8,
        })
    }
}

/// What an I/O APIC operation found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicError {
    /// The GSI is not one this I/O APIC serves.
    NotMine(u32),
    /// A vector below 32 (exceptions) was asked for.
    BadVector(u8),
    /// The entry holds a delivery or destination mode this module does not
    /// program.
    Foreign(u32),
}

impl fmt::Display for IoApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMine(g) => write!(f, "GSI {g} is not on this I/O APIC"),
            Self::BadVector(v) => write!(f, "vector {v} is an exception vector"),
            Self::Foreign(g) => write!(f, "GSI {g}: entry in a mode this driver does not use"),
        }
    }
}

impl core::error::Error for IoApicError {}

/// One I/O APIC serving GSIs `gsi_base .. gsi_base + entries`.
#[derive(Debug)]
pub struct IoApic<R: Regs> {
    regs: R,
    gsi_base: u32,
    entries: u32,
}

impl<R: Regs> IoApic<R> {
    /// The I/O APIC behind `regs`, serving GSIs from `gsi_base` (from the
    /// MADT); the entry count comes from `IOAPICVER`.
    pub fn new(regs: R, gsi_base: u32) -> Self {
        let entries = ((regs.read(index::VERSION) >> 16) & 0xff) + 1;
        Self { regs, gsi_base, entries }
    }

    /// The I/O APIC's ID register (bits 27:24).
    pub fn id(&self) -> u8 {
        ((self.regs.read(index::ID) >> 24) & 0xf) as u8
    }

    /// The GSIs this I/O APIC serves.
    pub fn gsis(&self) -> core::ops::Range<u32> {
        self.gsi_base..self.gsi_base.saturating_add(self.entries)
    }

    fn pin(&self, gsi: u32) -> Result<u8, IoApicError> {
        if self.gsis().contains(&gsi) {
            Ok((gsi - self.gsi_base) as u8)
        } else {
            Err(IoApicError::NotMine(gsi))
        }
    }

    /// Reads the entry of `gsi`.
    pub fn entry(&self, gsi: u32) -> Result<Redirection, IoApicError> {
        let pin = self.pin(gsi)?;
        let lo = self.regs.read(index::REDTBL + 2 * pin);
        let hi = self.regs.read(index::REDTBL + 2 * pin + 1);
        Redirection::from_bits(lo, hi).ok_or(IoApicError::Foreign(gsi))
    }

    /// Programs the entry of `gsi`. The entry is masked while its two
    /// halves are written, so a half-written entry never delivers.
    pub fn set(&self, gsi: u32, r: Redirection) -> Result<(), IoApicError> {
        if r.vector < 32 {
            return Err(IoApicError::BadVector(r.vector));
        }
        let pin = self.pin(gsi)?;
        let (lo, hi) = r.to_bits();
        self.regs.write(index::REDTBL + 2 * pin, lo | bits::MASKED);
        self.regs.write(index::REDTBL + 2 * pin + 1, hi);
        self.regs.write(index::REDTBL + 2 * pin, lo);
        Ok(())
    }

    /// Masks or unmasks `gsi`, keeping the rest of its entry.
    pub fn set_masked(&self, gsi: u32, masked: bool) -> Result<(), IoApicError> {
        let pin = self.pin(gsi)?;
        let lo = self.regs.read(index::REDTBL + 2 * pin);
        let lo = if masked { lo | bits::MASKED } else { lo & !bits::MASKED };
        self.regs.write(index::REDTBL + 2 * pin, lo);
        Ok(())
    }

    /// Masks every entry (at boot, before routing anything).
    pub fn mask_all(&self) {
        for pin in 0..self.entries.min(240) as u8 {
            let lo = self.regs.read(index::REDTBL + 2 * pin);
            self.regs.write(index::REDTBL + 2 * pin, lo | bits::MASKED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    /// Registers as an array; IOAPICVER says 24 entries (QEMU's).
    struct Fake(RefCell<[u32; 0x40]>);
    impl Fake {
        fn new() -> Self {
            let mut r = [0u32; 0x40];
            r[0] = 2 << 24;
            r[1] = 23 << 16 | 0x20;
            // Reset state: every entry masked (datasheet §3.2.4).
            for p in 0..24 {
                r[0x10 + 2 * p] = bits::MASKED;
            }
            Self(RefCell::new(r))
        }
    }
    impl Regs for &Fake {
        fn read(&self, i: u8) -> u32 {
            self.0.borrow()[usize::from(i)]
        }
        fn write(&self, i: u8, v: u32) {
            self.0.borrow_mut()[usize::from(i)] = v;
        }
    }

    const VIRTIO: Redirection =
        Redirection { vector: 0x41, trigger: Trigger::Level, active_low: false, masked: false, dest: 3 };

    #[test]
    fn program_read_back_and_mask() {
        let f = Fake::new();
        let io = IoApic::new(&f, 24);
        assert_eq!((io.id(), io.gsis()), (2, 24..48));
        io.set(29, VIRTIO).unwrap();
        // Pin 5: index 0x1a/0x1b.
        assert_eq!(f.0.borrow()[0x1a], 0x41 | bits::LEVEL);
        assert_eq!(f.0.borrow()[0x1b], 3 << 24);
        assert_eq!(io.entry(29), Ok(VIRTIO));
        io.set_masked(29, true).unwrap();
        assert_eq!(io.entry(29).unwrap(), Redirection { masked: true, ..VIRTIO });
        io.set_masked(29, false).unwrap();
        assert_eq!(io.entry(29), Ok(VIRTIO));
        io.mask_all();
        assert!(io.entry(29).unwrap().masked);
        assert_eq!(io.entry(29).unwrap().vector, 0x41, "masking keeps the rest");
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let f = Fake::new();
        let io = IoApic::new(&f, 24);
        assert_eq!(io.set(23, VIRTIO), Err(IoApicError::NotMine(23)));
        assert_eq!(io.set(48, VIRTIO), Err(IoApicError::NotMine(48)));
        assert_eq!(io.set(24, Redirection { vector: 14, ..VIRTIO }), Err(IoApicError::BadVector(14)));
        f.0.borrow_mut()[0x10] = 0x41 | 0b001 << 8; // lowest-priority delivery
        assert_eq!(io.entry(24), Err(IoApicError::Foreign(24)));
    }

    #[test]
    fn bits_round_trip() {
        for trigger in [Trigger::Edge, Trigger::Level] {
            for active_low in [false, true] {
                for masked in [false, true] {
                    let r = Redirection { vector: 0x99, trigger, active_low, masked, dest: 0xfe };
                    let (lo, hi) = r.to_bits();
                    assert_eq!(Redirection::from_bits(lo, hi), Some(r));
                }
            }
        }
    }
}
