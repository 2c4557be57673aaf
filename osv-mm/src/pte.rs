//! Page-table entry values: [`PtElement<L>`] (OSv's `pt_element<N>`) and the permission
//! [`Flags`] they encode.
//!
//! Bit layout from the Intel SDM vol. 3A §4.5, tables 4-15 (PML4E), 4-16/4-17 (PDPTE: 1 GiB
//! page / table), 4-18/4-19 (PDE: 2 MiB page / table) and 4-20 (PTE). Physical addresses are
//! taken up to bit 51 (MAXPHYADDR = 52, the architectural maximum); bits 52..=62 (software and
//! protection-key bits) are left clear by every constructor here.

use core::fmt;
use core::marker::PhantomData;

use crate::level::{HasLower, HugeCapable, Level, Size, L0};
use crate::PhysAddr;

/// Raw x86_64 entry bits (SDM vol. 3A §4.5, tables 4-15..4-20).
pub mod bits {
    /// P: the entry is valid.
    pub const PRESENT: u64 = 1 << 0;
    /// R/W: writes allowed (for a table pointer: allowed below it).
    pub const WRITABLE: u64 = 1 << 1;
    /// U/S: user-mode accesses allowed.
    pub const USER: u64 = 1 << 2;
    /// PWT: page-level write-through.
    pub const WRITE_THROUGH: u64 = 1 << 3;
    /// PCD: page-level cache disable.
    pub const CACHE_DISABLE: u64 = 1 << 4;
    /// A: set by the CPU on access.
    pub const ACCESSED: u64 = 1 << 5;
    /// D: set by the CPU on write (leaf entries only).
    pub const DIRTY: u64 = 1 << 6;
    /// PS: this PDE/PDPTE maps a 2 MiB/1 GiB page. In a 4 KiB PTE the same bit is PAT.
    pub const HUGE: u64 = 1 << 7;
    /// PAT bit of a 4 KiB PTE (same position as [`HUGE`]).
    pub const PAT_4K: u64 = 1 << 7;
    /// G: global translation (leaf entries only, with CR4.PGE).
    pub const GLOBAL: u64 = 1 << 8;
    /// PAT bit of a 2 MiB or 1 GiB page entry.
    pub const PAT_HUGE: u64 = 1 << 12;
    /// XD: instruction fetches not allowed (with IA32_EFER.NXE).
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Address field of a 4 KiB PTE or of any table pointer: bits 51:12.
    pub const ADDR_4K: u64 = 0x000f_ffff_ffff_f000;
    /// Address field of a 2 MiB page PDE: bits 51:21.
    pub const ADDR_2M: u64 = 0x000f_ffff_ffe0_0000;
    /// Address field of a 1 GiB page PDPTE: bits 51:30.
    pub const ADDR_1G: u64 = 0x000f_ffff_c000_0000;
}

bitflags::bitflags! {
    /// What a mapping allows, mapped to PTE bits by [`PtElement`].
    ///
    /// x86_64 cannot express write-only or execute-only pages: a present page is readable, so
    /// [`Flags::normalized`] adds `READ` to any non-empty set, and a mapping needs at least one
    /// of `READ`/`WRITE`/`EXEC`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Flags: u8 {
        /// Readable (P).
        const READ = 1 << 0;
        /// Writable (R/W).
        const WRITE = 1 << 1;
        /// Executable (clears XD).
        const EXEC = 1 << 2;
        /// Accessible from user mode (U/S).
        const USER = 1 << 3;
        /// Global: kept in the TLB across CR3 loads (G).
        const GLOBAL = 1 << 4;
        /// Uncacheable, for MMIO (PCD | PWT).
        const NO_CACHE = 1 << 5;
    }
}

impl Flags {
    /// Kernel data: read, write, no execute.
    pub const RW: Self = Self::READ.union(Self::WRITE);
    /// Kernel text: read and execute.
    pub const RX: Self = Self::READ.union(Self::EXEC);

    /// Adds `READ` when any access is allowed (x86_64 has no write-only or execute-only page).
    pub const fn normalized(self) -> Self {
        if self.intersects(Self::READ.union(Self::WRITE).union(Self::EXEC)) {
            self.union(Self::READ)
        } else {
            self
        }
    }

