//! The walker: map, unmap, protect and translate any virtual range in a 4-level table.
//!
//! Every operation is *all or nothing* with respect to the translations it reports:
//! - `map`/`populate` first check that the range is entirely unmapped, then build it; if a
//!   frame allocation fails midway, everything built so far (pages and the tables created
//!   for them) is torn down again, and `OutOfFrames` is returned.
//! - `unmap`/`protect` first split the (at most two) large pages that straddle the range's
//!   ends; those splits are the only allocations, and a split changes no translation, so a
//!   failure there returns `OutOfFrames` with every translation as it was. The rest cannot
//!   fail.
//! - Tables that become empty are unlinked on the way back up; their frames travel in the
//!   returned [`MapperFlush`] and are freed by [`Mapper::flush`] after the TLB shootdown.
//! - After `map`, `populate` and `protect`, every 2 MiB-aligned range the change touched
//!   whose level-0 table now maps 512 physically contiguous 4 KiB pages from a 2 MiB-aligned
//!   frame with identical attributes is *merged*: the level-1 entry becomes one 2 MiB page and
//!   the level-0 table frame travels in the token like an emptied one. Together with the
//!   splitting of large pages that a change covers in part, the tables always use the largest
//!   pages the translations allow (up to 2 MiB; 1 GiB pages are split but not re-formed).
#![allow(unsafe_code)]

use core::ops::Range;

use crate::flush::{MapperFlush, TlbFlush, LIST_SLOTS};
use crate::hw::{table_at, zero_frame, FrameAllocator, HwPtep, PageTable, PhysMapper};
use crate::level::{HasLower, HugeCapable, Level, PageSize, L0, L1, L2, L3};
use crate::provider::{AnonZero, PageAllocator};
use crate::pte::{bits, split_entry, Flags, PtElement};
use crate::{Error, PhysAddr, Result, VirtAddr};

const SIZE_2M: u64 = 2 << 20;
const LOWER_HALF_END: u64 = 1 << 47;
const UPPER_HALF_START: u64 = 0xffff_8000_0000_0000;

/// What a walk does at each entry.
enum Op<'p> {
    /// Count mapped 4 KiB pages.
    Count(u64),
    /// Map `[va0, ..)` to `[pa0, ..)`.
    Map { va0: u64, pa0: u64, flags: Flags },
    /// Ask `provider` to fill every entry (with 2 MiB pages first if `huge`; if not
    /// `fallback`, a 2 MiB entry the provider declines is an error instead of 4 KiB pages).
    Populate {
        va0: u64,
        offset0: u64,
        flags: Flags,
        huge: bool,
        fallback: bool,
        provider: &'p dyn PageAllocator,
    },
    /// Clear leaves, through `provider` if any.
    Unmap { va0: u64, offset0: u64, provider: Option<&'p dyn PageAllocator> },
    /// Rewrite the permissions of leaves.
    Protect(Flags),
}

/// Maps, unmaps, protects and translates in the 4-level table rooted at [`root`](Self::root).
///
/// Generic over the kernel's [`FrameAllocator`] (frames for page tables) and [`PhysMapper`]
/// (where those frames are visible). Changes need `&mut self`: one writer per address space;
/// the entries themselves are atomic because the CPU and fault handlers read them meanwhile.
pub struct Mapper<A: FrameAllocator, M: PhysMapper> {
    root: PhysAddr,
    alloc: A,
    phys: M,
}

impl<A: FrameAllocator, M: PhysMapper> core::fmt::Debug for Mapper<A, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapper").field("root", &self.root).finish_non_exhaustive()
    }
}

/// One level's behaviour in a walk. Implemented for the four level types.
trait Walk: Level {
    fn walk<A: FrameAllocator, M: PhysMapper>(
        m: &Mapper<A, M>,
        table: &PageTable<Self>,
        a: u64,
        b: u64,
        op: &mut Op<'_>,
        flush: &mut MapperFlush,
    ) -> Result;

    /// Offers a whole empty entry to a provider as one large page (level 1 only).
    fn provide_huge(_p: &dyn PageAllocator, _offset: u64, _e: HwPtep<'_, Self>, _flags: Flags) -> bool {
        false
    }

    /// Clears a large leaf through a provider (level 1), or directly.
    fn release_huge(_p: &dyn PageAllocator, _va: u64, _offset: u64, e: HwPtep<'_, Self>) -> bool {
        e.exchange(PtElement::empty()).present()
    }
}

