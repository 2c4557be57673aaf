//! Physical memory: OSv's page-range allocator over the boot memory map, and per-CPU page
//! caches in front of it.
//!
//! # The global allocator ([`PageRangeAllocator`])
//!
//! Like OSv's `memory::page_range_allocator` (core/mempool.cc), free memory is a set of
//! maximal free ranges of 4 KiB pages, and the bookkeeping lives in the free memory itself:
//!
//! - the first page of a free range holds its header (length, list links), the last page's
//!   final word holds the length again (so a neighbour freed just after it finds its start);
//! - free ranges sit on doubly-linked lists by order: list `k` holds ranges of
//!   `2^k ..= 2^(k+1) - 1` pages for `k < 16`, and one more list holds the huge ranges
//!   (64 K pages, 256 MiB, and more). OSv keeps huge ranges in a size-ordered set; here they
//!   are one list searched first-fit, and there are at most (RAM / 256 MiB) of them;
//! - two bitmaps per memory region mark the first and the last page of every free range.
//!   Freeing a range looks at the page before it and the page after it, and merges with the
//!   free neighbours at once: there are never two adjacent free ranges. The bitmaps (2 bits a
//!   page, 64 KiB per GiB) are carved from the start of each region.
//!
//! Allocation of `n` pages looks first in list `ceil(log2 n)`, whose every range is big
//! enough, then in list `floor(log2 n)` (first fit): O(1) unless memory is fragmented.
//! Aligned requests (2 MiB pages) search upward for a range holding an aligned block.
//!
//! Bad frees are detected where it costs one or two bitmap reads: an address outside every
//! region or not page aligned ([`PhysError::BadFree`]), and a range whose first or last page
//! is the first or last page of a free range ([`PhysError::DoubleFree`]). A range lying
//! wholly inside a free range is not detected.
//!
//! # Per-CPU caches ([`PerCpuPages`])
//!
//! Most page allocations are single pages (page tables, anonymous faults, heap slabs). Each
//! CPU owns a stack of up to [`CACHE_PAGES`] free frames, refilled from and drained to the
//! global allocator [`CACHE_BATCH`] frames at a time under its lock. Only the owner touches
//! its stack (with preemption disabled, see [`CpuLocal`]), with plain loads and stores: no
//! lock and no atomic read-modify-write on the fast path.
//!
//! Another CPU under memory pressure cannot take frames out of a stack it does not own; it
//! sets the stack's `drain_requested` flag ([`PerCpuPages::request_drain`]), and the owner
//! gives its frames back to the global allocator at its next cache operation or
//! [`poll`](PerCpuPages::poll) (which the kernel calls from its idle loop). That handshake,
//! the global lock and the statistics readers are what `tests/loom_percpu.rs` models.
#![allow(unsafe_code)]

use core::fmt;
use core::ops::Range;

use crate::hw::{FrameAllocator, PhysMapper};
use crate::percpu::CpuLocal;
use crate::sync::{AtomicBool, AtomicUsize, Ordering, SpinLock, UnsafeCell};
use crate::{PhysAddr, PAGE_SIZE};

/// Free lists for orders `0..ORDERS`; list `ORDERS` holds the huge ranges.
pub const ORDERS: usize = 16;
/// How many disjoint usable ranges (after alignment) the allocator can manage.
pub const MAX_REGIONS: usize = 32;
/// Pages in a 2 MiB large page.
pub const HUGE_PAGES: u64 = 512;

const NIL: u64 = u64::MAX;
const HEADER_MAGIC: u64 = 0x6f73_765f_6672_6565; // "osv_free"

/// What can go wrong when allocating or freeing physical pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PhysError {
    /// No free range can satisfy the request.
    OutOfMemory,
    /// A request for zero pages, an alignment that is not a power-of-two number of pages, or
    /// a size that overflows.
    InvalidRequest,
    /// The freed range is not page aligned or not inside one managed region. Nothing changed.
    BadFree,
    /// The freed range's first or last page is already free. Nothing changed.
    DoubleFree,
    /// More than [`MAX_REGIONS`] regions, or a region overlapping one already added.
    BadRegion,
}

impl fmt::Display for PhysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfMemory => "out of physical memory",
            Self::InvalidRequest => "invalid page allocation request",
            Self::BadFree => "freeing pages that are not managed or not aligned",
            Self::DoubleFree => "freeing pages that are already free",
            Self::BadRegion => "too many or overlapping memory regions",
        })
    }
}