    /// Whether any access is allowed.
    pub const fn allows_access(self) -> bool {
        self.intersects(Self::READ.union(Self::WRITE).union(Self::EXEC))
    }

    /// The leaf-entry bits for these permissions (without address, PS or PAT).
    pub const fn to_pte_bits(self) -> u64 {
        let mut raw = 0;
        if self.allows_access() {
            raw |= bits::PRESENT;
        }
        if self.contains(Self::WRITE) {
            raw |= bits::WRITABLE;
        }
        if self.contains(Self::USER) {
            raw |= bits::USER;
        }
        if !self.contains(Self::EXEC) {
            raw |= bits::NO_EXECUTE;
        }
        if self.contains(Self::GLOBAL) {
            raw |= bits::GLOBAL;
        }
        if self.contains(Self::NO_CACHE) {
            raw |= bits::CACHE_DISABLE | bits::WRITE_THROUGH;
        }
        raw
    }

    /// The permissions a present leaf entry's bits grant (empty if not present).
    pub const fn from_pte_bits(raw: u64) -> Self {
        if raw & bits::PRESENT == 0 {
            return Self::empty();
        }
        let mut f = Self::READ;
        if raw & bits::WRITABLE != 0 {
            f = f.union(Self::WRITE);
        }
        if raw & bits::USER != 0 {
            f = f.union(Self::USER);
        }
        if raw & bits::NO_EXECUTE == 0 {
            f = f.union(Self::EXEC);
        }
        if raw & bits::GLOBAL != 0 {
            f = f.union(Self::GLOBAL);
        }
        if raw & bits::CACHE_DISABLE != 0 {
            f = f.union(Self::NO_CACHE);
        }
        f
    }
}

/// A physical address that is not aligned to what the entry needs (or is beyond 52 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressNotAligned {
    /// The rejected address.
    pub addr: PhysAddr,
    /// The alignment the entry needs.
    pub align: u64,
}

impl fmt::Display for AddressNotAligned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a {:#x}-aligned 52-bit physical address", self.addr, self.align)
    }
}

impl core::error::Error for AddressNotAligned {}

const fn check(addr: PhysAddr, mask: u64, align: u64) -> Result<(), AddressNotAligned> {
    if addr.as_u64() & !mask != 0 {
        Err(AddressNotAligned { addr, align })
    } else {
        Ok(())
    }
}

/// The value of one page-table entry at level `L` (OSv's `pt_element<N>`).
///
/// A plain `u64`: building one touches no table. Write it through a [`HwPtep`](crate::HwPtep).
#[repr(transparent)]
pub struct PtElement<L: Level> {
    raw: u64,
    _level: PhantomData<L>,
}

impl<L: Level> Clone for PtElement<L> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: Level> Copy for PtElement<L> {}
impl<L: Level> PartialEq for PtElement<L> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<L: Level> Eq for PtElement<L> {}
impl<L: Level> Default for PtElement<L> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<L: Level> fmt::Debug for PtElement<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PtElement<L{}>({:#018x})", L::LEVEL, self.raw)
    }
}

impl<L: Level> PtElement<L> {
    /// The empty (all-zero, not present) entry.
    pub const fn empty() -> Self {
        Self::from_raw(0)
    }

    /// An entry from its raw bits, as read from hardware.
    pub const fn from_raw(raw: u64) -> Self {
        Self { raw, _level: PhantomData }
    }

    /// The raw bits.
    pub const fn raw(self) -> u64 {
        self.raw
    }

    /// Whether all bits are zero (OSv's `empty()`).
    pub const fn is_empty(self) -> bool {
        self.raw == 0
    }

    const fn bit(self, b: u64) -> bool {
        self.raw & b != 0
    }

    /// P.
    pub const fn present(self) -> bool {
        self.bit(bits::PRESENT)
    }
    /// R/W.
    pub const fn writable(self) -> bool {
        self.bit(bits::WRITABLE)
    }
    /// U/S.
    pub const fn user(self) -> bool {
        self.bit(bits::USER)
    }
    /// PWT.
    pub const fn write_through(self) -> bool {
        self.bit(bits::WRITE_THROUGH)
    }
    /// PCD.
    pub const fn cache_disable(self) -> bool {
        self.bit(bits::CACHE_DISABLE)
    }
    /// A.
    pub const fn accessed(self) -> bool {
        self.bit(bits::ACCESSED)
    }
    /// XD (bit 63).
    pub const fn nx(self) -> bool {
        self.bit(bits::NO_EXECUTE)
    }