impl Walk for L0 {
    fn walk<A: FrameAllocator, M: PhysMapper>(
        _m: &Mapper<A, M>,
        table: &PageTable<L0>,
        a: u64,
        b: u64,
        op: &mut Op<'_>,
        flush: &mut MapperFlush,
    ) -> Result {
        let mut va = a;
        while va < b {
            let ptep = table.entry(L0::index(VirtAddr::new(va)));
            let e = ptep.read();
            match op {
                Op::Count(n) => *n += u64::from(e.present()),
                Op::Map { va0, pa0, flags } => {
                    if !e.is_empty() {
                        return Err(Error::AlreadyMapped);
                    }
                    let pte = PtElement::<L0>::page(PhysAddr::new(*pa0 + (va - *va0)), *flags)?;
                    ptep.write(pte);
                }
                Op::Populate { va0, offset0, flags, provider, .. } => {
                    if !e.present() {
                        let template = PtElement::<L0>::empty().with_flags(*flags);
                        if !provider.map(*offset0 + (va - *va0), ptep, template, false) {
                            return Err(Error::OutOfFrames);
                        }
                    }
                }
                Op::Unmap { va0, offset0, provider } => {
                    let removed = match provider {
                        Some(p) => p.unmap(VirtAddr::new(va), *offset0 + (va - *va0), ptep),
                        None => ptep.exchange(PtElement::empty()).present(),
                    };
                    if removed {
                        flush.add(va, L0::SPAN, 1);
                    }
                }
                Op::Protect(flags) => {
                    if e.present() {
                        set_flags(ptep, *flags);
                        flush.add(va, L0::SPAN, 1);
                    }
                }
            }
            va += L0::SPAN;
        }
        Ok(())
    }
}

/// Rewrites the permissions of a present leaf, keeping A/D bits the CPU sets meanwhile.
fn set_flags<L: Level>(ptep: HwPtep<'_, L>, flags: Flags) {
    let mut cur = ptep.read();
    while let Err(now) = ptep.compare_exchange(cur, cur.with_flags(flags)) {
        cur = now;
    }
}

/// The walk over a table that may point at lower tables.
fn walk_table<L, A, M>(
    m: &Mapper<A, M>,
    table: &PageTable<L>,
    a: u64,
    b: u64,
    op: &mut Op<'_>,
    flush: &mut MapperFlush,
) -> Result
where
    L: HasLower + Walk,
    L::Lower: Walk,
    A: FrameAllocator,
    M: PhysMapper,
{
    let mut va = a;
    while va < b {
        let es = va & !(L::SPAN - 1);
        let ee = es.checked_add(L::SPAN);
        let hi = ee.map_or(b, |e| e.min(b));
        let full = va == es && ee == Some(hi);
        let ptep = table.entry(L::index(VirtAddr::new(va)));
        let e = ptep.read();
        let mut descend = e.next_table();
        match op {
            Op::Count(n) => {
                if e.is_leaf() {
                    *n += (hi - va) / L0::SPAN;
                }
            }
            Op::Map { va0, pa0, flags } => {
                if e.is_leaf() {
                    return Err(Error::AlreadyMapped);
                }
                let pa = *pa0 + (va - *va0);
                if e.is_empty() && full && L::LEVEL == 1 && pa.is_multiple_of(SIZE_2M) {
                    let raw = PhysAddr::new(pa).as_u64() | flags.to_pte_bits() | bits::HUGE;
                    ptep.write(PtElement::from_raw(raw));
                    descend = None;
                } else if e.is_empty() {
                    descend = Some(m.new_table(ptep)?);
                }
            }
            Op::Populate { va0, offset0, flags, huge, fallback, provider } => {
                if e.is_empty() {
                    let offset = *offset0 + (va - *va0);
                    if full && *huge && L::provide_huge(*provider, offset, ptep, *flags) {
                        descend = None;
                    } else if L::LEVEL == 1 && !*fallback {
                        return Err(Error::OutOfFrames);
                    } else if ptep.read().is_empty() {
                        descend = Some(m.new_table(ptep)?);
                    }
                }
            }
            Op::Unmap { va0, offset0, provider } => {
                if e.is_leaf() {
                    debug_assert!(full, "unmap reached a large page it did not split");
                    let removed = match provider {
                        Some(p) => L::release_huge(*p, va, *offset0 + (va - *va0), ptep),
                        None => ptep.exchange(PtElement::empty()).present(),
                    };
                    if removed {
                        flush.add(va, hi - va, 1);
                    }
                }
            }
            Op::Protect(flags) => {
                if e.is_leaf() {
                    debug_assert!(full, "protect reached a large page it did not split");
                    set_flags(ptep, *flags);
                    flush.add(va, hi - va, 1);
                }
            }
        }
        if let Some(child) = descend {
            // SAFETY: `child` is the table this entry points at: a frame of our allocator
            // (or made by whoever built the tables given to `from_root`) holding a level-L-1
            // table; we hold `&mut Mapper`, so nobody frees it during the walk.
            let lower = unsafe { table_at::<L::Lower, _>(&m.phys, child) };
            let r = <L::Lower as Walk>::walk(m, lower, va, hi, op, flush);
            if matches!(op, Op::Unmap { .. }) && lower.is_empty() {
                ptep.write(PtElement::empty());
                // The table is empty and unlinked, but a CPU may still hold it in its
                // paging-structure caches until the flush of the range (INVLPG drops those,
                // SDM vol. 3A §4.10.4.1): the frame goes into the token, freed after the flush.
                m.defer_emptied(flush, child);
                flush.add(va, hi - va, 1);
            }
            r?;
        }
        va = hi;
    }
    Ok(())
}

