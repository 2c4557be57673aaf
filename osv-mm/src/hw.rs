//! Live hardware entries: [`HwPtep<L>`] (OSv's `hw_ptep<N>`), [`PageTable<L>`], and the two
//! traits through which the kernel lends physical memory: [`FrameAllocator`] and
//! [`PhysMapper`].
//!
//! This is the module that turns addresses into references, so it is where `unsafe` lives.
#![allow(unsafe_code)]

use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::level::{Level, ENTRIES};
use crate::pte::PtElement;
use crate::sync::{AtomicU64, Ordering};
use crate::PhysAddr;

/// A pointer to a live page-table entry of level `L` (OSv's `hw_ptep<N>`).
///
/// All accesses are atomic: the CPU's page walker sets A/D bits concurrently, and two CPUs
/// faulting on the same page race to fill the same empty entry with
/// [`compare_exchange`](Self::compare_exchange).
pub struct HwPtep<'a, L: Level> {
    entry: &'a AtomicU64,
    _level: PhantomData<L>,
}

impl<L: Level> Clone for HwPtep<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<L: Level> Copy for HwPtep<'_, L> {}

impl<L: Level> fmt::Debug for HwPtep<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HwPtep<L{}>({:p} = {:?})", L::LEVEL, self.entry, self.read())
    }
}

impl<'a, L: Level> HwPtep<'a, L> {
    /// An entry you own: a slot of a [`PageTable`] or any atomic word (tests, loom models).
    pub fn new(entry: &'a AtomicU64) -> Self {
        Self { entry, _level: PhantomData }
    }

    /// An entry from a raw pointer, e.g. into a table reached through a linear map.
    ///
    /// # Safety
    /// 1. `ptr` is aligned and points to an entry of a level-`L` page table (or to memory the
    ///    caller treats as such) that stays valid for `'a`.
    /// 2. For `'a`, that memory is only accessed atomically (by this crate, other `HwPtep`s
    ///    or the CPU's page walker), never through a non-atomic `&mut`.
    pub unsafe fn from_ptr(ptr: NonNull<AtomicU64>) -> Self {
        // SAFETY: the caller guarantees (1) validity and alignment for `'a` and (2) that the
        // memory is only shared atomically, which is what `&AtomicU64` allows.
        Self::new(unsafe { ptr.as_ref() })
    }

    /// The current value (Acquire: a table it points at is initialised).
    pub fn read(&self) -> PtElement<L> {
        PtElement::from_raw(self.entry.load(Ordering::Acquire))
    }

    /// Stores `pte` (Release: everything written before, e.g. a zeroed table or page, is
    /// visible to whoever reads the entry).
    pub fn write(&self, pte: PtElement<L>) {
        self.entry.store(pte.raw(), Ordering::Release);
    }

    /// Stores `new` if the entry still holds `old`. `Ok(old)` on success, `Err(current)` when
    /// someone else changed it first: the loser of a fault race learns the winner's value.
    pub fn compare_exchange(
        &self,
        old: PtElement<L>,
        new: PtElement<L>,
    ) -> Result<PtElement<L>, PtElement<L>> {
        self.entry
            .compare_exchange(old.raw(), new.raw(), Ordering::AcqRel, Ordering::Acquire)
            .map(PtElement::from_raw)
            .map_err(PtElement::from_raw)
    }

    /// Stores `new` and returns what was there (used to clear an entry and learn its frame).
    pub fn exchange(&self, new: PtElement<L>) -> PtElement<L> {
        PtElement::from_raw(self.entry.swap(new.raw(), Ordering::AcqRel))
    }
}

/// A page table of level `L`: 512 atomic entries, 4 KiB aligned, usable as a real table.
#[repr(C, align(4096))]
pub struct PageTable<L: Level> {
    entries: [AtomicU64; ENTRIES],
    _level: PhantomData<L>,
}

impl<L: Level> PageTable<L> {
    /// An empty table (all entries not present).
    pub fn new() -> Self {
        Self { entries: core::array::from_fn(|_| AtomicU64::new(0)), _level: PhantomData }
    }