    /// Whether the PS bit is set on a level where it means "large page".
    const fn ps(self) -> bool {
        (L::LEVEL == 1 || L::LEVEL == 2) && self.bit(bits::HUGE)
    }

    /// Whether this present entry maps memory (a 4 KiB PTE or a large page), rather than
    /// pointing at a table.
    pub const fn is_leaf(self) -> bool {
        self.present() && (L::LEVEL == 0 || self.ps())
    }

    /// The physical address field, masked for what the entry is: a 2 MiB/1 GiB page frame for
    /// a large-page entry, otherwise bits 51:12 (a 4 KiB frame or a table).
    pub const fn addr(self) -> PhysAddr {
        let mask = if self.ps() {
            if L::LEVEL == 1 {
                bits::ADDR_2M
            } else {
                bits::ADDR_1G
            }
        } else {
            bits::ADDR_4K
        };
        PhysAddr::new(self.raw & mask)
    }

    /// The permissions of a leaf entry (empty if not present).
    pub const fn flags(self) -> Flags {
        Flags::from_pte_bits(self.raw)
    }

    /// The same entry with its permission bits (P, R/W, U/S, PWT, PCD, G, XD) replaced by
    /// `flags`; address, A, D, PS and PAT are kept.
    #[must_use]
    pub const fn with_flags(self, flags: Flags) -> Self {
        let perm = bits::PRESENT
            | bits::WRITABLE
            | bits::USER
            | bits::WRITE_THROUGH
            | bits::CACHE_DISABLE
            | bits::GLOBAL
            | bits::NO_EXECUTE;
        Self::from_raw((self.raw & !perm) | flags.to_pte_bits())
    }
}

impl PtElement<L0> {
    /// A 4 KiB page entry mapping `frame` with `flags` (SDM table 4-20).
    pub const fn page(frame: PhysAddr, flags: Flags) -> Result<Self, AddressNotAligned> {
        match check(frame, bits::ADDR_4K, 4096) {
            // SAFETY: `check` verified that `frame` is 4 KiB aligned and below 2^52.
            #[allow(unsafe_code)]
            Ok(()) => Ok(unsafe { Self::page_unchecked(frame, flags) }),
            Err(e) => Err(e),
        }
    }

    /// [`page`](Self::page) without the check.
    ///
    /// # Safety
    /// 1. `frame` is 4 KiB aligned and below 2^52. Otherwise its low bits become permission
    ///    bits of the entry, which may then map memory with rights nobody asked for.
    #[allow(unsafe_code)]
    pub const unsafe fn page_unchecked(frame: PhysAddr, flags: Flags) -> Self {
        debug_assert!(frame.as_u64() & !bits::ADDR_4K == 0);
        Self::from_raw(frame.as_u64() | flags.to_pte_bits())
    }

    /// Whether the CPU has written to the page (D).
    pub const fn dirty(self) -> bool {
        self.bit(bits::DIRTY)
    }

    /// G.
    pub const fn global(self) -> bool {
        self.bit(bits::GLOBAL)
    }
}

impl<L: HasLower> PtElement<L> {
    /// An entry pointing at the table in `frame` (SDM tables 4-15, 4-17, 4-19).
    ///
    /// Table entries are permissive (present, writable, user, executable): the leaf entry
    /// decides, as the effective rights are the intersection along the walk.
    pub const fn table(frame: PhysAddr) -> Result<Self, AddressNotAligned> {
        match check(frame, bits::ADDR_4K, 4096) {
            // SAFETY: `check` verified that `frame` is 4 KiB aligned and below 2^52.
            #[allow(unsafe_code)]
            Ok(()) => Ok(unsafe { Self::table_unchecked(frame) }),
            Err(e) => Err(e),
        }
    }

