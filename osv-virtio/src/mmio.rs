//! Register access behind a trait, so transports run against fakes on the
//! host.
//!
//! [`Mmio`] is a window of device registers addressed by byte offset. The
//! kernel builds a [`VolatileMmio`] from a mapped pointer (`unsafe`); the
//! tests use `fake` register files. Offsets outside the window read as all
//! ones and ignore writes (as a PCI master abort does) rather than panic:
//! some offsets (PCI capability offsets, notify offsets) come from the
//! device, and the transports check them, but the register layer stays
//! total too.
#![allow(unsafe_code)]

use core::ptr::NonNull;

/// A window of little-endian device registers (x86 is little-endian, as is
/// every modern virtio register).
///
/// Methods take `&self`: register reads have side effects on the device
/// (reading the ISR clears it), not on the Rust value.
pub trait Mmio {
    /// The size of the window in bytes.
    fn len(&self) -> usize;
    /// `true` if the window is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads the byte at `offset`.
    fn read8(&self, offset: usize) -> u8;
    /// Reads the 16-bit register at `offset`.
    fn read16(&self, offset: usize) -> u16;
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the byte at `offset`.
    fn write8(&self, offset: usize, value: u8);
    /// Writes the 16-bit register at `offset`.
    fn write16(&self, offset: usize, value: u16);
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Writes a 64-bit register as two 32-bit writes, low half first
    /// (virtio 1.2 §4.1.3.1 allows this for the common configuration).
    fn write64_split(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset.wrapping_add(4), (value >> 32) as u32);
    }
    /// Reads a 64-bit value exposed 32 bits at a time behind a select
    /// register (virtio's feature words: 0 selects bits 0-31, 1 bits 32-63;
    /// virtio 1.2 §4.1.4.3 and §4.2.2).
    fn read_selected64(&self, select: usize, value: usize) -> u64 {
        self.write32(select, 0);
        let lo = self.read32(value);
        self.write32(select, 1);
        let hi = self.read32(value);
        u64::from(lo) | u64::from(hi) << 32
    }
    /// Writes a 64-bit value 32 bits at a time behind a select register.
    fn write_selected64(&self, select: usize, value: usize, v: u64) {
        self.write32(select, 0);
        self.write32(value, v as u32);
        self.write32(select, 1);
        self.write32(value, (v >> 32) as u32);
    }
}

/// Registers reached with volatile loads and stores through a pointer.
#[derive(Debug)]
pub struct VolatileMmio {
    base: NonNull<u8>,
    len: usize,
}

impl VolatileMmio {
    /// A window of `len` bytes of registers at `base`.
    ///
    /// # Safety
    ///
    /// 1. `[base, base + len)` is mapped (uncached or write-through as the
    ///    device requires) to device registers, or to memory, for as long as
    ///    the returned value and everything built from it live.
    /// 2. `base` is aligned to 4 bytes (accesses at aligned offsets are then
    ///    naturally aligned).
    /// 3. Nothing else relies on those registers' state while this value is
    ///    in use (the transport owns the device).
    pub const unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// The pointer to `offset` if a `width`-byte access there is inside the
    /// window and naturally aligned.
    fn at(&self, offset: usize, width: usize) -> Option<*mut u8> {
        let end = offset.checked_add(width)?;
        if end > self.len || !offset.is_multiple_of(width) {
            return None;
        }
        // SAFETY: `offset + width <= len`, so the result stays inside the
        // mapped window of `new`'s promise 1.
        Some(unsafe { self.base.as_ptr().add(offset) })
    }
}

// SAFETY: the window is device registers owned by whoever owns this value
// (promise 3 of `new`); moving it between threads changes nothing.
unsafe impl Send for VolatileMmio {}

macro_rules! volatile_rw {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&self, offset: usize) -> $t {
            match self.at(offset, core::mem::size_of::<$t>()) {
                // SAFETY: `at` checked the access is inside the mapped window
                // and naturally aligned (with `new`'s promise 2).
                Some(p) => <$t>::from_le(unsafe { p.cast::<$t>().read_volatile() }),
                None => <$t>::MAX,
            }
        }
        fn $write(&self, offset: usize, value: $t) {
            if let Some(p) = self.at(offset, core::mem::size_of::<$t>()) {
                // SAFETY: as for the read: in bounds and aligned.
                unsafe { p.cast::<$t>().write_volatile(value.to_le()) }
            }
        }
    };
}

impl Mmio for VolatileMmio {
    fn len(&self) -> usize {
        self.len
    }
    volatile_rw!(read8, write8, u8);
    volatile_rw!(read16, write16, u16);
    volatile_rw!(read32, write32, u32);
}

impl<M: Mmio + ?Sized> Mmio for &M {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read8(&self, offset: usize) -> u8 {
        (**self).read8(offset)
    }
    fn read16(&self, offset: usize) -> u16 {
        (**self).read16(offset)
    }
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write8(&self, offset: usize, value: u8) {
        (**self).write8(offset, value)
    }
    fn write16(&self, offset: usize, value: u16) {
        (**self).write16(offset, value)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_over_memory_bounds_and_alignment() {
        let mut words = [0u32; 4];
        let base = NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `words` is 16 bytes of live, 4-aligned memory that only
        // this window touches until it is dropped at the end of the test.
        let m = unsafe { VolatileMmio::new(base, 16) };
        m.write32(4, 0xdead_beef);
        assert_eq!(m.read32(4), 0xdead_beef);
        assert_eq!(m.read16(4), 0xbeef);
        assert_eq!(m.read8(7), 0xde);
        // Out of range or misaligned: all ones, writes ignored.
        assert_eq!(m.read32(16), u32::MAX);
        assert_eq!(m.read32(2), u32::MAX);
        assert_eq!(m.read32(usize::MAX - 1), u32::MAX);
        m.write32(14, 1);
        m.write64_split(8, 0x1122_3344_5566_7788);
        assert_eq!(m.read32(8), 0x5566_7788);
        assert_eq!(m.read32(12), 0x1122_3344);
    }
}