impl core::error::Error for PhysError {}

/// Statistics of the global allocator, taken under its lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysStats {
    /// Pages managed (regions minus their bitmaps).
    pub total_pages: u64,
    /// Pages in free ranges of the global allocator (not counting per-CPU caches).
    pub free_pages: u64,
    /// Number of free ranges on each order's list (`[ORDERS]`: the huge list).
    pub ranges_per_order: [u64; ORDERS + 1],
    /// Pages in the free ranges of each order's list.
    pub pages_per_order: [u64; ORDERS + 1],
}

#[derive(Clone, Copy, Debug, Default)]
struct Region {
    /// First managed page (after the bitmap).
    base: u64,
    /// Managed pages.
    pages: u64,
    /// Physical address of the bitmaps: `pages` start bits, then `pages` end bits.
    bitmap: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.base + self.pages * PAGE_SIZE
    }
    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }
}

#[derive(Debug)]
struct State {
    regions: [Region; MAX_REGIONS],
    nregions: usize,
    heads: [u64; ORDERS + 1],
    stats: PhysStats,
}

/// OSv's page-range allocator over the boot memory map (see the [module docs](self)).
///
/// `M` reaches physical memory (a linear map in the kernel, host memory in tests): the
/// allocator writes its headers into the free pages themselves.
pub struct PageRangeAllocator<M> {
    phys: M,
    state: SpinLock<State>,
}

impl<M> fmt::Debug for PageRangeAllocator<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageRangeAllocator").finish_non_exhaustive()
    }
}

fn order_of(pages: u64) -> usize {
    ((63 - pages.leading_zeros()) as usize).min(ORDERS)
}

fn ceil_order(pages: u64) -> usize {
    if pages <= 1 {
        0
    } else {
        ((64 - (pages - 1).leading_zeros()) as usize).min(ORDERS)
    }
}

impl<M> PageRangeAllocator<M> {
    /// An allocator with no memory yet; add the boot memory map with
    /// [`add_region`](Self::add_region).
    #[cfg(not(loom))]
    pub const fn new(phys: M) -> Self {
        let state = State {
            regions: [Region { base: 0, pages: 0, bitmap: 0 }; MAX_REGIONS],
            nregions: 0,
            heads: [NIL; ORDERS + 1],
            stats: PhysStats {
                total_pages: 0,
                free_pages: 0,
                ranges_per_order: [0; ORDERS + 1],
                pages_per_order: [0; ORDERS + 1],
            },
        };
        Self { phys, state: SpinLock::new(state) }
    }

    /// An allocator with no memory yet (loom build: not `const`).
    #[cfg(loom)]
    pub fn new(phys: M) -> Self {
        let state = State {
            regions: [Region::default(); MAX_REGIONS],
            nregions: 0,
            heads: [NIL; ORDERS + 1],
            stats: PhysStats::default(),
        };
        Self { phys, state: SpinLock::new(state) }
    }
}

/// Raw access to the words of physical pages, through the mapper.
struct Mem<'a, M: PhysMapper>(&'a M);

impl<M: PhysMapper> Mem<'_, M> {
    fn word(&self, page: u64, index: usize) -> *mut u64 {
        debug_assert!(index < 512);
        // `add` stays inside the 4096-byte frame `frame_ptr` promises.
        self.0.frame_ptr(PhysAddr::new(page)).cast::<u64>().as_ptr().wrapping_add(index)
    }
    /// # Safety
    /// The page is managed and owned by the allocator's state the caller holds locked.
    unsafe fn read(&self, page: u64, index: usize) -> u64 {
        // SAFETY: `frame_ptr` gives 4096 aligned bytes; the caller owns the page.
        unsafe { self.word(page, index).read_volatile() }
    }
    /// # Safety
    /// As [`read`](Self::read).
    unsafe fn write(&self, page: u64, index: usize, value: u64) {
        // SAFETY: as in `read`.
        unsafe { self.word(page, index).write_volatile(value) }
    }
}

// Header words in the first page of a free range.
const H_PAGES: usize = 0;
const H_NEXT: usize = 1;
const H_PREV: usize = 2;
const H_MAGIC: usize = 3;
// Footer word in the last page.
const F_PAGES: usize = 511;

impl State {
    fn region_of(&self, addr: u64) -> Option<Region> {
        self.regions[..self.nregions].iter().copied().find(|r| r.contains(addr))
    }