macro_rules! table_level {
    ($l:ident) => {
        impl Walk for $l {
            fn walk<A: FrameAllocator, M: PhysMapper>(
                m: &Mapper<A, M>,
                table: &PageTable<$l>,
                a: u64,
                b: u64,
                op: &mut Op<'_>,
                flush: &mut MapperFlush,
            ) -> Result {
                walk_table(m, table, a, b, op, flush)
            }
            table_level!(@hooks $l);
        }
    };
    (@hooks L1) => {
        fn provide_huge(p: &dyn PageAllocator, offset: u64, e: HwPtep<'_, L1>, flags: Flags) -> bool {
            let template = PtElement::<L1>::from_raw(bits::HUGE).with_flags(flags);
            p.map_huge(offset, e, template, false)
        }
        fn release_huge(p: &dyn PageAllocator, va: u64, offset: u64, e: HwPtep<'_, L1>) -> bool {
            p.unmap_huge(VirtAddr::new(va), offset, e)
        }
    };
    (@hooks $other:ty) => {};
}
table_level!(L1);
table_level!(L2);
table_level!(L3);

/// Checks a range: 4 KiB-aligned ends, `start <= end`, within one canonical half.
fn check_range(range: &Range<VirtAddr>) -> Result<(u64, u64)> {
    let (a, b) = (range.start.as_u64(), range.end.as_u64());
    if !a.is_multiple_of(L0::SPAN) || !b.is_multiple_of(L0::SPAN) {
        return Err(Error::NotAligned);
    }
    let lower = b <= LOWER_HALF_END;
    let upper = a >= UPPER_HALF_START;
    if a > b || !(lower || upper) {
        return Err(Error::InvalidRange);
    }
    Ok((a, b))
}

impl<A: FrameAllocator, M: PhysMapper> Mapper<A, M> {
    /// A new, empty address space: allocates and zeroes a root (PML4) table.
    pub fn new(alloc: A, phys: M) -> Result<Self> {
        let root = alloc.allocate_frame().ok_or(Error::OutOfFrames)?;
        // SAFETY: the frame was just allocated for us.
        unsafe { zero_frame(&phys, root) };
        Ok(Self { root, alloc, phys })
    }

    /// Takes over existing tables rooted at `root` (e.g. the boot tables).
    ///
    /// # Safety
    /// 1. `root` holds a valid PML4, reachable through `phys`, and so does every table it
    ///    points at, recursively; the large-page and table entries in them are well formed.
    /// 2. Every table below the root that is not static is a frame of `alloc` (the mapper
    ///    frees tables that become empty to `alloc`).
    /// 3. Nobody else changes these tables while the `Mapper` exists.
    pub unsafe fn from_root(root: PhysAddr, alloc: A, phys: M) -> Self {
        Self { root, alloc, phys }
    }

    /// The physical address of the root table (what goes into CR3).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The frame allocator.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// The physical-memory mapper.
    pub fn phys_mapper(&self) -> &M {
        &self.phys
    }