    /// [`table`](Self::table) without the check.
    ///
    /// # Safety
    /// 1. `frame` is 4 KiB aligned and below 2^52. Otherwise its low bits become flag bits
    ///    (a stray PS bit would turn the table pointer into a large page).
    #[allow(unsafe_code)]
    pub const unsafe fn table_unchecked(frame: PhysAddr) -> Self {
        debug_assert!(frame.as_u64() & !bits::ADDR_4K == 0);
        Self::from_raw(frame.as_u64() | bits::PRESENT | bits::WRITABLE | bits::USER)
    }

    /// The table this entry points at, if it is present and not a large page.
    pub const fn next_table(self) -> Option<PhysAddr> {
        if self.present() && !self.ps() {
            Some(PhysAddr::new(self.raw & bits::ADDR_4K))
        } else {
            None
        }
    }
}

impl<L: HugeCapable> PtElement<L> {
    /// A large-page entry (2 MiB at [`L1`](crate::L1), 1 GiB at [`L2`](crate::L2)) mapping
    /// `frame` with `flags` (SDM tables 4-16, 4-18).
    pub const fn huge_page(frame: PhysAddr, flags: Flags) -> Result<Self, AddressNotAligned> {
        let mask = if L::LEVEL == 1 { bits::ADDR_2M } else { bits::ADDR_1G };
        match check(frame, mask, <L::Size as Size>::SIZE) {
            // SAFETY: `check` verified the alignment to the page size and the 52-bit limit.
            #[allow(unsafe_code)]
            Ok(()) => Ok(unsafe { Self::huge_page_unchecked(frame, flags) }),
            Err(e) => Err(e),
        }
    }

    /// [`huge_page`](Self::huge_page) without the check.
    ///
    /// # Safety
    /// 1. `frame` is aligned to the page size of level `L` and below 2^52. Otherwise its low
    ///    bits become flag or PAT bits of the entry.
    #[allow(unsafe_code)]
    pub const unsafe fn huge_page_unchecked(frame: PhysAddr, flags: Flags) -> Self {
        debug_assert!(frame.as_u64() & (<L::Size as Size>::SIZE - 1) == 0);
        Self::from_raw(frame.as_u64() | flags.to_pte_bits() | bits::HUGE)
    }

    /// PS: whether this entry maps a large page (OSv's `large()`).
    pub const fn huge(self) -> bool {
        self.bit(bits::HUGE)
    }

    /// D (meaningful for a large-page entry).
    pub const fn dirty(self) -> bool {
        self.bit(bits::DIRTY)
    }

    /// G (meaningful for a large-page entry).
    pub const fn global(self) -> bool {
        self.bit(bits::GLOBAL)
    }
}