    /// # Safety
    /// `region` is one of ours, `i < 2 * region.pages`; the state is locked.
    unsafe fn bit<M: PhysMapper>(mem: &Mem<'_, M>, region: &Region, i: u64) -> bool {
        let w = i / 64;
        // SAFETY: the bitmap covers `2 * pages` bits in the pages from `region.bitmap`.
        let word = unsafe { mem.read(region.bitmap + (w / 512) * PAGE_SIZE, (w % 512) as usize) };
        word & (1 << (i % 64)) != 0
    }

    /// # Safety
    /// As [`bit`](Self::bit).
    unsafe fn set_bit<M: PhysMapper>(mem: &Mem<'_, M>, region: &Region, i: u64, on: bool) {
        let w = i / 64;
        let page = region.bitmap + (w / 512) * PAGE_SIZE;
        // SAFETY: as in `bit`.
        unsafe {
            let old = mem.read(page, (w % 512) as usize);
            let new = if on { old | 1 << (i % 64) } else { old & !(1 << (i % 64)) };
            mem.write(page, (w % 512) as usize, new);
        }
    }

    fn page_index(region: &Region, addr: u64) -> u64 {
        (addr - region.base) / PAGE_SIZE
    }

    /// Puts the free range `[start, start + pages)` on its list and marks its ends.
    ///
    /// # Safety
    /// The range is inside `region`, owned by the allocator, not on any list, and its
    /// neighbours are not free (or are being merged by the caller).
    unsafe fn insert<M: PhysMapper>(&mut self, mem: &Mem<'_, M>, region: &Region, start: u64, pages: u64) {
        let order = order_of(pages);
        let head = self.heads[order];
        let last = start + (pages - 1) * PAGE_SIZE;
        let first_i = Self::page_index(region, start);
        let last_i = first_i + pages - 1;
        // SAFETY: the pages are ours (caller); bit indices are below `2 * region.pages`.
        unsafe {
            mem.write(start, H_PAGES, pages);
            mem.write(start, H_NEXT, head);
            mem.write(start, H_PREV, NIL);
            mem.write(start, H_MAGIC, HEADER_MAGIC ^ start);
            mem.write(last, F_PAGES, pages);
            if head != NIL {
                mem.write(head, H_PREV, start);
            }
            Self::set_bit(mem, region, first_i, true);
            Self::set_bit(mem, region, region.pages + last_i, true);
        }
        self.heads[order] = start;
        self.stats.free_pages += pages;
        self.stats.ranges_per_order[order] += 1;
        self.stats.pages_per_order[order] += pages;
    }

    /// Takes the free range starting at `start` off its list and clears its end marks.
    ///
    /// # Safety
    /// `start` is the first page of a free range on a list, inside `region`.
    unsafe fn remove<M: PhysMapper>(&mut self, mem: &Mem<'_, M>, region: &Region, start: u64) -> u64 {
        // SAFETY: `start` heads a free range (caller), so its header and footer are ours.
        unsafe {
            let pages = mem.read(start, H_PAGES);
            debug_assert_eq!(mem.read(start, H_MAGIC), HEADER_MAGIC ^ start, "corrupt free range");
            let next = mem.read(start, H_NEXT);
            let prev = mem.read(start, H_PREV);
            let order = order_of(pages);
            if prev == NIL {
                self.heads[order] = next;
            } else {
                mem.write(prev, H_NEXT, next);
            }
            if next != NIL {
                mem.write(next, H_PREV, prev);
            }
            let first_i = Self::page_index(region, start);
            Self::set_bit(mem, region, first_i, false);
            Self::set_bit(mem, region, region.pages + first_i + pages - 1, false);
            self.stats.free_pages -= pages;
            self.stats.ranges_per_order[order] -= 1;
            self.stats.pages_per_order[order] -= pages;
            pages
        }
    }