    /// The entry at `index` (`index < 512`, else panics).
    pub fn entry(&self, index: usize) -> HwPtep<'_, L> {
        HwPtep::new(&self.entries[index])
    }

    /// Iterates over the 512 entries.
    pub fn entries(&self) -> impl Iterator<Item = HwPtep<'_, L>> {
        self.entries.iter().map(HwPtep::new)
    }

    /// Whether every entry is zero.
    pub fn is_empty(&self) -> bool {
        self.entries().all(|e| e.read().is_empty())
    }

    /// Sets every entry to zero.
    pub fn clear(&self) {
        for e in &self.entries {
            e.store(0, Ordering::Relaxed);
        }
    }
}

impl<L: Level> Default for PageTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands out and takes back 4 KiB physical frames for page tables (and, for providers, for
/// pages).
///
/// # Safety
/// Implementers promise:
/// 1. a frame returned by `allocate_frame` is 4 KiB aligned, below 2^52, and not handed out
///    again (nor used by anyone else) until it is passed to `free_frame`;
/// 2. together with the [`PhysMapper`] it is used with, the frame is reachable as described
///    there.
pub unsafe trait FrameAllocator {
    /// A free frame, or `None` when memory is exhausted. Its contents are unspecified.
    fn allocate_frame(&self) -> Option<PhysAddr>;

    /// Gives back a frame.
    ///
    /// # Safety
    /// 1. `frame` came from `allocate_frame` of this allocator and was not freed since.
    /// 2. Nothing uses the frame any more (no entry points at it, or the TLB flush that drops
    ///    the last reference has been scheduled before the frame can be reused).
    unsafe fn free_frame(&self, frame: PhysAddr);

    /// A 2 MiB-aligned run of 512 frames for a large page, or `None` when the allocator has
    /// none (or cannot hand out runs at all: the default). Each of the 512 frames is then
    /// owned as if it came from [`allocate_frame`](Self::allocate_frame): they may go back
    /// one by one through [`free_frame`](Self::free_frame) (after a large page was split), or
    /// all at once through [`free_huge`](Self::free_huge). Implementers keep promise 1 for
    /// every frame of the run.
    fn allocate_huge(&self) -> Option<PhysAddr> {
        None
    }

    /// Gives back a whole run from [`allocate_huge`](Self::allocate_huge). The default frees
    /// its 512 frames one by one.
    ///
    /// # Safety
    /// 1. `base` came from `allocate_huge` of this allocator and none of its frames was freed
    ///    since.
    /// 2. As [`free_frame`](Self::free_frame)'s promise 2, for all 512 frames.
    unsafe fn free_huge(&self, base: PhysAddr) {
        for i in 0..512 {
            // SAFETY: by the caller's promises, frame `i` of the run is ours and unused, and
            // `allocate_huge` made each frame individually freeable.
            unsafe { self.free_frame(PhysAddr::new(base.as_u64() + i * 4096)) };
        }
    }
}

/// Where the kernel can reach a physical frame: e.g. a linear map of all physical memory.
///
/// # Safety
/// Implementers promise that for every frame handed out by the [`FrameAllocator`] used with
/// it (and the root table given to [`Mapper::from_root`](crate::Mapper::from_root)),
/// `frame_ptr` returns a 4 KiB-aligned pointer valid for reads and writes of 4096 bytes for as
/// long as the frame is allocated, and that distinct frames do not overlap.
pub unsafe trait PhysMapper {
    /// The virtual address at which `frame` (4 KiB aligned) can be accessed.
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8>;
}

/// A [`PhysMapper`] that maps physical memory linearly (OSv's `phys_mem` window): frames that
/// are consecutive in physical memory are consecutive in virtual memory, so a run of pages
/// can be used as one buffer. The heap needs this for multi-page allocations.
///
/// # Safety
/// Implementers promise, besides [`PhysMapper`]'s promise:
/// 1. `frame_ptr(a + k * 4096) == frame_ptr(a) + k * 4096` for all frames of the memory it is
///    used with, and
/// 2. `phys_of(frame_ptr(a).add(o)) == a + o` for `o < 4096`, and
/// 3. virtual and physical addresses are congruent modulo 2 MiB (so a physically aligned run
///    of pages is aligned the same way in virtual memory, up to 2 MiB).
pub unsafe trait LinearMap: PhysMapper {
    /// The physical address behind a pointer into mapped physical memory.
    fn phys_of(&self, ptr: NonNull<u8>) -> PhysAddr;
}

// SAFETY: forwards to `T`, which keeps its promises.
unsafe impl<T: LinearMap + ?Sized> LinearMap for &T {
    fn phys_of(&self, ptr: NonNull<u8>) -> PhysAddr {
        (**self).phys_of(ptr)
    }
}

// SAFETY: forwards to `T`, which keeps its promises.
unsafe impl<T: FrameAllocator + ?Sized> FrameAllocator for &T {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        (**self).allocate_frame()
    }
    unsafe fn free_frame(&self, frame: PhysAddr) {
        // SAFETY: the caller's promises are exactly those `T::free_frame` needs.
        unsafe { (**self).free_frame(frame) }
    }
    fn allocate_huge(&self) -> Option<PhysAddr> {
        (**self).allocate_huge()
    }
    unsafe fn free_huge(&self, base: PhysAddr) {
        // SAFETY: the caller's promises are exactly those `T::free_huge` needs.
        unsafe { (**self).free_huge(base) }
    }
}

