//! OSv's memory design as a `no_std` crate.
//!
//! OSv runs the kernel and the application in one address space. Memory is
//! managed in layers, each usable on its own:
//!
//! 1. **Addresses** ([`PhysAddr`], [`VirtAddr`]): newtypes, never bare `u64`.
//! 2. **Levels and entries** ([`level`], [`pte`]): the x86_64 page-table levels are types
//!    ([`L0`] 4 KiB PTEs, [`L1`] page directory, [`L2`] PDPT, [`L3`] PML4), and
//!    [`PtElement<L>`] is an entry value of that level (OSv's `pt_element<N>`).
//! 3. **Live entries** ([`HwPtep<L>`], OSv's `hw_ptep<N>`, and [`PageTable<L>`]): atomic
//!    read / write / compare-exchange on an entry the CPU may be walking, plus the two traits
//!    through which the kernel lends memory: [`FrameAllocator`] and [`PhysMapper`].
//! 4. **The walker** ([`Mapper`]): map, unmap, protect and translate any range, with 2 MiB
//!    pages where alignment allows, splitting a large page a change covers only in part,
//!    merging 512 contiguous 4 KiB pages back into a 2 MiB page, and unlinking tables that
//!    become empty. Every change returns a [`MapperFlush`] naming the ranges to invalidate
//!    and carrying the unlinked table frames; [`Mapper::flush`] runs the kernel's batched
//!    [`TlbFlush::shootdown`] and only then frees those frames.
//! 5. **Page providers** ([`PageAllocator`], OSv's `page_allocator`): what fills an entry,
//!    at level 0 or 1: [`AnonZero`] (zero-filled anonymous memory, 2 MiB runs through
//!    [`FrameAllocator::allocate_huge`] when asked) and [`PhysRange`] (MMIO).
//! 6. **Physical memory** ([`phys`]): [`PageRangeAllocator`], OSv's page-range allocator over
//!    the boot memory map (free lists by order, a list of huge ranges, headers and boundary
//!    bitmaps kept in the free memory itself, merging on free, 2 MiB-aligned runs, typed
//!    [`PhysError`]s), and [`PerCpuPages`], per-CPU stacks of free frames in front of it, so
//!    the common single-page allocation and free take no lock. CPU identity comes through
//!    [`CpuLocal`] ([`percpu`]), which the kernel implements.
//! 7. **malloc** ([`heap`]): [`Heap`], a `GlobalAlloc` with per-CPU pools of small objects in
//!    one-page slabs (OSv's `memory::pool`), cross-CPU frees through a lock-free MPSC stack to
//!    the owning CPU, whole pages for large allocations, run-time statistics; pages come
//!    through [`HeapPages`].
//! 8. **Address spaces** ([`vma`], feature `alloc`): VMAs in a range tree, mmap / munmap /
//!    mprotect / msync with VMA splitting, the page-fault handler (demand zero fill with
//!    2 MiB pages where the VMA and the allocator allow, copy-on-write of private file pages
//!    through [`vma::FileBacking`]) and stacks with guard pages reported as
//!    [`vma::Fault::StackOverflow`].
//!
//! # Design
//!
//! - **Levels as types.** A 2 MiB entry can only be built as a `PtElement<L1>` and written
//!   through a `HwPtep<L1>`; `huge()` and `huge_page()` exist only on [`HugeCapable`] levels
//!   and `next_table()` only on [`HasLower`] ones. Mixing levels up, a classic page-table bug,
//!   is a type error. OSv does the same with `hw_ptep<N>` templates.
//! - **Flush tokens.** Forgetting a TLB invalidation gives no error, just stale translations
//!   much later, and freeing a page-table frame a CPU may still walk is worse. So changes
//!   return a `#[must_use]` [`MapperFlush`] listing the ranges (or "flush all" past a
//!   threshold) and carrying the table frames the change unlinked; the kernel passes it to
//!   [`Mapper::flush`], which runs one batched [`TlbFlush::shootdown`] (an SMP kernel: one
//!   IPI round) and then frees the frames, or to [`Mapper::discard`] when the tables are not
//!   live. See [`flush`] for how the frames travel.
//! - **Hardware behind traits.** Frames, the physical map, the TLB and the CPU identity are
//!   traits, so the whole walker, the allocators and the fault handler run on the host
//!   against `fake::FakeMemory`/`fake::FakeRam` (feature `std`), under proptest, and the
//!   `HwPtep` race, the per-CPU page caches and the heap's cross-CPU free stack under loom
//!   (see [`sync`]).
//! - **Per-CPU first.** A CPU's page cache and heap pools are touched only by that CPU, with
//!   plain loads and stores; other CPUs talk to them through one atomic each (a drain
//!   request flag, a lock-free stack of remotely freed objects).
//! - **All or nothing.** An operation that fails (say out of frames) leaves every
//!   translation as it was and leaks no frame.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use osv_mm::fake::FakeMemory;
//! use osv_mm::{Flags, Mapper, PageSize, PhysAddr, VirtAddr, PAGE_SIZE};
//!
//! const MIB: u64 = 1 << 20;
//! let mem = FakeMemory::new(64);
//! let mut mapper = Mapper::new(&mem, &mem).unwrap();
//!
//! // 4 MiB at 0x4000_0000 -> 0x8000_0000: two 2 MiB pages, no L0 table needed.
//! let va = VirtAddr::new(0x4000_0000);
//! let end = VirtAddr::new(0x4000_0000 + 4 * MIB);
//! let flush = mapper.map(va..end, PhysAddr::new(0x8000_0000), Flags::RW).unwrap();
//! mapper.discard(flush); // not live: nothing to invalidate
//! let (pa, flags, size) = mapper.translate(VirtAddr::new(0x4020_1234)).unwrap();
//! assert_eq!((pa, flags, size), (PhysAddr::new(0x8020_1234), Flags::RW, PageSize::Size2M));
//!
//! // Read-only for one 4 KiB page: the 2 MiB page is split into 512 PTEs.
//! let page = VirtAddr::new(0x4000_1000)..VirtAddr::new(0x4000_1000 + PAGE_SIZE);
//! let flush = mapper.protect(page.clone(), Flags::READ).unwrap();
//! assert!(!flush.is_empty()); // a live space: `mapper.flush(flush, &its_tlb)`
//! mapper.discard(flush);
//! assert_eq!(mapper.translate(VirtAddr::new(0x4000_1000)).unwrap().2, PageSize::Size4K);
//!
//! // Read-write again: 512 contiguous pages with equal rights merge back into 2 MiB; the
//! // page table they were in travels in the token until the flush.
//! let flush = mapper.protect(page, Flags::RW).unwrap();
//! assert_eq!(mapper.translate(VirtAddr::new(0x4000_1000)).unwrap().2, PageSize::Size2M);
//! assert_eq!(flush.table_frames(), 2); // the page table and the list page carrying it
//! mapper.discard(flush);
//!
//! // Unmap everything: the emptied tables go back, only the root stays.
//! let flush = mapper.unmap(va..end).unwrap();
//! assert_eq!(mapper.translate(va), None);
//! mapper.discard(flush);
//! assert_eq!(mem.in_use(), 1);
//! # }
//! ```
//!
//! The physical allocator, the per-CPU caches and the heap, on host memory posing as RAM
//! (the kernel passes its boot memory map and a linear map instead):
//!
//! ```
//! # #[cfg(feature = "std")] {
//! use core::alloc::{GlobalAlloc, Layout};
//! use osv_mm::fake::{FakeRam, FAKE_RAM_BASE};
//! use osv_mm::percpu::ThreadCpus;
//! use osv_mm::{Heap, PageRangeAllocator, PerCpuPages, PhysAddr};
//!
//! let ram = FakeRam::new(PhysAddr::new(FAKE_RAM_BASE), 2048); // 8 MiB
//! let pages = PerCpuPages::<_, _, 4>::new(PageRangeAllocator::new(&ram), ThreadCpus);
//! // SAFETY: the fake RAM is used by nothing else.
//! let free = unsafe { pages.global().add_region(ram.range()) }.unwrap();
//! assert_eq!(free, 2047); // one page of boundary bitmaps
//!
//! let frame = pages.alloc_page().unwrap(); // from this CPU's cache
//! let huge = pages.global().alloc_huge().unwrap(); // 512 pages, 2 MiB aligned
//! assert!(huge.is_aligned(2 << 20));
//! // SAFETY: both came from `pages` and are not used.
//! unsafe {
//!     pages.free_page(frame).unwrap();
//!     pages.global().free(huge, 512).unwrap();
//! }
//!
//! let heap = Heap::<_, _, 4>::new(&pages, ThreadCpus);
//! let layout = Layout::from_size_align(48, 16).unwrap();
//! // SAFETY: a non-zero layout; freed with the same layout below.
//! unsafe {
//!     let p = heap.alloc(layout);
//!     assert!(!p.is_null() && (p as usize).is_multiple_of(16));
//!     assert_eq!(heap.stats().bytes_in_use, 64); // the 64-byte class
//!     heap.dealloc(p, layout);
//! }
//! assert_eq!(heap.stats().bytes_in_use, 0);
//! # }
//! ```
//!
//! # Features
//!
//! - `alloc`: APIs that need a heap: the [`vma`] module (address spaces).
//! - `std`: host tools and tests (implies `alloc`): the `fake` module (host memory as frames
//!   and as RAM) and `percpu::ThreadCpus` (threads as CPUs).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod flush;
pub mod heap;
pub mod hw;
pub mod level;
#[cfg(not(loom))]
pub mod mapper;
pub mod percpu;
pub mod phys;
pub mod provider;
pub mod pte;
pub mod sync;
#[cfg(all(feature = "alloc", not(loom)))]
pub mod vma;