    /// Finds a free range holding `pages` pages at a multiple of `align` bytes: returns the
    /// range's start and the allocation's start.
    ///
    /// # Safety
    /// The state is locked.
    unsafe fn find<M: PhysMapper>(&self, mem: &Mem<'_, M>, pages: u64, align: u64) -> Option<(u64, u64)> {
        let fits = |start: u64, len: u64| -> Option<u64> {
            let at = start.checked_add(align - 1)? & !(align - 1);
            let end = start + len * PAGE_SIZE;
            (at.checked_add(pages * PAGE_SIZE)? <= end).then_some(at)
        };
        let scan = |order: usize, limit: usize| -> Option<(u64, u64)> {
            let mut cur = self.heads[order];
            let mut seen = 0;
            while cur != NIL && seen < limit {
                // SAFETY: `cur` is on a free list, so it heads a free range we own.
                let len = unsafe { mem.read(cur, H_PAGES) };
                if let Some(at) = fits(cur, len) {
                    return Some((cur, at));
                }
                // SAFETY: as above.
                cur = unsafe { mem.read(cur, H_NEXT) };
                seen += 1;
            }
            None
        };
        let lo = order_of(pages);
        let hi = ceil_order(pages);
        if align == PAGE_SIZE {
            // Every range from list `hi` up (but the huge list) is big enough: take the head.
            for order in hi..ORDERS {
                if self.heads[order] != NIL {
                    let start = self.heads[order];
                    return Some((start, start));
                }
            }
            scan(ORDERS, usize::MAX).or_else(|| if lo < hi { scan(lo, usize::MAX) } else { None })
        } else {
            (lo..=ORDERS).find_map(|order| scan(order, usize::MAX))
        }
    }
}

impl<M: PhysMapper> PageRangeAllocator<M> {
    /// The mapper through which the allocator reaches physical memory.
    pub fn mapper(&self) -> &M {
        &self.phys
    }