    /// Gives the parts back (the tables stay as they are).
    pub fn into_parts(self) -> (PhysAddr, A, M) {
        (self.root, self.alloc, self.phys)
    }

    fn root_table(&self) -> &PageTable<L3> {
        // SAFETY: `root` is our PML4 (allocated in `new`, or promised by `from_root`), live
        // as long as `self`.
        unsafe { table_at::<L3, _>(&self.phys, self.root) }
    }

    /// Allocates a zeroed table and points the empty entry `ptep` at it.
    fn new_table<L: HasLower>(&self, ptep: HwPtep<'_, L>) -> Result<PhysAddr> {
        let frame = self.alloc.allocate_frame().ok_or(Error::OutOfFrames)?;
        // SAFETY: the frame was just allocated for us and is not yet visible.
        unsafe { zero_frame(&self.phys, frame) };
        ptep.write(PtElement::table(frame)?);
        Ok(frame)
    }

    fn run(&self, a: u64, b: u64, op: &mut Op<'_>) -> Result<MapperFlush> {
        let mut flush = MapperFlush::none();
        self.run_into(a, b, op, &mut flush)?;
        Ok(flush)
    }

    fn run_into(&self, a: u64, b: u64, op: &mut Op<'_>, flush: &mut MapperFlush) -> Result {
        L3::walk(self, self.root_table(), a, b, op, flush)
    }

    /// Runs the shootdown for `token` through `tlb` ([`TlbFlush::shootdown`]), then frees the
    /// page-table frames the token carries: the only way those frames go back to the
    /// allocator, so none is reused while a CPU may still walk it.
    pub fn flush<T: TlbFlush + ?Sized>(&self, token: MapperFlush, tlb: &T) {
        if !token.is_empty() {
            tlb.shootdown(&token);
        }
        self.release(token);
    }

    /// Frees the page-table frames `token` carries without a TLB flush: for tables that are
    /// not live on any CPU (built before loading CR3, or an address space never run).
    pub fn discard(&self, token: MapperFlush) {
        self.release(token);
    }

    /// Adds `other` to `into` (ranges and carried frames), linking frame chains through
    /// memory, so unlike [`MapperFlush::merge`] there is no limit on how many tokens with
    /// frames can be batched into one shootdown.
    pub fn merge_flush(&self, into: &mut MapperFlush, mut other: MapperFlush) {
        for k in 0..other.chains.heads.len() {
            let h = other.chains.heads[k];
            if h == 0 {
                continue;
            }
            // Walk to the chain's last list page and hang `into`'s chain 0 behind it.
            let mut tail = h;
            loop {
                let next = self.list_page(tail).entry(0).read().raw();
                if next == 0 {
                    break;
                }
                tail = next;
            }
            self.list_page(tail).entry(0).write(PtElement::from_raw(into.chains.heads[0]));
            into.chains.heads[0] = h;
            into.chains.head_used = if k == 0 { other.chains.head_used } else { LIST_SLOTS };
            other.chains.heads[k] = 0;
        }
        // Only counts and ranges are left in `other`.
        into.take_chains(&mut other.chains);
        into.merge_ranges(&other);
    }

    /// A list page (or a table being turned into one) as 512 atomic words.
    fn list_page(&self, frame: u64) -> &PageTable<L0> {
        // SAFETY: `frame` is a list page of a token of this mapper: a frame of our allocator
        // (an unlinked table or a fresh frame) that stays allocated until `release`; all
        // access to it is atomic.
        unsafe { table_at::<L0, _>(&self.phys, PhysAddr::new(frame)) }
    }

    /// Puts an unlinked, all-zero table into `flush`: it becomes the new head list page.
    fn defer_emptied(&self, flush: &mut MapperFlush, frame: PhysAddr) {
        let c = &mut flush.chains;
        // A 4 KiB-aligned address (or 0): P clear, so a stale walker of this table sees
        // "not present", which is what the table now means.
        self.list_page(frame.as_u64()).entry(0).write(PtElement::from_raw(c.heads[0]));
        c.heads[0] = frame.as_u64();
        c.head_used = 0;
        c.frames += 1;
    }