#[cfg(all(any(test, feature = "std"), not(loom)))]
pub mod fake;

pub use flush::{MapperFlush, TlbFlush};
pub use heap::{Heap, HeapPages};
pub use hw::{FrameAllocator, HwPtep, LinearMap, PageTable, PhysMapper};
pub use level::{HasLower, HugeCapable, Level, PageSize, Size, Size1G, Size2M, Size4K, L0, L1, L2, L3};
#[cfg(not(loom))]
pub use mapper::Mapper;
pub use percpu::CpuLocal;
pub use phys::{PageRangeAllocator, PerCpuPages, PhysError};
pub use provider::{AnonZero, PageAllocator, PhysRange};
pub use pte::{AddressNotAligned, Flags, PtElement};

/// What can go wrong in a page-table operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The frame allocator (or a page provider) ran dry. Nothing changed.
    OutOfFrames,
    /// An address or range end is not aligned to 4 KiB (or to what the entry needs).
    NotAligned,
    /// Some page of the range is already mapped. Nothing changed.
    AlreadyMapped,
    /// Some page of the range is not mapped. Nothing changed.
    NotMapped,
    /// The range is reversed, crosses the non-canonical hole, or the physical end is beyond
    /// 52 bits.
    InvalidRange,
    /// The flags allow no access (x86_64 cannot map a page with no rights).
    NoAccess,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::OutOfFrames => "out of physical frames",
            Self::NotAligned => "address not aligned",
            Self::AlreadyMapped => "range already mapped",
            Self::NotMapped => "range not mapped",
            Self::InvalidRange => "invalid address range",
            Self::NoAccess => "flags allow no access",
        })
    }
}