    fn mem(&self) -> Mem<'_, M> {
        Mem(&self.phys)
    }

    /// Adds a usable range of the boot memory map. The range is shrunk to whole pages; its
    /// first pages become the region's bitmaps and the rest is free. Returns the number of
    /// pages that became free (0 for a range too small to be worth a bitmap).
    ///
    /// # Safety
    /// 1. `range` is RAM that nobody else uses, now or later (the kernel image, boot tables
    ///    and the like are outside it), reachable through the mapper.
    /// 2. It does not overlap a range added before (overlaps that are detected return
    ///    [`PhysError::BadRegion`]; this is checked, but the promise is the caller's).
    pub unsafe fn add_region(&self, range: Range<PhysAddr>) -> Result<u64, PhysError> {
        let start =
            range.start.as_u64().checked_add(PAGE_SIZE - 1).ok_or(PhysError::BadRegion)? & !(PAGE_SIZE - 1);
        let end = range.end.as_u64() & !(PAGE_SIZE - 1);
        if end <= start {
            return Ok(0);
        }
        let pages = (end - start) / PAGE_SIZE;
        let bits_per_page = PAGE_SIZE * 8;
        let bitmap_pages = (2 * pages).div_ceil(bits_per_page);
        if pages <= bitmap_pages {
            return Ok(0);
        }
        let region =
            Region { base: start + bitmap_pages * PAGE_SIZE, pages: pages - bitmap_pages, bitmap: start };
        let mem = self.mem();
        self.state.with(|s| {
            if s.nregions == MAX_REGIONS
                || s.regions[..s.nregions].iter().any(|r| r.bitmap < end && start < r.end())
            {
                return Err(PhysError::BadRegion);
            }
            for p in 0..bitmap_pages {
                for w in 0..512 {
                    // SAFETY: the bitmap pages are ours (caller's promise 1).
                    unsafe { mem.write(start + p * PAGE_SIZE, w, 0) };
                }
            }
            s.regions[s.nregions] = region;
            s.nregions += 1;
            s.stats.total_pages += region.pages;
            // SAFETY: the whole managed range is ours, on no list, and has no neighbours.
            unsafe { s.insert(&mem, &region, region.base, region.pages) };
            Ok(region.pages)
        })
    }

    /// Allocates `pages` contiguous pages.
    pub fn alloc(&self, pages: u64) -> Result<PhysAddr, PhysError> {
        self.alloc_aligned(pages, PAGE_SIZE)
    }

    /// Allocates one 2 MiB-aligned run of 512 pages, for a large page.
    pub fn alloc_huge(&self) -> Result<PhysAddr, PhysError> {
        self.alloc_aligned(HUGE_PAGES, HUGE_PAGES * PAGE_SIZE)
    }

    /// Allocates `pages` contiguous pages starting at a multiple of `align` bytes (a power of
    /// two, at least 4 KiB).
    pub fn alloc_aligned(&self, pages: u64, align: u64) -> Result<PhysAddr, PhysError> {
        if pages == 0
            || !align.is_power_of_two()
            || align < PAGE_SIZE
            || pages.checked_mul(PAGE_SIZE).is_none()
        {
            return Err(PhysError::InvalidRequest);
        }
        let mem = self.mem();
        self.state.with(|s| {
            // SAFETY: the state is locked.
            let (start, at) = unsafe { s.find(&mem, pages, align) }.ok_or(PhysError::OutOfMemory)?;
            let region = s.region_of(start).ok_or(PhysError::OutOfMemory)?;
            // SAFETY: `start` heads a free range of `region`; its pieces go back as free
            // ranges whose neighbours are the allocation (not free) or region ends.
            unsafe {
                let len = s.remove(&mem, &region, start);
                let end = start + len * PAGE_SIZE;
                let alloc_end = at + pages * PAGE_SIZE;
                if at > start {
                    s.insert(&mem, &region, start, (at - start) / PAGE_SIZE);
                }
                if alloc_end < end {
                    s.insert(&mem, &region, alloc_end, (end - alloc_end) / PAGE_SIZE);
                }
            }
            Ok(PhysAddr::new(at))
        })
    }

    /// Allocates up to `out.len()` single pages (not necessarily contiguous) under one lock
    /// acquisition; returns how many were stored in `out`.
    pub fn alloc_batch(&self, out: &mut [PhysAddr]) -> usize {
        let mem = self.mem();
        self.state.with(|s| {
            let mut n = 0;
            while n < out.len() {
                // SAFETY: the state is locked.
                let Some((start, _)) = (unsafe { s.find(&mem, 1, PAGE_SIZE) }) else { break };
                let Some(region) = s.region_of(start) else { break };
                // SAFETY: `start` heads a free range of `region`; the rest of it goes back.
                unsafe {
                    let len = s.remove(&mem, &region, start);
                    let take = len.min((out.len() - n) as u64);
                    // Take from the end, so the rest keeps its header page.
                    if take < len {
                        s.insert(&mem, &region, start, len - take);
                    }
                    for i in 0..take {
                        out[n] = PhysAddr::new(start + (len - take + i) * PAGE_SIZE);
                        n += 1;
                    }
                }
            }
            n
        })
    }

    /// Frees `pages` pages at `addr`, merging with free neighbours.
    ///
    /// # Safety
    /// 1. The range was allocated from this allocator (as one allocation or as parts of
    ///    allocations; a batch's single pages may be freed one by one) and is not used any
    ///    more (no live mapping, or the TLB flush is done before the pages can be reused).
    ///
    /// Violations that are cheap to see are reported and change nothing: see [`PhysError`].
    pub unsafe fn free(&self, addr: PhysAddr, pages: u64) -> Result<(), PhysError> {
        let mem = self.mem();
        self.state.with(|s| {
            // SAFETY: the state is locked; the caller's promise is passed on.
            unsafe { Self::free_locked(s, &mem, addr, pages) }
        })
    }

    /// Frees single pages under one lock acquisition, stopping at the first error.
    ///
    /// # Safety
    /// As [`free`](Self::free), for each page.
    pub unsafe fn free_batch(&self, frames: &[PhysAddr]) -> Result<(), PhysError> {
        let mem = self.mem();
        self.state.with(|s| {
            frames.iter().try_for_each(|&f| {
                // SAFETY: as `free`, per page.
                unsafe { Self::free_locked(s, &mem, f, 1) }
            })
        })
    }

    /// # Safety
    /// The state is locked; the caller keeps `free`'s promise.
    unsafe fn free_locked(
        s: &mut State,
        mem: &Mem<'_, M>,
        addr: PhysAddr,
        pages: u64,
    ) -> Result<(), PhysError> {
        let mut start = addr.as_u64();
        if pages == 0 || !addr.is_aligned(PAGE_SIZE) {
            return Err(PhysError::BadFree);
        }
        let region = s.region_of(start).ok_or(PhysError::BadFree)?;
        let Some(len_bytes) = pages.checked_mul(PAGE_SIZE) else { return Err(PhysError::BadFree) };
        let mut end = start.checked_add(len_bytes).ok_or(PhysError::BadFree)?;
        if end > region.end() {
            return Err(PhysError::BadFree);
        }
        let first_i = State::page_index(&region, start);
        let last_i = first_i + pages - 1;
        // SAFETY: indices are inside the region's bitmaps; the state is locked.
        let overlaps = unsafe {
            State::bit(mem, &region, first_i)
                || State::bit(mem, &region, region.pages + first_i)
                || State::bit(mem, &region, last_i)
                || State::bit(mem, &region, region.pages + last_i)
        };
        if overlaps {
            return Err(PhysError::DoubleFree);
        }
        // SAFETY: a set end bit before us / start bit after us marks a free range of the
        // region we own; its header/footer are valid. The merged range is then ours.
        unsafe {
            if first_i > 0 && State::bit(mem, &region, region.pages + first_i - 1) {
                let left_len = mem.read(start - PAGE_SIZE, F_PAGES);
                let left = start - left_len * PAGE_SIZE;
                s.remove(mem, &region, left);
                start = left;
            }
            if last_i + 1 < region.pages && State::bit(mem, &region, last_i + 1) {
                let right_len = s.remove(mem, &region, end);
                end += right_len * PAGE_SIZE;
            }
            s.insert(mem, &region, start, (end - start) / PAGE_SIZE);
        }
        Ok(())
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> PhysStats {
        self.state.with(|s| s.stats)
    }

    /// Pages currently free in the global allocator.
    pub fn free_pages(&self) -> u64 {
        self.state.with(|s| s.stats.free_pages)
    }

    /// The free ranges, in no particular order, passed to `f` under the lock (for tests and
    /// diagnostics; `f` must not call back into the allocator).
    pub fn for_each_free_range(&self, mut f: impl FnMut(Range<PhysAddr>)) {
        let mem = self.mem();
        self.state.with(|s| {
            for &head in &s.heads {
                let mut cur = head;
                while cur != NIL {
                    // SAFETY: `cur` is on a free list of the locked state.
                    let (len, next) = unsafe { (mem.read(cur, H_PAGES), mem.read(cur, H_NEXT)) };
                    f(PhysAddr::new(cur)..PhysAddr::new(cur + len * PAGE_SIZE));
                    cur = next;
                }
            }
        })
    }
}