    /// Puts a frame that must not be written before the flush (a merged table) into a free
    /// slot of `flush`'s head list page, allocating a fresh list page if needed. `false` if
    /// no list page could be allocated (nothing changed).
    fn defer_frame(&self, flush: &mut MapperFlush, frame: PhysAddr) -> bool {
        let c = &mut flush.chains;
        if c.heads[0] == 0 || c.head_used >= LIST_SLOTS {
            let Some(page) = self.alloc.allocate_frame() else { return false };
            // SAFETY: the frame was just allocated for us and is not visible to anyone.
            unsafe { zero_frame(&self.phys, page) };
            self.list_page(page.as_u64()).entry(0).write(PtElement::from_raw(c.heads[0]));
            c.heads[0] = page.as_u64();
            c.head_used = 0;
            c.frames += 1;
        }
        c.head_used += 1;
        self.list_page(c.heads[0]).entry(usize::from(c.head_used)).write(PtElement::from_raw(frame.as_u64()));
        c.frames += 1;
        true
    }

    /// Frees every frame `token` carries (list pages included).
    fn release(&self, mut token: MapperFlush) {
        for k in 0..token.chains.heads.len() {
            let mut page = core::mem::take(&mut token.chains.heads[k]);
            while page != 0 {
                let list = self.list_page(page);
                for i in 1..=usize::from(LIST_SLOTS) {
                    let f = list.entry(i).read().raw();
                    if f != 0 {
                        // SAFETY: a frame of our allocator that a change unlinked (a merged
                        // table); the caller has flushed the TLB (or the tables were not live),
                        // so nothing uses it any more.
                        unsafe { self.alloc.free_frame(PhysAddr::new(f)) };
                    }
                }
                let next = list.entry(0).read().raw();
                // SAFETY: as above: the list page is an unlinked table or a frame we allocated
                // for the list, and we are done reading it.
                unsafe { self.alloc.free_frame(PhysAddr::new(page)) };
                page = next;
            }
        }
    }

    /// Merges into 2 MiB pages the 2 MiB-aligned ranges overlapping `[a, b)` whose level-0
    /// table maps 512 contiguous pages of a 2 MiB-aligned frame with identical attributes.
    fn merge_range(&self, a: u64, b: u64, flush: &mut MapperFlush) {
        let mut c = a & !(SIZE_2M - 1);
        while c < b {
            self.merge_chunk(c, flush);
            c += SIZE_2M;
        }
    }

    fn merge_chunk(&self, c: u64, flush: &mut MapperFlush) {
        let va = VirtAddr::new(c);
        let Some(t2) = self.root_table().entry(L3::index(va)).read().next_table() else { return };
        // SAFETY: a present non-leaf entry of our tables points at a live lower table.
        let p2 = unsafe { table_at::<L2, _>(&self.phys, t2) }.entry(L2::index(va));
        let Some(t1) = p2.read().next_table() else { return };
        // SAFETY: as above.
        let p1 = unsafe { table_at::<L1, _>(&self.phys, t1) }.entry(L1::index(va));
        let pointer = p1.read();
        let Some(t0) = pointer.next_table() else { return };
        // SAFETY: as above.
        let table = unsafe { table_at::<L0, _>(&self.phys, t0) };
        let Some(huge) = merged_entry(table) else { return };
        if !self.defer_frame(flush, t0) {
            return; // No list page for the frame: stay with 4 KiB pages.
        }
        // Only the page size changes, not the frames, rights or memory type, which the SDM
        // (vol. 3A §4.10.2.3) allows on a live entry. The CPU may set A in the pointer
        // meanwhile (we hold `&self` of the only writer, so nothing else changes it): retry
        // with its value. A/D the CPU sets in the level-0 entries after `merged_entry` read
        // them are not carried over.
        let mut cur = pointer;
        while let Err(now) = p1.compare_exchange(cur, huge) {
            if now.next_table() != Some(t0) {
                // Not our table any more (cannot happen with one writer): keep everything.
                let c0 = &mut flush.chains;
                self.list_page(c0.heads[0]).entry(usize::from(c0.head_used)).write(PtElement::empty());
                c0.head_used -= 1;
                c0.frames -= 1;
                return;
            }
            cur = now;
        }
        // The PDE changed from a table to a large page: invalidate the range (and with it the
        // paging-structure caches, SDM vol. 3A §4.10.4.1) before the table frame is reused.
        flush.add(c, SIZE_2M, 1);
    }

    /// How many 4 KiB pages of `range` are mapped (a large page counts for each 4 KiB in it).
    pub fn mapped_pages(&self, range: Range<VirtAddr>) -> Result<u64> {
        let (a, b) = check_range(&range)?;
        let mut op = Op::Count(0);
        self.run(a, b, &mut op)?.ignore();
        match op {
            Op::Count(n) => Ok(n),
            _ => unreachable!(),
        }
    }