impl core::error::Error for Error {}

impl From<AddressNotAligned> for Error {
    fn from(_: AddressNotAligned) -> Self {
        Self::NotAligned
    }
}

/// The crate's result type.
pub type Result<T = (), E = Error> = core::result::Result<T, E>;

/// The size of a small (level-0) page: 4 KiB.
pub const PAGE_SIZE: u64 = 4096;

macro_rules! address {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw address.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                debug_assert!(align.is_power_of_two());
                Self(self.0 & !(align - 1))
            }
            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                debug_assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }
            /// Adds `bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }
    };
}

address!(
    /// A physical memory address.
    PhysAddr
);
address!(
    /// A virtual memory address in the single shared address space.
    VirtAddr
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_and_overflow() {
        assert_eq!(VirtAddr::new(0x1fff).align_down(PAGE_SIZE), VirtAddr::new(0x1000));
        assert!(!VirtAddr::new(0x1001).is_aligned(PAGE_SIZE));
        assert_eq!(PhysAddr::new(0x20_1234).align_down(PAGE_SIZE), PhysAddr::new(0x20_1000));
        assert!(PhysAddr::new(0x20_0000).is_aligned(2 * 1024 * 1024));
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(format!("{:?}", PhysAddr::new(0x10)), "PhysAddr(0x10)");
    }
}