// SAFETY: frames come from free ranges of regions the kernel gave us (promise 1 of
// `add_region`), are 4 KiB aligned and leave the free lists when handed out, so they are not
// handed out again before `free_frame`; the mapper is the one the kernel pairs us with.
unsafe impl<M: PhysMapper> FrameAllocator for PageRangeAllocator<M> {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        self.alloc(1).ok()
    }
    unsafe fn free_frame(&self, frame: PhysAddr) {
        // SAFETY: `FrameAllocator::free_frame`'s promises are `free`'s for one page.
        let r = unsafe { self.free(frame, 1) };
        debug_assert_eq!(r, Ok(()), "bad free_frame({frame:?})");
    }
    fn allocate_huge(&self) -> Option<PhysAddr> {
        // Parts of a run can be freed separately (`free`), as `allocate_huge` promises.
        self.alloc_huge().ok()
    }
    unsafe fn free_huge(&self, base: PhysAddr) {
        // SAFETY: `FrameAllocator::free_huge`'s promises are `free`'s for the 512 pages.
        let r = unsafe { self.free(base, HUGE_PAGES) };
        debug_assert_eq!(r, Ok(()), "bad free_huge({base:?})");
    }
}

/// Frames a CPU's cache holds at most.
pub const CACHE_PAGES: usize = 64;
/// Frames moved between a cache and the global allocator at a time.
pub const CACHE_BATCH: usize = 32;

/// One CPU's stack of free frames (a cache line of its own for the hot fields).
#[repr(align(64))]
struct CpuCache {
    /// Written only by the owner (plain load + store); read by statistics.
    len: AtomicUsize,
    /// Set by anyone, cleared by the owner once it has drained.
    drain_requested: AtomicBool,
    frames: UnsafeCell<[PhysAddr; CACHE_PAGES]>,
}

impl CpuCache {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            len: AtomicUsize::new(0),
            drain_requested: AtomicBool::new(false),
            frames: UnsafeCell::new([PhysAddr::new(0); CACHE_PAGES]),
        }
    }
    #[cfg(loom)]
    fn new() -> Self {
        Self {
            len: AtomicUsize::new(0),
            drain_requested: AtomicBool::new(false),
            frames: UnsafeCell::new([PhysAddr::new(0); CACHE_PAGES]),
        }
    }
}

