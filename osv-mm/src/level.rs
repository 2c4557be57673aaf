//! Page-table levels and page sizes as types (x86_64 4-level paging, Intel SDM vol. 3A §4.5).
//!
//! OSv writes `hw_ptep<N>` with the level as a template integer; here the level is a marker
//! type implementing the sealed [`Level`] trait. What only makes sense on some levels is a
//! separate trait: [`HasLower`] for the levels whose entries can point at a table, and
//! [`HugeCapable`] for the levels whose entries can map a large page (the PS bit). So
//! `PtElement::<L0>::huge()` or `PtElement::<L3>::huge_page(..)` do not compile.

use crate::VirtAddr;

mod sealed {
    pub trait Sealed {}
}
pub(crate) use sealed::Sealed;

/// Number of entries in every x86_64 page table (4 KiB / 8 bytes).
pub const ENTRIES: usize = 512;

/// A page-table level. Sealed: exactly [`L0`], [`L1`], [`L2`] and [`L3`].
pub trait Level: Sealed + Copy + Eq + core::fmt::Debug + Default + Send + Sync + 'static {
    /// OSv's level number: 0 for the 4 KiB PTEs, 3 for the PML4.
    const LEVEL: u8;
    /// Shift of the virtual-address bits that index this level's table.
    const SHIFT: u32;
    /// Bytes of virtual address space covered by one entry of this level.
    const SPAN: u64 = 1 << Self::SHIFT;
    /// The SDM's name for a table of this level.
    const NAME: &'static str;

    /// Index of the entry covering `va` in a table of this level.
    fn index(va: VirtAddr) -> usize {
        ((va.as_u64() >> Self::SHIFT) as usize) % ENTRIES
    }
}

/// A level whose entries may point at a table of the level below.
pub trait HasLower: Level {
    /// The level of the table an entry of this level points at.
    type Lower: Level;
}

/// A level whose entries may map a large page directly (the PS bit, SDM tables 4-17 and 4-19).
pub trait HugeCapable: HasLower {
    /// The size of the page a leaf entry at this level maps.
    type Size: Size;
}

/// Level 0: the page table proper (SDM "PT"), entries map 4 KiB pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L0;
/// Level 1: the page directory (SDM "PD"), entries map 2 MiB pages or point at an [`L0`] table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L1;
/// Level 2: the page-directory-pointer table (SDM "PDPT"), entries map 1 GiB pages or point at
/// an [`L1`] table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L2;
/// Level 3: the PML4, the root; entries point at an [`L2`] table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct L3;

macro_rules! level {
    ($t:ty, $n:expr, $shift:expr, $name:expr) => {
        impl Sealed for $t {}
        impl Level for $t {
            const LEVEL: u8 = $n;
            const SHIFT: u32 = $shift;
            const NAME: &'static str = $name;
        }
    };
}
level!(L0, 0, 12, "PT");
level!(L1, 1, 21, "PD");
level!(L2, 2, 30, "PDPT");
level!(L3, 3, 39, "PML4");

impl HasLower for L1 {
    type Lower = L0;
}
impl HasLower for L2 {
    type Lower = L1;
}
impl HasLower for L3 {
    type Lower = L2;
}
impl HugeCapable for L1 {
    type Size = Size2M;
}
impl HugeCapable for L2 {
    type Size = Size1G;
}

/// A page size as a value, e.g. in the result of [`Mapper::translate`](crate::Mapper::translate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by an [`L0`] entry.
    Size4K,
    /// 2 MiB, mapped by an [`L1`] entry with PS set.
    Size2M,
    /// 1 GiB, mapped by an [`L2`] entry with PS set.
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => Size4K::SIZE,
            Self::Size2M => Size2M::SIZE,
            Self::Size1G => Size1G::SIZE,
        }
    }
}

/// A page size as a type. Sealed: [`Size4K`], [`Size2M`], [`Size1G`].
pub trait Size: Sealed + Copy + core::fmt::Debug + 'static {
    /// The size in bytes.
    const SIZE: u64;
    /// The same size as a value.
    const KIND: PageSize;
    /// The level whose leaf entries map pages of this size.
    type Level: Level;
}

/// A 4 KiB page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Size4K;
/// A 2 MiB page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Size2M;
/// A 1 GiB page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Size1G;

impl Sealed for Size4K {}
impl Sealed for Size2M {}
impl Sealed for Size1G {}
impl Size for Size4K {
    const SIZE: u64 = 4096;
    const KIND: PageSize = PageSize::Size4K;
    type Level = L0;
}
impl Size for Size2M {
    const SIZE: u64 = 2 << 20;
    const KIND: PageSize = PageSize::Size2M;
    type Level = L1;
}
impl Size for Size1G {
    const SIZE: u64 = 1 << 30;
    const KIND: PageSize = PageSize::Size1G;
    type Level = L2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_indices() {
        assert_eq!(L0::SPAN, Size4K::SIZE);
        assert_eq!(L1::SPAN, Size2M::SIZE);
        assert_eq!(L2::SPAN, Size1G::SIZE);
        assert_eq!(L3::SPAN, 512 * Size1G::SIZE);
        let va = VirtAddr::new(0xffff_8000_4020_3000);
        assert_eq!(L3::index(va), 256);
        assert_eq!(L2::index(va), 1);
        assert_eq!(L1::index(va), 1);
        assert_eq!(L0::index(va), 3);
        assert_eq!(<L1 as HugeCapable>::Size::KIND, PageSize::Size2M);
        assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
    }
}