/// The entry at index `i` of the table a large leaf `raw` at level `level` (1 or 2) splits
/// into: same rights, A/D, G and memory type, address advanced by `i` lower pages.
pub(crate) const fn split_entry(raw: u64, level: u8, i: u64) -> u64 {
    let (mask, lower_size) = if level == 1 { (bits::ADDR_2M, 4096) } else { (bits::ADDR_1G, 2 << 20) };
    let pat = raw & bits::PAT_HUGE != 0;
    let mut out = raw & !mask & !bits::HUGE & !bits::PAT_HUGE & !bits::ADDR_4K;
    out |= (raw & mask) + i * lower_size;
    if level == 1 {
        if pat {
            out |= bits::PAT_4K;
        }
    } else {
        out |= bits::HUGE;
        if pat {
            out |= bits::PAT_HUGE;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::level::{L1, L2, L3};

    #[test]
    fn fixture_4k_rw_nx() {
        let pte = PtElement::<L0>::page(PhysAddr::new(0x1234_5000), Flags::RW).unwrap();
        // P | R/W | XD, frame 0x12345000.
        assert_eq!(pte.raw(), 0x8000_0000_1234_5003);
        assert_eq!(pte.raw().to_le_bytes(), [0x03, 0x50, 0x34, 0x12, 0, 0, 0, 0x80]);
        assert!(pte.present() && pte.writable() && pte.nx() && !pte.user() && pte.is_leaf());
        assert_eq!(pte.addr(), PhysAddr::new(0x1234_5000));
        assert_eq!(pte.flags(), Flags::RW);
        // A set by the CPU, then D: bits 5 and 6; still the same frame.
        let touched = PtElement::<L0>::from_raw(pte.raw() | 0x60);
        assert!(touched.accessed() && touched.dirty());
        assert_eq!(touched.addr(), pte.addr());
    }

    #[test]
    fn fixture_2m_huge() {
        let flags = Flags::RX | Flags::USER | Flags::GLOBAL;
        let pde = PtElement::<L1>::huge_page(PhysAddr::new(0x4060_0000), flags).unwrap();
        // P | U/S | PS | G, executable (no XD), frame 0x40600000.
        assert_eq!(pde.raw(), 0x0000_0000_4060_0185);
        assert!(pde.huge() && pde.is_leaf() && pde.global() && !pde.nx());
        assert_eq!(pde.flags(), flags);
        // PAT (bit 12) of a 2 MiB entry is not part of the address.
        let with_pat = PtElement::<L1>::from_raw(pde.raw() | bits::PAT_HUGE);
        assert_eq!(with_pat.addr(), PhysAddr::new(0x4060_0000));
        assert_eq!(with_pat.next_table(), None);
        assert!(PtElement::<L1>::huge_page(PhysAddr::new(0x4060_1000), flags).is_err());
    }

    #[test]
    fn fixture_1g_and_table_pointer() {
        let pdpte = PtElement::<L2>::huge_page(PhysAddr::new(0x8000_0000), Flags::RW).unwrap();
        assert_eq!(pdpte.raw(), 0x8000_0000_8000_0083);
        assert!(PtElement::<L2>::huge_page(PhysAddr::new(0x20_0000), Flags::RW).is_err());
        let pml4e = PtElement::<L3>::table(PhysAddr::new(0x0009_f000)).unwrap();
        // P | R/W | U/S, no XD.
        assert_eq!(pml4e.raw(), 0x0000_0000_0009_f007);
        assert_eq!(pml4e.next_table(), Some(PhysAddr::new(0x9f000)));
        assert!(!pml4e.is_leaf());
        // Bit 7 in a PML4E is not PS: it never makes the entry a leaf.
        let odd = PtElement::<L3>::from_raw(pml4e.raw() | bits::HUGE);
        assert!(!odd.is_leaf());
        assert_eq!(odd.next_table(), Some(PhysAddr::new(0x9f000)));
        let pde = PtElement::<L1>::table(PhysAddr::new(0x5000)).unwrap();
        assert!(!pde.huge() && pde.next_table().is_some());
    }

    #[test]
    fn rejects_bad_addresses() {
        let e = PtElement::<L0>::page(PhysAddr::new(0x1001), Flags::READ).unwrap_err();
        assert_eq!(e.align, 4096);
        assert!(PtElement::<L0>::page(PhysAddr::new(1 << 52), Flags::READ).is_err());
        assert!(PtElement::<L1>::table(PhysAddr::new(0x800)).is_err());
    }

    #[test]
    fn flags_round_trip() {
        for b in 0..64u8 {
            let f = Flags::from_bits_truncate(b);
            let raw = f.to_pte_bits();
            assert_eq!(
                Flags::from_pte_bits(raw),
                if f.allows_access() { f.normalized() } else { Flags::empty() }
            );
        }
        let pte = PtElement::<L0>::from_raw(0x8000_0000_1234_5063);
        let ro = pte.with_flags(Flags::READ);
        assert_eq!(ro.raw(), 0x8000_0000_1234_5061);
    }

    #[test]
    fn split_preserves_everything_but_size() {
        let pde = PtElement::<L1>::huge_page(PhysAddr::new(0x4060_0000), Flags::RW).unwrap();
        let raw = pde.raw() | bits::PAT_HUGE | bits::DIRTY;
        let e = PtElement::<L0>::from_raw(split_entry(raw, 1, 3));
        assert_eq!(e.addr(), PhysAddr::new(0x4060_3000));
        assert_eq!(e.flags(), Flags::RW);
        assert!(e.dirty() && e.raw() & bits::PAT_4K != 0);
        let pdpte = PtElement::<L2>::huge_page(PhysAddr::new(0x4000_0000), Flags::RX).unwrap();
        let e = PtElement::<L1>::from_raw(split_entry(pdpte.raw(), 2, 511));
        assert!(e.huge());
        assert_eq!(e.addr(), PhysAddr::new(0x4000_0000 + 511 * (2 << 20)));
        assert_eq!(e.flags(), Flags::RX);
    }
}