    /// Where `va` goes: the physical address of that byte, the page's permissions and size.
    pub fn translate(&self, va: VirtAddr) -> Option<(PhysAddr, Flags, PageSize)> {
        let v = va.as_u64();
        let e3 = self.root_table().entry(L3::index(va)).read();
        // SAFETY: a present non-leaf entry of our tables points at a live table of the level
        // below, and `&self` keeps the mapper from freeing it (same for the two below).
        let t2 = unsafe { table_at::<L2, _>(&self.phys, e3.next_table()?) };
        let e2 = t2.entry(L2::index(va)).read();
        if e2.is_leaf() {
            return Some(leaf(e2, v, PageSize::Size1G));
        }
        // SAFETY: see above.
        let t1 = unsafe { table_at::<L1, _>(&self.phys, e2.next_table()?) };
        let e1 = t1.entry(L1::index(va)).read();
        if e1.is_leaf() {
            return Some(leaf(e1, v, PageSize::Size2M));
        }
        // SAFETY: see above.
        let t0 = unsafe { table_at::<L0, _>(&self.phys, e1.next_table()?) };
        let e0 = t0.entry(L0::index(va)).read();
        e0.present().then(|| leaf(e0, v, PageSize::Size4K))
    }

    /// Maps `range` to physical memory starting at `phys`, with 2 MiB pages wherever the
    /// virtual and physical addresses are both 2 MiB aligned and the range covers the page.
    ///
    /// Errors: `NotAligned`, `InvalidRange`, `NoAccess` (flags allow nothing),
    /// `AlreadyMapped` (some page of the range is mapped; nothing changed), `OutOfFrames`
    /// (nothing changed: what was built is torn down again).
    pub fn map(&mut self, range: Range<VirtAddr>, phys: PhysAddr, flags: Flags) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        if !phys.is_aligned(L0::SPAN) {
            return Err(Error::NotAligned);
        }
        match phys.checked_add(b - a) {
            Some(end) if end.as_u64() <= 1 << 52 => {}
            _ => return Err(Error::InvalidRange),
        }
        let flags = checked_flags(flags)?;
        self.build(a, b, &mut Op::Map { va0: a, pa0: phys.as_u64(), flags })
    }

    /// Fills `range` from `provider` (OSv's populate): each entry gets
    /// `provider.map(offset + (va - start), ..)`, or `map_huge` for a whole 2 MiB entry when
    /// `huge` is set (falling back to 4 KiB if the provider declines).
    ///
    /// Errors as [`map`](Self::map); a provider returning `false` is `OutOfFrames`, and what
    /// was filled is given back through [`PageAllocator::unmap`].
    pub fn populate(
        &mut self,
        range: Range<VirtAddr>,
        offset: u64,
        flags: Flags,
        huge: bool,
        provider: &dyn PageAllocator,
    ) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let flags = checked_flags(flags)?;
        self.build(a, b, &mut Op::Populate { va0: a, offset0: offset, flags, huge, fallback: true, provider })
    }

    /// Fills `range` with zeroed anonymous memory from the mapper's own allocator (an
    /// [`AnonZero`] over it; the page-fault path of [`vma`](crate::vma)). With
    /// `PageSize::Size2M` the range must be 2 MiB aligned and is filled only with 2 MiB pages
    /// ([`FrameAllocator::allocate_huge`] blocks through the provider's level-1 `map_huge`):
    /// if the allocator has no such block, `OutOfFrames` and nothing changed, so the caller
    /// can fall back to 4 KiB pages. `PageSize::Size1G` is `InvalidRange`.
    pub fn populate_anon(
        &mut self,
        range: Range<VirtAddr>,
        flags: Flags,
        size: PageSize,
    ) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let flags = checked_flags(flags)?;
        let huge = match size {
            PageSize::Size4K => false,
            PageSize::Size2M if a.is_multiple_of(SIZE_2M) && b.is_multiple_of(SIZE_2M) => true,
            PageSize::Size2M => return Err(Error::NotAligned),
            PageSize::Size1G => return Err(Error::InvalidRange),
        };
        let anon = AnonZero::new(&self.alloc, &self.phys);
        let op = &mut Op::Populate { va0: a, offset0: 0, flags, huge, fallback: !huge, provider: &anon };
        self.build(a, b, op)
    }

    /// The shared body of `map` and `populate`: check emptiness, build, roll back on error,
    /// merge what became mergeable.
    fn build(&self, a: u64, b: u64, op: &mut Op<'_>) -> Result<MapperFlush> {
        if self.mapped_pages(VirtAddr::new(a)..VirtAddr::new(b))? != 0 {
            return Err(Error::AlreadyMapped);
        }
        match self.run(a, b, op) {
            Ok(mut flush) => {
                self.merge_range(a, b, &mut flush);
                Ok(flush)
            }
            Err(e) => {
                let provider = match op {
                    Op::Populate { provider, .. } => Some(*provider),
                    _ => None,
                };
                let offset0 = match op {
                    Op::Populate { offset0, .. } => *offset0,
                    _ => 0,
                };
                // The range was empty, and every leaf built lies wholly inside it, so this
                // needs no split and cannot fail.
                // Nothing built was ever reported, and entries that were never present cannot
                // be cached: the tables built are freed at once.
                let mut undo = Op::Unmap { va0: a, offset0, provider };
                let undone = self.run(a, b, &mut undo)?;
                self.discard(undone);
                Err(e)
            }
        }
    }

    /// Unmaps every mapped page in `range` (holes are fine, like `munmap`), splitting a large
    /// page the range covers only in part, and frees tables that become empty.
    ///
    /// Errors: `NotAligned`, `InvalidRange`, `OutOfFrames` (a split could not get a table;
    /// every translation is unchanged).
    pub fn unmap(&mut self, range: Range<VirtAddr>) -> Result<MapperFlush> {
        self.unmap_inner(range, 0, None)
    }

    /// [`unmap`](Self::unmap), giving each leaf back through `provider` (which frees what it
    /// allocated); `offset` is the provider offset of `range.start`.
    pub fn unmap_with(
        &mut self,
        range: Range<VirtAddr>,
        offset: u64,
        provider: &dyn PageAllocator,
    ) -> Result<MapperFlush> {
        self.unmap_inner(range, offset, Some(provider))
    }

    fn unmap_inner(
        &mut self,
        range: Range<VirtAddr>,
        offset0: u64,
        provider: Option<&dyn PageAllocator>,
    ) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let mut flush = self.split_ends(&range)?;
        self.run_into(a, b, &mut Op::Unmap { va0: a, offset0, provider }, &mut flush)?;
        Ok(flush)
    }

    /// Changes the permissions of every page in `range`, splitting a large page the range
    /// covers only in part.
    ///
    /// Errors: `NotAligned`, `InvalidRange`, `NoAccess`, `NotMapped` (some page of the range
    /// is not mapped; nothing changed), `OutOfFrames` (a split failed; translations and
    /// permissions unchanged).
    pub fn protect(&mut self, range: Range<VirtAddr>, flags: Flags) -> Result<MapperFlush> {
        let (a, b) = check_range(&range)?;
        let flags = checked_flags(flags)?;
        if self.mapped_pages(range.clone())? != (b - a) / L0::SPAN {
            return Err(Error::NotMapped);
        }
        let mut flush = self.split_ends(&range)?;
        self.run_into(a, b, &mut Op::Protect(flags), &mut flush)?;
        self.merge_range(a, b, &mut flush);
        Ok(flush)
    }

    /// Splits the large pages that straddle either end of `range`.
    fn split_ends(&mut self, range: &Range<VirtAddr>) -> Result<MapperFlush> {
        let (a, b) = check_range(range)?;
        let mut flush = MapperFlush::none();
        if a < b {
            self.split_at(a, &mut flush)?;
            self.split_at(b, &mut flush)?;
        }
        Ok(flush)
    }

    /// Makes sure no large page straddles `x` (that is, contains `x` but does not start there).
    fn split_at(&self, x: u64, flush: &mut MapperFlush) -> Result {
        if x.is_multiple_of(L2::SPAN) {
            return Ok(());
        }
        let va = VirtAddr::new(x);
        let Some(t2) = self.root_table().entry(L3::index(va)).read().next_table() else { return Ok(()) };
        // SAFETY: a present non-leaf entry of our tables points at a live lower table.
        let p2 = unsafe { table_at::<L2, _>(&self.phys, t2) }.entry(L2::index(va));
        if p2.read().is_leaf() && !x.is_multiple_of(L2::SPAN) {
            self.split_huge(p2, x & !(L2::SPAN - 1), flush)?;
        }
        if x.is_multiple_of(SIZE_2M) {
            return Ok(());
        }
        let Some(t1) = p2.read().next_table() else { return Ok(()) };
        // SAFETY: as above.
        let p1 = unsafe { table_at::<L1, _>(&self.phys, t1) }.entry(L1::index(va));
        if p1.read().is_leaf() {
            self.split_huge(p1, x & !(SIZE_2M - 1), flush)?;
        }
        Ok(())
    }

    /// Replaces the large leaf at `ptep` (mapping `[start, start + L::SPAN)`) by a table of
    /// 512 entries of the level below with the same translations.
    fn split_huge<L: HugeCapable>(&self, ptep: HwPtep<'_, L>, start: u64, flush: &mut MapperFlush) -> Result {
        let frame = self.alloc.allocate_frame().ok_or(Error::OutOfFrames)?;
        // SAFETY: the frame was just allocated for us and is not yet visible.
        let table = unsafe { table_at::<L::Lower, _>(&self.phys, frame) };
        let pointer = PtElement::<L>::table(frame)?;
        let mut cur = ptep.read();
        loop {
            for (i, e) in table.entries().enumerate() {
                e.write(PtElement::from_raw(split_entry(cur.raw(), L::LEVEL, i as u64)));
            }
            // The CPU may set A/D meanwhile: retry with its value so none is lost.
            match ptep.compare_exchange(cur, pointer) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Same translations, but the SDM (vol. 3A §4.10.2.3) advises invalidating when a page
        // changes size. One `invlpg` anywhere in the old large page drops its TLB entry.
        flush.add(start, L::SPAN, 1);
        Ok(())
    }

    /// Calls `f(frame, level)` for every page table, root included (for checks and stats).
    pub fn for_each_table(&self, mut f: impl FnMut(PhysAddr, u8)) {
        f(self.root, 3);
        for e3 in self.root_table().entries() {
            let Some(t2) = e3.read().next_table() else { continue };
            f(t2, 2);
            // SAFETY: a present non-leaf entry of our tables points at a live lower table.
            for e2 in unsafe { table_at::<L2, _>(&self.phys, t2) }.entries() {
                let Some(t1) = e2.read().next_table() else { continue };
                f(t1, 1);
                // SAFETY: as above.
                for e1 in unsafe { table_at::<L1, _>(&self.phys, t1) }.entries() {
                    if let Some(t0) = e1.read().next_table() {
                        f(t0, 0);
                    }
                }
            }
        }
    }
}