/// The global [`PageRangeAllocator`] with a per-CPU cache of single pages in front (see the
/// [module docs](self)). `CPUS` caches exist; a CPU index at or past it uses the global
/// allocator directly.
///
/// Multi-page and aligned allocations go to the global allocator
/// ([`global`](Self::global)); the caches hold single pages only.
pub struct PerCpuPages<M, C, const CPUS: usize> {
    global: PageRangeAllocator<M>,
    cpus: C,
    caches: [CpuCache; CPUS],
}

impl<M, C, const CPUS: usize> fmt::Debug for PerCpuPages<M, C, CPUS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuPages").field("cpus", &CPUS).finish_non_exhaustive()
    }
}

// SAFETY: a cache's frames are touched only by the CPU that owns the index, which
// `CpuLocal` guarantees is one execution context at a time; everything else is atomic or
// under the global lock.
unsafe impl<M: Sync, C: Sync, const CPUS: usize> Sync for PerCpuPages<M, C, CPUS> {}

impl<M, C, const CPUS: usize> PerCpuPages<M, C, CPUS> {
    /// Caches in front of `global`, CPU identity from `cpus`.
    #[cfg(not(loom))]
    pub const fn new(global: PageRangeAllocator<M>, cpus: C) -> Self {
        Self { global, cpus, caches: [const { CpuCache::new() }; CPUS] }
    }

    /// Caches in front of `global` (loom build: not `const`).
    #[cfg(loom)]
    pub fn new(global: PageRangeAllocator<M>, cpus: C) -> Self {
        Self { global, cpus, caches: core::array::from_fn(|_| CpuCache::new()) }
    }

    /// The global allocator (multi-page, aligned, and region setup).
    pub fn global(&self) -> &PageRangeAllocator<M> {
        &self.global
    }
}

impl<M: PhysMapper, C: CpuLocal, const CPUS: usize> PerCpuPages<M, C, CPUS> {
    /// One free page: from this CPU's cache, refilled from the global allocator when empty.
    #[inline]
    pub fn alloc_page(&self) -> Result<PhysAddr, PhysError> {
        self.cpus.with_cpu(|cpu| {
            let Some(cache) = self.caches.get(cpu) else { return self.global.alloc(1) };
            if cache.drain_requested.load(Ordering::Acquire) {
                self.drain(cache);
            }
            let mut len = cache.len.load(Ordering::Relaxed);
            if len == 0 {
                len = cache.frames.with_mut(|frames| {
                    // SAFETY: only this CPU touches its frames (`CpuLocal` promise 2).
                    let frames = unsafe { &mut *frames };
                    self.global.alloc_batch(&mut frames[..CACHE_BATCH])
                });
                if len == 0 {
                    // Out of memory: ask the other CPUs for their cached frames, so a
                    // retry (e.g. after the kernel's reclaimer ran) can find them.
                    self.request_drain_others(cpu);
                    return Err(PhysError::OutOfMemory);
                }
            }
            // SAFETY: as above; `len - 1 < CACHE_PAGES`.
            let frame = cache.frames.with(|frames| unsafe { (*frames)[len - 1] });
            cache.len.store(len - 1, Ordering::Relaxed);
            Ok(frame)
        })
    }

    /// Gives back one page to this CPU's cache; half the cache goes to the global allocator
    /// when it is full.
    ///
    /// # Safety
    /// As [`PageRangeAllocator::free`] for one page. A page freed twice into a cache is not
    /// detected there (it is when the cache drains, if its neighbours allow).
    #[inline]
    pub unsafe fn free_page(&self, frame: PhysAddr) -> Result<(), PhysError> {
        if !frame.is_aligned(PAGE_SIZE) {
            return Err(PhysError::BadFree);
        }
        self.cpus.with_cpu(|cpu| {
            // SAFETY: the caller's promise, passed on.
            let Some(cache) = self.caches.get(cpu) else { return unsafe { self.global.free(frame, 1) } };
            if cache.drain_requested.load(Ordering::Acquire) {
                self.drain(cache);
            }
            let mut len = cache.len.load(Ordering::Relaxed);
            if len == CACHE_PAGES {
                let r = cache.frames.with(|frames| {
                    // SAFETY: only this CPU touches its frames; the top batch are free pages
                    // the cache owns.
                    unsafe { self.global.free_batch(&(&*frames)[CACHE_PAGES - CACHE_BATCH..]) }
                });
                // Only a caller that broke `free_page`'s promise can make this fail; the
                // pages after the bad one are then leaked (never handed out twice).
                debug_assert!(r.is_ok(), "bad page in a per-CPU cache: {r:?}");
                len -= CACHE_BATCH;
            }
            // SAFETY: only this CPU touches its frames; `len < CACHE_PAGES`.
            cache.frames.with_mut(|frames| unsafe { (*frames)[len] = frame });
            cache.len.store(len + 1, Ordering::Relaxed);
            Ok(())
        })
    }