// SAFETY: forwards to `T`, which keeps its promises.
unsafe impl<T: PhysMapper + ?Sized> PhysMapper for &T {
    fn frame_ptr(&self, frame: PhysAddr) -> NonNull<u8> {
        (**self).frame_ptr(frame)
    }
}

/// The table in `frame`, reached through `phys`.
///
/// # Safety
/// 1. `frame` is a frame of `phys`'s allocator (or the root) that currently holds a page
///    table of level `L`, and stays allocated for `'a`.
/// 2. The table is only accessed atomically while the reference lives.
#[cfg(not(loom))]
pub(crate) unsafe fn table_at<'a, L: Level, M: PhysMapper + ?Sized>(
    phys: &M,
    frame: PhysAddr,
) -> &'a PageTable<L> {
    let ptr = phys.frame_ptr(frame).cast::<PageTable<L>>();
    // SAFETY: `PhysMapper` promises a 4 KiB-aligned pointer valid for 4096 bytes (the size
    // and alignment of `PageTable`, which is 512 `AtomicU64`s with the layout of `u64`s); the
    // caller promises (1) liveness for `'a` and (2) atomic-only sharing.
    unsafe { ptr.as_ref() }
}

/// Fills `frame` with zeros through `phys`.
///
/// # Safety
/// 1. `frame` was just allocated from `phys`'s allocator (or is otherwise exclusively owned by
///    the caller): nobody else reads or writes it during the call.
pub(crate) unsafe fn zero_frame<M: PhysMapper + ?Sized>(phys: &M, frame: PhysAddr) {
    let ptr = phys.frame_ptr(frame);
    // SAFETY: `PhysMapper` promises 4096 writable bytes at `ptr`; the caller promises
    // exclusive ownership, so this non-atomic write races with nothing.
    unsafe { ptr.as_ptr().write_bytes(0, 4096) };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::level::{L0, L1};
    use crate::pte::Flags;

    #[test]
    fn ptep_read_write_cas() {
        let table = PageTable::<L1>::new();
        let e = table.entry(7);
        assert!(e.read().is_empty());
        let huge = PtElement::<L1>::huge_page(PhysAddr::new(0x20_0000), Flags::RW).unwrap();
        assert_eq!(e.compare_exchange(PtElement::empty(), huge), Ok(PtElement::empty()));
        let other = PtElement::<L1>::huge_page(PhysAddr::new(0x40_0000), Flags::RW).unwrap();
        assert_eq!(e.compare_exchange(PtElement::empty(), other), Err(huge));
        assert_eq!(e.exchange(PtElement::empty()), huge);
        assert!(table.is_empty());
        let word = AtomicU64::new(0);
        let p = HwPtep::<L0>::new(&word);
        p.write(PtElement::from_raw(0x1003));
        // SAFETY: `word` is a live, aligned atomic used only atomically below.
        let q = unsafe { HwPtep::<L0>::from_ptr(NonNull::from(&word)) };
        assert_eq!(q.read().raw(), 0x1003);
        assert!(format!("{q:?}").contains("L0"));
    }
}