fn checked_flags(flags: Flags) -> Result<Flags> {
    if flags.allows_access() {
        Ok(flags.normalized())
    } else {
        Err(Error::NoAccess)
    }
}

/// The 2 MiB entry equivalent to a full level-0 table, if it is one: 512 present entries
/// mapping consecutive 4 KiB frames from a 2 MiB-aligned one, with identical bits apart from
/// the address and A/D. A/D of the result are the union of the entries' (a page accessed or
/// written keeps being reported so).
fn merged_entry(table: &PageTable<L0>) -> Option<PtElement<L1>> {
    const AD: u64 = bits::ACCESSED | bits::DIRTY;
    let first = table.entry(0).read();
    if !first.present() || !first.addr().is_aligned(SIZE_2M) {
        return None;
    }
    let base = first.raw() & !AD;
    let mut ad = 0;
    for (i, e) in table.entries().enumerate() {
        let raw = e.read().raw();
        if raw & !AD != base + i as u64 * L0::SPAN {
            return None;
        }
        ad |= raw & AD;
    }
    // Bit 7 of a PTE is PAT; in a 2 MiB entry it is PS and PAT moves to bit 12 (SDM vol. 3A
    // table 4-18 vs. 4-20).
    let pat = if base & bits::PAT_4K != 0 { bits::PAT_HUGE } else { 0 };
    Some(PtElement::from_raw((base & !bits::PAT_4K) | bits::HUGE | pat | ad))
}

fn leaf<L: Level>(e: PtElement<L>, va: u64, size: PageSize) -> (PhysAddr, Flags, PageSize) {
    (PhysAddr::new(e.addr().as_u64() + (va & (size.bytes() - 1))), e.flags(), size)
}

#[cfg(test)]
mod tests;