    /// `pages` contiguous pages aligned to `align` bytes from the global allocator; when it
    /// has no such run, this CPU's cache is drained into it (the other CPUs are asked to
    /// drain too) and the allocation is tried once more.
    pub fn alloc_run(&self, pages: u64, align: u64) -> Result<PhysAddr, PhysError> {
        match self.global.alloc_aligned(pages, align) {
            Err(PhysError::OutOfMemory) => {
                self.request_drain();
                self.global.alloc_aligned(pages, align)
            }
            other => other,
        }
    }

    /// Asks every CPU to give its cached frames back to the global allocator: this CPU at
    /// once, the others at their next cache operation or [`poll`](Self::poll). The
    /// memory-pressure path.
    pub fn request_drain(&self) {
        self.cpus.with_cpu(|cpu| {
            if let Some(cache) = self.caches.get(cpu) {
                self.drain(cache);
            }
            self.request_drain_others(cpu);
        })
    }

    fn request_drain_others(&self, cpu: usize) {
        for (i, cache) in self.caches.iter().enumerate() {
            if i != cpu {
                cache.drain_requested.store(true, Ordering::Release);
            }
        }
    }

    /// Serves a pending drain request for this CPU (the kernel calls it from the idle loop).
    pub fn poll(&self) {
        self.cpus.with_cpu(|cpu| {
            if let Some(cache) = self.caches.get(cpu) {
                if cache.drain_requested.load(Ordering::Acquire) {
                    self.drain(cache);
                }
            }
        })
    }

    /// Owner only (called inside `with_cpu` with this CPU's cache).
    fn drain(&self, cache: &CpuCache) {
        // Clear first: a request arriving while we drain is served next time.
        cache.drain_requested.store(false, Ordering::Relaxed);
        let len = cache.len.load(Ordering::Relaxed);
        let r = cache.frames.with(|frames| {
            // SAFETY: only this CPU touches its frames; the first `len` are cached free pages.
            unsafe { self.global.free_batch(&(&*frames)[..len]) }
        });
        debug_assert!(r.is_ok(), "bad page in a per-CPU cache: {r:?}");
        cache.len.store(0, Ordering::Relaxed);
    }

    /// Free pages: the global allocator's plus every cache's (racy snapshot while CPUs run).
    pub fn free_pages(&self) -> u64 {
        self.global.free_pages() + self.cached_pages()
    }

    /// Pages sitting in per-CPU caches (racy snapshot while CPUs run).
    pub fn cached_pages(&self) -> u64 {
        self.caches.iter().map(|c| c.len.load(Ordering::Relaxed) as u64).sum()
    }
}

// SAFETY: as `PageRangeAllocator`'s impl: cached frames are free pages of the global
// allocator, held by one cache at a time, handed out once.
unsafe impl<M: PhysMapper, C: CpuLocal, const CPUS: usize> FrameAllocator for PerCpuPages<M, C, CPUS> {
    fn allocate_frame(&self) -> Option<PhysAddr> {
        self.alloc_page().ok()
    }
    unsafe fn free_frame(&self, frame: PhysAddr) {
        // SAFETY: `FrameAllocator::free_frame`'s promises are `free_page`'s.
        let r = unsafe { self.free_page(frame) };
        debug_assert_eq!(r, Ok(()), "bad free_frame({frame:?})");
    }
    fn allocate_huge(&self) -> Option<PhysAddr> {
        // From the global allocator (draining the caches once if it has no aligned run);
        // its pages may later come back one by one through `free_frame`.
        self.alloc_run(HUGE_PAGES, HUGE_PAGES * PAGE_SIZE).ok()
    }
    unsafe fn free_huge(&self, base: PhysAddr) {
        // SAFETY: `FrameAllocator::free_huge`'s promises are the global `free`'s for the
        // 512 pages, which came from the global allocator.
        let r = unsafe { self.global().free(base, HUGE_PAGES) };
        debug_assert_eq!(r, Ok(()), "bad free_huge({base:?})");
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
